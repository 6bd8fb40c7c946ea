//! `manta list`: jobs, actors, tasks and nodes of a running cluster.

use std::time::Duration;

use manta_integration::{TestCluster, phase, wait_until};
use serde_json::Value;

fn list(cluster: &TestCluster, args: &[&str]) -> Vec<Value> {
    let mut full = vec!["list"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["--format", "json"]);
    let output = cluster.manta(&full);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice::<Vec<Value>>(&output.stdout).expect("list JSON")
}

#[test]
fn cluster_list_shows_a_running_job() {
    let cluster = TestCluster::start(1);

    phase("a driver keeps a job running with a named actor");
    let (mut holder, _) = manta_integration::hold_named_actor(cluster.temp_dir(), "listed");

    phase("jobs and actors");
    let jobs = list(&cluster, &["jobs", "--filter", "state=RUNNING"]);
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0]["driver_pid"], holder.id());
    let actors = list(&cluster, &["actors", "--filter", "name=listed"]);
    assert_eq!(actors.len(), 1, "{actors:?}");
    assert_eq!(actors[0]["state"], "ALIVE");
    assert_eq!(actors[0]["class_name"], "Tally");
    assert_eq!(actors[0]["job_id"], jobs[0]["job_id"]);

    phase("tasks of another job, with their node and lease outcome");
    let run = cluster.scenario(&["chains"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    wait_until("the chain's tasks are listed FINISHED", Duration::from_secs(10), || {
        list(&cluster, &["tasks", "--filter", "name=increment", "--filter", "state=FINISHED", "--limit", "10000"]).len()
            >= 21
    });
    let tasks = list(&cluster, &["tasks", "--filter", "name=increment", "--limit", "10000", "--detail"]);
    let finished = tasks.iter().find(|task| task["state"] == "FINISHED").unwrap();
    assert!(finished["node_id"].is_string(), "{finished}");
    assert!(finished["lease_outcomes"].as_array().is_some());
    let history: Vec<_> =
        finished["state_history"].as_array().unwrap().iter().map(|entry| entry["state"].clone()).collect();
    assert_eq!(history.first().unwrap(), "PENDING_NODE_ASSIGNMENT");
    assert_eq!(history.last().unwrap(), "FINISHED");

    phase("nodes, and the text form");
    assert_eq!(list(&cluster, &["nodes"]).len(), 2);
    let text = cluster.manta(&["list", "actors"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("CLASS_NAME") && text.contains("listed"), "{text}");

    phase("when the job ends, its actor is listed DEAD with the cause");
    drop(holder.stdin.take());
    assert!(holder.wait().unwrap().success());
    wait_until("the actor is DEAD", Duration::from_secs(10), || {
        list(&cluster, &["actors", "--filter", "name=listed"]).first().is_some_and(|actor| actor["state"] == "DEAD")
    });
    let bad = cluster.manta(&["list", "tasks", "--filter", "novalue"]);
    assert_eq!(bad.status.code(), Some(2));

    phase("filters run in the GCS: != and unknown keys");
    let others = list(&cluster, &["tasks", "--filter", "name!=increment", "--limit", "10000"]);
    assert!(!others.is_empty() && others.iter().all(|task| task["name"] != "increment"), "{others:?}");
    let unknown = cluster.manta(&["list", "tasks", "--filter", "colour=red"]);
    assert_eq!(unknown.status.code(), Some(1));
    let message = String::from_utf8_lossy(&unknown.stderr);
    assert!(message.contains("cannot filter on \"colour\"") && message.contains("task_id"), "{message}");
}
