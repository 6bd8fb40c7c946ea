//! The log monitor: tails every worker's stdout and stderr file in the node's
//! log folder (polling, as Ray's monitor does: one code path for new files,
//! truncation and deleted files), names lines after the task or actor the worker
//! ran (from the marker lines workers print), and sends them in batches to the
//! drivers subscribed to the worker's job. A worker printing faster than the rate
//! limit has the excess held back: it stays in the file and the driver is told how
//! many lines were held.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use manta_proto::logs::{LogBatchEvent, TASK_NAME_MARKER, WorkerLines};
use manta_proto::message::Event;
use manta_proto::net::PeerHandle;
use manta_proto::{JobId, WorkerId};
use ractor::{Actor, ActorProcessingErr, ActorRef};

/// How often files are polled.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Bytes read from one file per poll, at most.
const MAX_BYTES_PER_POLL: u64 = 8 << 20;
/// A line longer than this without a newline is cut here and sent with [`CUT_MARKER`].
pub const MAX_LINE_BYTES: usize = 64 << 10;
/// Ends a line cut at [`MAX_LINE_BYTES`].
pub const CUT_MARKER: &str = " [line cut: over 64 KiB without a newline]";

/// A worker log file name, parsed: `worker-<worker_id>-<job_id>-<pid>.<out|err>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFileName {
    /// The worker.
    pub worker_id: WorkerId,
    /// Its job.
    pub job_id: JobId,
    /// Its pid.
    pub pid: u32,
    /// True for `.err`.
    pub is_err: bool,
}

impl LogFileName {
    /// The file name of a worker's stream.
    pub fn format(worker_id: WorkerId, job_id: JobId, pid: u32, is_err: bool) -> String {
        format!("worker-{worker_id}-{job_id}-{pid}.{}", if is_err { "err" } else { "out" })
    }

    /// Parses a file name; `None` for other files.
    pub fn parse(name: &str) -> Option<Self> {
        let (stem, suffix) = name.rsplit_once('.')?;
        let is_err = match suffix {
            "out" => false,
            "err" => true,
            _ => return None,
        };
        let mut parts = stem.strip_prefix("worker-")?.split('-');
        let worker_id = parts.next()?.parse().ok()?;
        let job_id = parts.next()?.parse().ok()?;
        let pid = parts.next()?.parse().ok()?;
        parts.next().is_none().then_some(Self { worker_id, job_id, pid, is_err })
    }
}

/// One tailed file.
#[derive(Debug)]
pub struct Tail {
    file: LogFileName,
    name: String,
    /// The file being read (kept open: after a rotation its rest is read from here).
    handle: Option<File>,
    inode: u64,
    offset: u64,
    partial: Vec<u8>,
    /// Lines the rate limit may still let through this second.
    budget: u64,
    held_back: u64,
    /// Its worker exited and everything was read: the file is closed and not polled again.
    done: bool,
    /// Polls in a row that found its worker gone and nothing new.
    quiet_since_exit: u32,
    /// Rotated files still to read before the current one, oldest first (each
    /// handle at the position reached).
    backlog: std::collections::VecDeque<File>,
}

/// Polls in a row with the worker gone and nothing new before its file is closed
/// (the node may still be copying the last of the worker's pipe).
const QUIET_POLLS_BEFORE_CLOSE: u32 = 10;

/// What one poll of one file gave.
#[derive(Debug, Default, PartialEq)]
pub struct Polled {
    /// Complete lines, markers removed, each with the task or actor name in force
    /// when it was printed.
    pub lines: Vec<(String, String)>,
    /// Lines over the rate limit (skipped, still in the file).
    pub held_back: u64,
}

/// Splits `bytes` (after any `partial` line kept from before) into lines: marker lines
/// update `name`, up to `budget` lines are kept, the rest are counted as held back.
/// An unfinished last line stays in `partial`, at most [`MAX_LINE_BYTES`] of it: a
/// longer one is cut there and sent on with [`CUT_MARKER`].
pub fn split_lines(partial: &mut Vec<u8>, bytes: &[u8], name: &mut String, budget: &mut u64) -> Polled {
    let mut polled = Polled::default();
    partial.extend_from_slice(bytes);
    let mut start = 0;
    loop {
        // Look no further than one line's cap: a long run without newlines is cut, not rescanned.
        let line = match partial[start..].iter().take(MAX_LINE_BYTES + 1).position(|byte| *byte == b'\n') {
            Some(end) => {
                let line = String::from_utf8_lossy(&partial[start..start + end]).into_owned();
                start += end + 1;
                line
            }
            _ if partial.len() - start > MAX_LINE_BYTES => {
                let mut line = String::from_utf8_lossy(&partial[start..start + MAX_LINE_BYTES]).into_owned();
                line.push_str(CUT_MARKER);
                start += MAX_LINE_BYTES;
                line
            }
            _ => break,
        };
        if let Some(task) = line.strip_prefix(TASK_NAME_MARKER) {
            *name = task.to_string();
            continue;
        }
        if *budget == 0 {
            polled.held_back += 1;
            continue;
        }
        *budget -= 1;
        polled.lines.push((name.clone(), line));
    }
    partial.drain(..start);
    polled
}

