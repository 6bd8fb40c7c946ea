//! Benchmark (ignored by default; `bash benches/dashboard.sh` runs it in
//! release): a head with 100,000 finished tasks, 10,000 dead actors and 10,000
//! finished jobs of history answers every dashboard page and state API call,
//! and what that history costs the head's memory. It prints p50/p99 per route
//! and the head's RSS before and after the fill; the figures go in BENCHMARKS.md.
//! No timing is asserted: only that every request succeeds and the history is
//! whole (and bounded).

use std::sync::Arc;
use std::time::{Duration, Instant};

use manta_integration::{TestCluster, phase};
use manta_proto::client::GcsClient;
use manta_proto::frame::PeerRole;
use manta_proto::job::{FinishJobRequest, RegisterJobRequest};
use manta_proto::message::Event;
use manta_proto::net::{NetConfig, NoService};
use manta_proto::task::{
    ActorInfo, ListStateRequest, RegisterActorRequest, StateTable, TaskEvent, TaskEventsBatch, TaskState,
    UnregisterActorRequest, WorkerAddress,
};
use manta_proto::{ActorId, JobId, NodeId, TaskId, WorkerId};

const TASKS: usize = 100_000;
const ACTORS: usize = 10_000;
const JOBS: usize = 10_000;
const REQUESTS: usize = 40;

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_default();
    kib / 1024.0
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

async fn fill(gcs: &GcsClient) -> JobId {
    phase("10,000 finished jobs");
    let mut pending = tokio::task::JoinSet::new();
    for index in 0..JOBS {
        let gcs = gcs.clone();
        pending.spawn(async move {
            let request = RegisterJobRequest {
                namespace: format!("bench-{}", index % 7),
                driver_pid: 1000 + index as u32,
                reattach: None,
                submission_id: None,
            };
            let job = gcs.call(request).await.expect("register job").job_id;
            gcs.call(FinishJobRequest { job_id: job }).await.expect("finish job");
        });
        if pending.len() >= 200 {
            pending.join_next().await;
        }
    }
    while pending.join_next().await.is_some() {}
    let holder = RegisterJobRequest { namespace: "bench".into(), driver_pid: 1, reattach: None, submission_id: None };
    let job_id = gcs.call(holder).await.expect("the actors' job").job_id;

    phase("10,000 actors, registered then killed (dead history)");
    let mut pending = tokio::task::JoinSet::new();
    for index in 0..ACTORS {
        let gcs = gcs.clone();
        pending.spawn(async move {
            let info = ActorInfo {
                actor_id: ActorId::random(),
                class: format!("bench::Class{}#key", index % 20),
                language: Default::default(),
                name: None,
                namespace: "bench".into(),
                job_id,
                detached: false,
                // A node the GCS has no link to: the kill ends no process.
                worker: WorkerAddress {
                    worker_id: WorkerId::random(),
                    address: "127.0.0.1:9".into(),
                    node_id: NodeId::random(),
                },
                node_address: "127.0.0.1:9".into(),
                max_task_retries: 0,
            };
            let actor_id = info.actor_id;
            gcs.call(RegisterActorRequest { info, restart: None }).await.expect("register actor");
            gcs.call(UnregisterActorRequest { actor_id }).await.expect("kill actor");
        });
        if pending.len() >= 200 {
            pending.join_next().await;
        }
    }
    while pending.join_next().await.is_some() {}

    phase("100,000 finished tasks (3 events each), as owners report them");
    let node = NodeId::random();
    let names = ["increment", "fan_out", "train_step", "load_shard", "Counter.add"];
    let mut events = Vec::new();
    for index in 0..TASKS {
        let task_id = TaskId::random();
        let time_ms = now_ms();
        let worker = Some(WorkerId::random());
        let failed = index % 100 == 0;
        for state in [
            TaskState::PendingNodeAssignment,
            TaskState::SubmittedToWorker,
            if failed { TaskState::Failed } else { TaskState::Finished },
        ] {
            events.push(TaskEvent {
                task_id,
                job_id,
                name: names[index % names.len()].to_string(),
                state,
                node_id: Some(node),
                worker_id: worker,
                actor_id: None,
                error: (state == TaskState::Failed).then(|| format!("ValueError: bad input {index}")),
                lease_outcome: (state == TaskState::SubmittedToWorker).then(|| "granted".to_string()),
                time_ms,
                earlier: Vec::new(),
            });
        }
        if events.len() >= 3000 {
            let batch = TaskEventsBatch { events: std::mem::take(&mut events), dropped: 0 };
            gcs.peer().send_event(Event::TaskEvents(batch)).expect("send task events");
        }
    }
    if !events.is_empty() {
        gcs.peer().send_event(Event::TaskEvents(TaskEventsBatch { events, dropped: 0 })).expect("send task events");
    }
    job_id
}

