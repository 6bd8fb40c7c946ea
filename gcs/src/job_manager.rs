//! [`JobManager`]: numbers jobs, and ends a job when its driver says so or its
//! driver's link drops (a driver killed with SIGKILL ends its job too).

use std::collections::HashMap;
use std::sync::Arc;

use manta_proto::message::Event;
use manta_proto::task::{
    JobFinishedEvent, JobRecord, JobRuntimeEnvEvent, RegisterJobReply, RegisterJobRequest, SetJobRuntimeEnvRequest,
};
use manta_proto::{ErrorCode, JobId, WireError};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::info;

use crate::actor_directory::DirectoryMsg;
use crate::pubsub::PubsubMsg;
use crate::storage::Rows;
use crate::{GcsRefs, Shared};
use manta_proto::net::LinkId;
use manta_proto::query::StateQuery;
use manta_proto::task::{JobState, ListStateReply, StateRows};

/// Jobs, the link of each running one's driver, and the history.
#[derive(Debug, Default)]
pub struct JobTable {
    next: u32,
    /// The link of each running job's driver; `None` for a recovered job whose driver has not reattached yet.
    running: HashMap<JobId, Option<LinkId>>,
    records: std::collections::BTreeMap<JobId, JobRecord>,
    /// Finished jobs dropped from the history by its bound.
    dropped: u64,
    store: Rows,
}

/// Finished jobs kept for `manta list jobs` and the dashboard.
const MAX_FINISHED_JOBS: usize = 10_000;

impl JobTable {
    /// A table holding recovered records; running jobs wait for their driver to reattach.
    pub fn restore(records: Vec<JobRecord>, store: Rows) -> Self {
        let next = records.iter().map(|record| record.job_id.counter()).max().unwrap_or(0);
        let running = records
            .iter()
            .filter(|record| record.state == JobState::Running)
            .map(|record| (record.job_id, None))
            .collect();
        let records = records.into_iter().map(|record| (record.job_id, record)).collect();
        Self { next, running, records, dropped: 0, store }
    }

    /// A driver whose GCS link came back claims its running job; false when the
    /// job ended, or when another link still drives it (a job cannot be taken over).
    pub fn reattach(&mut self, job_id: JobId, link_id: LinkId) -> bool {
        match self.running.get_mut(&job_id) {
            Some(link) if link.is_none_or(|current| current == link_id) => {
                *link = Some(link_id);
                true
            }
            _ => false,
        }
    }

    /// Only a running job's driver (the link that started or reattached it) may end it.
    pub fn may_finish(&self, job_id: JobId, from: LinkId) -> Result<(), WireError> {
        match self.running.get(&job_id) {
            Some(Some(driver)) if *driver != from => Err(WireError::new(
                ErrorCode::PermissionDenied,
                format!("FinishJob for job {job_id} may come only from the job's driver"),
            )),
            _ => Ok(()),
        }
    }

    /// Recovered jobs whose driver never came back.
    pub fn unattached(&self) -> Vec<JobId> {
        self.running.iter().filter(|(_, link)| link.is_none()).map(|(job_id, _)| *job_id).collect()
    }

    /// A new job driven over link `link_id`.
    pub fn start(&mut self, link_id: LinkId) -> JobId {
        self.next += 1;
        let job_id = JobId::from_counter(self.next);
        self.running.insert(job_id, Some(link_id));
        job_id
    }

    /// Records what `manta list jobs` shows of a started job.
    pub fn describe(&mut self, job_id: JobId, namespace: &str, driver_pid: u32, now_ms: u64) {
        let record = JobRecord {
            job_id,
            namespace: namespace.to_string(),
            driver_pid,
            state: JobState::Running,
            start_time_ms: now_ms,
            end_time_ms: None,
            runtime_env: None,
        };
        self.store.put(job_id.to_string(), &record);
        self.records.insert(job_id, record);
    }

    /// Records a running job's program and environment (only its driver may).
    pub fn set_runtime_env(&mut self, job_id: JobId, env: JobRuntimeEnvEvent, from: LinkId) -> Result<(), WireError> {
        if !matches!(self.running.get(&job_id), Some(Some(driver)) if *driver == from) {
            return Err(WireError::new(
                ErrorCode::PermissionDenied,
                format!("SetJobRuntimeEnv for job {job_id} may come only from the running job's driver"),
            ));
        }
        if let Some(record) = self.records.get_mut(&job_id) {
            record.runtime_env = Some(env);
            self.store.put(job_id.to_string(), record);
        }
        Ok(())
    }