/// Start-up arguments of the [`LogMonitor`].
#[derive(Clone, Debug)]
pub struct LogMonitorArgs {
    /// The node's worker log folder.
    pub log_dir: PathBuf,
    /// The node's IP, for the `ip=` prefix.
    pub ip: String,
    /// Lines per second one worker stream may send (the rest are held back).
    pub max_lines_per_second: u64,
    /// Where each file was read up to, kept across a restart of the monitor
    /// (so a restarted one neither repeats nor skips lines).
    pub offsets: Arc<Mutex<HashMap<PathBuf, Tail>>>,
    /// Log files of exited workers untouched for this long are removed (`--log-retention`).
    pub retention: Duration,
}

/// Parses a retention such as `30s`, `15m`, `12h` or `7d` (a bare number is seconds).
pub fn parse_retention(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: f64 = number.parse().map_err(|_| format!("{text:?} is not a duration like 30s, 15m, 12h or 7d"))?;
    let seconds = match unit {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        other => return Err(format!("unknown unit {other:?} in {text:?}; use s, m, h or d")),
    };
    if !(value.is_finite() && value > 0.0) {
        return Err(format!("{text:?} must be more than zero"));
    }
    Ok(Duration::from_secs_f64(value * seconds))
}

/// Removes the log files (rotated copies included) of workers that exited, once
/// untouched for `retention`; returns the paths removed.
pub fn expire_logs(dir: &Path, retention: Duration, now: std::time::SystemTime) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut removed = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        // `worker-….out`, or a rotated copy `worker-….out.3`.
        let base = match name.rsplit_once('.') {
            Some((base, index)) if index.chars().all(|c| c.is_ascii_digit()) => base.to_string(),
            _ => name.clone(),
        };
        let Some(file) = LogFileName::parse(&base) else { continue };
        if !worker_exited(&file) {
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|metadata| metadata.modified())
            .is_ok_and(|modified| now.duration_since(modified).is_ok_and(|age| age >= retention));
        if old && std::fs::remove_file(entry.path()).is_ok() {
            removed.push(entry.path());
        }
    }
    removed
}

/// Messages to the [`LogMonitor`].
pub enum LogMonitorMsg {
    /// Send `job`'s lines to this link.
    Subscribe(JobId, PeerHandle),
    /// Timer: poll the files.
    Poll,
    /// Poll now, then answer (the lines found are sent before the answer).
    Flush(ractor::RpcReplyPort<()>),
}

/// State of the [`LogMonitor`].
pub struct LogMonitorState {
    args: LogMonitorArgs,
    tails: HashMap<PathBuf, Tail>,
    subscribers: Vec<(JobId, PeerHandle)>,
    ticks: u64,
    ticker: tokio::task::JoinHandle<()>,
}

impl Drop for LogMonitorState {
    fn drop(&mut self) {
        self.ticker.abort();
        *self.args.offsets.lock().expect("offsets lock") = std::mem::take(&mut self.tails);
    }
}

/// The log monitor actor.
#[derive(Debug, Default)]
pub struct LogMonitor;

impl Actor for LogMonitor {
    type Msg = LogMonitorMsg;
    type State = LogMonitorState;
    type Arguments = LogMonitorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<LogMonitorMsg>,
        args: LogMonitorArgs,
    ) -> Result<LogMonitorState, ActorProcessingErr> {
        let ticker = myself.send_interval(POLL_INTERVAL, || LogMonitorMsg::Poll);
        let tails = std::mem::take(&mut *args.offsets.lock().expect("offsets lock"));
        Ok(LogMonitorState { args, tails, subscribers: Vec::new(), ticks: 0, ticker })
    }

    async fn handle(
        &self,
        _myself: ActorRef<LogMonitorMsg>,
        message: LogMonitorMsg,
        state: &mut LogMonitorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            LogMonitorMsg::Subscribe(job_id, peer) => {
                tracing::debug!(%job_id, peer = %peer.label(), "driver subscribed to worker logs");
                state.subscribers.push((job_id, peer));
            }
            LogMonitorMsg::Poll => poll(state),
            LogMonitorMsg::Flush(reply) => {
                poll(state);
                let _ = reply.send(());
            }
        }
        Ok(())
    }
}