fn percentile(sorted: &[Duration], fraction: f64) -> f64 {
    let index = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64() * 1000.0
}

#[test]
#[ignore = "a benchmark: bash benches/dashboard.sh"]
fn dashboard_with_a_full_history() {
    let cluster = TestCluster::start(0);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let config = Arc::new(NetConfig::new(cluster.token(), PeerRole::Worker, "dashboard bench"));
        let peer = manta_proto::net::connect(&cluster.address, config, Arc::new(NoService), None, Duration::from_secs(10))
            .await
            .expect("a link to the GCS");
        let gcs = GcsClient::new(peer);
        let rss_before = rss_mib(cluster.head.pid);
        let started = Instant::now();
        let job_id = fill(&gcs).await;
        let count = |table| {
            let gcs = gcs.clone();
            async move { gcs.call(ListStateRequest::newest(table, 0)).await.expect("list").total }
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while count(StateTable::Tasks).await < TASKS {
            assert!(Instant::now() < deadline, "the task history never reached {TASKS}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let filled = started.elapsed();
        assert_eq!(count(StateTable::Actors).await, ACTORS);
        assert_eq!(count(StateTable::Jobs).await, JOBS + 1);
        let rss_after = rss_mib(cluster.head.pid);

        phase("every page and API call, timed");
        let base = cluster.dashboard_url();
        let token = cluster.token();
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let any_task = gcs.call(ListStateRequest::newest(StateTable::Tasks, 1)).await.unwrap();
        let task_id = match any_task.rows {
            manta_proto::task::StateRows::Tasks(tasks) => tasks[0].task_id.to_string(),
            _ => unreachable!(),
        };
        let any_actor = gcs.call(ListStateRequest::newest(StateTable::Actors, 1)).await.unwrap();
        let actor_id = match any_actor.rows {
            manta_proto::task::StateRows::Actors(actors) => actors[0].info.actor_id.to_string(),
            _ => unreachable!(),
        };
        let routes = [
            "/".to_string(),
            "/jobs".into(),
            "/jobs?page=100".into(),
            format!("/jobs/{job_id}"),
            "/cluster".into(),
            "/actors".into(),
            "/actors?page=150".into(),
            format!("/actors/{actor_id}"),
            "/tasks".into(),
            "/tasks?state=FAILED".into(),
            "/tasks?filter=name%3Dtrain_step&page=300".into(),
            format!("/tasks/{task_id}"),
            "/placement-groups".into(),
            "/charts".into(),
            "/logs".into(),
            "/api/v0/tasks?limit=100".into(),
            "/api/v0/tasks?limit=10000&detail=true".into(),
            "/api/v0/tasks?filter_keys=state&filter_predicates=%3D&filter_values=FAILED".into(),
            "/api/v0/actors?limit=100".into(),
            "/api/v0/jobs?limit=100".into(),
            "/api/v0/nodes".into(),
            "/api/jobs/".into(),
        ];
        println!("\n| route | p50 ms | p99 ms | head RSS after, MiB |\n|---|---|---|---|");
        for route in &routes {
            let mut times = Vec::with_capacity(REQUESTS);
            for _ in 0..REQUESTS {
                let started = Instant::now();
                let response =
                    http.get(format!("{base}{route}")).bearer_auth(&token).send().await.expect("a response");
                assert!(response.status().is_success(), "{route}: {}", response.status());
                response.bytes().await.expect("a body");
                times.push(started.elapsed());
            }
            times.sort();
            let (p50, p99) = (percentile(&times, 0.5), percentile(&times, 0.99));
            println!("| `{route}` | {p50:.1} | {p99:.1} | {:.0} |", rss_mib(cluster.head.pid));
        }
        let rss_end = rss_mib(cluster.head.pid);
        println!(
            "\nhistory filled in {:.1} s; head RSS {rss_before:.0} MiB before, {rss_after:.0} MiB after the fill ({:.0} MiB for the history), {rss_end:.0} MiB after the requests",
            filled.as_secs_f64(),
            rss_after - rss_before
        );
        let bounded = gcs.call(ListStateRequest::newest(StateTable::Tasks, 0)).await.unwrap();
        assert_eq!(bounded.total, TASKS, "the history keeps exactly its bound");
    });
}
