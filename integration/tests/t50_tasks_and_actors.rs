//! Tasks and actors from Rust on a real 3-node cluster: drivers are the
//! `scenarios` binary (its own worker binary), pointed at the cluster's session.

use std::io::{BufRead, BufReader};
use std::process::{Output, Stdio};
use std::time::Duration;

use manta_integration::{InteractiveDriver, TestCluster, driver_command, phase, pid_alive, scenarios_bin, wait_until};
use rustix::process::{Pid, Signal, kill_process};

fn three_nodes() -> TestCluster {
    TestCluster::start_with(&["--num-cpus", "1"], &[vec!["--num-cpus", "1"], vec!["--num-cpus", "1"]])
}

fn assert_ok(output: &Output, expected_checks: usize) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "driver failed ({:?}):\n{stdout}\n{stderr}", output.status);
    let checks = stdout.lines().filter(|line| line.starts_with("ok: ")).count();
    assert_eq!(checks, expected_checks, "{stdout}");
    stdout
}

#[test]
fn cluster_tasks_chains_and_errors() {
    let cluster = three_nodes();
    phase("nine 300 ms tasks on three 1-CPU nodes use every node");
    assert_ok(&cluster.scenario(&["spread"]), 1);
    phase("ObjectRef chains, puts, nested tasks, multiple returns, env vars");
    assert_ok(&cluster.scenario(&["chains"]), 7);
    phase("every error kind reaches the caller as a typed error; infeasible work waits with a warning");
    let errors = cluster.scenario(&["errors"]);
    assert_ok(&errors, 13);
    let stderr = String::from_utf8_lossy(&errors.stderr);
    assert_eq!(stderr.matches("manta: warning: no node in the cluster can run").count(), 1, "{stderr}");
}

#[test]
fn pipelined_task_blocked_on_a_later_one_does_not_deadlock() {
    let cluster = TestCluster::start_with(&["--num-cpus", "1"], &[]);
    phase("a task waits for one pushed behind it to the same 1-CPU worker");
    assert_ok(&cluster.scenario(&["pipeline-send-back"]), 4);
}

#[test]
fn cluster_cancellation() {
    let cluster = TestCluster::start_with(&["--num-cpus", "1"], &[]);
    phase("cancel: queued, running (cooperative and forced), recursive, actor calls");
    assert_ok(&cluster.scenario(&["cancel"]), 12);
}

#[test]
fn cluster_scheduling_strategies() {
    let cluster = three_nodes();
    phase("SPREAD, hard and soft node affinity, for tasks and actors");
    assert_ok(&cluster.scenario(&["scheduling"]), 7);
}

#[test]
fn cluster_gpu_ids() {
    let cluster = TestCluster::start_with(&["--num-gpus", "2", "--num-cpus", "4", "--accelerator-type", "T4"], &[]);
    phase("GPU actors get their own device ids in CUDA_VISIBLE_DEVICES (no real GPU needed); accelerator types");
    assert_ok(&cluster.scenario(&["gpus"]), 7);
}

#[test]
fn cluster_actors() {
    let cluster = three_nodes();
    phase("actors: calls from tasks, ordering, Err vs panic, restarts, concurrency, async, kill");
    assert_ok(&cluster.scenario(&["actors"]), 16);
}

#[test]
fn cluster_named_and_detached_actors() {
    let cluster = three_nodes();

    phase("a driver holds a named actor; another driver finds it by name");
    let (mut holder, actor_pid) = manta_integration::hold_named_actor(cluster.temp_dir(), "keeper");
    let found = cluster.scenario(&["named-call", "keeper"]);
    assert!(found.status.success(), "{}", String::from_utf8_lossy(&found.stderr));
    assert!(String::from_utf8_lossy(&found.stdout).contains("total: 101"));

    phase("when the holder's job ends, its non-detached actor ends with it");
    drop(holder.stdin.take());
    assert!(holder.wait().unwrap().success());
    wait_until("the actor's worker exits", Duration::from_secs(10), || !pid_alive(actor_pid));
    let gone = cluster.scenario(&["named-call", "keeper"]);
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("no actor named \"keeper\""));

    phase("a detached actor outlives the job that created it");
    let creator = cluster.scenario(&["detached-create", "survivor"]);
    assert!(creator.status.success(), "{}", String::from_utf8_lossy(&creator.stderr));
    let later = cluster.scenario(&["named-call", "survivor"]);
    assert!(later.status.success(), "{}", String::from_utf8_lossy(&later.stderr));
    assert!(String::from_utf8_lossy(&later.stdout).contains("total: 101"));
}