fn poll(state: &mut LogMonitorState) {
    state.subscribers.retain(|(_, peer)| !peer.is_closed());
    state.ticks += 1;
    let refill = state.ticks.is_multiple_of(1000 / POLL_INTERVAL.as_millis() as u64);
    // Old logs of exited workers go, checked every ten seconds at most.
    if state.ticks.is_multiple_of(100) || state.ticks == 1 {
        for path in expire_logs(&state.args.log_dir, state.args.retention, std::time::SystemTime::now()) {
            state.tails.remove(&path);
        }
    }
    discover(&state.args.log_dir, &mut state.tails, state.args.max_lines_per_second);
    let mut batches: HashMap<JobId, Vec<WorkerLines>> = HashMap::new();
    let mut gone = Vec::new();
    for (path, tail) in state.tails.iter_mut() {
        if refill {
            tail.budget = state.args.max_lines_per_second;
        }
        if tail.done {
            continue;
        }
        // Lines wait in the file until the job's driver subscribes. A file already
        // read (its driver subscribed, then left) is closed once its worker is gone.
        if !state.subscribers.iter().any(|(job, _)| *job == tail.file.job_id) {
            if tail.handle.is_some() && worker_exited(&tail.file) {
                tail.handle = None;
                tail.done = true;
            }
            continue;
        }
        match read_new(path, tail) {
            Ok(mut polled) => {
                close_if_finished(tail, &mut polled);
                tail.held_back += polled.held_back;
                if polled.lines.is_empty() && tail.held_back == 0 {
                    continue;
                }
                let file = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
                let streams = batches.entry(tail.file.job_id).or_default();
                // One entry per run of lines printed under the same task or actor name.
                for (name, line) in polled.lines {
                    match streams.last_mut() {
                        Some(last)
                            if last.worker_id == tail.file.worker_id
                                && last.is_err == tail.file.is_err
                                && last.name == name =>
                        {
                            last.lines.push(line)
                        }
                        _ => streams.push(WorkerLines {
                            worker_id: tail.file.worker_id,
                            pid: tail.file.pid,
                            name,
                            is_err: tail.file.is_err,
                            lines: vec![line],
                            held_back: 0,
                            file: file.clone(),
                        }),
                    }
                }
                let held_back = std::mem::take(&mut tail.held_back);
                if held_back > 0 {
                    streams.push(WorkerLines {
                        worker_id: tail.file.worker_id,
                        pid: tail.file.pid,
                        name: tail.name.clone(),
                        is_err: tail.file.is_err,
                        lines: Vec::new(),
                        held_back,
                        file,
                    });
                }
            }
            Err(_) => gone.push(path.clone()),
        }
    }
    for path in gone {
        state.tails.remove(&path);
    }
    for (job_id, streams) in batches {
        let event = Event::LogBatch(LogBatchEvent { ip: state.args.ip.clone(), streams });
        for (_, peer) in state.subscribers.iter().filter(|(job, _)| *job == job_id) {
            let _ = peer.send_event(event.clone());
        }
    }
}

/// Closes the file of a worker that exited once nothing new came for a while
/// (a last line without a newline is sent then), so a node that ran thousands of
/// workers does not keep their files open.
fn close_if_finished(tail: &mut Tail, polled: &mut Polled) {
    if !tail.backlog.is_empty() || !worker_exited(&tail.file) || !polled.lines.is_empty() || polled.held_back > 0 {
        tail.quiet_since_exit = 0;
        return;
    }
    tail.quiet_since_exit += 1;
    if tail.quiet_since_exit < QUIET_POLLS_BEFORE_CLOSE {
        return;
    }
    if !tail.partial.is_empty() {
        let line = String::from_utf8_lossy(&std::mem::take(&mut tail.partial)).into_owned();
        polled.lines.push((tail.name.clone(), line));
    }
    tail.handle = None;
    tail.done = true;
}