    /// The namespace of a known job.
    pub fn namespace(&self, job_id: JobId) -> Option<String> {
        self.records.get(&job_id).map(|record| record.namespace.clone())
    }

    /// Ends a job; false when it was not running.
    pub fn finish(&mut self, job_id: JobId) -> bool {
        let ended = self.running.remove(&job_id).is_some();
        if ended {
            self.mark_finished(job_id);
        }
        ended
    }

    /// Ends every job driven over `link_id`; returns them.
    pub fn finish_link(&mut self, link_id: LinkId) -> Vec<JobId> {
        let ended: Vec<JobId> =
            self.running.iter().filter(|(_, link)| **link == Some(link_id)).map(|(job_id, _)| *job_id).collect();
        for job_id in &ended {
            self.running.remove(job_id);
            self.mark_finished(*job_id);
        }
        ended
    }

    fn mark_finished(&mut self, job_id: JobId) {
        if let Some(record) = self.records.get_mut(&job_id) {
            record.state = JobState::Finished;
            record.end_time_ms = Some(crate::now_ms());
            self.store.put(job_id.to_string(), record);
        }
        let finished: Vec<JobId> = self
            .records
            .values()
            .filter(|record| record.state == JobState::Finished)
            .map(|record| record.job_id)
            .collect();
        for job_id in finished.iter().take(finished.len().saturating_sub(MAX_FINISHED_JOBS)) {
            self.dropped += 1;
            self.records.remove(job_id);
            self.store.delete(job_id.to_string());
        }
    }

    /// The page `query` selects, newest first.
    pub fn query(&self, query: &StateQuery) -> ListStateReply {
        let page = query.page(self.records.values().rev(), self.records.len());
        let mut counts = std::collections::BTreeMap::new();
        for record in self.records.values() {
            *counts.entry(record.state.as_str().to_string()).or_default() += 1;
        }
        ListStateReply {
            rows: StateRows::Jobs(page.rows),
            total: page.total,
            matched: page.matched,
            dropped: self.dropped,
            counts,
            completed_total: 0,
        }
    }
}

/// The job manager actor. Stateless; its state is the shared [`JobTable`].
#[derive(Debug, Default)]
pub struct JobManager;

/// Messages to the [`JobManager`].
#[derive(Debug)]
pub enum JobMsg {
    /// A driver on this link starts a job.
    Register(RegisterJobRequest, LinkId, RpcReplyPort<Result<RegisterJobReply, manta_proto::WireError>>),
    /// Recovered jobs whose driver did not come back within the grace period end.
    ExpireUnattached,
    /// A driver ends its job.
    Finish(JobId, LinkId, RpcReplyPort<Result<(), WireError>>),
    /// A driver gives its job's program and environment.
    SetRuntimeEnv(SetJobRuntimeEnvRequest, LinkId, RpcReplyPort<Result<(), WireError>>),
    /// A link closed: end the jobs it drove.
    LinkClosed(LinkId),
    /// A page of the jobs, newest first.
    Query(StateQuery, RpcReplyPort<ListStateReply>),
}

/// Start-up arguments and state of the [`JobManager`].
pub struct JobManagerState {
    pub(crate) table: Shared<JobTable>,
    pub(crate) refs: Arc<GcsRefs>,
}

impl Actor for JobManager {
    type Msg = JobMsg;
    type State = JobManagerState;
    type Arguments = JobManagerState;