#[test]
fn cluster_sigkilled_driver_leaves_no_worker() {
    let cluster = three_nodes();
    phase("a driver with an actor and running tasks");
    let mut driver =
        driver_command(&scenarios_bin(), cluster.temp_dir(), &["hold-workers"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut pids = Vec::new();
    for line in BufReader::new(driver.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(pid) = line.strip_prefix("worker-pid: ") {
            pids.push(pid.parse::<u32>().unwrap());
        }
        if line == "ready" {
            break;
        }
    }
    assert!(pids.len() >= 2, "{pids:?}");
    assert!(pids.iter().all(|pid| pid_alive(*pid)));

    phase("SIGKILL the driver: the job ends and every worker of it goes");
    kill_process(Pid::from_raw(driver.id() as i32).unwrap(), Signal::KILL).unwrap();
    driver.wait().unwrap();
    wait_until("every worker of the job exits", Duration::from_secs(10), || pids.iter().all(|pid| !pid_alive(*pid)));
}

#[test]
fn cluster_placement_groups() {
    let cpus = ["--num-cpus", "2"];
    let cluster = TestCluster::start_with(&cpus, &[cpus.to_vec(), cpus.to_vec()]);
    phase("placement groups: each strategy, tasks and actors in bundles, removal, a group that cannot fit");
    let mut driver = InteractiveDriver::start(cluster.temp_dir(), &["placement-groups"]);
    if !driver.read_until("holding") {
        let (_, stdout, stderr) = driver.finish();
        panic!("the driver ended before it held its groups:\n{stdout}\n{stderr}");
    }

    phase("manta list placement-groups shows states, strategies and where bundles are");
    let listed = cluster.manta(&["list", "placement-groups", "--format", "json"]);
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    let pending: Vec<_> = rows.iter().filter(|row| row["state"] == "PENDING").collect();
    assert_eq!(pending.len(), 1, "{rows:#?}");
    assert_eq!(pending[0]["name"], "too-wide");
    assert_eq!(pending[0]["strategy"], "STRICT_SPREAD");
    assert!(pending[0]["pending_reason"].as_str().unwrap_or_default().contains("own"), "{rows:#?}");
    assert_eq!(rows.iter().filter(|row| row["state"] == "REMOVED").count(), 4, "{rows:#?}");

    let (success, stdout, stderr) = driver.finish();
    assert!(success, "{stdout}\n{stderr}");
    assert_eq!(stdout.lines().filter(|line| line.starts_with("ok: ")).count(), 12, "{stdout}");

    phase("the job's groups go with it");
    wait_until("the job's pending group is removed", Duration::from_secs(10), || {
        let listed = cluster.manta(&["list", "placement-groups", "--format", "json"]);
        let rows: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap_or_default();
        rows.as_array().is_some_and(|rows| rows.iter().all(|row| row["state"] == "REMOVED"))
    });
}

#[test]
fn cluster_placement_group_rescheduled_after_node_death() {
    let one = ["--num-cpus", "1"];
    let cluster = TestCluster::start_with(&["--num-cpus", "0"], &[one.to_vec(), one.to_vec(), one.to_vec()]);
    phase("a node holding a bundle dies: the group goes RESCHEDULING and lands on the spare node");
    let mut driver = InteractiveDriver::start(cluster.temp_dir(), &["pg-reschedule"]);
    let line = driver.read_until_prefix("bundles: ").expect("the driver names the bundles' nodes");
    let bundles: Vec<&str> = line.trim_start_matches("bundles: ").split(' ').collect();
    let status = cluster.status_json();
    let victim_pid = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|node| node["node_id"] == bundles[1])
        .and_then(|node| node["pid"].as_u64())
        .expect("the bundle's node is in the status") as u32;
    let victim = cluster.nodes.iter().find(|node| node.pid == victim_pid).expect("a joined node holds bundle 1");
    victim.signal(Signal::KILL);
    driver.send_line("killed");
    let (success, stdout, stderr) = driver.finish();
    assert!(success, "{stdout}\n{stderr}");
    assert_eq!(stdout.lines().filter(|line| line.starts_with("ok: ")).count(), 2, "{stdout}");
}
