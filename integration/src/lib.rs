//! A harness that starts real manta clusters — real processes of the built
//! `manta` binary on 127.0.0.1, with free ports and a private temp dir — and
//! kills every process it started, by pid, when dropped (also on panic).
//!
//! ```no_run
//! let cluster = manta_integration::TestCluster::start(2);
//! let status = cluster.status_json();
//! assert_eq!(status["nodes"].as_array().unwrap().len(), 3);
//! ```

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};
use serde_json::Value;

/// Health-check flags that make failure tests quick without false deaths.
pub const FAST_HEALTH_CHECKS: [&str; 6] =
    ["--health-check-period-ms", "200", "--health-check-timeout-ms", "1000", "--health-check-failure-threshold", "5"];

/// The `manta` binary, built once per test process (`cargo build` is a quick
/// no-op when it is current, so tests never run a stale binary). `MANTA_BIN`
/// overrides it.
pub fn manta_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var_os("MANTA_BIN").map(PathBuf::from).unwrap_or_else(|| build_binary("manta", "manta"))
    })
    .clone()
}

/// The `scenarios` driver binary (drivers for the task and actor tests), built like [`manta_bin`].
pub fn scenarios_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_binary("manta-integration", "scenarios")).clone()
}

/// The `tcp_proxy` binary (a forwarder tests can freeze), built like [`manta_bin`].
pub fn tcp_proxy_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_binary("manta-integration", "tcp_proxy")).clone()
}

/// An example of the `manta` crate, built like [`manta_bin`].
pub fn example_bin(name: &str) -> PathBuf {
    build_binary_with("manta", &["--example", name], &format!("examples/{name}"))
}

fn build_binary(package: &str, name: &str) -> PathBuf {
    build_binary_with(package, &["--bin", name], name)
}

fn build_binary_with(package: &str, target: &[&str], relative: &str) -> PathBuf {
    let test_exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>
    let profile_dir = test_exe.parent().and_then(Path::parent).expect("target profile folder").to_path_buf();
    let release = profile_dir.file_name().is_some_and(|name| name == "release");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build.args(["build", "--quiet", "-p", package]).args(target);
    if release {
        build.arg("--release");
    }
    let status = build.status().expect("run cargo build");
    assert!(status.success(), "building {package} {target:?} failed");
    let binary = profile_dir.join(relative);
    assert!(binary.exists(), "no binary at {}", binary.display());
    binary
}

