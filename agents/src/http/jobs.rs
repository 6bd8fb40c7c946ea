//! Ray's job routes: submit, list, get, stop, delete. Bodies are checked field
//! by field, and a wrong one is a 400 that names it (Ray accepts some malformed
//! runtime envs and fails later; manta refuses them at the door).

use std::collections::BTreeMap;

use actix_web::{HttpResponse, web};
use manta_proto::runtime_env::RuntimeEnv;
use manta_proto::state::JobState;
use manta_proto::submission::{
    DeleteSubmissionRequest, EntrypointResources, GetSubmissionRequest, JobSubmission, ListSubmissionsRequest,
    StopSubmissionRequest, SubmitJobRequest, check_submission_id, new_submission_id,
};
use manta_proto::task::{JobRecord, ListStateRequest, StateRows, StateTable};
use serde_json::{Map, Value, json};

use super::{AppState, call_error};

pub(super) fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/jobs/", web::post().to(submit))
        .route("/jobs", web::post().to(submit))
        .route("/jobs/", web::get().to(list))
        .route("/jobs", web::get().to(list))
        .route("/jobs/{id}", web::get().to(get))
        .route("/jobs/{id}", web::delete().to(delete))
        .route("/jobs/{id}/stop", web::post().to(stop));
}

/// The fields of a submission, checked.
#[derive(Debug, PartialEq)]
pub struct SubmitBody {
    /// The shell command.
    pub entrypoint: String,
    /// The chosen id, if any.
    pub submission_id: Option<String>,
    /// The runtime env as given (a JSON object).
    pub runtime_env: Map<String, Value>,
    /// The parsed runtime env.
    pub env: RuntimeEnv,
    /// Metadata.
    pub metadata: BTreeMap<String, String>,
    /// Entrypoint resources.
    pub resources: EntrypointResources,
}

const FIELDS: [&str; 10] = [
    "entrypoint",
    "submission_id",
    "job_id",
    "runtime_env",
    "metadata",
    "entrypoint_num_cpus",
    "entrypoint_num_gpus",
    "entrypoint_memory",
    "entrypoint_resources",
    "entrypoint_label_selector",
];

fn number(body: &Map<String, Value>, field: &str) -> Result<f64, String> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(0.0),
        Some(Value::Number(number)) => match number.as_f64() {
            Some(value) if value >= 0.0 && value.is_finite() => Ok(value),
            _ => Err(format!("{field} must be a number of zero or more")),
        },
        Some(other) => Err(format!("{field} must be a number, got {other}")),
    }
}

fn string_map(body: &Map<String, Value>, field: &str) -> Result<BTreeMap<String, String>, String> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(key, value)| match value {
                Value::String(text) => Ok((key.clone(), text.clone())),
                other => Err(format!("{field}.{key} must be a string, got {other}")),
            })
            .collect(),
        Some(other) => Err(format!("{field} must be an object of strings, got {other}")),
    }
}

