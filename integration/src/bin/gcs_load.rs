//! `gcs_load ADDRESS TOKEN_FILE [NODES] [SECONDS] [HEAD_PID]`: simulates `NODES`
//! nodes (default 1,000) against one head for `SECONDS` (default 30), as
//! `benches/gcs_load.sh` runs it. Each simulated node does what a raylet does
//! to the GCS over its own link: registers, subscribes to the cluster view,
//! node changes and jobs, answers the GCS's health checks, and reports its
//! resources every 100 ms, with leases coming and going (CPUs taken and given
//! back) and now and then a queue of work it spills (pending demand). With
//! `HEAD_PID`, it prints the head process's CPU (in cores) and RSS over the run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use manta_proto::frame::PeerRole;
use manta_proto::gcs::{Channel, RegisterNodeRequest, ReportResourcesRequest, ResourceDemand, SubscribeRequest};
use manta_proto::message::{Event, Reply, Request};
use manta_proto::net::{self, BoxFuture, NetConfig, PeerHandle, Service};
use manta_proto::node::HealthCheckReply;
use manta_proto::resources::{Quantity, ResourceSet};
use manta_proto::rpc::Sender;
use manta_proto::{NodeId, WireError};

const REPORT_INTERVAL: Duration = Duration::from_millis(100);
const CPUS_PER_NODE: u64 = 8;

/// A simulated node's side of its GCS link: health checks answered, events counted.
struct SimulatedNode {
    node_id: NodeId,
    events: Arc<AtomicU64>,
}

impl Service for SimulatedNode {
    fn request(&self, _peer: &PeerHandle, request: Request) -> BoxFuture<Result<Reply, WireError>> {
        let node_id = self.node_id;
        Box::pin(async move {
            match request {
                Request::HealthCheck(_) => Ok(Reply::HealthCheck(HealthCheckReply { node_id })),
                other => Err(WireError::invalid(format!("a simulated node does not serve {}", other.name()))),
            }
        })
    }

    fn event(&self, _peer: &PeerHandle, _event: Event) {
        self.events.fetch_add(1, Ordering::Relaxed);
    }
}

fn cpus(count: u64) -> ResourceSet {
    ResourceSet::new().with("CPU", Quantity::from_whole(count))
}

/// Registers one node and reports for it until `until`; returns the reports sent.
async fn run_node(address: String, token: String, index: usize, until: Instant, events: Arc<AtomicU64>) -> u64 {
    let node_id = NodeId::random();
    let mut config = NetConfig::new(token, PeerRole::Node, format!("simulated node {index}"));
    config.remote = Some(Sender::Gcs);
    config.reconnect = false;
    let service = Arc::new(SimulatedNode { node_id, events });
    let Ok(gcs) = net::connect(&address, Arc::new(config), service, None, Duration::from_secs(30)).await else {
        eprintln!("node {index}: could not connect");
        return 0;
    };
    let registration = RegisterNodeRequest {
        node_id,
        address: format!("127.0.0.2:{}", 10_000 + index),
        is_head: false,
        pid: std::process::id(),
        resources_total: cpus(CPUS_PER_NODE),
        resources_available: cpus(CPUS_PER_NODE),
        labels: Default::default(),
        metrics_address: None,
    };
    if let Err(error) = gcs.rpc(registration, Duration::from_secs(30)).await {
        eprintln!("node {index}: registration failed: {error}");
        return 0;
    }
    let channels = vec![Channel::ClusterView, Channel::NodeChanges, Channel::Jobs];
    let _ = gcs.rpc(SubscribeRequest { channels }, Duration::from_secs(30)).await;
    // Reports spread over the interval, as independent nodes' would be.
    tokio::time::sleep(REPORT_INTERVAL.mul_f64((index % 100) as f64 / 100.0)).await;
    let mut ticker = tokio::time::interval(REPORT_INTERVAL);
    let mut sent = 0u64;
    while Instant::now() < until {
        ticker.tick().await;
        // Leases come and go: the busy CPUs cycle, and every tenth report carries a queue.
        let busy = (sent + index as u64) % (CPUS_PER_NODE + 1);
        let pending_demand = if sent.is_multiple_of(10) {
            vec![ResourceDemand { resources: cpus(1), count: (sent % 7) as u32 + 1, infeasible: false }]
        } else {
            Vec::new()
        };
        let report = ReportResourcesRequest {
            node_id,
            resources_total: cpus(CPUS_PER_NODE),
            resources_available: cpus(CPUS_PER_NODE - busy),
            pending_demand,
            idle: busy == 0,
            draining: false,
        };
        if gcs.rpc(report, Duration::from_secs(10)).await.is_ok() {
            sent += 1;
        }
    }
    sent
}

/// CPU seconds used by `pid` so far, and its RSS in bytes.
fn usage(pid: i32) -> Option<(f64, u64)> {
    let process = procfs::process::Process::new(pid).ok()?;
    let stat = process.stat().ok()?;
    let ticks = procfs::ticks_per_second() as f64;
    let rss = stat.rss * procfs::page_size();
    Some(((stat.utime + stat.stime) as f64 / ticks, rss))
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: gcs_load ADDRESS TOKEN_FILE [NODES] [SECONDS] [HEAD_PID]");
        std::process::exit(2);
    }
    let address = args[1].clone();
    let token = std::fs::read_to_string(&args[2]).expect("the token file").trim().to_string();
    let nodes: usize = args.get(3).and_then(|value| value.parse().ok()).unwrap_or(1000);
    let seconds: u64 = args.get(4).and_then(|value| value.parse().ok()).unwrap_or(30);
    let head_pid: Option<i32> = args.get(5).and_then(|value| value.parse().ok());
    let events = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..nodes {
        tasks.spawn(run_node(address.clone(), token.clone(), index, until, events.clone()));
    }
    // The head's usage over the steady part: from 5 s in (all registered) to the end.
    let steady_from = Duration::from_secs(5).min(Duration::from_secs(seconds / 2));
    tokio::time::sleep(steady_from).await;
    let before = head_pid.and_then(usage);
    let steady_start = Instant::now();
    let events_before = events.load(Ordering::Relaxed);
    let mut reports = 0u64;
    while let Some(sent) = tasks.join_next().await {
        reports += sent.unwrap_or(0);
    }
    let steady = steady_start.elapsed().as_secs_f64();
    println!("simulated nodes: {nodes}, run: {seconds} s, reports sent: {reports}");
    println!("reports per second: {:.0}", reports as f64 / started.elapsed().as_secs_f64());
    println!(
        "events received per second (steady): {:.0}",
        (events.load(Ordering::Relaxed) - events_before) as f64 / steady
    );
    if let (Some(pid), Some((cpu_before, _))) = (head_pid, before)
        && let Some((cpu_after, rss)) = usage(pid)
    {
        println!("head CPU (steady, cores): {:.3}", (cpu_after - cpu_before) / steady);
        println!("head RSS at the end: {:.1} MiB", rss as f64 / (1 << 20) as f64);
    }
}