/// A driver command: `program args`, pointed at this cluster's session.
pub fn driver_command(program: &Path, temp_dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(program);
    command
        .args(args)
        .env("MANTA_TEMP_DIR", temp_dir)
        .env_remove("MANTA_ADDRESS")
        .env_remove("MANTA_TOKEN")
        .stdin(Stdio::null());
    command
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes; panics with `what` then.
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Prints a phase marker, so a failing test's output shows how far it got.
pub fn phase(name: &str) {
    eprintln!("--- phase: {name}");
}

/// One node process started in the foreground (`--block`).
#[derive(Debug)]
pub struct NodeProcess {
    /// The process.
    pub child: Child,
    /// Its pid.
    pub pid: u32,
    /// What it printed when ready.
    pub ready_text: String,
}

impl NodeProcess {
    /// Sends `signal` to the node.
    pub fn signal(&self, signal: Signal) {
        if let Some(pid) = Pid::from_raw(self.pid as i32) {
            let _ = kill_process(pid, signal);
        }
    }

    /// True once the process has exited.
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

/// A cluster of real node processes.
#[derive(Debug)]
pub struct TestCluster {
    temp: tempfile::TempDir,
    /// The head node.
    pub head: NodeProcess,
    /// Joined nodes, in start order.
    pub nodes: Vec<NodeProcess>,
    /// The GCS address.
    pub address: String,
    head_args: Vec<String>,
}

impl TestCluster {
    /// A head plus `nodes` joined nodes, default flags.
    pub fn start(nodes: usize) -> Self {
        Self::start_with(&[], &vec![Vec::new(); nodes])
    }

    /// A head started with `head_args`, then one joined node per entry of `node_args`.
    pub fn start_with(head_args: &[&str], node_args: &[Vec<&str>]) -> Self {
        let mut cluster = Self::spawn_head(head_args);
        for extra in node_args {
            cluster.add_node(extra);
        }
        cluster.wait_for_alive(1 + node_args.len());
        cluster
    }

    /// Only a head started with `head_args`, once it is ALIVE, whatever else
    /// joins meanwhile (an autoscaler's nodes).
    pub fn start_head(head_args: &[&str]) -> Self {
        let cluster = Self::spawn_head(head_args);
        wait_until("the head is ALIVE", Duration::from_secs(30), || {
            cluster.nodes_in_state("ALIVE").iter().any(|node| node["is_head"] == true)
        });
        cluster
    }

    fn spawn_head(head_args: &[&str]) -> Self {
        let temp = tempfile::Builder::new().prefix("manta-test-").tempdir().expect("temp dir");
        // A free port for the HTTP server too: tests never take Ray's 8265 from a user.
        let mut args = vec!["start", "--head", "--port", "0", "--dashboard-port", "0", "--block"];
        args.extend_from_slice(head_args);
        let head = spawn_node(temp.path(), &args);
        let address = std::fs::read_to_string(temp.path().join("address")).expect("head address file");
        let head_args = head_args.iter().map(|arg| arg.to_string()).collect();
        TestCluster { temp, head, nodes: Vec::new(), address: address.trim().to_string(), head_args }
    }

    /// SIGKILLs the head and starts it again on the same port and session
    /// folder (so with the same token and storage file).
    pub fn restart_head(&mut self) {
        self.head.signal(Signal::KILL);
        let _ = self.head.child.wait();
        let port = self.address.rsplit(':').next().expect("address has a port").to_string();
        let mut args: Vec<&str> = vec!["start", "--head", "--port", &port, "--dashboard-port", "0", "--block"];
        args.extend(self.head_args.iter().map(String::as_str));
        self.head = spawn_node(self.temp.path(), &args);
    }

    /// The head's HTTP server (`http://host:port`), as recorded in the session.
    pub fn dashboard_url(&self) -> String {
        manta_proto::cluster::read_dashboard_url(self.temp.path()).expect("the head records its HTTP server's URL")
    }

    /// The cluster token.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.temp.path().join("token")).expect("token file").trim().to_string()
    }

    /// The session folder.
    pub fn temp_dir(&self) -> &Path {
        self.temp.path()
    }

    /// Starts one more node joining this cluster; returns its index in `nodes`.
    pub fn add_node(&mut self, extra: &[&str]) -> usize {
        let address = self.address.clone();
        let mut args = vec!["start", "--address", &address, "--block"];
        args.extend_from_slice(extra);
        let node = spawn_node(self.temp.path(), &args);
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// Starts one more node in its own session folder `temp_dir` (as on another
    /// machine: its own logs, cache and object store), joining with this cluster's
    /// token file; returns its index in `nodes`.
    pub fn add_node_elsewhere(&mut self, temp_dir: &Path, extra: &[&str]) -> usize {
        let address = self.address.clone();
        let token = self.temp.path().join("token");
        let token = token.to_str().expect("a UTF-8 temp path");
        let mut args = vec!["start", "--address", &address, "--block", "--token-file", token];
        args.extend_from_slice(extra);
        let node = spawn_node(temp_dir, &args);
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// Runs `manta <args> --temp-dir <ours>` to completion.
    pub fn manta(&self, args: &[&str]) -> Output {
        manta_command(self.temp.path(), args).output().expect("run manta")
    }

    /// Runs `manta <args>` with the session in `MANTA_TEMP_DIR` (for commands
    /// whose last argument is a command line: `manta job submit -- …`).
    pub fn manta_in_session(&self, args: &[&str]) -> Output {
        Command::new(manta_bin())
            .args(args)
            .env("MANTA_TEMP_DIR", self.temp.path())
            .env_remove("MANTA_ADDRESS")
            .env_remove("MANTA_TOKEN")
            .env("MANTA_LOG", "info")
            .stdin(Stdio::null())
            .output()
            .expect("run manta")
    }

    /// `manta status --format json`, parsed.
    pub fn status_json(&self) -> Value {
        let output = self.manta(&["status", "--format", "json"]);
        assert!(output.status.success(), "manta status failed: {}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).expect("status JSON")
    }

    /// The status rows of nodes in `state`.
    pub fn nodes_in_state(&self, state: &str) -> Vec<Value> {
        self.status_json()["nodes"]
            .as_array()
            .expect("nodes array")
            .iter()
            .filter(|node| node["state"] == state)
            .cloned()
            .collect()
    }

    /// The status row of the node process `pid`, newest first.
    pub fn node_by_pid(&self, pid: u32) -> Option<Value> {
        self.status_json()["nodes"].as_array()?.iter().rev().find(|node| node["pid"] == pid).cloned()
    }

    /// Waits until `count` nodes are ALIVE.
    pub fn wait_for_alive(&self, count: usize) {
        wait_until(&format!("{count} nodes are ALIVE"), Duration::from_secs(30), || {
            self.nodes_in_state("ALIVE").len() == count
        });
    }

    /// Runs `scenarios <args>` as a driver of this cluster to completion.
    pub fn scenario(&self, args: &[&str]) -> Output {
        driver_command(&scenarios_bin(), self.temp.path(), args).output().expect("run scenarios")
    }

    /// The head's log so far.
    pub fn head_log(&self) -> String {
        node_logs(self.temp.path()).into_iter().find(|(is_head, _)| *is_head).map(|(_, log)| log).unwrap_or_default()
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for node in self.nodes.iter_mut().chain(std::iter::once(&mut self.head)) {
            node.signal(Signal::KILL);
            let _ = node.child.wait();
        }
        kill_recorded_nodes(self.temp.path());
    }
}

/// A `manta` command with `--temp-dir` set and no cluster variables inherited.
pub fn manta_command(temp_dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(manta_bin());
    command
        .args(args)
        .arg("--temp-dir")
        .arg(temp_dir)
        .env_remove("MANTA_ADDRESS")
        .env_remove("MANTA_TOKEN")
        .env_remove("MANTA_TEMP_DIR")
        .env("MANTA_LOG", "info")
        .stdin(Stdio::null());
    command
}

/// Starts `manta <args>` (a `--block` start) and waits for its readiness text.
fn spawn_node(temp_dir: &Path, args: &[&str]) -> NodeProcess {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(temp_dir.join("foreground-nodes.log"))
        .expect("foreground log");
    let mut child = manta_command(temp_dir, args).stdout(Stdio::piped()).stderr(log).spawn().expect("spawn manta node");
    let pid = child.id();
    let stdout = child.stdout.take().expect("stdout");
    let (sender, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let mut ready_text = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                ready_text.push_str(&line);
                ready_text.push('\n');
                if line.starts_with("Node log:") {
                    break;
                }
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(temp_dir.join("foreground-nodes.log")).unwrap_or_default();
                panic!("node {args:?} did not become ready; printed {ready_text:?}; log:\n{log}");
            }
        }
    }
    NodeProcess { child, pid, ready_text }
}

/// (is_head, log) of every node folder under `temp_dir`.
pub fn node_logs(temp_dir: &Path) -> Vec<(bool, String)> {
    let Ok(entries) = std::fs::read_dir(temp_dir.join("nodes")) else {
        return Vec::new();
    };
    let foreground = std::fs::read_to_string(temp_dir.join("foreground-nodes.log")).unwrap_or_default();
    entries
        .filter_map(Result::ok)
        .map(|entry| {
            let record: Value = std::fs::read(entry.path().join("node.json"))
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                .unwrap_or(Value::Null);
            let own = std::fs::read_to_string(entry.path().join("node.log")).unwrap_or_default();
            (record["is_head"] == true, format!("{own}{foreground}"))
        })
        .collect()
}

/// Pids recorded in pidfiles under `temp_dir` whose process still runs.
pub fn recorded_node_pids(temp_dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(temp_dir.join("nodes")) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("node.pid")).ok())
        .filter_map(|text| {
            let mut fields = text.split_whitespace();
            let pid: u32 = fields.next()?.parse().ok()?;
            let start: u64 = fields.next()?.parse().ok()?;
            process_running(pid, start).then_some(pid)
        })
        .collect()
}