impl SubmitBody {
    /// Checks a submission body; the error names the field.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|error| format!("the request body is not valid JSON: {error}"))?;
        let Value::Object(body) = value else { return Err("the request body must be a JSON object".into()) };
        if let Some(unknown) = body.keys().find(|key| !FIELDS.contains(&key.as_str())) {
            return Err(format!("unknown field {unknown:?}; a job submission takes {}", FIELDS.join(", ")));
        }
        let entrypoint = match body.get("entrypoint") {
            Some(Value::String(text)) if !text.trim().is_empty() => text.clone(),
            Some(Value::String(_)) => return Err("entrypoint must not be empty".into()),
            Some(other) => return Err(format!("entrypoint must be a string, got {other}")),
            None => return Err("entrypoint is required: the shell command to run".into()),
        };
        let mut submission_id = None;
        for field in ["submission_id", "job_id"] {
            match body.get(field) {
                None | Some(Value::Null) => {}
                Some(Value::String(id)) => {
                    check_submission_id(id)?;
                    submission_id.get_or_insert(id.clone());
                }
                Some(other) => return Err(format!("{field} must be a string, got {other}")),
            }
        }
        let runtime_env = match body.get("runtime_env") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(map)) => map.clone(),
            Some(other) => return Err(format!("runtime_env must be an object, got {other}")),
        };
        let env = RuntimeEnv::from_json(&Value::Object(runtime_env.clone()).to_string()).map_err(|error| error.0)?;
        env.resolve_child().map_err(|error| {
            format!("{error} (with the REST API, upload local folders first: PUT /api/packages/gcs/<name>, as `manta job submit` and Ray's client do)")
        })?;
        let memory = number(&body, "entrypoint_memory")?;
        if memory.fract() != 0.0 {
            return Err("entrypoint_memory must be a whole number of bytes".into());
        }
        let custom = match body.get("entrypoint_resources") {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(Value::Object(map)) => {
                map.keys().map(|key| number(map, key).map(|value| (key.clone(), value))).collect::<Result<_, _>>()?
            }
            Some(other) => return Err(format!("entrypoint_resources must be an object of numbers, got {other}")),
        };
        if let Some(reserved) =
            custom.keys().find(|key| manta_proto::resources::names::RESERVED.contains(&key.as_str()))
        {
            return Err(format!(
                "entrypoint_resources: {reserved} has its own field (entrypoint_num_cpus, entrypoint_num_gpus, entrypoint_memory)"
            ));
        }
        let labels = string_map(&body, "entrypoint_label_selector")?;
        if !labels.is_empty() {
            return Err("entrypoint_label_selector is not supported yet; use entrypoint_resources".into());
        }
        Ok(Self {
            entrypoint,
            submission_id,
            runtime_env,
            env,
            metadata: string_map(&body, "metadata")?,
            resources: EntrypointResources {
                num_cpus: number(&body, "entrypoint_num_cpus")?,
                num_gpus: number(&body, "entrypoint_num_gpus")?,
                memory: memory as u64,
                custom,
            },
        })
    }

    /// The record the GCS keeps, `PENDING`.
    pub fn into_submission(self, now_ms: u64) -> Result<JobSubmission, String> {
        let runtime_env = self.env.resolve_child()?;
        let submission_id = self.submission_id.unwrap_or_else(new_submission_id);
        let mut metadata = self.metadata;
        metadata.entry("job_submission_id".into()).or_insert_with(|| submission_id.clone());
        metadata.entry("job_name".into()).or_insert_with(|| submission_id.clone());
        Ok(JobSubmission {
            metadata,
            runtime_env_json: Value::Object(self.runtime_env).to_string(),
            runtime_env,
            resources: self.resources,
            ..JobSubmission::pending(submission_id, self.entrypoint, now_ms)
        })
    }
}

