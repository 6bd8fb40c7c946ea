//! The metrics agent: one per node. It owns the process's Prometheus recorder
//! (everything the node's components record through the `metrics` facade),
//! samples the machine (CPU, memory) every 2.5 s, keeps the user metrics its
//! workers and drivers push, and serves all of it as Prometheus text on
//! `/metrics` (read-only, no token: Prometheus scrapes it as is).
//!
//! Pushed series are merged across workers like Ray's "recommended"
//! cardinality: one series per metric, tags, `Component` and `JobId`. Counters
//! and histograms add up (a worker that stops reporting is folded into a
//! retired total, so counters never go down); a gauge shows its latest value.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::TcpListener;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use manta_proto::metrics::{MetricKind, MetricSample, MetricsReportEvent};
use manta_proto::{NodeId, WorkerId};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::{info, warn};

/// Histogram bucket bounds (seconds) of the components' latency histograms.
pub const LATENCY_BUCKETS: [f64; 12] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0];
/// How often the machine is sampled.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(2500);
/// A worker silent this long has its series retired.
const STALE_AFTER: Duration = Duration::from_secs(30);

/// The process's Prometheus recorder, once a node process installed it.
static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The recorder, when this process installed one (a cluster embedded in a
/// user's program does not).
fn recorder() -> Option<&'static PrometheusHandle> {
    HANDLE.get()
}

/// Installs the process-wide Prometheus recorder (once); a node process does so
/// at start, before any component records.
pub fn install_recorder() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder =
            PrometheusBuilder::new().set_buckets(&LATENCY_BUCKETS).expect("fixed, non-empty buckets").build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            warn!("a metrics recorder was already installed in this process; node metrics go to it");
        }
        handle
    })
}

type SeriesKey = (String, BTreeMap<String, String>);

#[derive(Clone, Debug)]
struct Series {
    description: String,
    kind: MetricKind,
    value: f64,
    buckets: Vec<u64>,
}

/// The pushed metrics of the node's workers.
#[derive(Default)]
pub struct Pushed {
    live: HashMap<WorkerId, (Instant, MetricsReportEvent)>,
    retired: BTreeMap<SeriesKey, Series>,
}

fn labels_of(report: &MetricsReportEvent, sample: &MetricSample) -> BTreeMap<String, String> {
    let mut labels = sample.tags.clone();
    labels.insert("Component".into(), report.component.clone());
    labels.insert("JobId".into(), report.job_id.to_string());
    labels
}

fn merge(into: &mut BTreeMap<SeriesKey, Series>, key: SeriesKey, sample: &MetricSample) {
    let series = into.entry(key).or_insert_with(|| Series {
        description: sample.description.clone(),
        kind: sample.kind.clone(),
        value: 0.0,
        buckets: vec![0; sample.buckets.len()],
    });
    match sample.kind {
        MetricKind::Gauge => series.value = sample.value,
        MetricKind::Counter | MetricKind::Histogram { .. } => {
            series.value += sample.value;
            if series.buckets.len() == sample.buckets.len() {
                for (total, count) in series.buckets.iter_mut().zip(&sample.buckets) {
                    *total += count;
                }
            }
        }
    }
}

impl Pushed {
    /// Keeps a worker's latest report.
    pub fn report(&mut self, report: MetricsReportEvent, now: Instant) {
        self.live.insert(report.worker_id, (now, report));
    }

    /// Folds workers silent for too long into the retired totals.
    pub fn retire_stale(&mut self, now: Instant) {
        let stale: Vec<WorkerId> = self
            .live
            .iter()
            .filter(|(_, (at, _))| now.duration_since(*at) >= STALE_AFTER)
            .map(|(worker_id, _)| *worker_id)
            .collect();
        for worker_id in stale {
            let Some((_, report)) = self.live.remove(&worker_id) else { continue };
            for sample in report.samples.iter().filter(|sample| sample.kind != MetricKind::Gauge) {
                merge(&mut self.retired, (sample.name.clone(), labels_of(&report, sample)), sample);
            }
        }
    }