/// True once the worker process that writes `file` is gone.
fn worker_exited(file: &LogFileName) -> bool {
    !Path::new(&format!("/proc/{}", file.pid)).exists()
}

/// Starts tailing worker log files not seen before.
fn discover(dir: &Path, tails: &mut HashMap<PathBuf, Tail>, budget: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if tails.contains_key(&path) {
            continue;
        }
        let Some(file) = path.file_name().and_then(|name| LogFileName::parse(&name.to_string_lossy())) else {
            continue;
        };
        let inode = entry.metadata().map(|metadata| metadata.ino()).unwrap_or(0);
        tails.insert(
            path,
            Tail {
                file,
                name: String::new(),
                handle: None,
                inode,
                offset: 0,
                partial: Vec::new(),
                budget,
                held_back: 0,
                done: false,
                quiet_since_exit: 0,
                backlog: Default::default(),
            },
        );
    }
}

/// Reads what was appended since the last poll. After a rotation (a new file at
/// the path) the rest of the old file is read through the handle kept open, then
/// the copies rotated in between, then the new one from its start; after a
/// truncation, from the start. `Err` when the file is gone.
///
/// Every file is known by the inode of the handle actually opened (never by a
/// name looked up before or after), so a rotation racing with a poll can neither
/// make a file be read twice nor skipped.
fn read_new(path: &Path, tail: &mut Tail) -> std::io::Result<Polled> {
    if tail.done {
        return Ok(Polled::default());
    }
    let mut bytes = Vec::new();
    let rotated = match tail.handle {
        None => true,
        Some(_) => std::fs::metadata(path)?.ino() != tail.inode,
    };
    if rotated {
        let current = File::open(path)?;
        let current_inode = current.metadata()?.ino();
        let older = match tail.handle.take() {
            Some(mut old) => {
                // The rest of the old file comes first, read through the handle kept open.
                old.seek(SeekFrom::Start(tail.offset))?;
                tail.backlog.push_back(old);
                Some(tail.inode)
            }
            // First look: the copies rotated before it come first.
            None => None,
        };
        tail.backlog.extend(backups_between(path, older, current_inode));
        tail.handle = Some(current);
        tail.inode = current_inode;
        tail.offset = 0;
    }
    // At most MAX_BYTES_PER_POLL per poll: the rotated files first, each from where
    // the last poll stopped, then the current one.
    let mut room = MAX_BYTES_PER_POLL;
    while room > 0
        && let Some(older) = tail.backlog.front_mut()
    {
        let read = older.by_ref().take(room).read_to_end(&mut bytes)? as u64;
        room -= read;
        if room > 0 {
            tail.backlog.pop_front();
        }
    }
    let file = tail.handle.as_mut().expect("opened above");
    let len = file.metadata()?.len();
    if len < tail.offset {
        tail.offset = 0;
        tail.partial.clear();
    }
    file.seek(SeekFrom::Start(tail.offset))?;
    let before = bytes.len();
    file.take(room).read_to_end(&mut bytes)?;
    tail.offset += (bytes.len() - before) as u64;
    if bytes.is_empty() {
        return Ok(Polled::default());
    }
    Ok(split_lines(&mut tail.partial, &bytes, &mut tail.name, &mut tail.budget))
}

/// Opens the rotated copies of `path` (`path.1` is the newest) that are newer
/// than the one with inode `older` (all of them when `None`, or when it is gone)
/// and older than the one with inode `newer` (when it was rotated already), oldest first.
fn backups_between(path: &Path, older: Option<u64>, newer: u64) -> Vec<File> {
    const MAX_BACKUPS: u32 = 64;
    let backup = |index: u32| {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{index}"));
        PathBuf::from(name)
    };
    let existing: Vec<(u32, u64)> = (1..=MAX_BACKUPS)
        .map_while(|index| std::fs::metadata(backup(index)).ok().map(|metadata| (index, metadata.ino())))
        .collect();
    let index_of = |wanted: u64| existing.iter().find(|(_, inode)| *inode == wanted).map(|(index, _)| *index);
    let below = older.and_then(index_of).unwrap_or(MAX_BACKUPS + 1);
    let above = index_of(newer).unwrap_or(0);
    existing
        .iter()
        .rev()
        .filter(|(index, _)| *index < below && *index > above)
        .filter_map(|(index, _)| File::open(backup(*index)).ok())
        .collect()
}

#[cfg(test)]
mod tests;
