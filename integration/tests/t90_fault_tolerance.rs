//! Fault tolerance on real processes: a head killed with SIGKILL and started
//! again recovers its tables (embedded store or Redis) while the job, its
//! actor, its running task and the other nodes' workers carry on.

use std::time::Duration;

use manta_integration::{InteractiveDriver, TestCluster, phase, pid_alive, wait_until};

/// Starts a head with `storage_args` and one joined node, runs the
/// `head-restart` scenario from that node, and restarts the head mid-job.
fn head_restart_keeps_the_job_running(storage_args: &[&str]) {
    let mut head_args = vec!["--num-cpus", "1", "--recovery-grace", "20"];
    head_args.extend_from_slice(storage_args);
    let mut cluster = TestCluster::start_with(&head_args, &[vec!["--num-cpus", "4"]]);
    let node = cluster.node_by_pid(cluster.nodes[0].pid).expect("the joined node's row");
    let node_address = node["address"].as_str().unwrap().to_string();
    let node_id = node["node_id"].as_str().unwrap().to_string();

    phase("a driver on the joined node runs tasks and an actor");
    let env = [("MANTA_NODE_ADDRESS", node_address.as_str())];
    let mut driver = InteractiveDriver::start_with_env(cluster.temp_dir(), &["head-restart"], &env);
    let pids_line = driver.read_until_prefix("pids: ").expect("the driver reports its workers");
    let workers: Vec<u32> = pids_line.trim_start_matches("pids: ").split(' ').map(|pid| pid.parse().unwrap()).collect();
    assert!(driver.read_until("ready for the head restart"), "{}", driver.stdout);

    phase("SIGKILL the head and start it again with the same session folder");
    let old_head = cluster.head.pid;
    cluster.restart_head();
    assert_ne!(cluster.head.pid, old_head);
    wait_until("the joined node re-registers under its own id", Duration::from_secs(20), || {
        cluster.nodes_in_state("ALIVE").iter().any(|row| row["node_id"] == node_id.as_str())
    });
    let status = cluster.status_json();
    let rows = status["nodes"].as_array().unwrap();
    assert!(
        rows.iter().any(|row| row["pid"] == old_head && row["state"] == "DEAD"),
        "the old head stays in the node table as DEAD: {rows:?}"
    );
    driver.send_line("restarted");
    let (success, stdout, stderr) = driver.finish();
    assert!(success, "{stdout}\n{stderr}");
    assert_eq!(stdout.lines().filter(|line| line.starts_with("ok: ")).count(), 6, "{stdout}");

    phase("no process on the joined node was restarted");
    assert!(pid_alive(workers[0]), "the actor's worker {} still runs the same process", workers[0]);
    assert!(pid_alive(cluster.nodes[0].pid), "the joined node still runs");
    let jobs = cluster.manta(&["list", "jobs", "--format", "json"]);
    let jobs: serde_json::Value = serde_json::from_slice(&jobs.stdout).unwrap();
    assert_eq!(jobs.as_array().map(Vec::len), Some(1), "the recovered job table: {jobs}");
}

#[test]
fn cluster_head_restart_with_the_embedded_store() {
    head_restart_keeps_the_job_running(&[]);
}

/// A private redis-server on a free port, killed by pid when dropped.
struct RedisServer {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// A new server on a free port.
    fn start() -> Option<RedisServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
        let dir = tempfile::tempdir().ok()?;
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let server = RedisServer { child, url: format!("redis://127.0.0.1:{port}"), _dir: dir };
        wait_until("redis-server accepts connections", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Some(server)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn cluster_head_restart_with_redis() {
    let (url, _server) = match std::env::var("MANTA_TEST_REDIS") {
        Ok(url) if !url.is_empty() => (url, None),
        _ => {
            let server = RedisServer::start()
                .expect("redis-server is needed: `apt-get install redis-server`, or set MANTA_TEST_REDIS");
            (server.url.clone(), Some(server))
        }
    };
    let namespace = format!("test-{}-{:08x}", std::process::id(), rand_suffix());
    head_restart_keeps_the_job_running(&["--storage", &url, "--storage-namespace", &namespace]);
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|elapsed| elapsed.subsec_nanos()).unwrap_or(0)
}