/// True while `pid` runs with start time `start_ticks` and is not a zombie.
pub fn process_running(pid: u32, start_ticks: u64) -> bool {
    procfs::process::Process::new(pid as i32)
        .and_then(|process| process.stat())
        .is_ok_and(|stat| stat.starttime == start_ticks && stat.state != 'Z')
}

/// True while any process with `pid` exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    procfs::process::Process::new(pid as i32).and_then(|process| process.stat()).is_ok_and(|stat| stat.state != 'Z')
}

/// SIGKILLs every node recorded under `temp_dir` (daemonized ones the harness did not spawn).
pub fn kill_recorded_nodes(temp_dir: &Path) {
    for pid in recorded_node_pids(temp_dir) {
        if let Some(pid) = Pid::from_raw(pid as i32) {
            let _ = kill_process(pid, Signal::KILL);
        }
    }
}

/// Kills recorded nodes under a temp dir when dropped (for tests that start daemons).
#[derive(Debug)]
pub struct DaemonGuard(pub PathBuf);

impl Drop for DaemonGuard {
    fn drop(&mut self) {
        kill_recorded_nodes(&self.0);
    }
}

/// A driver the test talks to: it prints lines (`ok: ...`, markers) and waits on
/// its stdin where the test must act (kill a node, list state) before it goes on.
/// Killed by pid when dropped unfinished.
pub struct InteractiveDriver {
    child: Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
    /// Everything it printed so far.
    pub stdout: String,
}

