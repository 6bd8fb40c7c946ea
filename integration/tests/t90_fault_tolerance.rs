//! Fault tolerance on real processes: a head killed with SIGKILL and started
//! again recovers its tables (embedded store or Redis) while the job, its
//! actor, its running task and the other nodes' workers carry on.

use std::time::Duration;

use manta_integration::{InteractiveDriver, TestCluster, phase, pid_alive, wait_until};

/// Starts a head with `storage_args` and one joined node, runs the
/// `head-restart` scenario from that node, and restarts the head mid-job.
fn head_restart_keeps_the_job_running(storage_args: &[&str]) {
    let mut head_args = vec!["--num-cpus", "0", "--recovery-grace", "20"];
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
    for pid in &workers {
        assert!(pid_alive(*pid), "worker {pid} on the joined node died with the head");
    }
    driver.send_line("restarted");
    assert!(driver.read_until("ready for a new node"), "{}", driver.stdout);

    phase("a node with a resource only it has joins the restarted head; the driver's node uses it");
    cluster.add_node(&["--num-cpus", "1", "--resources", r#"{"fresh": 1}"#]);
    wait_until("the new node is ALIVE", Duration::from_secs(20), || cluster.nodes_in_state("ALIVE").len() == 3);
    driver.send_line("joined");
    let (success, stdout, stderr) = driver.finish();
    assert!(success, "{stdout}\n{stderr}\nhead log:\n{}", cluster.head_log());
    assert_eq!(stdout.lines().filter(|line| line.starts_with("ok: ")).count(), 7, "{stdout}");

    phase("no process on the joined node was restarted (the driver checked its actor's pid)");
    assert!(stdout.contains("the actor kept its state and its process"), "{stdout}");
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
    /// A new server on a free port (when `MANTA_TEST_REDIS` names none).
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

/// The Redis to test against: `MANTA_TEST_REDIS`, else a private server (kept while the second value lives).
fn redis_for_test() -> (String, Option<RedisServer>) {
    match std::env::var("MANTA_TEST_REDIS") {
        Ok(url) if !url.is_empty() => (url, None),
        _ => {
            let server = RedisServer::start()
                .expect("redis-server is needed: `apt-get install redis-server`, or set MANTA_TEST_REDIS");
            (server.url.clone(), Some(server))
        }
    }
}

#[test]
fn cluster_head_restart_with_redis() {
    let (url, _server) = redis_for_test();
    let namespace = format!("test-{}-{:08x}", std::process::id(), rand_suffix());
    head_restart_keeps_the_job_running(&["--storage", &url, "--storage-namespace", &namespace]);
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_nanos())
        .unwrap_or(0)
}

fn kill_pid(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// Waits for the first pid written to `path`, and kills it.
fn kill_first_pid_in(path: &std::path::Path) {
    let mut pid = None;
    wait_until(&format!("a pid in {}", path.display()), Duration::from_secs(30), || {
        pid = std::fs::read_to_string(path).ok().and_then(|text| text.lines().next()?.trim().parse::<u32>().ok());
        pid.is_some()
    });
    kill_pid(pid.unwrap());
}

#[test]
fn cluster_killed_worker_task_is_retried() {
    let cluster = TestCluster::start(1);
    let path = cluster.temp_dir().join("attempts");
    let path_text = path.to_string_lossy().to_string();
    let mut driver = InteractiveDriver::start(cluster.temp_dir(), &["worker-retry", &path_text]);
    phase("SIGKILL the worker running the task: it is retried");
    kill_first_pid_in(&path);
    phase("SIGKILL the worker of a task with max_retries = 0: it fails");
    kill_first_pid_in(&cluster.temp_dir().join("attempts.no-retry"));
    let _ = &mut driver;
    let (success, stdout, stderr) = driver.finish();
    assert!(success, "{stdout}\n{stderr}");
    assert_eq!(stdout.lines().filter(|line| line.starts_with("ok: ")).count(), 2, "{stdout}");
}

#[test]
fn cluster_retry_exceptions_by_error_type() {
    let cluster = TestCluster::start(0);
    let dir = cluster.temp_dir().to_string_lossy().to_string();
    let output = cluster.scenario(&["retry-errors", &dir]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(stdout.lines().filter(|line| line.starts_with("ok: ")).count(), 3, "{stdout}");
}

#[test]
fn cluster_panicking_actor_restarts_then_dies() {
    let cluster = TestCluster::start(0);
    let output = cluster.scenario(&["actor-panics"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(stdout.lines().filter(|line| line.starts_with("ok: ")).count(), 6, "{stdout}");
    phase("the GCS counted both panic restarts and recorded the death's cause");
    wait_until("the actor is listed DEAD after 2 restarts", Duration::from_secs(10), || {
        let listed = cluster.manta(&["list", "actors", "--format", "json"]);
        let rows: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap_or_default();
        rows.as_array().is_some_and(|rows| {
            rows.iter().any(|row| {
                row["num_restarts"] == 2
                    && row["state"] == "DEAD"
                    && row["death_cause"].as_str().is_some_and(|cause| cause.contains("no restarts left"))
            })
        })
    });
}

/// The pid of the node process whose id is `node_id`.
fn node_pid(cluster: &TestCluster, node_id: &str) -> u32 {
    let status = cluster.status_json();
    let row = status["nodes"].as_array().unwrap().iter().find(|row| row["node_id"] == node_id).cloned();
    row.and_then(|row| row["pid"].as_u64()).expect("the node is in the status") as u32
}

fn actor_line(driver: &mut InteractiveDriver, label: &str) -> (String, u32) {
    let Some(line) = driver.read_until_prefix(&format!("{label}: ")) else {
        let stderr = driver.read_stderr();
        panic!("no {label:?} line:\n{}\n{stderr}", driver.stdout);
    };
    let mut fields = line.trim_start_matches(&format!("{label}: ")).split(' ');
    let node = fields.next().unwrap().to_string();
    (node, fields.next().unwrap().parse().unwrap())
}

#[test]
fn cluster_actor_restarts_after_its_worker_and_its_node_die() {
    let one = vec!["--num-cpus", "1"];
    let cluster = TestCluster::start_with(&["--num-cpus", "0"], &[one.clone(), one.clone(), one]);
    let mut driver = InteractiveDriver::start(cluster.temp_dir(), &["actor-restarts"]);
    let (_, pid) = actor_line(&mut driver, "actor");
    phase("SIGKILL the actor's worker: the GCS restarts it");
    kill_pid(pid);
    driver.send_line("killed");
    let (node, _) = actor_line(&mut driver, "restarted");
    phase("SIGKILL the actor's node: it comes back on another node, under its name");
    let node_pid = node_pid(&cluster, &node);
    let victim = cluster.nodes.iter().find(|candidate| candidate.pid == node_pid).expect("a joined node hosts it");
    victim.signal(rustix::process::Signal::KILL);
    wait_until("the GCS declares the node dead", Duration::from_secs(20), || {
        cluster.nodes_in_state("DEAD").iter().any(|row| row["node_id"] == node.as_str())
    });
    driver.send_line("killed");
    let (moved_to, pid) = actor_line(&mut driver, "moved");
    assert_ne!(moved_to, node, "the actor left the dead node");
    phase("SIGKILL it once more: its restarts are spent");
    kill_pid(pid);
    driver.send_line("killed");
    let (success, stdout, stderr) = driver.finish();
    assert!(success, "{stdout}\n{stderr}");
    assert_eq!(stdout.lines().filter(|line| line.starts_with("ok: ")).count(), 5, "{stdout}");
    let listed = cluster.manta(&["list", "actors", "--format", "json"]);
    let rows: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let row = rows.as_array().unwrap().iter().find(|row| row["name"] == "phoenix").cloned().unwrap_or_default();
    assert_eq!(row["state"], "DEAD", "{rows}");
}

#[test]
fn cluster_actor_call_in_flight_is_retried_with_max_task_retries() {
    let cluster = TestCluster::start(1);
    let mut driver = InteractiveDriver::start(cluster.temp_dir(), &["actor-call-retry"]);
    let (_, pid) = actor_line(&mut driver, "actor");
    phase("SIGKILL the actor's worker while a call runs: the call is sent to the new instance");
    kill_pid(pid);
    driver.send_line("killed");
    let (success, stdout, stderr) = driver.finish();
    assert!(success, "{stdout}\n{stderr}");
    assert_eq!(stdout.lines().filter(|line| line.starts_with("ok: ")).count(), 1, "{stdout}");
}

#[test]
fn cluster_node_killed_during_1000_tasks() {
    let two = vec!["--num-cpus", "2"];
    let cluster = TestCluster::start_with(&["--num-cpus", "0"], &[two.clone(), two.clone(), two]);
    let mut driver = InteractiveDriver::start(cluster.temp_dir(), &["node-death-tasks", "1000"]);
    assert!(driver.read_until("running"), "{}", driver.stdout);
    phase("SIGKILL a node while the tasks run");
    cluster.nodes[1].signal(rustix::process::Signal::KILL);
    let (success, stdout, stderr) = driver.finish();
    assert!(success, "{stdout}\n{stderr}");
    assert_eq!(stdout.lines().filter(|line| line.starts_with("ok: ")).count(), 2, "{stdout}");
}

#[test]
fn cluster_lost_objects_are_rebuilt_by_lineage() {
    let one = vec!["--num-cpus", "1"];
    let cluster = TestCluster::start_with(&["--num-cpus", "0"], &[one.clone(), one]);
    let mut driver = InteractiveDriver::start(cluster.temp_dir(), &["lineage"]);
    let line = driver.read_until_prefix("made on: ").unwrap_or_else(|| panic!("{}", driver.stdout));
    let node = line.trim_start_matches("made on: ").to_string();
    phase("SIGKILL the node holding the only copies");
    let pid = node_pid(&cluster, &node);
    cluster
        .nodes
        .iter()
        .find(|candidate| candidate.pid == pid)
        .expect("a joined node")
        .signal(rustix::process::Signal::KILL);
    wait_until("the node is DEAD", Duration::from_secs(20), || {
        cluster.nodes_in_state("DEAD").iter().any(|row| row["node_id"] == node.as_str())
    });
    driver.send_line("killed");
    let (success, stdout, stderr) = driver.finish();
    assert!(success, "{stdout}\n{stderr}");
    assert_eq!(stdout.lines().filter(|line| line.starts_with("ok: ")).count(), 2, "{stdout}");
}

#[test]
fn cluster_damaged_storage_file_stops_the_head() {
    let temp = tempfile::tempdir().unwrap();
    let file = temp.path().join("gcs").join("tables.redb");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, b"not a redb file: the head must not start empty over this").unwrap();
    let output = manta_integration::manta_command(temp.path(), &["start", "--head", "--port", "0", "--block"])
        .output()
        .expect("run manta start");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains(&file.display().to_string()), "the message names the file: {stderr}");
    assert_eq!(std::fs::read(&file).unwrap(), b"not a redb file: the head must not start empty over this");
}

#[test]
fn cluster_node_without_its_gcs_exits_after_the_reconnect_timeout() {
    let mut cluster = TestCluster::start_with(&["--storage", "memory"], &[vec!["--gcs-reconnect-timeout", "1"]]);
    phase("SIGKILL the head and leave it down");
    cluster.head.signal(rustix::process::Signal::KILL);
    let node = &mut cluster.nodes[0];
    wait_until("the node exits after its reconnect timeout", Duration::from_secs(20), || node.has_exited());
    let status = node.child.wait().unwrap();
    assert!(!status.success(), "{status:?}");
}

#[test]
fn cluster_redis_that_loses_the_cluster_data_stops_the_head() {
    let (url, _server) = redis_for_test();
    let namespace = format!("test-flushed-{}-{:08x}", std::process::id(), rand_suffix());
    let mut cluster = TestCluster::start_with(&["--storage", &url, "--storage-namespace", &namespace], &[]);

    phase("the head's keys vanish from Redis (as after a FLUSHALL or a restart without persistence)");
    let mut redis = redis::Client::open(url.as_str()).unwrap().get_connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{namespace}:*")).query(&mut redis).unwrap();
    assert!(keys.iter().any(|key| key.ends_with(":marker")), "the head marked its namespace: {keys:?}");
    let _: () = redis::cmd("DEL").arg(&keys).query(&mut redis).unwrap();

    phase("the next change is refused, and the head stops naming the problem");
    let output = cluster.scenario(&["worker-environment"]);
    assert!(!output.status.success(), "a job cannot start on a store that lost its tables");
    wait_until("the head exits", Duration::from_secs(20), || cluster.head.has_exited());
    let log = cluster.head_log();
    assert!(log.contains("no longer holds this cluster's marker key"), "{log}");
    let _: () = redis::cmd("DEL").arg(format!("{namespace}:marker")).query(&mut redis).unwrap();
}

/// Ends the proxy this test started (thawed first), however the test ends.
struct ProxyGuard(std::process::Child);

impl Drop for ProxyGuard {
    fn drop(&mut self) {
        signal_pid(self.0.id(), rustix::process::Signal::CONT);
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends `signal` to `pid` (a process this test started).
fn signal_pid(pid: u32, signal: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

#[test]
fn cluster_an_actor_cut_off_from_the_gcs_never_answers_alongside_its_restart() {
    use rustix::process::Signal;
    use std::io::BufRead;

    let mut cluster = TestCluster::start_with(&["--num-cpus", "0"], &[]);
    phase("a node joins through a proxy the test can freeze; the actor lives there");
    let mut proxy = ProxyGuard(
        std::process::Command::new(manta_integration::tcp_proxy_bin())
            .arg(&cluster.address)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the proxy"),
    );
    let proxy_pid = proxy.0.id();
    let mut proxy_address = String::new();
    std::io::BufReader::new(proxy.0.stdout.take().unwrap()).read_line(&mut proxy_address).unwrap();
    let gcs_address = std::mem::replace(&mut cluster.address, proxy_address.trim().to_string());
    let cut_off = cluster.add_node(&["--num-cpus", "1", "--resources", r#"{"spot": 1}"#]);
    cluster.address = gcs_address;
    cluster.wait_for_alive(2);
    let mut driver = manta_integration::InteractiveDriver::start(cluster.temp_dir(), &["fenced-actor"]);
    let first = driver.read_until_prefix("actor pid ").expect("the actor started");
    let first_pid: u32 = first.trim_start_matches("actor pid ").trim().parse().unwrap();
    assert!(driver.read_until_prefix("answer ").is_some(), "{}", driver.stdout);

    phase("a second node that can host the actor joins directly");
    cluster.add_node(&["--num-cpus", "1", "--resources", r#"{"spot": 1}"#]);
    cluster.wait_for_alive(3);

    phase("freeze the first node's GCS link: the GCS declares it dead and restarts the actor on the second");
    signal_pid(proxy_pid, Signal::STOP);
    let cut_off_pid = cluster.nodes[cut_off].pid;
    wait_until("the cut-off node is DEAD", Duration::from_secs(30), || {
        cluster.node_by_pid(cut_off_pid).is_some_and(|node| node["state"] == "DEAD")
    });
    let declared_dead_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    wait_until("the actor runs again elsewhere", Duration::from_secs(30), || {
        let actors = cluster.manta(&["list", "actors", "--format", "json"]);
        let actors: Vec<serde_json::Value> = serde_json::from_slice(&actors.stdout).unwrap_or_default();
        actors.iter().any(|actor| actor["state"] == "ALIVE" && actor["num_restarts"] == 1)
    });

    phase("thaw it: the node learns it was declared dead, ends its actor and rejoins; calls reach the new one");
    signal_pid(proxy_pid, Signal::CONT);
    let mut second_pid = None;
    wait_until("a call is answered by the restarted actor", Duration::from_secs(30), || {
        let Some(line) = driver.read_until_prefix("answer ") else { return false };
        let pid: u32 = line.split(' ').nth(1).and_then(|pid| pid.parse().ok()).unwrap_or(first_pid);
        if pid != first_pid {
            second_pid = Some(pid);
        }
        second_pid.is_some()
    });
    driver.send_line("done");
    let (_, stdout, stderr) = driver.finish();
    drop(proxy);

    phase("the first actor answered nothing once the GCS had declared its node dead");
    let late: Vec<&str> = stdout
        .lines()
        .filter(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            fields.len() == 3
                && fields[0] == "answer"
                && fields[1] == first_pid.to_string()
                && fields[2].parse::<u128>().is_ok_and(|at| at >= declared_dead_ms)
        })
        .collect();
    assert!(late.is_empty(), "the cut-off actor answered after its node was declared dead: {late:?}\n{stderr}");
    assert!(second_pid.is_some());
}
