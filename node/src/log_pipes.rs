//! How far a worker's output got: each of its stdout and stderr pipes has a
//! copier (`worker_logs::copy`) that says whether it is waiting on the pipe or
//! writing what it read. A driver ending its job asks its nodes to flush the
//! job's output (`FlushLogs`): each node waits — on these events, not a timer —
//! until every pipe of the job's workers is empty and its copier is waiting,
//! so everything the workers printed before is in the log files, then has the
//! log monitor send it.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};

use manta_proto::{JobId, WorkerId};
use tokio::sync::watch;

/// What a pipe's copier is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyState {
    /// Waiting for the pipe: all it read is in the file.
    Waiting,
    /// Writing what it read into the file.
    Writing,
    /// The pipe closed (the worker exited) and everything was written.
    Closed,
}

/// One pipe being copied: its copier's state, and a duplicate of its read end
/// (to ask how many bytes wait in it).
#[derive(Clone)]
pub struct PipeWatch {
    state: watch::Receiver<CopyState>,
    read_end: Arc<OwnedFd>,
}

impl PipeWatch {
    /// Watches the pipe `read_end` reads from (a duplicate is kept); the copier
    /// reports on the returned sender.
    pub fn new(read_end: impl AsFd) -> std::io::Result<(Self, watch::Sender<CopyState>)> {
        let duplicate = rustix::io::dup(read_end.as_fd())?;
        let (sender, state) = watch::channel(CopyState::Writing);
        Ok((Self { state, read_end: Arc::new(duplicate) }, sender))
    }

    /// Returns once everything written into the pipe before the call is in the file.
    pub async fn drained(mut self) {
        loop {
            let state = *self.state.borrow_and_update();
            let pending = || rustix::io::ioctl_fionread(self.read_end.as_fd()).unwrap_or(0);
            if state == CopyState::Closed || (state == CopyState::Waiting && pending() == 0) {
                return;
            }
            // The copier reports each read and write, so a wait here ends with its next one.
            if self.state.changed().await.is_err() {
                return;
            }
        }
    }
}

/// A worker's job and its open pipes (`true`: stderr).
type WorkerPipes = (JobId, Vec<(bool, PipeWatch)>);

/// The open pipes of every worker on this node, by worker.
#[derive(Clone, Default)]
pub struct Pipes(Arc<Mutex<HashMap<WorkerId, WorkerPipes>>>);

impl std::fmt::Debug for Pipes {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let workers = self.0.lock().map(|pipes| pipes.len()).unwrap_or(0);
        formatter.debug_struct("Pipes").field("workers", &workers).finish()
    }
}

impl Pipes {
    /// Adds the pipe of `worker_id`'s stderr (`is_err`) or stdout.
    pub fn add(&self, worker_id: WorkerId, job_id: JobId, is_err: bool, pipe: PipeWatch) {
        let mut pipes = self.0.lock().expect("pipes lock");
        pipes.entry(worker_id).or_insert_with(|| (job_id, Vec::new())).1.push((is_err, pipe));
    }

    /// Forgets a pipe whose copier finished (its duplicate read end closes).
    pub fn close(&self, worker_id: WorkerId, is_err: bool) {
        let mut pipes = self.0.lock().expect("pipes lock");
        if let Some((_, streams)) = pipes.get_mut(&worker_id) {
            streams.retain(|(stream, _)| *stream != is_err);
            if streams.is_empty() {
                pipes.remove(&worker_id);
            }
        }
    }

    /// Returns once every pipe of `job_id`'s workers is drained into its file.
    pub async fn drained(&self, job_id: JobId) {
        let pipes: Vec<PipeWatch> = {
            let pipes = self.0.lock().expect("pipes lock");
            let of_job = pipes.values().filter(|(job, _)| *job == job_id);
            of_job.flat_map(|(_, streams)| streams.iter().map(|(_, pipe)| pipe.clone())).collect()
        };
        for pipe in pipes {
            pipe.drained().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Duration;

    use super::*;
    use crate::worker_logs::{Rotation, copy};

    #[tokio::test]
    async fn a_flush_returns_once_what_was_printed_is_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker-x.out");
        let (read_end, write_end) = rustix::pipe::pipe().unwrap();
        let (watch, state) = PipeWatch::new(&read_end).unwrap();
        let pipes = Pipes::default();
        let (worker, job) = (WorkerId::random(), JobId::from_counter(1));
        pipes.add(worker, job, false, watch);
        let reader = tokio::net::unix::pipe::Receiver::from_owned_fd(read_end).unwrap();
        let copier = tokio::spawn(copy(reader, path.clone(), Rotation::default(), state));
        let mut writer = std::fs::File::from(write_end);
        for round in 0..50 {
            writer.write_all(format!("line {round}\n").as_bytes()).unwrap();
            tokio::time::timeout(Duration::from_secs(10), pipes.drained(job)).await.expect("drained in time");
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(text.ends_with(&format!("line {round}\n")), "round {round}: {text:?}");
        }
        // Another job's flush does not wait for this job's pipes.
        writer.write_all(b"more\n").unwrap();
        pipes.drained(JobId::from_counter(2)).await;
        drop(writer);
        copier.await.unwrap().unwrap();
        tokio::time::timeout(Duration::from_secs(10), pipes.drained(job)).await.expect("a closed pipe is drained");
        pipes.close(worker, false);
        assert!(pipes.0.lock().unwrap().is_empty(), "a closed pipe is forgotten");
    }
}