impl InteractiveDriver {
    /// Starts `scenarios <args>` against the cluster under `temp_dir`.
    pub fn start(temp_dir: &Path, args: &[&str]) -> Self {
        Self::start_with_env(temp_dir, args, &[])
    }

    /// Like [`InteractiveDriver::start`], with extra environment variables.
    pub fn start_with_env(temp_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = driver_command(&scenarios_bin(), temp_dir, args)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the driver");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Self { child, lines, stdout: String::new() }
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads lines until one equals `marker` (true) or the output ends (false).
    pub fn read_until(&mut self, marker: &str) -> bool {
        self.read_until_prefix(marker).is_some_and(|line| line == marker)
    }

    /// Reads lines until one starts with `prefix`; returns that line.
    pub fn read_until_prefix(&mut self, prefix: &str) -> Option<String> {
        for line in self.lines.by_ref() {
            let line = line.ok()?;
            self.stdout.push_str(&line);
            self.stdout.push('\n');
            if line.starts_with(prefix) {
                return Some(line);
            }
        }
        None
    }

    /// Its stderr to the end (for failure messages, once its stdout ended).
    pub fn read_stderr(&mut self) -> String {
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            use std::io::Read;
            let _ = pipe.read_to_string(&mut stderr);
        }
        stderr
    }

    /// Sends one line to its stdin.
    pub fn send_line(&mut self, line: &str) {
        use std::io::Write;
        if let Some(stdin) = self.child.stdin.as_mut() {
            let _ = writeln!(stdin, "{line}");
        }
    }

    /// Closes its stdin, reads the rest, waits for it; (success, stdout, stderr).
    pub fn finish(mut self) -> (bool, String, String) {
        drop(self.child.stdin.take());
        while self.read_until_prefix("\u{0}").is_some() {}
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            use std::io::Read;
            let _ = pipe.read_to_string(&mut stderr);
        }
        let success = self.child.wait().is_ok_and(|status| status.success());
        (success, std::mem::take(&mut self.stdout), stderr)
    }

    /// The number of `ok: ` lines printed so far.
    pub fn checks(&self) -> usize {
        self.stdout.lines().filter(|line| line.starts_with("ok: ")).count()
    }
}

impl Drop for InteractiveDriver {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A driver (`scenarios named-hold NAME`) that creates a named actor in namespace
/// `shared` and keeps its job running until its stdin closes. Returns the driver
/// and the actor's worker pid, once the actor answers.
pub fn hold_named_actor(temp_dir: &Path, name: &str) -> (Child, u32) {
    let mut holder = driver_command(&scenarios_bin(), temp_dir, &["named-hold", name])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the holder");
    let mut lines = BufReader::new(holder.stdout.take().expect("holder stdout")).lines();
    let mut actor_pid = None;
    loop {
        let line = lines.next().expect("holder output").expect("holder line");
        if let Some(pid) = line.strip_prefix("actor-pid: ") {
            actor_pid = pid.parse().ok();
        }
        if line == "ready" {
            break;
        }
    }
    (holder, actor_pid.expect("the holder printed its actor's pid"))
}

/// Pids of live processes (not zombies) in process group `group`.
pub fn processes_in_group(group: i32) -> Vec<i32> {
    procfs::process::all_processes()
        .map(|all| {
            all.filter_map(Result::ok)
                .filter_map(|process| process.stat().ok())
                .filter(|stat| stat.pgrp == group && stat.state != 'Z')
                .map(|stat| stat.pid)
                .collect()
        })
        .unwrap_or_default()
}
