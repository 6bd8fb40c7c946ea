//! The autoscaler with the `local` provider on a real cluster: a head with no
//! CPU for work and two node types; work only type `beta` can run brings a
//! beta node, a STRICT_SPREAD group brings three nodes, idle nodes are drained
//! and removed down to `min_workers`, a demand no type can meet is reported
//! infeasible and launches nothing, and `request_resources` holds nodes until
//! it is cleared.

use std::time::{Duration, Instant};

use manta_integration::{InteractiveDriver, TestCluster, phase, wait_until};
use serde_json::Value;

const CONFIG: &str = "
cluster_name: t65
max_workers: 6
idle_timeout_minutes: 0.05
head_node_type: head
provider:
  type: local
available_node_types:
  head:
    resources: {CPU: 0}
    max_workers: 0
  small:
    resources: {CPU: 1}
    min_workers: 1
    max_workers: 4
  beta:
    resources: {CPU: 1, beta: 1}
    labels: {tier: beta}
    max_workers: 2
";

fn alive(status: &Value) -> Vec<Value> {
    status["nodes"].as_array().unwrap().iter().filter(|node| node["state"] == "ALIVE").cloned().collect()
}

fn of_type(nodes: &[Value], node_type: &str) -> usize {
    nodes.iter().filter(|node| node["labels"]["manta.io/node-type"] == node_type).count()
}

/// Waits until only the head and the one small node of `min_workers` are
/// alive, and every node the autoscaler removed has exited.
fn wait_for_min_workers(cluster: &TestCluster) {
    wait_until("only the head and min_workers remain", Duration::from_secs(60), || {
        let nodes = alive(&cluster.status_json());
        nodes.len() == 2 && of_type(&nodes, "small") == 1
    });
    let status = cluster.status_json();
    let removed: Vec<&Value> = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|node| node["state"] == "DEAD" && node["labels"]["manta.io/instance-id"].is_string())
        .collect();
    assert!(!removed.is_empty(), "{status}");
    for node in removed {
        let pid = node["pid"].as_u64().unwrap() as u32;
        wait_until("a removed node's process exits", Duration::from_secs(10), || !manta_integration::pid_alive(pid));
    }
}

#[test]
fn cluster_autoscales_with_the_local_provider() {
    let config_dir = tempfile::tempdir().unwrap();
    let config_path = config_dir.path().join("cluster.yaml");
    std::fs::write(&config_path, CONFIG).unwrap();
    let config_arg = config_path.to_str().unwrap();
    let cluster = TestCluster::start_head(&["--num-cpus", "0", "--autoscaling-config", config_arg]);

    phase("min_workers: one small node joins by itself");
    wait_until("the small node of min_workers is ALIVE", Duration::from_secs(30), || {
        of_type(&alive(&cluster.status_json()), "small") == 1
    });

    let mut driver = InteractiveDriver::start(cluster.temp_dir(), &["autoscale"]);
    if !driver.read_until("autoscale ready") {
        let stderr = driver.read_stderr();
        panic!("the driver did not start: {}{stderr}", driver.stdout);
    }

    phase("tasks needing `beta` bring a beta node");
    let asked = Instant::now();
    driver.send_line("beta");
    wait_until("a beta node is ALIVE", Duration::from_secs(30), || {
        of_type(&alive(&cluster.status_json()), "beta") >= 1
    });
    let joined_after = asked.elapsed();
    let ran = driver.read_until_prefix("first beta task ran after").expect("the first beta task ran");
    let done = driver.read_until_prefix("beta tasks done").expect("the beta tasks finished");
    eprintln!("figure: demand -> beta node ALIVE {joined_after:?}; {ran}; {done}");
    assert!(joined_after < Duration::from_secs(10), "the beta node took {joined_after:?} to join");
    let beta = alive(&cluster.status_json()).into_iter().find(|node| node["labels"]["manta.io/node-type"] == "beta");
    assert_eq!(beta.unwrap()["labels"]["tier"], "beta", "the type's labels");

    phase("idle beta nodes are drained and removed down to min_workers");
    wait_for_min_workers(&cluster);

    phase("a STRICT_SPREAD group of three bundles launches two more small nodes");
    driver.send_line("spread");
    let placed = driver.read_until_prefix("group placed on").expect("the group was placed");
    assert!(placed.starts_with("group placed on 3 nodes"), "{placed}");
    eprintln!("figure: {placed}");
    assert_eq!(of_type(&alive(&cluster.status_json()), "small"), 3, "one per bundle");
    assert!(driver.read_until_prefix("group removed").is_some());

    phase("and they are drained and removed again");
    wait_for_min_workers(&cluster);

    phase("a demand no type can meet is reported and launches nothing");
    driver.send_line("infeasible");
    assert!(driver.read_until("infeasible task submitted"));
    let reported = Instant::now();
    wait_until("the autoscaler reports the demand infeasible", Duration::from_secs(15), || {
        let status = cluster.status_json();
        status["autoscaler"]["infeasible"]
            .as_array()
            .is_some_and(|list| list.iter().any(|entry| entry.to_string().contains("unobtainium")))
    });
    // A few more rounds (one a second at least): still nothing launched.
    let seen_ms = cluster.status_json()["autoscaler"]["updated_ms"].as_u64().unwrap();
    wait_until("two more autoscaler rounds", Duration::from_secs(15), || {
        cluster.status_json()["autoscaler"]["updated_ms"].as_u64().unwrap() > seen_ms + 2_000
    });
    let status = cluster.status_json();
    assert_eq!(alive(&status).len(), 2, "nothing was launched for it: {status}");
    assert_eq!(status["autoscaler"]["launching"], serde_json::json!([]), "{status}");
    eprintln!("infeasible checked over {:?}", reported.elapsed());
    let text = String::from_utf8(cluster.manta(&["status"]).stdout).unwrap();
    assert!(text.contains("Infeasible") && text.contains("unobtainium"), "{text}");

    phase("request_resources keeps room for two beta bundles, busy or not, until cleared");
    driver.send_line("request");
    assert!(driver.read_until("resources requested"));
    wait_until("two beta nodes are ALIVE", Duration::from_secs(30), || {
        of_type(&alive(&cluster.status_json()), "beta") == 2
    });
    assert_eq!(cluster.status_json()["demand"]["requested"].as_array().map(Vec::len), Some(2));
    wait_until("the requested nodes are idle past the timeout, and kept", Duration::from_secs(30), || {
        let status = cluster.status_json();
        let beta: Vec<Value> =
            alive(&status).into_iter().filter(|node| node["labels"]["manta.io/node-type"] == "beta").collect();
        assert_eq!(beta.len(), 2, "a requested node was removed: {status}");
        beta.iter().all(|node| {
            let id = node["node_id"].as_str().unwrap();
            status["demand"]["idle_ms"][id].as_u64().unwrap_or(0) > 4_000
        })
    });
    driver.send_line("clear");
    assert!(driver.read_until("request cleared"));
    wait_for_min_workers(&cluster);
    driver.send_line("exit");
    let (ok, stdout, stderr) = driver.finish();
    assert!(ok, "{stdout}{stderr}");
}

#[test]
fn an_invalid_autoscaling_config_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.yaml");
    std::fs::write(&path, CONFIG.replace("min_workers: 1", "min_workers: 9")).unwrap();
    let output = manta_integration::manta_command(
        dir.path(),
        &["start", "--head", "--port", "0", "--autoscaling-config", path.to_str().unwrap()],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("available_node_types.small.min_workers"), "{stderr}");
}
