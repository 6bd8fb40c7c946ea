//! The documented lifecycle: daemonized `manta start`, `manta status`, `manta stop`.

use std::time::{Duration, Instant};

use manta_integration::{DaemonGuard, manta_command, phase, pid_alive, recorded_node_pids, wait_until};

#[test]
fn cluster_start_status_stop_leaves_no_process() {
    let temp = tempfile::tempdir().unwrap();
    let _guard = DaemonGuard(temp.path().to_path_buf());
    let manta = |args: &[&str]| manta_command(temp.path(), args).output().unwrap();

    phase("manta start --head returns once the head answers, and says how to join");
    let started = Instant::now();
    let output = manta(&["start", "--head", "--port", "0"]);
    eprintln!("head ready in {:?}", started.elapsed());
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let address = std::fs::read_to_string(temp.path().join("address")).unwrap();
    assert!(stdout.contains(&format!("manta start --address {address}")), "{stdout}");
    assert!(stdout.contains("token"), "{stdout}");
    let token = std::fs::read_to_string(temp.path().join("token")).unwrap();
    assert!(!stdout.contains(token.trim()), "the token itself must never be printed");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(temp.path().join("token")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    phase("two nodes join from the same temp dir (token read from the file)");
    for _ in 0..2 {
        let output = manta(&["start", "--address", &address, "--num-cpus", "1"]);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        assert!(String::from_utf8_lossy(&output.stdout).contains("joined the cluster"));
    }
    let output = manta(&["status"]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(text.lines().filter(|line| line.contains("pid ")).count(), 3, "{text}");
    let pids = recorded_node_pids(temp.path());
    assert_eq!(pids.len(), 3);

    phase("manta stop returns once every node process has exited");
    let output = manta(&["stop"]);
    assert!(output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("Stopped 3"),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    for pid in &pids {
        assert!(!pid_alive(*pid), "process {pid} survived manta stop");
    }
    assert!(recorded_node_pids(temp.path()).is_empty());
    assert!(!temp.path().join("address").exists(), "the head removes its address file");

    phase("a second stop finds nothing");
    let output = manta(&["stop"]);
    assert!(String::from_utf8_lossy(&output.stdout).contains("No running manta node"));

    phase("a restarted head reuses the token");
    let output = manta(&["start", "--head", "--port", "0"]);
    assert!(output.status.success());
    assert_eq!(std::fs::read_to_string(temp.path().join("token")).unwrap(), token);
    let output = manta(&["stop", "--force"]);
    assert!(output.status.success());
    wait_until("no recorded node runs", Duration::from_secs(5), || recorded_node_pids(temp.path()).is_empty());
}

#[test]
fn cluster_stale_pidfile_never_kills_a_stranger() {
    let temp = tempfile::tempdir().unwrap();
    phase("a pidfile naming a live process with another start time is ignored");
    let mut stranger = std::process::Command::new("sleep").arg("30").spawn().unwrap();
    let dir = temp.path().join("nodes").join("node-stale");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("node.pid"), format!("{} 1\n", stranger.id())).unwrap();
    let output = manta_command(temp.path(), &["stop", "--force"]).output().unwrap();
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("No running manta node"));
    assert!(stranger.try_wait().unwrap().is_none(), "the stranger must still run");

    phase("a pidfile naming a live process with its true start time, but not manta, is ignored too");
    let start_ticks = procfs::process::Process::new(stranger.id() as i32).unwrap().stat().unwrap().starttime;
    std::fs::write(dir.join("node.pid"), format!("{} {start_ticks}\n", stranger.id())).unwrap();
    let output = manta_command(temp.path(), &["stop", "--force"]).output().unwrap();
    assert!(output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("not manta"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stranger.try_wait().unwrap().is_none(), "the stranger must still run");
    stranger.kill().unwrap();
    stranger.wait().unwrap();
}

#[test]
fn cluster_status_without_a_cluster_says_what_to_do() {
    let temp = tempfile::tempdir().unwrap();
    let output = manta_command(temp.path(), &["status"]).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("manta start --head"));
}

#[test]
fn cluster_node_log_rotates_like_worker_logs() {
    let temp = tempfile::tempdir().unwrap();
    let _guard = DaemonGuard(temp.path().to_path_buf());
    let manta = |args: &[&str]| manta_command(temp.path(), args).output().unwrap();
    let output =
        manta(&["start", "--head", "--port", "0", "--log-rotation-max-bytes", "3000", "--log-rotation-backups", "2"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let node_dir = std::fs::read_dir(temp.path().join("nodes")).unwrap().next().unwrap().unwrap().path();

    phase("each `manta status` adds lines to node.log; past 3 kB it becomes node.log.1");
    wait_until("node.log was rotated twice", Duration::from_secs(60), || {
        manta(&["status"]);
        node_dir.join("node.log.2").exists()
    });
    assert!(node_dir.join("node.log").exists(), "a new node.log is written after each rotation");
    assert!(!node_dir.join("node.log.3").exists(), "two backups are kept");
    let rotated = std::fs::read_to_string(node_dir.join("node.log.1")).unwrap();
    assert!(rotated.contains("link up") || rotated.contains("INFO"), "{rotated}");
    assert!(manta(&["stop"]).status.success());
}
