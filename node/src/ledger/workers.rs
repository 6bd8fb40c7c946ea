//! Who may act on a worker ([`WorkerAct`], [`LeaseLedger::permits`]).

use manta_proto::WorkerId;
use manta_proto::net::LinkId;

use super::{LeaseLedger, WorkerState};

/// What a peer asks to do to a worker; each has its rule of who may ([`LeaseLedger::permits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerAct {
    /// Give its lease back: only the lease's holder.
    ReturnLease,
    /// Say it blocks in `get` or resumes: the worker itself or the lease's holder.
    Block,
    /// End it: only the lease's holder (the GCS ends any worker; checked by the caller).
    Kill,
}

impl WorkerAct {
    fn name(self) -> &'static str {
        match self {
            WorkerAct::ReturnLease => "ReturnWorkerLease",
            WorkerAct::Block => "WorkerBlocked",
            WorkerAct::Kill => "KillWorker",
        }
    }
}

impl LeaseLedger {
    /// Whether the peer on `from` may do `act` to `worker_id`: a leased worker
    /// answers only to its lease's holder (and, for `Block`, to itself). Acts on a
    /// worker that is not leased (or no longer exists) change nothing and are allowed.
    pub fn permits(&self, worker_id: WorkerId, act: WorkerAct, from: LinkId) -> Result<(), String> {
        let Some(worker) = self.workers.get(&worker_id) else { return Ok(()) };
        let WorkerState::Leased(lease) = &worker.state else { return Ok(()) };
        let allowed = lease.caller == from || (act == WorkerAct::Block && worker.link == Some(from));
        if allowed {
            return Ok(());
        }
        Err(format!(
            "{} for worker {worker_id} may come only from the holder of its lease{}",
            act.name(),
            if act == WorkerAct::Block { " or the worker itself" } else { " or the GCS" }
        ))
    }
}
