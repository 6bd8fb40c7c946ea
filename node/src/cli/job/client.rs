//! The Jobs REST API's client: finds the head's HTTP server, presents the
//! token, uploads local folders as packages, and follows a job's log stream.

use std::path::Path;

use futures_util::StreamExt;
use manta_proto::cluster::{ClusterTarget, DASHBOARD_KV, read_dashboard_url};
use manta_proto::frame::PeerRole;
use manta_proto::packing::{self, DEFAULT_MAX_WORKING_DIR_BYTES};
use manta_proto::runtime_env::PACKAGE_SCHEME;
use serde_json::{Map, Value};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::cli::ClusterArgs;

/// A connection to the head's Jobs API.
pub struct JobClient {
    http: reqwest::Client,
    base: String,
    token: String,
}

fn io(error: impl std::fmt::Display) -> String {
    format!("the head's HTTP server: {error}")
}

impl JobClient {
    /// Finds the server and the token the flags name.
    pub async fn connect(server: &ClusterArgs) -> Result<Self, String> {
        let target = ClusterTarget {
            address: server.address.clone().filter(|address| !address.starts_with("http")),
            token: server.token.clone(),
            temp_dir: server.temp_dir.clone(),
            tls: None,
        };
        let token = match &server.token {
            Some(token) => token.clone(),
            None => manta_proto::cluster::read_token(&server.temp_dir).map_err(|error| error.to_string())?.ok_or_else(
                || {
                    format!(
                        "no cluster token: pass --token or set MANTA_TOKEN (no token file in {})",
                        server.temp_dir.display()
                    )
                },
            )?,
        };
        let base = match &server.address {
            Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                url.trim_end_matches('/').to_string()
            }
            Some(_) => {
                let gcs = target
                    .connect_gcs("manta job", PeerRole::Cli, std::sync::Arc::new(manta_proto::net::NoService))
                    .await?;
                let (namespace, key) = DASHBOARD_KV;
                let url = gcs.kv_get(namespace, key).await.map_err(|error| error.to_string())?;
                let url = url.ok_or("the cluster has no HTTP server (its head runs with --include-dashboard false)")?;
                String::from_utf8_lossy(&url).into_owned()
            }
            None => read_dashboard_url(&server.temp_dir).ok_or_else(|| {
                format!(
                    "no head found: pass --address http://<head>:8265 (or set MANTA_ADDRESS); none is recorded in {}",
                    server.temp_dir.display()
                )
            })?,
        };
        let http = reqwest::Client::builder().no_proxy().build().map_err(io)?;
        Ok(Self { http, base, token })
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, String> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|error| format!("cannot reach {}: {error}", self.base))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        Err(format!("{status}: {body}"))
    }

    async fn json(&self, request: reqwest::RequestBuilder) -> Result<Value, String> {
        self.send(request).await?.json().await.map_err(io)
    }

    /// Submits; returns the submission id.
    pub async fn submit(&self, body: Value) -> Result<String, String> {
        let reply = self.json(self.http.post(format!("{}/api/jobs/", self.base)).json(&body)).await?;
        reply["submission_id"].as_str().map(str::to_string).ok_or_else(|| io("no submission_id in the answer"))
    }

    /// One job's details.
    pub async fn get(&self, id: &str) -> Result<Value, String> {
        self.json(self.http.get(format!("{}/api/jobs/{id}", self.base))).await
    }

    /// Every job's details.
    pub async fn list(&self) -> Result<Value, String> {
        self.json(self.http.get(format!("{}/api/jobs/", self.base))).await
    }

    /// The whole driver log.
    pub async fn logs(&self, id: &str) -> Result<String, String> {
        let reply = self.json(self.http.get(format!("{}/api/jobs/{id}/logs", self.base))).await?;
        Ok(reply["logs"].as_str().unwrap_or_default().to_string())
    }

    /// Asks for a stop: true when the job was live.
    pub async fn stop(&self, id: &str) -> Result<bool, String> {
        let reply = self.json(self.http.post(format!("{}/api/jobs/{id}/stop", self.base))).await?;
        Ok(reply["stopped"].as_bool().unwrap_or(false))
    }

    /// Forgets a finished job.
    pub async fn delete(&self, id: &str) -> Result<(), String> {
        self.send(self.http.delete(format!("{}/api/jobs/{id}", self.base))).await.map(|_| ())
    }

    /// Waits (on the log stream, which ends with the job) for a terminal status.
    pub async fn wait_terminal(&self, id: &str) -> Result<String, String> {
        self.stream(id, |_| {}).await?;
        Ok(self.get(id).await?["status"].as_str().unwrap_or("?").to_string())
    }

    /// Prints the job's output as it comes, until the job ends.
    pub async fn follow(&self, id: &str) -> Result<(), String> {
        use std::io::Write;
        self.stream(id, |text| {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        })
        .await
    }

    async fn stream(&self, id: &str, mut each: impl FnMut(&str)) -> Result<(), String> {
        let url = format!("{}/api/jobs/{id}/logs/tail", self.base.replacen("http", "ws", 1));
        let mut request = url.into_client_request().map_err(io)?;
        let header = format!("Bearer {}", self.token).parse().map_err(io)?;
        request.headers_mut().insert("Authorization", header);
        let (mut socket, _) = tokio_tungstenite::connect_async(request).await.map_err(|error| match error {
            tokio_tungstenite::tungstenite::Error::Http(response) => {
                format!("{}: cannot follow job {id}", response.status())
            }
            other => io(other),
        })?;
        while let Some(message) = socket.next().await {
            match message.map_err(io)? {
                Message::Text(text) => each(text.as_str()),
                Message::Close(_) => break,
                _ => {}
            }
        }
        Ok(())
    }

    /// Packs and uploads a local `working_dir` and `py_modules` folders, and reads
    /// a `pip` requirements file, so the env names only what the cluster has.
    pub async fn upload_local_paths(&self, env: &mut Map<String, Value>) -> Result<(), String> {
        let excludes: Vec<String> = env
            .get("excludes")
            .and_then(Value::as_array)
            .map(|list| list.iter().filter_map(Value::as_str).map(str::to_string).collect())
            .unwrap_or_default();
        if let Some(Value::String(dir)) = env.get("working_dir").cloned()
            && !dir.starts_with(PACKAGE_SCHEME)
        {
            let uri = self
                .upload_path(Path::new(&dir), &excludes, false)
                .await
                .map_err(|error| format!("working_dir: {error}"))?;
            env.insert("working_dir".into(), Value::String(uri));
        }
        if let Some(Value::Array(modules)) = env.get("py_modules").cloned() {
            let mut uris = Vec::new();
            for module in modules {
                let Value::String(module) = module else { return Err("py_modules must be a list of strings".into()) };
                uris.push(Value::String(if module.starts_with(PACKAGE_SCHEME) {
                    module
                } else {
                    self.upload_path(Path::new(&module), &excludes, true)
                        .await
                        .map_err(|error| format!("py_modules: {error}"))?
                }));
            }
            env.insert("py_modules".into(), Value::Array(uris));
        }
        for field in ["pip", "uv"] {
            if let Some(Value::String(file)) = env.get(field).cloned() {
                let lines = manta_proto::runtime_env::user::read_requirements(Path::new(&file))?;
                env.insert(field.into(), Value::Array(lines.into_iter().map(Value::String).collect()));
            }
        }
        Ok(())
    }

    async fn upload_path(&self, path: &Path, excludes: &[String], keep_top: bool) -> Result<String, String> {
        let metadata = std::fs::metadata(path).map_err(|error| format!("{}: {error}", path.display()))?;
        let (owned, excludes) = (path.to_path_buf(), excludes.to_vec());
        let packed = tokio::task::spawn_blocking(move || {
            if metadata.is_dir() {
                packing::pack_dir(&owned, &excludes, DEFAULT_MAX_WORKING_DIR_BYTES, keep_top)
            } else {
                packing::pack_zip_file(&owned, DEFAULT_MAX_WORKING_DIR_BYTES)
            }
        })
        .await
        .map_err(io)??;
        let url = format!("{}/api/packages/gcs/{}", self.base, packed.name);
        let known = self.http.get(&url).bearer_auth(&self.token).send().await.map_err(io)?;
        if known.status() == reqwest::StatusCode::NOT_FOUND {
            self.send(self.http.put(&url).body(packed.bytes)).await?;
        } else if !known.status().is_success() {
            return Err(format!("{}: {}", known.status(), known.text().await.unwrap_or_default()));
        }
        Ok(format!("{PACKAGE_SCHEME}{}", packed.name))
    }
}
