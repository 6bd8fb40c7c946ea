//! Worker log lines at the driver: subscribing to every node's log monitor,
//! printing lines as `(name pid=N, ip=A) line`, and Ray's deduplication across
//! processes (`MANTA_DEDUP_LOGS=0` turns it off, `MANTA_DEDUP_LOGS_AGG_WINDOW_S`
//! sets the window, 5 s by default).

use std::collections::{HashMap, HashSet};
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use manta_proto::logs::{LogBatchEvent, SubscribeLogsRequest};
use manta_proto::message::Request;
use manta_proto::node::NodeState;

use crate::core::Core;

/// The dedup key of a line: digit runs and long hex runs masked.
pub fn canonical(line: &str) -> String {
    let mut key = String::with_capacity(line.len());
    let mut run = String::new();
    let flush = |run: &mut String, key: &mut String| {
        if run.is_empty() {
            return;
        }
        if run.chars().all(|c| c.is_ascii_digit()) {
            key.push('#');
        } else if run.len() >= 6 && run.chars().any(|c| c.is_ascii_digit()) {
            key.push('%');
        } else {
            key.push_str(run);
        }
        run.clear();
    };
    for c in line.chars() {
        if c.is_ascii_hexdigit() {
            run.push(c);
        } else {
            flush(&mut run, &mut key);
            key.push(c);
        }
    }
    flush(&mut run, &mut key);
    key
}

struct Seen {
    since: Instant,
    /// Lines counted instead of printed.
    repeats: u64,
    /// The last counted line, with its prefix, and whether it was stderr.
    last: Option<(String, bool)>,
    sources: HashSet<(u32, String)>,
}

/// Ray's log deduplication: the first line of a key prints; once a second process
/// printed it too, further copies within the window are counted and printed once,
/// at the end of the window, with `[repeated Nx across cluster]`.
pub struct Dedup {
    window: Duration,
    seen: HashMap<String, Seen>,
}

impl Dedup {
    /// A deduplicator with a `window`.
    pub fn new(window: Duration) -> Self {
        Self { window, seen: HashMap::new() }
    }

    /// True when `line` from `source` should print now (false: counted).
    pub fn offer(&mut self, now: Instant, source: (u32, String), line: &str, shown: &str, is_err: bool) -> bool {
        let key = canonical(line);
        match self.seen.get_mut(&key) {
            Some(seen) if now.duration_since(seen.since) < self.window => {
                seen.sources.insert(source);
                if seen.sources.len() > 1 {
                    seen.repeats += 1;
                    seen.last = Some((shown.to_string(), is_err));
                    return false;
                }
                true
            }
            _ => {
                let sources = HashSet::from([source]);
                self.seen.insert(key, Seen { since: now, repeats: 0, last: None, sources });
                true
            }
        }
    }

    /// The summary lines of windows that ended (all of them with `force`).
    pub fn expire(&mut self, now: Instant, force: bool) -> Vec<(String, bool)> {
        let window = self.window;
        let mut out = Vec::new();
        self.seen.retain(|_, seen| {
            if !force && now.duration_since(seen.since) < window {
                return true;
            }
            if let Some((shown, is_err)) = seen.last.take()
                && seen.repeats > 0
            {
                out.push((format!("{shown} [repeated {}x across cluster]", seen.repeats), is_err));
            }
            false
        });
        out
    }
}

/// The process's log printer (it outlives the runtime's core, so lines arriving
/// while the job shuts down still print).
pub(crate) fn printer() -> &'static LogPrinter {
    static PRINTER: std::sync::OnceLock<LogPrinter> = std::sync::OnceLock::new();
    PRINTER.get_or_init(LogPrinter::new)
}

/// The driver's log printer.
pub struct LogPrinter {
    dedup: Option<Mutex<Dedup>>,
    last_batch: Mutex<Instant>,
    colour: bool,
    expecting: std::sync::atomic::AtomicBool,
    /// Nodes whose log monitors send this driver its job's lines.
    subscribed: Mutex<HashSet<String>>,
}