    /// Every series, merged across workers (latest reports last, so gauges keep the newest value).
    fn merged(&self) -> BTreeMap<SeriesKey, Series> {
        let mut series = self.retired.clone();
        let mut reports: Vec<&(Instant, MetricsReportEvent)> = self.live.values().collect();
        reports.sort_by_key(|(at, _)| *at);
        for (_, report) in reports {
            for sample in &report.samples {
                merge(&mut series, (sample.name.clone(), labels_of(report, sample)), sample);
            }
        }
        series
    }

    /// Prometheus text for the pushed series, each labelled with `node_id`.
    pub fn render(&self, node_id: &str) -> String {
        let mut out = String::new();
        let mut last_name = String::new();
        for ((name, labels), series) in self.merged() {
            let mut labels = labels;
            labels.insert("NodeId".into(), node_id.to_string());
            let (full, kind) = match series.kind {
                MetricKind::Counter => (format!("manta_{name}_total"), "counter"),
                MetricKind::Gauge => (format!("manta_{name}"), "gauge"),
                MetricKind::Histogram { .. } => (format!("manta_{name}"), "histogram"),
            };
            if full != last_name {
                let _ = writeln!(out, "# HELP {full} {}", series.description.replace('\n', " "));
                let _ = writeln!(out, "# TYPE {full} {kind}");
                last_name = full.clone();
            }
            match &series.kind {
                MetricKind::Counter | MetricKind::Gauge => {
                    let _ = writeln!(out, "{full}{} {}", label_text(&labels, None), series.value);
                }
                MetricKind::Histogram { boundaries } => {
                    let mut cumulative = 0;
                    for (index, count) in series.buckets.iter().enumerate() {
                        cumulative += count;
                        let le = boundaries.get(index).map(f64::to_string).unwrap_or_else(|| "+Inf".into());
                        let _ = writeln!(out, "{full}_bucket{} {cumulative}", label_text(&labels, Some(&le)));
                    }
                    let _ = writeln!(out, "{full}_sum{} {}", label_text(&labels, None), series.value);
                    let _ = writeln!(out, "{full}_count{} {cumulative}", label_text(&labels, None));
                }
            }
        }
        out
    }
}

fn label_text(labels: &BTreeMap<String, String>, le: Option<&str>) -> String {
    let escape = |value: &str| value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
    let mut parts: Vec<String> = labels.iter().map(|(key, value)| format!("{key}=\"{}\"", escape(value))).collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    format!("{{{}}}", parts.join(","))
}

/// What the HTTP endpoint serves: the recorder's text, then the pushed series.
pub struct Exposition {
    node_id: String,
    pushed: Arc<Mutex<Pushed>>,
}

impl Exposition {
    /// Renders the whole `/metrics` page.
    pub fn render(&self) -> String {
        let mut text = recorder().map(PrometheusHandle::render).unwrap_or_default();
        text.push_str(&self.pushed.lock().expect("pushed lock").render(&self.node_id));
        text
    }
}

