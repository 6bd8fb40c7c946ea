//! `GET` and `PUT /api/packages/{protocol}/{name}`: how Ray's job client (and
//! `manta job submit`) ship a local `working_dir` or `py_modules` folder before
//! submitting. Packages land in the GCS package store (content-checked when the
//! name carries a digest) and stay pinned for a while, so the job that names
//! them (`gcs://<name>`) finds them when it starts.

use actix_web::{HttpResponse, web};
use manta_proto::package::{CHUNK_BYTES, PackageKind, PutPackageRequest, UsePackageRequest};
use manta_proto::runtime_env::check_package_name;

use super::{AppState, call_error};

pub(super) fn routes(config: &mut web::ServiceConfig) {
    config.service(
        web::resource("/packages/{protocol}/{name}")
            .app_data(web::PayloadConfig::new(super::MAX_UPLOAD_BYTES))
            .route(web::get().to(exists))
            .route(web::put().to(upload)),
    );
}

/// Refuses what is not a package name in the cluster (`gcs` protocol, a plain file name).
fn check(protocol: &str, name: &str) -> Result<(), String> {
    if protocol != "gcs" {
        return Err(format!("package protocol {protocol:?} is not supported; use gcs"));
    }
    check_package_name(name)
}

async fn exists(state: web::Data<AppState>, path: web::Path<(String, String)>) -> HttpResponse {
    let (protocol, name) = path.into_inner();
    if let Err(message) = check(&protocol, &name) {
        return HttpResponse::BadRequest().body(message);
    }
    match state.gcs.call(UsePackageRequest { name: name.clone(), job_id: None }).await {
        Ok(reply) if reply.info.is_some() => HttpResponse::Ok().body(format!("package {name} exists")),
        Ok(_) => HttpResponse::NotFound().body(format!("package {name} does not exist")),
        Err(error) => call_error(error),
    }
}

async fn upload(state: web::Data<AppState>, path: web::Path<(String, String)>, body: web::Bytes) -> HttpResponse {
    let (protocol, name) = path.into_inner();
    if let Err(message) = check(&protocol, &name) {
        return HttpResponse::BadRequest().body(message);
    }
    if body.is_empty() {
        return HttpResponse::BadRequest().body("the package is empty: send the zip file's bytes as the body");
    }
    let digest = blake3::hash(&body);
    if let Some(named) = PackageKind::digest_in_name(&name)
        && named != digest.to_hex().as_str()
    {
        return HttpResponse::BadRequest()
            .body(format!("package {name}: its content does not match the digest in its name"));
    }
    let size = body.len() as u64;
    let mut offset = 0usize;
    while offset < body.len() {
        let end = (offset + CHUNK_BYTES).min(body.len());
        let request = PutPackageRequest {
            name: name.clone(),
            size,
            digest: digest.to_hex().to_string(),
            offset: offset as u64,
            data: body.slice(offset..end),
            job_id: None,
        };
        match state.gcs.call(request).await {
            Ok(reply) if reply.complete => return HttpResponse::Ok().body(format!("package {name} stored")),
            Ok(_) => offset = end,
            Err(error) => return call_error(error),
        }
    }
    HttpResponse::InternalServerError().body(format!("the GCS did not complete package {name} after its last chunk"))
}