    async fn pre_start(
        &self,
        _myself: ActorRef<JobMsg>,
        state: JobManagerState,
    ) -> Result<JobManagerState, ActorProcessingErr> {
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<JobMsg>,
        message: JobMsg,
        state: &mut JobManagerState,
    ) -> Result<(), ActorProcessingErr> {
        let ended = match message {
            JobMsg::Register(request, link_id, reply) => {
                let mut table = state.table.lock();
                if let Some(job_id) = request.reattach {
                    let namespace = table.reattach(job_id, link_id).then(|| table.namespace(job_id)).flatten();
                    drop(table);
                    match namespace {
                        Some(namespace) => {
                            info!(%job_id, "the job's driver reattached");
                            let _ = reply.send(Ok(RegisterJobReply { job_id, namespace }));
                        }
                        None => {
                            let message = format!("job {job_id} is no longer running; start a new driver");
                            let _ =
                                reply.send(Err(manta_proto::WireError::new(manta_proto::ErrorCode::NotFound, message)));
                        }
                    }
                    return Ok(());
                }
                let job_id = table.start(link_id);
                let namespace =
                    if request.namespace.is_empty() { format!("anonymous-{job_id}") } else { request.namespace };
                table.describe(job_id, &namespace, request.driver_pid, crate::now_ms());
                drop(table);
                info!(%job_id, driver_pid = request.driver_pid, %namespace, "job started");
                if let Some(submission_id) = request.submission_id
                    && let Ok(submissions) = state.refs.submissions()
                {
                    let _ = submissions
                        .cast(crate::submission_manager::SubmissionMsg::DriverStarted(submission_id, job_id));
                }
                let _ = reply.send(Ok(RegisterJobReply { job_id, namespace }));
                Vec::new()
            }
            JobMsg::Finish(job_id, from, reply) => {
                let mut table = state.table.lock();
                if let Err(refused) = table.may_finish(job_id, from) {
                    let _ = reply.send(Err(refused));
                    return Ok(());
                }
                let ended = if table.finish(job_id) { vec![job_id] } else { Vec::new() };
                let _ = reply.send(Ok(()));
                ended
            }
            JobMsg::ExpireUnattached => {
                let mut table = state.table.lock();
                let gone = table.unattached();
                for job_id in &gone {
                    table.finish(*job_id);
                }
                gone
            }
            JobMsg::SetRuntimeEnv(request, from, reply) => {
                let mut env = request.env;
                env.job_id = request.job_id;
                let recorded = state.table.lock().set_runtime_env(request.job_id, env.clone(), from);
                if recorded.is_ok()
                    && let Ok(pubsub) = state.refs.pubsub()
                {
                    let _ = pubsub.cast(PubsubMsg::Publish(Event::JobRuntimeEnv(env)));
                }
                let _ = reply.send(recorded);
                Vec::new()
            }
            JobMsg::LinkClosed(link_id) => state.table.lock().finish_link(link_id),
            JobMsg::Query(query, reply) => {
                let _ = reply.send(state.table.lock().query(&query));
                Vec::new()
            }
        };
        for job_id in ended {
            info!(%job_id, "job finished");
            if let Ok(directory) = state.refs.actor_directory() {
                let _ = directory.cast(DirectoryMsg::JobFinished(job_id));
            }
            if let Ok(groups) = state.refs.placement_groups() {
                let _ = groups.cast(crate::placement::PlacementMsg::JobFinished(job_id));
            }
            if let Ok(packages) = state.refs.packages() {
                let _ = packages.cast(crate::packages::PackageMsg::JobFinished(job_id));
            }
            if let Ok(pubsub) = state.refs.pubsub() {
                let _ = pubsub.cast(PubsubMsg::Publish(Event::JobFinished(JobFinishedEvent { job_id })));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_end_with_their_driver_link() {
        let mut table = JobTable::default();
        let first = table.start(LinkId::for_test(7));
        let second = table.start(LinkId::for_test(7));
        let other = table.start(LinkId::for_test(8));
        assert_ne!(first, second);
        let mut ended = table.finish_link(LinkId::for_test(7));
        ended.sort();
        assert_eq!(ended, {
            let mut expected = vec![first, second];
            expected.sort();
            expected
        });
        assert!(table.finish(other));
        assert!(!table.finish(other), "a job ends once");
    }

    #[test]
    fn only_its_driver_ends_or_reattaches_a_job() {
        let mut table = JobTable::default();
        let (driver, stranger) = (LinkId::for_test(1), LinkId::for_test(2));
        let job = table.start(driver);
        let refused = table.may_finish(job, stranger).unwrap_err();
        assert_eq!(refused.code, ErrorCode::PermissionDenied);
        assert!(!table.reattach(job, stranger), "a running job cannot be taken over");
        assert_eq!(table.may_finish(job, driver), Ok(()));
        assert!(table.reattach(job, driver), "its own driver may claim it again");
        assert!(table.finish(job));
        assert_eq!(table.may_finish(job, stranger), Ok(()), "an ended job: nothing to protect");
    }
}
