//! `manta stop`: stop every node process recorded under `--temp-dir`.
//!
//! Only pids from pidfiles are signalled, and only while the process's start
//! time still matches the pidfile, so a stale pidfile never kills a stranger.
//! Joining nodes go first (they tell the GCS they are leaving), the head last.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use rustix::process::{Pid, Signal, kill_process};

use crate::session::{PidRecord, Session, default_temp_dir, remove_pidfile};

/// Flags of `manta stop`.
#[derive(Debug, Clone, Args)]
pub struct StopArgs {
    /// Session folder whose nodes to stop.
    #[arg(long, env = "MANTA_TEMP_DIR", default_value_os_t = default_temp_dir())]
    temp_dir: PathBuf,
    /// Seconds to wait after SIGTERM before sending SIGKILL.
    #[arg(short = 'g', long, default_value_t = 10)]
    grace_period: u64,
    /// Send SIGKILL at once.
    #[arg(short = 'f', long)]
    force: bool,
}

/// Runs `manta stop`.
pub fn run(args: StopArgs) -> ExitCode {
    let session = Session::new(&args.temp_dir);
    let mut workers = Vec::new();
    let mut heads = Vec::new();
    for node in session.nodes() {
        let Some(pid) = node.pid else { continue };
        if !pid.is_running() {
            remove_pidfile(&node.path);
            continue;
        }
        if let Err(reason) = is_own_manta_node(&node.path, &pid) {
            eprintln!("note: not signalling pid {} ({}): {reason}", pid.pid, node.path.display());
            continue;
        }
        let is_head = node.record.as_ref().is_some_and(|record| record.is_head);
        if is_head { heads.push((node.path, pid)) } else { workers.push((node.path, pid)) }
    }
    if workers.is_empty() && heads.is_empty() {
        println!("No running manta node under {}.", args.temp_dir.display());
        return ExitCode::SUCCESS;
    }
    let grace = Duration::from_secs(args.grace_period);
    let mut stopped = 0;
    let mut forced = 0;
    for group in [workers, heads] {
        let (done, killed) = stop_group(&group, args.force, grace);
        stopped += done;
        forced += killed;
    }
    let mut line = format!("Stopped {stopped} manta node process(es) under {}", args.temp_dir.display());
    if forced > 0 && !args.force {
        line.push_str(&format!(" ({forced} did not exit within {}s and were killed)", args.grace_period));
    }
    println!("{line}.");
    ExitCode::SUCCESS
}

/// Signals every process of a group, waits, escalates to SIGKILL; returns (stopped, killed).
fn stop_group(group: &[(PathBuf, PidRecord)], force: bool, grace: Duration) -> (usize, usize) {
    let first = if force { Signal::KILL } else { Signal::TERM };
    for (_, record) in group {
        signal(record, first);
    }
    let mut remaining = wait_for_exit(group.iter().map(|(_, record)| *record).collect(), grace);
    let killed = remaining.len();
    if !remaining.is_empty() {
        for record in &remaining {
            signal(record, Signal::KILL);
        }
        remaining = wait_for_exit(remaining, Duration::from_secs(5));
    }
    for (path, record) in group {
        if !remaining.contains(record) {
            remove_pidfile(path);
        } else {
            eprintln!("warning: process {} did not exit even after SIGKILL", record.pid);
        }
    }
    (group.len() - remaining.len(), killed)
}

/// A pidfile is acted on only when this user wrote it and the process it names runs
/// a manta binary (a pid reused by another program, or a planted pidfile, is left alone).
fn is_own_manta_node(dir: &std::path::Path, record: &PidRecord) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let pidfile = dir.join("node.pid");
    let owner = std::fs::symlink_metadata(&pidfile).map_err(|error| error.to_string())?.uid();
    if owner != rustix::process::geteuid().as_raw() {
        return Err(format!("its pidfile belongs to user {owner}"));
    }
    let executable = std::fs::read_link(format!("/proc/{}/exe", record.pid)).map_err(|error| error.to_string())?;
    let name = executable.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    let same_binary = std::env::current_exe().is_ok_and(|own| own == executable);
    if same_binary || name.starts_with("manta") {
        Ok(())
    } else {
        Err(format!("it runs {}, not manta", executable.display()))
    }
}

fn signal(record: &PidRecord, signal: Signal) {
    // Check identity right before signalling: the pid may have been reused.
    if !record.is_running() {
        return;
    }
    if let Some(pid) = Pid::from_raw(record.pid as i32) {
        let _ = kill_process(pid, signal);
    }
}

/// Polls until every process has exited or `timeout` passes; returns the survivors.
fn wait_for_exit(mut records: Vec<PidRecord>, timeout: Duration) -> Vec<PidRecord> {
    let deadline = Instant::now() + timeout;
    loop {
        records.retain(PidRecord::is_running);
        if records.is_empty() || Instant::now() >= deadline {
            return records;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
