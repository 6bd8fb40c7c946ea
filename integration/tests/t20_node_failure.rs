//! Node failure: a SIGKILLed node is declared DEAD within 5 s; a node declared
//! dead that comes back is fenced and rejoins under a new id.

use std::time::{Duration, Instant};

use manta_integration::{FAST_HEALTH_CHECKS, TestCluster, phase, wait_until};
use rustix::process::Signal;

#[test]
fn cluster_sigkilled_node_is_dead_within_5s() {
    let cluster = TestCluster::start(2);
    let victim = &cluster.nodes[0];
    let victim_id = cluster.node_by_pid(victim.pid).unwrap()["node_id"].as_str().unwrap().to_string();

    phase("SIGKILL one node (default health-check settings)");
    let killed_at = Instant::now();
    victim.signal(Signal::KILL);
    wait_until("the killed node is DEAD", Duration::from_secs(5), || {
        cluster.nodes_in_state("DEAD").iter().any(|node| node["node_id"] == victim_id.as_str())
    });
    eprintln!("declared dead after {:?}", killed_at.elapsed());

    phase("the others stay ALIVE, and the dead row keeps its reason");
    let dead = cluster.nodes_in_state("DEAD");
    assert_eq!(dead.len(), 1);
    assert!(dead[0]["death_reason"].as_str().unwrap().contains("health check"), "{dead:?}");
    assert_eq!(cluster.nodes_in_state("ALIVE").len(), 2);
    let text = String::from_utf8_lossy(&cluster.manta(&["status"]).stdout).to_string();
    assert!(text.contains("Dead:") && text.contains(&victim_id), "{text}");
}

#[test]
fn cluster_fenced_node_rejoins_under_a_new_identity() {
    let cluster = TestCluster::start_with(&FAST_HEALTH_CHECKS, &[vec![]]);
    let node = &cluster.nodes[0];
    let old_id = cluster.node_by_pid(node.pid).unwrap()["node_id"].as_str().unwrap().to_string();

    phase("freeze the node (SIGSTOP) until the GCS declares it dead");
    node.signal(Signal::STOP);
    wait_until("the frozen node is DEAD", Duration::from_secs(15), || {
        cluster.nodes_in_state("DEAD").iter().any(|row| row["node_id"] == old_id.as_str())
    });

    phase("thaw it: it must come back as a new node, never as the dead one");
    node.signal(Signal::CONT);
    wait_until("the same process is ALIVE under a new id", Duration::from_secs(15), || {
        cluster.nodes_in_state("ALIVE").iter().any(|row| row["pid"] == node.pid && row["node_id"] != old_id.as_str())
    });
    let status = cluster.status_json();
    let rows: Vec<_> = status["nodes"].as_array().unwrap().iter().filter(|row| row["pid"] == node.pid).collect();
    assert_eq!(rows.len(), 2, "the dead row stays in the history: {rows:?}");
    assert!(rows.iter().any(|row| row["node_id"] == old_id.as_str() && row["state"] == "DEAD"));
}

#[test]
fn cluster_stopped_node_leaves_as_drained() {
    let mut cluster = TestCluster::start(1);
    let pid = cluster.nodes[0].pid;

    phase("SIGTERM a node: it tells the GCS it is leaving, and exits 0");
    cluster.nodes[0].signal(Signal::TERM);
    wait_until("the node exits", Duration::from_secs(10), || cluster.nodes[0].has_exited());
    let status = cluster.nodes[0].child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    wait_until("the node is DEAD", Duration::from_secs(5), || cluster.node_by_pid(pid).unwrap()["state"] == "DEAD");
    let row = cluster.node_by_pid(pid).unwrap();
    assert!(row["death_reason"].as_str().unwrap().contains("left the cluster"), "{row}");
}

/// The number of open file descriptors of `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|entries| entries.count()).unwrap_or(0)
}

#[test]
fn cluster_a_node_that_ran_many_workers_keeps_no_files_of_theirs_open() {
    let cluster = TestCluster::start_with(&["--num-cpus", "2"], &[]);
    let run = |count: &str| {
        let output = cluster.scenario(&["many-workers", count]);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    };
    phase("10 workers started and ended: the node's open files settle");
    run("10");
    let pid = cluster.head.pid;
    let mut baseline = open_fds(pid);
    let settle = Instant::now() + Duration::from_secs(20);
    // The log monitor closes an exited worker's files after a quiet second.
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = open_fds(pid);
        if now >= baseline || Instant::now() > settle {
            baseline = baseline.min(now);
            break;
        }
        baseline = now;
    }
    phase("100 more: the node has as many open files as before (±10)");
    run("100");
    wait_until("the node's open files are back to where they were", Duration::from_secs(20), || {
        open_fds(pid) <= baseline + 10
    });
}
