//! Running a job's entrypoint: a shell command in its own process group, its
//! stdout and stderr (one pipe) copied into `job-driver-<id>.log` and sent to
//! the GCS as [`DriverLogEvent`]s, signals to the whole group, and the tail of
//! the log for a failure message.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use manta_proto::message::Event;
use manta_proto::net::PeerHandle;
use manta_proto::submission::DriverLogEvent;
use rustix::process::{Pid, Signal};

/// Bytes of the log's end quoted in a failure message (Ray's figure).
pub const FAILURE_TAIL_CHARS: u64 = 20_000;
/// Bytes read from the pipe at once (one log event at most).
const READ_BYTES: usize = 64 << 10;

/// How to start an entrypoint.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The shell command.
    pub command: String,
    /// Its current directory (the runtime env's working dir), else the node's.
    pub cwd: Option<PathBuf>,
    /// Variables set over the node's environment.
    pub env: BTreeMap<String, String>,
    /// Variables removed from the node's environment first.
    pub env_remove: Vec<String>,
    /// The driver log.
    pub log_path: PathBuf,
}

/// A started entrypoint: the group leader's pid. Dropping it without
/// [`Running::disarm`] kills the whole group (a supervisor that fails takes
/// its entrypoint with it).
#[derive(Debug)]
pub struct Running {
    /// The shell's pid, which is also the process group id.
    pub pid: u32,
    armed: bool,
}

impl Running {
    /// Sends `signal` to every process of the group.
    pub fn signal(&self, signal: Signal) {
        if let Some(pid) = Pid::from_raw(self.pid as i32) {
            let _ = rustix::process::kill_process_group(pid, signal);
        }
    }

    /// The group ended on its own: dropping no longer kills it.
    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.armed {
            self.signal(Signal::KILL);
        }
    }
}

/// Starts `launch` with `sh -c`, in a new process group, output into one pipe.
/// Returns the running group, the child (to wait on) and the pipe's read end.
pub fn start(launch: &Launch) -> std::io::Result<(Running, tokio::process::Child, std::io::PipeReader)> {
    let (reader, writer) = std::io::pipe()?;
    let mut command = std::process::Command::new("/bin/sh");
    command.arg("-c").arg(&launch.command);
    for name in &launch.env_remove {
        command.env_remove(name);
    }
    command
        .envs(&launch.env)
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer.try_clone()?))
        .stderr(Stdio::from(writer))
        .process_group(0);
    if let Some(cwd) = &launch.cwd {
        command.current_dir(cwd);
    }
    // SAFETY: only a syscall runs between fork and exec. The shell dies with this node process.
    unsafe {
        command.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL)).map_err(std::io::Error::from)
        });
    }
    let mut command = tokio::process::Command::from(command);
    command.kill_on_drop(false);
    let child = command.spawn()?;
    // The command's copies of the write end are closed with it: only the child holds one now.
    drop(command);
    let pid = child.id().unwrap_or(0);
    Ok((Running { pid, armed: true }, child, reader))
}

/// Copies the pipe into the log file and to the GCS until every writer closed
/// it; returns the bytes written. Runs on a blocking thread.
pub fn pump(mut reader: std::io::PipeReader, log_path: &Path, submission_id: &str, gcs: &PeerHandle) -> u64 {
    let mut file = match std::fs::OpenOptions::new().create(true).write(true).truncate(true).open(log_path) {
        Ok(file) => Some(file),
        Err(error) => {
            tracing::warn!(path = %log_path.display(), %error, "cannot write the job's driver log; its output goes only to followers");
            None
        }
    };
    let mut offset = 0u64;
    let mut buffer = vec![0u8; READ_BYTES];
    loop {
        let read = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let data = &buffer[..read];
        if let Some(file) = file.as_mut()
            && file.write_all(data).is_err()
        {
            tracing::warn!(path = %log_path.display(), "the job's driver log could not be written (disk full?)");
        }
        let event = DriverLogEvent { submission_id: submission_id.to_string(), offset, data: data.to_vec() };
        let _ = gcs.send_event(Event::DriverLog(event));
        offset += read as u64;
    }
    offset
}

/// The last `max` bytes of the log, as text.
pub fn tail(log_path: &Path, max: u64) -> String {
    let Ok(mut file) = std::fs::File::open(log_path) else { return String::new() };
    let size = file.metadata().map(|metadata| metadata.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(size.saturating_sub(max)));
    let mut bytes = Vec::new();
    let _ = file.take(max).read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// An exit status as Ray reports it: the code, or minus the signal that ended the process.
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().or_else(|| status.signal().map(|signal| -signal)).unwrap_or(-1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_of_the_whole_group_lands_in_the_log_and_a_stop_ends_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("job-driver-t.log");
        let launch = Launch {
            command: "echo out; echo err >&2; sleep 30 & wait".into(),
            cwd: Some(dir.path().to_path_buf()),
            env: [("GREETING".to_string(), "hi".to_string())].into(),
            env_remove: vec![],
            log_path: log_path.clone(),
        };
        let (mut running, mut child, reader) = start(&launch).unwrap();
        let copied = {
            let path = log_path.clone();
            std::thread::spawn(move || {
                let (mut reader, mut file) = (reader, std::fs::File::create(&path).unwrap());
                let (mut buffer, mut total) = ([0u8; 256], 0u64);
                loop {
                    match reader.read(&mut buffer).unwrap() {
                        0 => return total,
                        read => {
                            file.write_all(&buffer[..read]).unwrap();
                            total += read as u64;
                        }
                    }
                }
            })
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !tail(&log_path, 100).contains("err") && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        running.signal(Signal::TERM);
        let status = child.wait().await.unwrap();
        assert_eq!(exit_code(status), -15, "ended by SIGTERM");
        let bytes = copied.join().unwrap();
        running.disarm();
        let text = std::fs::read_to_string(&log_path).unwrap();
        assert!(text.contains("out\n") && text.contains("err\n"), "{text}");
        assert_eq!(bytes, text.len() as u64, "the pipe closed: the background sleep died with the group");
        assert_eq!(tail(&log_path, 4), "err\n");
    }
}
