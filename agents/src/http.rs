//! The head's HTTP server (`--dashboard-host`, `--dashboard-port`, default
//! 127.0.0.1:8265): the Jobs REST API on Ray's paths, methods, JSON fields and
//! statuses, so Ray's own `JobSubmissionClient` works against manta unchanged,
//! and the package upload routes it uses; the state API (`/api/v0/...`); and
//! the dashboard's pages. It runs on its own threads (an actix system), so a
//! slow client never delays the GCS, and reaches the GCS over a link of its
//! own, as a client that proved the cluster token.
//!
//! Every route but `GET /api/version`, the login form and the static assets
//! needs the cluster token (`Authorization: Bearer <token>`) or a dashboard
//! session cookie ([`auth`]): an API call without either is answered 401, a
//! page redirects to the login form, and a wrong token gets 403 (compared in
//! constant time). JSON bodies are capped at [`MAX_JSON_BYTES`], package
//! uploads at [`MAX_UPLOAD_BYTES`].

pub mod auth;
mod dashboard;
mod jobs;
mod logs;
mod packages;
pub mod state;

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::{App, HttpResponse, HttpServer, web};
use manta_proto::client::GcsClient;
use manta_proto::gcs::Channel;
use manta_proto::message::{Event, Reply, Request};
use manta_proto::net::{BoxFuture, PeerHandle, Service};
use manta_proto::submission::{DriverLogEvent, JobSubmission};
use manta_proto::{NodeId, WireError};
use tokio::sync::mpsc;
use tracing::{info, warn};

/// Ray's default dashboard port.
pub const DEFAULT_PORT: u16 = 8265;
/// The largest JSON request body.
pub const MAX_JSON_BYTES: usize = 1 << 20;
/// The largest package upload (a packed `working_dir`; Ray's cap is 500 MiB).
pub const MAX_UPLOAD_BYTES: usize = 600 << 20;
/// The Ray version whose Jobs API this server speaks (Ray's client checks it).
pub const RAY_API_VERSION: &str = "2.60.0";
/// Messages a slow log follower may fall behind by before it is cut off.
const FOLLOWER_QUEUE: usize = 1024;

/// Where and how the server runs.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Address to listen on (loopback unless told).
    pub host: String,
    /// Port (0 picks a free one).
    pub port: u16,
    /// The cluster token clients must present.
    pub token: String,
    /// The session's name (shown by `/api/version`).
    pub session_name: String,
    /// The cluster's metrics over the last hour, filled by the head's
    /// [`crate::metrics_history::MetricsSampler`].
    pub history: Arc<Mutex<crate::metrics_history::MetricsHistory>>,
    /// A Grafana to link from the metrics page (`MANTA_GRAFANA_HOST`).
    pub grafana_url: Option<String>,
}

/// What a log follower receives.
#[derive(Clone, Debug)]
pub enum Followed {
    /// Output of the job's entrypoint.
    Log(DriverLogEvent),
    /// The job's record changed.
    Changed(Box<JobSubmission>),
}

/// Followers of jobs' output and changes, fed by the GCS link.
#[derive(Default)]
pub struct Hub {
    followers: Mutex<HashMap<String, Vec<mpsc::Sender<Followed>>>>,
}

impl Hub {
    /// Starts following a job.
    pub fn follow(&self, submission_id: &str) -> mpsc::Receiver<Followed> {
        let (sender, receiver) = mpsc::channel(FOLLOWER_QUEUE);
        self.followers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(submission_id.to_string())
            .or_default()
            .push(sender);
        receiver
    }

    fn deliver(&self, submission_id: &str, item: Followed) {
        let mut followers = self.followers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(list) = followers.get_mut(submission_id) else { return };
        // A follower that went away or fell too far behind is dropped (it re-reads the file).
        list.retain(|sender| sender.try_send(item.clone()).is_ok());
        if list.is_empty() {
            followers.remove(submission_id);
        }
    }
}

/// The server's side of its GCS link: subscribes to submitted jobs' changes
/// and output on every (re)connect and hands them to the [`Hub`].
struct HubService(Arc<Hub>);

impl Service for HubService {
    fn request(&self, _peer: &PeerHandle, request: Request) -> BoxFuture<Result<Reply, WireError>> {
        let name = request.name();
        Box::pin(async move {
            Err(WireError::new(manta_proto::ErrorCode::Unimplemented, format!("the HTTP server does not serve {name}")))
        })
    }

    fn event(&self, _peer: &PeerHandle, event: Event) {
        match event {
            Event::DriverLog(chunk) => self.0.deliver(&chunk.submission_id.clone(), Followed::Log(chunk)),
            Event::SubmissionChanged(changed) => {
                let id = changed.submission.submission_id.clone();
                self.0.deliver(&id, Followed::Changed(changed.submission));
            }
            _ => {}
        }
    }

    fn connected(&self, peer: &PeerHandle) {
        let gcs = GcsClient::new(peer.clone());
        tokio::spawn(async move {
            if let Err(error) = gcs.subscribe(vec![Channel::Submissions]).await {
                warn!(%error, "the HTTP server could not subscribe to job changes");
            }
        });
    }
}

/// Shared by every request handler.
pub struct AppState {
    pub(crate) gcs: GcsClient,
    pub(crate) hub: Arc<Hub>,
    pub(crate) token_hash: blake3::Hash,
    pub(crate) session_name: String,
    pub(crate) sessions: auth::Sessions,
    pub(crate) history: Arc<Mutex<crate::metrics_history::MetricsHistory>>,
    pub(crate) grafana_url: Option<String>,
    /// Links to nodes (reading job logs), made on first use.
    pub(crate) nodes: tokio::sync::Mutex<HashMap<NodeId, PeerHandle>>,
    pub(crate) net: Arc<manta_proto::net::NetConfig>,
}