impl LogPrinter {
    pub(crate) fn new() -> Self {
        let enabled = std::env::var("MANTA_DEDUP_LOGS").map(|value| value != "0").unwrap_or(true);
        let window = std::env::var("MANTA_DEDUP_LOGS_AGG_WINDOW_S")
            .ok()
            .and_then(|value| value.parse::<f64>().ok())
            .filter(|seconds| seconds.is_finite() && *seconds >= 0.0)
            .map(Duration::from_secs_f64)
            .unwrap_or(Duration::from_secs(5));
        Self {
            dedup: enabled.then(|| Mutex::new(Dedup::new(window))),
            last_batch: Mutex::new(Instant::now()),
            colour: std::io::stdout().is_terminal(),
            expecting: std::sync::atomic::AtomicBool::new(false),
            subscribed: Mutex::new(HashSet::new()),
        }
    }

    fn prefix(&self, name: &str, pid: u32, ip: &str) -> String {
        let text =
            if name.is_empty() { format!("(pid={pid}, ip={ip})") } else { format!("({name} pid={pid}, ip={ip})") };
        if self.colour { format!("\x1b[36m{text}\x1b[0m") } else { text }
    }

    /// Prints a batch from a node's log monitor.
    pub(crate) fn print(&self, batch: LogBatchEvent) {
        *self.last_batch.lock().expect("log lock") = Instant::now();
        let now = Instant::now();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        for stream in &batch.streams {
            let prefix = self.prefix(&stream.name, stream.pid, &batch.ip);
            let sink = if stream.is_err { &mut err } else { &mut out };
            for line in &stream.lines {
                let shown = format!("{prefix} {line}");
                let print = match &self.dedup {
                    Some(dedup) => dedup.lock().expect("dedup lock").offer(
                        now,
                        (stream.pid, batch.ip.clone()),
                        line,
                        &shown,
                        stream.is_err,
                    ),
                    None => true,
                };
                if print {
                    sink.push(shown);
                }
            }
            if stream.held_back > 0 {
                err.push(format!(
                    "{prefix} [manta: {} lines held back by the log rate limit; they are in {} on that node (manta logs)]",
                    stream.held_back, stream.file
                ));
            }
        }
        write_lines(&out, &err);
    }

    /// Prints the summaries of ended dedup windows (all with `force`).
    pub(crate) fn flush(&self, force: bool) {
        let Some(dedup) = &self.dedup else { return };
        let summaries = dedup.lock().expect("dedup lock").expire(Instant::now(), force);
        let (out, err): (Vec<_>, Vec<_>) = summaries.into_iter().partition(|(_, is_err)| !is_err);
        write_lines(
            &out.into_iter().map(|(line, _)| line).collect::<Vec<_>>(),
            &err.into_iter().map(|(line, _)| line).collect::<Vec<_>>(),
        );
    }

    /// Waits (at most `limit`) until no batch came for `quiet`, counting from now
    /// at the earliest (lines printed just before may still be on their way).
    pub(crate) async fn settle(&self, quiet: Duration, limit: Duration) {
        let started = Instant::now();
        let deadline = started + limit;
        while Instant::now() < deadline {
            let since = self.last_batch.lock().expect("log lock").elapsed().min(started.elapsed());
            if since >= quiet {
                return;
            }
            tokio::time::sleep(quiet - since).await;
        }
    }