/// Connections `/metrics` serves at once (it needs no token, so it is bounded).
const METRICS_MAX_CONNECTIONS: usize = 1024;
/// A client must send its request within this; idle sockets are closed.
const METRICS_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// An idle keep-alive connection is closed after this (Prometheus scrapes every few seconds).
const METRICS_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Binds the metrics endpoint (port 0: a free one) and serves it from its own
/// thread for the life of the process; returns where it listens.
pub fn serve(ip: &str, port: u16, node_id: NodeId, pushed: Arc<Mutex<Pushed>>) -> std::io::Result<String> {
    let listener = TcpListener::bind((ip, port))?;
    let address = listener.local_addr()?.to_string();
    let exposition = Arc::new(Exposition { node_id: node_id.to_string(), pushed });
    std::thread::Builder::new().name("manta-metrics-http".into()).spawn(move || {
        let system = actix_web::rt::System::new();
        let served = system.block_on(async move {
            use actix_web::{App, HttpResponse, HttpServer, web};
            let server = HttpServer::new(move || {
                let exposition = exposition.clone();
                App::new().route(
                    "/metrics",
                    web::get().to(move || {
                        let text = exposition.render();
                        async move { HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(text) }
                    }),
                )
            })
            .workers(1)
            .max_connections(METRICS_MAX_CONNECTIONS)
            .client_request_timeout(METRICS_REQUEST_TIMEOUT)
            .client_disconnect_timeout(METRICS_REQUEST_TIMEOUT)
            .keep_alive(METRICS_KEEP_ALIVE)
            .disable_signals()
            .listen(listener)?;
            server.run().await
        });
        if let Err(error) = served {
            warn!(%error, "the metrics endpoint stopped");
        }
    })?;
    info!(%address, "metrics endpoint ready at http://{address}/metrics");
    Ok(address)
}

/// The agent actor: takes pushed reports, samples the machine, keeps the recorder tidy.
#[derive(Debug, Default)]
pub struct MetricsAgent;

/// Messages to the [`MetricsAgent`].
#[derive(Debug)]
pub enum MetricsAgentMsg {
    /// A worker's or driver's metrics.
    Report(MetricsReportEvent),
    /// Time to sample the machine and retire silent workers.
    Tick,
}

/// Start-up arguments of the [`MetricsAgent`] (clone them to restart it).
#[derive(Clone)]
pub struct MetricsAgentArgs {
    /// The pushed series, shared with the HTTP endpoint.
    pub pushed: Arc<Mutex<Pushed>>,
}

/// The agent's state.
pub struct MetricsAgentState {
    args: MetricsAgentArgs,
    cpu: Option<(u64, u64)>,
    ticker: tokio::task::JoinHandle<()>,
}

impl Drop for MetricsAgentState {
    fn drop(&mut self) {
        self.ticker.abort();
    }
}

impl Actor for MetricsAgent {
    type Msg = MetricsAgentMsg;
    type State = MetricsAgentState;
    type Arguments = MetricsAgentArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<MetricsAgentMsg>,
        args: MetricsAgentArgs,
    ) -> Result<MetricsAgentState, ActorProcessingErr> {
        let ticker = myself.send_interval(SAMPLE_INTERVAL, || MetricsAgentMsg::Tick);
        let _ = myself.cast(MetricsAgentMsg::Tick);
        Ok(MetricsAgentState { args, cpu: None, ticker })
    }

    async fn handle(
        &self,
        _myself: ActorRef<MetricsAgentMsg>,
        message: MetricsAgentMsg,
        state: &mut MetricsAgentState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            MetricsAgentMsg::Report(report) => {
                state.args.pushed.lock().expect("pushed lock").report(report, Instant::now());
            }
            MetricsAgentMsg::Tick => {
                sample_machine(&mut state.cpu);
                state.args.pushed.lock().expect("pushed lock").retire_stale(Instant::now());
                if let Some(recorder) = recorder() {
                    recorder.run_upkeep();
                }
            }
        }
        Ok(())
    }
}

/// One GPU as `nvidia-smi --query-gpu=index,name,utilization.gpu,memory.used,memory.total
/// --format=csv,noheader,nounits` prints it: (index, name, utilisation %, MiB used, MiB total).
fn parse_gpu_line(line: &str) -> Option<(String, String, f64, f64, f64)> {
    let fields: Vec<&str> = line.split(',').map(str::trim).collect();
    let [index, name, utilization, used, total] = fields.as_slice() else { return None };
    Some((index.to_string(), name.to_string(), utilization.parse().ok()?, used.parse().ok()?, total.parse().ok()?))
}