/// Ray's `JobDetails` JSON for a record.
pub fn details(job: &JobSubmission) -> Value {
    let runtime_env: Value = serde_json::from_str(&job.runtime_env_json).unwrap_or_else(|_| json!({}));
    let driver_info = match (job.job_id, &job.driver_node_ip, job.driver_pid) {
        (Some(job_id), Some(ip), Some(pid)) => {
            json!({"id": job_id.to_string(), "node_ip_address": ip, "pid": pid.to_string()})
        }
        _ => Value::Null,
    };
    json!({
        "type": "SUBMISSION",
        "job_id": job.job_id.map(|id| id.to_string()),
        "submission_id": job.submission_id,
        "driver_info": driver_info,
        "status": job.status.as_str(),
        "entrypoint": job.entrypoint,
        "message": job.message,
        "error_type": job.error_type,
        "start_time": job.start_time_ms,
        "end_time": job.end_time_ms,
        "metadata": job.metadata,
        "runtime_env": runtime_env,
        "driver_agent_http_address": Value::Null,
        "driver_node_id": job.driver_node_id.map(|id| id.to_string()),
        "driver_exit_code": job.driver_exit_code,
        "entrypoint_num_cpus": job.resources.num_cpus,
        "entrypoint_num_gpus": job.resources.num_gpus,
        "entrypoint_memory": job.resources.memory,
        "entrypoint_resources": job.resources.custom,
    })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

async fn submit(state: web::Data<AppState>, body: web::Bytes) -> HttpResponse {
    if body.len() > super::MAX_JSON_BYTES {
        return HttpResponse::PayloadTooLarge()
            .body(format!("a job submission is at most {} bytes", super::MAX_JSON_BYTES));
    }
    let submission = match SubmitBody::parse(&body).and_then(|body| body.into_submission(now_ms())) {
        Ok(submission) => submission,
        Err(message) => return HttpResponse::BadRequest().body(message),
    };
    let submission_id = submission.submission_id.clone();
    match state.gcs.call(SubmitJobRequest { submission: Box::new(submission) }).await {
        Ok(()) => HttpResponse::Ok().json(json!({"submission_id": submission_id, "job_id": submission_id})),
        Err(error) => call_error(error),
    }
}

/// Ray's `JobDetails` JSON for a driver that was not submitted (`type: DRIVER`):
/// a program that called `manta::init` itself.
pub fn driver_details(job: &JobRecord) -> Value {
    let status = match job.state {
        JobState::Running => "RUNNING",
        JobState::Finished => "SUCCEEDED",
    };
    json!({
        "type": "DRIVER",
        "job_id": job.job_id.to_string(),
        "submission_id": Value::Null,
        "driver_info": {"id": job.job_id.to_string(), "node_ip_address": Value::Null, "pid": job.driver_pid.to_string()},
        "status": status,
        "entrypoint": "",
        "message": Value::Null,
        "error_type": Value::Null,
        "start_time": job.start_time_ms,
        "end_time": job.end_time_ms,
        "metadata": {},
        "runtime_env": {},
        "driver_agent_http_address": Value::Null,
        "driver_node_id": Value::Null,
        "driver_exit_code": Value::Null,
    })
}

/// Submitted jobs, then the drivers that were not submitted, as Ray lists them.
async fn list(state: web::Data<AppState>) -> HttpResponse {
    match all_jobs(&state).await {
        Ok(all) => HttpResponse::Ok().json(all),
        Err(response) => response,
    }
}

/// Every job Ray's job list would show (submitted ones, then drivers that were
/// not submitted), as `JobDetails` JSON.
pub(crate) async fn all_jobs(state: &AppState) -> Result<Vec<Value>, HttpResponse> {
    let submissions = state.gcs.call(ListSubmissionsRequest {}).await.map_err(call_error)?.submissions;
    let request = ListStateRequest::newest(StateTable::Jobs, manta_proto::query::MAX_LIMIT);
    let drivers = match state.gcs.call(request).await.map_err(call_error)?.rows {
        StateRows::Jobs(jobs) => jobs,
        _ => Vec::new(),
    };
    let submitted: std::collections::HashSet<_> = submissions.iter().filter_map(|job| job.job_id).collect();
    let mut all: Vec<Value> = submissions.iter().map(details).collect();
    all.extend(drivers.iter().rev().filter(|job| !submitted.contains(&job.job_id)).map(driver_details));
    Ok(all)
}

/// The record for `id`, or the answer to give.
pub(super) async fn find(state: &AppState, id: &str) -> Result<JobSubmission, HttpResponse> {
    match state.gcs.call(GetSubmissionRequest { id: id.to_string() }).await {
        Ok(reply) => reply
            .submission
            .map(|job| *job)
            .ok_or_else(|| HttpResponse::NotFound().body(format!("Job {id} does not exist"))),
        Err(error) => Err(call_error(error)),
    }
}

async fn get(state: web::Data<AppState>, id: web::Path<String>) -> HttpResponse {
    match find(&state, &id).await {
        Ok(job) => HttpResponse::Ok().json(details(&job)),
        Err(response) => response,
    }
}

async fn stop(state: web::Data<AppState>, id: web::Path<String>) -> HttpResponse {
    match state.gcs.call(StopSubmissionRequest { id: id.into_inner() }).await {
        Ok(reply) => HttpResponse::Ok().json(json!({"stopped": reply.stopped})),
        Err(error) => call_error(error),
    }
}

async fn delete(state: web::Data<AppState>, id: web::Path<String>) -> HttpResponse {
    match state.gcs.call(DeleteSubmissionRequest { id: id.into_inner() }).await {
        Ok(()) => HttpResponse::Ok().json(json!({"deleted": true})),
        Err(error) => call_error(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_checked_field_by_field() {
        let body = SubmitBody::parse(
            br#"{"entrypoint": "echo hi", "submission_id": "s1", "runtime_env": {"env_vars": {"A": "1"}},
                 "metadata": {"owner": "me"}, "entrypoint_num_cpus": 1, "entrypoint_resources": {"disk": 2}}"#,
        )
        .unwrap();
        assert_eq!(body.submission_id.as_deref(), Some("s1"));
        assert_eq!(body.resources.num_cpus, 1.0);
        let job = body.into_submission(5).unwrap();
        assert_eq!(job.runtime_env.env_vars["A"], "1");
        assert_eq!(job.metadata["job_submission_id"], "s1");
        for (bad, field) in [
            (r#"{}"#, "entrypoint"),
            (r#"{"entrypoint": 3}"#, "entrypoint"),
            (r#"{"entrypoint": "x", "bogus": 1}"#, "bogus"),
            (r#"{"entrypoint": "x", "metadata": {"a": 1}}"#, "metadata.a"),
            (r#"{"entrypoint": "x", "entrypoint_num_cpus": "two"}"#, "entrypoint_num_cpus"),
            (r#"{"entrypoint": "x", "entrypoint_num_gpus": -1}"#, "entrypoint_num_gpus"),
            (r#"{"entrypoint": "x", "runtime_env": {"conda": "env"}}"#, "conda"),
            (r#"{"entrypoint": "x", "runtime_env": {"working_dir": "./here"}}"#, "PUT /api/packages"),
            (r#"{"entrypoint": "x", "submission_id": "../etc"}"#, "submission_id"),
            (r#"{"entrypoint": "x", "entrypoint_resources": {"CPU": 1}}"#, "CPU"),
            ("not json", "not valid JSON"),
        ] {
            let error = SubmitBody::parse(bad.as_bytes()).unwrap_err();
            assert!(error.contains(field), "{bad}: {error}");
        }
    }
}