    /// Notes that the job started workers (so shutdown waits for their last lines).
    pub(crate) fn expect_lines(&self) {
        self.expecting.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// True once the job started workers.
    pub(crate) fn expecting(&self) -> bool {
        self.expecting.load(std::sync::atomic::Ordering::Relaxed)
    }
}

fn write_lines(out: &[String], err: &[String]) {
    if !out.is_empty() {
        let mut stdout = std::io::stdout().lock();
        for line in out {
            let _ = writeln!(stdout, "{line}");
        }
        let _ = stdout.flush();
    }
    if !err.is_empty() {
        let mut stderr = std::io::stderr().lock();
        for line in err {
            let _ = writeln!(stderr, "{line}");
        }
    }
}

/// Subscribes to the log monitor of every alive node (new ones as they join) and
/// prints the summaries of ended dedup windows.
pub(crate) fn spawn_subscriber(core: &Arc<Core>) {
    let weak = Arc::downgrade(core);
    core.handle.spawn(async move {
        loop {
            let Some(core) = weak.upgrade() else { return };
            subscribe_new(&core).await;
            printer().flush(false);
            drop(core);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
}

/// Subscribes to the job's lines on every alive node not subscribed yet.
async fn subscribe_new(core: &Arc<Core>) {
    let Ok(nodes) = core.gcs.get_all_nodes().await else { return };
    for node in nodes.iter().filter(|node| node.state == NodeState::Alive) {
        if printer().subscribed.lock().expect("log lock").contains(&node.address) {
            continue;
        }
        let Ok(peer) = core.peers.get(&node.address).await else { continue };
        let request = Request::SubscribeLogs(SubscribeLogsRequest { job_id: core.job.job_id });
        if peer.call(request, Duration::from_secs(5)).await.is_ok() {
            printer().subscribed.lock().expect("log lock").insert(node.address.clone());
        }
    }
}

/// The job's last lines, before it ends: every node it subscribed to sends what
/// the job's workers printed so far, and answers once it did (`FlushLogs`). False
/// when a node could not (an older node): then the caller waits for quiet instead.
pub(crate) async fn flush_nodes(core: &Arc<Core>) -> bool {
    subscribe_new(core).await;
    let nodes: Vec<String> = printer().subscribed.lock().expect("log lock").iter().cloned().collect();
    let mut flushes = tokio::task::JoinSet::new();
    for address in nodes {
        let core = core.clone();
        flushes.spawn(async move {
            let peer = core.peers.get(&address).await.map_err(|_| ())?;
            let request = Request::FlushLogs(manta_proto::logs::FlushLogsRequest { job_id: core.job.job_id });
            peer.call(request, Duration::from_secs(3)).await.map(|_| ()).map_err(|_| ())
        });
    }
    let mut all = true;
    while let Some(done) = flushes.join_next().await {
        all &= matches!(done, Ok(Ok(())));
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_numbers_and_hex_ids() {
        assert_eq!(canonical("task 12 took 3.5 s"), canonical("task 7 took 9.1 s"));
        assert_eq!(canonical("worker 9f3a2b1c ready"), canonical("worker 0011aa22 ready"));
        assert_ne!(canonical("hello world"), canonical("goodbye world"));
        assert_eq!(canonical("a bead"), "a bead", "words made of hex letters stay");
    }

    #[test]
    fn repeats_across_processes_are_counted_and_summarised() {
        let mut dedup = Dedup::new(Duration::from_secs(5));
        let now = Instant::now();
        let a = (1, "ip".to_string());
        let b = (2, "ip".to_string());
        assert!(dedup.offer(now, a.clone(), "same 1", "(a) same 1", false));
        assert!(dedup.offer(now, a.clone(), "same 2", "(a) same 2", false), "one process: printed");
        assert!(!dedup.offer(now, b.clone(), "same 3", "(b) same 3", false));
        assert!(!dedup.offer(now, a, "same 4", "(a) same 4", false));
        assert!(dedup.expire(now, false).is_empty(), "the window is still open");
        let summary = dedup.expire(now + Duration::from_secs(6), false);
        assert_eq!(summary, vec![("(a) same 4 [repeated 2x across cluster]".to_string(), false)]);
        assert!(dedup.offer(now + Duration::from_secs(7), b, "same 5", "(b) same 5", false), "a new window");
    }
}