/// GPU gauges (Ray's `ray_node_gpus_utilization`, `ray_node_gram_*`), where `nvidia-smi` answers.
fn sample_gpus() {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    let query = || {
        std::process::Command::new("nvidia-smi")
            .args(["--query-gpu=index,name,utilization.gpu,memory.used,memory.total", "--format=csv,noheader,nounits"])
            .output()
            .ok()
            .filter(|output| output.status.success())
    };
    if !*PRESENT.get_or_init(|| query().is_some()) {
        return;
    }
    let Some(output) = query() else { return };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Some((index, name, utilization, used, total)) = parse_gpu_line(line) else { continue };
        let labels = [("GpuIndex", index), ("GpuDeviceName", name)];
        metrics::gauge!("manta_node_gpus_utilization", &labels).set(utilization);
        metrics::gauge!("manta_node_gram_used", &labels).set(used * 1024.0 * 1024.0);
        metrics::gauge!("manta_node_gram_available", &labels).set((total - used).max(0.0) * 1024.0 * 1024.0);
    }
}

/// Node CPU, memory and GPU gauges (Ray's `ray_node_*`).
fn sample_machine(last_cpu: &mut Option<(u64, u64)>) {
    sample_gpus();
    use procfs::{Current, CurrentSI};
    if let Ok(stats) = procfs::KernelStats::current() {
        let total = &stats.total;
        let idle = total.idle + total.iowait.unwrap_or(0);
        let busy = total.user
            + total.nice
            + total.system
            + total.irq.unwrap_or(0)
            + total.softirq.unwrap_or(0)
            + total.steal.unwrap_or(0);
        if let Some((last_busy, last_idle)) = *last_cpu {
            let (busy_delta, idle_delta) = (busy.saturating_sub(last_busy), idle.saturating_sub(last_idle));
            if busy_delta + idle_delta > 0 {
                let utilization = 100.0 * busy_delta as f64 / (busy_delta + idle_delta) as f64;
                metrics::gauge!("manta_node_cpu_utilization").set(utilization);
            }
        }
        *last_cpu = Some((busy, idle));
        metrics::gauge!("manta_node_cpu_count").set(stats.cpu_time.len() as f64);
    }
    if let Ok(memory) = procfs::Meminfo::current() {
        let available = memory.mem_available.unwrap_or(memory.mem_free);
        metrics::gauge!("manta_node_mem_total").set(memory.mem_total as f64);
        metrics::gauge!("manta_node_mem_available").set(available as f64);
        metrics::gauge!("manta_node_mem_used").set(memory.mem_total.saturating_sub(available) as f64);
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use manta_proto::JobId;

    use super::*;

    #[test]
    fn idle_connections_do_not_keep_a_scrape_out() {
        let address = serve("127.0.0.1", 0, NodeId::random(), Arc::default()).unwrap();
        let idle: Vec<std::net::TcpStream> =
            (0..300).map(|_| std::net::TcpStream::connect(&address).unwrap()).collect();
        let started = Instant::now();
        let mut scrape = std::net::TcpStream::connect(&address).unwrap();
        scrape.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        scrape.write_all(b"GET /metrics HTTP/1.1\r\nHost: manta\r\nConnection: close\r\n\r\n").unwrap();
        let mut answer = String::new();
        let _ = scrape.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(started.elapsed() < Duration::from_secs(2), "the scrape waited {:?}", started.elapsed());
        drop(idle);
    }

    fn report(worker: WorkerId, counter: f64, gauge: f64) -> MetricsReportEvent {
        let tags: BTreeMap<String, String> = [("route".to_string(), "a\"b".to_string())].into();
        MetricsReportEvent {
            worker_id: worker,
            job_id: JobId::from_counter(1),
            component: "worker".into(),
            samples: vec![
                MetricSample {
                    name: "requests".into(),
                    description: "requests served".into(),
                    kind: MetricKind::Counter,
                    tags: tags.clone(),
                    value: counter,
                    buckets: Vec::new(),
                },
                MetricSample {
                    name: "queue".into(),
                    description: "queue length".into(),
                    kind: MetricKind::Gauge,
                    tags: tags.clone(),
                    value: gauge,
                    buckets: Vec::new(),
                },
                MetricSample {
                    name: "latency".into(),
                    description: "latency".into(),
                    kind: MetricKind::Histogram { boundaries: vec![0.1, 1.0] },
                    tags,
                    value: 0.5,
                    buckets: vec![1, 1, 0],
                },
            ],
        }
    }

    #[test]
    fn nvidia_smi_lines_parse() {
        let parsed = parse_gpu_line("0, NVIDIA H100 80GB HBM3, 37, 1024, 81559").unwrap();
        assert_eq!(parsed, ("0".into(), "NVIDIA H100 80GB HBM3".into(), 37.0, 1024.0, 81559.0));
        assert!(parse_gpu_line("0, A100, [N/A], 1, 2").is_none());
        assert!(parse_gpu_line("garbage").is_none());
    }

    #[test]
    fn counters_add_up_across_workers_and_survive_a_retired_worker() {
        let mut pushed = Pushed::default();
        let start = Instant::now();
        let (one, two) = (WorkerId::random(), WorkerId::random());
        pushed.report(report(one, 3.0, 7.0), start);
        pushed.report(report(two, 4.0, 9.0), start + Duration::from_secs(1));
        let text = pushed.render("n1");
        assert!(text.contains("# TYPE manta_requests_total counter"), "{text}");
        assert!(
            text.contains(r#"manta_requests_total{Component="worker",JobId="00000001",NodeId="n1",route="a\"b"} 7"#),
            "{text}"
        );
        assert!(
            text.contains(r#"manta_queue{Component="worker",JobId="00000001",NodeId="n1",route="a\"b"} 9"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"manta_latency_bucket{Component="worker",JobId="00000001",NodeId="n1",route="a\"b",le="1"} 4"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"manta_latency_count{Component="worker",JobId="00000001",NodeId="n1",route="a\"b"} 4"#),
            "{text}"
        );
        pushed.retire_stale(start + Duration::from_millis(30_500));
        pushed.report(report(two, 5.0, 1.0), start + Duration::from_secs(32));
        let text = pushed.render("n1");
        assert!(text.contains(r#"NodeId="n1",route="a\"b"} 8"#), "the retired worker's 3 stays counted: {text}");
    }

    /// `/metrics` render time with 10,000 series: 5,000 recorded through the
    /// facade and 5,000 pushed by workers (`cargo test --release -p manta-agents
    /// render_10k -- --ignored --nocapture`; figures in BENCHMARKS.md).
    #[test]
    #[ignore = "benchmark"]
    fn render_10k_series() {
        install_recorder();
        for index in 0..5000 {
            metrics::gauge!("bench_series", "index" => index.to_string()).set(index as f64);
        }
        let mut pushed = Pushed::default();
        let samples = (0..5000)
            .map(|index| MetricSample {
                name: "bench_pushed".into(),
                description: "pushed".into(),
                kind: MetricKind::Counter,
                tags: [("index".to_string(), index.to_string())].into(),
                value: f64::from(index),
                buckets: Vec::new(),
            })
            .collect();
        let report = MetricsReportEvent {
            worker_id: WorkerId::random(),
            job_id: JobId::from_counter(1),
            component: "worker".into(),
            samples,
        };
        pushed.report(report, Instant::now());
        let exposition = Exposition { node_id: "bench".into(), pushed: Arc::new(Mutex::new(pushed)) };
        let mut times: Vec<Duration> = (0..21)
            .map(|_| {
                let started = Instant::now();
                let text = exposition.render();
                assert!(text.lines().filter(|line| !line.starts_with('#')).count() >= 10_000);
                started.elapsed()
            })
            .collect();
        times.sort();
        println!("render of 10k series: median {:?}, max {:?}", times[10], times[20]);
    }
}