/// A running server.
#[derive(Debug)]
pub struct HttpServerHandle {
    /// `host:port` it listens on.
    pub address: String,
    handle: actix_web::dev::ServerHandle,
    gcs: GcsClient,
}

impl HttpServerHandle {
    /// The server's own GCS link (a client's, which may read the state tables).
    pub fn gcs(&self) -> GcsClient {
        self.gcs.clone()
    }

    /// Stops accepting and ends the server.
    pub async fn stop(&self) {
        self.handle.stop(true).await;
    }
}

/// Connects to the GCS at `gcs_address` and serves on `config.host:config.port`.
pub async fn start(
    config: HttpConfig,
    gcs_address: &str,
    tls: Option<Arc<manta_proto::net::tls::TlsConfig>>,
) -> Result<HttpServerHandle, String> {
    let listener = TcpListener::bind((config.host.as_str(), config.port)).map_err(|error| {
        format!(
            "cannot listen on {}:{} for the dashboard and Jobs API: {error}; pick another --dashboard-port",
            config.host, config.port
        )
    })?;
    let address = listener.local_addr().map_err(|error| error.to_string())?.to_string();
    let hub = Arc::new(Hub::default());
    let mut net =
        manta_proto::net::NetConfig::new(config.token.clone(), manta_proto::frame::PeerRole::Cli, "http server");
    net.tls = tls;
    let net = Arc::new(net);
    let peer = manta_proto::net::connect(
        gcs_address,
        net.clone(),
        Arc::new(HubService(hub.clone())),
        None,
        Duration::from_secs(10),
    )
    .await
    .map_err(|error| format!("the HTTP server cannot reach the GCS at {gcs_address}: {error}"))?;
    let mut node_net = (*net).clone();
    node_net.reconnect = false;
    let gcs = GcsClient::new(peer);
    let state = web::Data::new(AppState {
        gcs: gcs.clone(),
        hub,
        token_hash: blake3::hash(config.token.as_bytes()),
        session_name: config.session_name.clone(),
        sessions: auth::Sessions::default(),
        history: config.history.clone(),
        grafana_url: config.grafana_url.clone(),
        nodes: Default::default(),
        net: Arc::new(node_net),
    });
    let (handle_sender, handle_receiver) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("manta-http".into())
        .spawn(move || {
            let system = actix_web::rt::System::new();
            let served = system.block_on(async move {
                let server = HttpServer::new(move || app(state.clone()))
                    .workers(2)
                    .disable_signals()
                    .shutdown_timeout(2)
                    .listen(listener)?
                    .run();
                let _ = handle_sender.send(server.handle());
                server.await
            });
            if let Err(error) = served {
                warn!(%error, "the HTTP server stopped");
            }
        })
        .map_err(|error| error.to_string())?;
    let handle = handle_receiver.recv().map_err(|_| "the HTTP server did not start".to_string())?;
    info!(%address, "Jobs API and dashboard at http://{address}");
    Ok(HttpServerHandle { address, handle, gcs })
}

fn app(
    state: web::Data<AppState>,
) -> App<
    impl actix_web::dev::ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let json = web::JsonConfig::default().limit(MAX_JSON_BYTES).error_handler(|error, _| {
        let message = format!("the request body is not valid JSON: {error}");
        actix_web::error::InternalError::from_response(error, HttpResponse::BadRequest().body(message)).into()
    });
    App::new()
        .app_data(state)
        .app_data(json)
        // Bodies are JSON-sized unless a route says otherwise (package uploads).
        .app_data(web::PayloadConfig::new(MAX_JSON_BYTES))
        .route("/api/version", web::get().to(version))
        .configure(auth::routes)
        .configure(dashboard::assets)
        .service(
            web::scope("")
                .wrap(actix_web::middleware::from_fn(auth::authorize))
                .service(
                    web::scope("/api")
                        .configure(jobs::routes)
                        .configure(logs::routes)
                        .configure(packages::routes)
                        .configure(state::routes),
                )
                .configure(dashboard::routes),
        )
}

async fn version(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({
        "version": "4",
        "ray_version": RAY_API_VERSION,
        "ray_commit": "manta",
        "manta_version": env!("CARGO_PKG_VERSION"),
        "session_name": state.session_name,
    }))
}

/// An error answer with a plain-text body that says what to do.
pub(crate) fn wire_error(error: &WireError) -> HttpResponse {
    use manta_proto::ErrorCode;
    let mut response = match error.code {
        ErrorCode::InvalidArgument => HttpResponse::BadRequest(),
        ErrorCode::NotFound => HttpResponse::NotFound(),
        ErrorCode::PermissionDenied => HttpResponse::Forbidden(),
        ErrorCode::Unavailable | ErrorCode::ConnectionLost | ErrorCode::DeadlineExceeded => {
            HttpResponse::ServiceUnavailable()
        }
        _ => HttpResponse::InternalServerError(),
    };
    response.body(error.message.clone())
}

/// A failed call to the GCS as an HTTP answer.
pub(crate) fn call_error(error: manta_proto::net::CallError) -> HttpResponse {
    match error {
        manta_proto::net::CallError::Remote(error) => wire_error(&error),
        other => HttpResponse::ServiceUnavailable().body(format!("the GCS did not answer: {other}; retry in a moment")),
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use manta_proto::submission::{JobSubmission, SubmissionStatus};

    /// A running job for unit tests.
    pub fn job() -> JobSubmission {
        JobSubmission { status: SubmissionStatus::Running, ..JobSubmission::pending("s", "true", 0) }
    }
}
