//! [`SubmissionTable`]: submitted jobs (Ray's job submission records) as a
//! pure state machine. `PENDING` → `RUNNING` → `SUCCEEDED` / `FAILED` /
//! `STOPPED` (or straight from `PENDING` to a terminal status); a terminal
//! status never changes again and sets `end_time`. Only the node a job was
//! placed on may report its transitions. Every change is written through to
//! the durable table, so records survive a head restart.

use std::collections::BTreeMap;

use manta_proto::submission::{JobSubmission, SubmissionStatus, SubmissionUpdate};
use manta_proto::{ErrorCode, JobId, NodeId, WireError};

use crate::storage::Rows;

/// Terminal jobs kept; beyond it the oldest terminal ones are dropped.
pub const MAX_TERMINAL_SUBMISSIONS: usize = 10_000;

/// What stopping a job takes.
#[derive(Debug, PartialEq)]
pub enum StopStep {
    /// It had ended already.
    AlreadyEnded,
    /// It was not placed yet: it is `STOPPED` now.
    StoppedHere(Box<JobSubmission>),
    /// Its supervisor on this node must stop it.
    AskNode(NodeId),
}

/// Every submitted job, by submission id.
#[derive(Debug, Default)]
pub struct SubmissionTable {
    records: BTreeMap<String, JobSubmission>,
    store: Rows,
}

fn not_found(id: &str) -> WireError {
    WireError::new(ErrorCode::NotFound, format!("Job {id} does not exist"))
}

impl SubmissionTable {
    /// A table holding recovered records.
    pub fn restore(rows: Vec<JobSubmission>, store: Rows) -> Self {
        Self { records: rows.into_iter().map(|row| (row.submission_id.clone(), row)).collect(), store }
    }

    fn save(&self, id: &str) {
        if let Some(record) = self.records.get(id) {
            self.store.put(id.as_bytes(), record);
        }
    }

    /// Records a new `PENDING` job; a taken id is refused (Ray: HTTP 400).
    pub fn submit(&mut self, submission: JobSubmission) -> Result<(), WireError> {
        if self.records.contains_key(&submission.submission_id) {
            return Err(WireError::new(
                ErrorCode::InvalidArgument,
                format!(
                    "Job with submission_id {} already exists. Please use a different submission_id.",
                    submission.submission_id
                ),
            ));
        }
        let id = submission.submission_id.clone();
        self.records.insert(id.clone(), submission);
        self.save(&id);
        self.trim();
        Ok(())
    }

    /// The submission id `id` names: a submission id, or the manta job id its driver got.
    fn resolve(&self, id: &str) -> Option<String> {
        if self.records.contains_key(id) {
            return Some(id.to_string());
        }
        self.records
            .values()
            .find(|record| record.job_id.is_some_and(|job_id| job_id.to_string() == id))
            .map(|record| record.submission_id.clone())
    }

    /// One job by submission id or job id.
    pub fn get(&self, id: &str) -> Option<JobSubmission> {
        self.resolve(id).and_then(|id| self.records.get(&id).cloned())
    }

    /// Every job, oldest first.
    pub fn list(&self) -> Vec<JobSubmission> {
        let mut all: Vec<JobSubmission> = self.records.values().cloned().collect();
        all.sort_by(|a, b| a.start_time_ms.cmp(&b.start_time_ms).then_with(|| a.submission_id.cmp(&b.submission_id)));
        all
    }

    /// `PENDING` jobs not placed on a node yet.
    pub fn unplaced(&self) -> Vec<JobSubmission> {
        self.records
            .values()
            .filter(|record| record.status == SubmissionStatus::Pending && record.driver_node_id.is_none())
            .cloned()
            .collect()
    }

    /// Records the placement group holding a pending job's resources.
    pub fn reserve(&mut self, id: &str, pg_id: manta_proto::PlacementGroupId) -> bool {
        let Some(record) = self.records.get_mut(id) else { return false };
        if record.status.is_terminal() || record.placement_group.is_some() {
            return false;
        }
        record.placement_group = Some(pg_id);
        self.save(id);
        true
    }

    /// Running or pending jobs placed on a node (to check after a restart).
    pub fn placed_live(&self) -> Vec<JobSubmission> {
        self.records
            .values()
            .filter(|record| !record.status.is_terminal() && record.driver_node_id.is_some())
            .cloned()
            .collect()
    }

    /// A pending job's supervisor goes to `node_id`; `None` when it is no longer pending or was placed.
    pub fn place(&mut self, id: &str, node_id: NodeId, node_ip: &str) -> Option<JobSubmission> {
        let record = self.records.get_mut(id)?;
        if record.status != SubmissionStatus::Pending || record.driver_node_id.is_some() {
            return None;
        }
        record.driver_node_id = Some(node_id);
        record.driver_node_ip = Some(node_ip.to_string());
        let placed = record.clone();
        self.save(id);
        Some(placed)
    }

    /// A supervisor on `from` reports a transition of its job.
    pub fn update(
        &mut self,
        id: &str,
        update: SubmissionUpdate,
        from: NodeId,
        now_ms: u64,
    ) -> Result<JobSubmission, WireError> {
        let record = self.records.get_mut(id).ok_or_else(|| not_found(id))?;
        if record.driver_node_id != Some(from) {
            return Err(WireError::new(
                ErrorCode::PermissionDenied,
                format!("job {id} was not placed on node {from}; only its supervisor's node reports it"),
            ));
        }
        if record.status.is_terminal() {
            return Err(WireError::new(
                ErrorCode::InvalidArgument,
                format!("job {id} is {} already; a terminal status never changes", record.status.as_str()),
            ));
        }
        match update {
            SubmissionUpdate::Running { pid } => {
                if record.status != SubmissionStatus::Pending {
                    return Err(WireError::new(ErrorCode::InvalidArgument, format!("job {id} is running already")));
                }
                record.status = SubmissionStatus::Running;
                record.message = "Job is currently running.".into();
                record.driver_pid = Some(pid);
            }
            SubmissionUpdate::Ended { status, message, error_type, exit_code, log_bytes } => {
                if !status.is_terminal() {
                    return Err(WireError::new(
                        ErrorCode::InvalidArgument,
                        format!("job {id}: {} is not a terminal status", status.as_str()),
                    ));
                }
                record.status = status;
                record.message = message;
                record.error_type = error_type;
                record.driver_exit_code = exit_code;
                record.log_bytes = Some(log_bytes);
                record.end_time_ms = Some(now_ms);
            }
        }
        let updated = record.clone();
        self.save(id);
        self.trim();
        Ok(updated)
    }

    /// Ends a live job as `FAILED` (its node died, its placement failed);
    /// `None` when it had ended already.
    pub fn fail(&mut self, id: &str, error_type: &str, message: String, now_ms: u64) -> Option<JobSubmission> {
        let record = self.records.get_mut(id)?;
        if record.status.is_terminal() {
            return None;
        }
        record.status = SubmissionStatus::Failed;
        record.error_type = Some(error_type.to_string());
        record.message = message;
        record.end_time_ms = Some(now_ms);
        let failed = record.clone();
        self.save(id);
        Some(failed)
    }

    /// Live jobs whose supervisor ran on `node_id`.
    pub fn on_node(&self, node_id: NodeId) -> Vec<String> {
        self.records
            .values()
            .filter(|record| !record.status.is_terminal() && record.driver_node_id == Some(node_id))
            .map(|record| record.submission_id.clone())
            .collect()
    }

    /// What stopping job `id` takes.
    pub fn stop(&mut self, id: &str, now_ms: u64) -> Result<StopStep, WireError> {
        let id = self.resolve(id).ok_or_else(|| not_found(id))?;
        let record = self.records.get_mut(&id).expect("resolved");
        if record.status.is_terminal() {
            return Ok(StopStep::AlreadyEnded);
        }
        if let Some(node_id) = record.driver_node_id {
            return Ok(StopStep::AskNode(node_id));
        }
        record.status = SubmissionStatus::Stopped;
        record.message = "Job was intentionally stopped.".into();
        record.end_time_ms = Some(now_ms);
        let stopped = record.clone();
        self.save(&id);
        Ok(StopStep::StoppedHere(Box::new(stopped)))
    }

    /// The manta job a submission's driver started.
    pub fn driver_started(&mut self, id: &str, job_id: JobId) -> Option<JobSubmission> {
        let record = self.records.get_mut(id)?;
        if record.status.is_terminal() || record.job_id.is_some() {
            return None;
        }
        record.job_id = Some(job_id);
        let updated = record.clone();
        self.save(id);
        Some(updated)
    }

    /// Forgets a terminal job.
    pub fn delete(&mut self, id: &str) -> Result<(), WireError> {
        let id = self.resolve(id).ok_or_else(|| not_found(id))?;
        let status = self.records[&id].status;
        if !status.is_terminal() {
            return Err(WireError::new(
                ErrorCode::InvalidArgument,
                format!(
                    "Attempted to delete job '{id}', but it is in a non-terminal state {}; stop it first",
                    status.as_str()
                ),
            ));
        }
        self.records.remove(&id);
        self.store.delete(id.as_bytes());
        Ok(())
    }

    fn trim(&mut self) {
        if self.records.len() <= MAX_TERMINAL_SUBMISSIONS {
            return;
        }
        let terminal = self.records.values().filter(|record| record.status.is_terminal()).count();
        if terminal <= MAX_TERMINAL_SUBMISSIONS {
            return;
        }
        let mut oldest: Vec<(u64, String)> = self
            .records
            .values()
            .filter(|record| record.status.is_terminal())
            .map(|record| (record.end_time_ms.unwrap_or(0), record.submission_id.clone()))
            .collect();
        oldest.sort();
        for (_, id) in oldest.into_iter().take(terminal - MAX_TERMINAL_SUBMISSIONS) {
            self.records.remove(&id);
            self.store.delete(id.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn pending(id: &str) -> JobSubmission {
        JobSubmission::pending(id, "echo hi", 1)
    }

    fn ended(status: SubmissionStatus, exit_code: i32) -> SubmissionUpdate {
        SubmissionUpdate::Ended {
            status,
            message: "done".into(),
            error_type: None,
            exit_code: Some(exit_code),
            log_bytes: 3,
        }
    }

    #[test]
    fn a_job_runs_and_ends_once_and_only_its_node_reports_it() {
        let mut table = SubmissionTable::default();
        table.submit(pending("a")).unwrap();
        let duplicate = table.submit(pending("a")).unwrap_err();
        assert_eq!(duplicate.code, ErrorCode::InvalidArgument);
        assert!(duplicate.message.contains("already exists"));
        let (node, stranger) = (NodeId::random(), NodeId::random());
        assert!(table.place("a", node, "127.0.0.1").is_some());
        assert!(table.place("a", stranger, "127.0.0.1").is_none(), "placed once");
        let refused = table.update("a", SubmissionUpdate::Running { pid: 7 }, stranger, 5).unwrap_err();
        assert_eq!(refused.code, ErrorCode::PermissionDenied);
        assert_eq!(
            table.update("a", SubmissionUpdate::Running { pid: 7 }, node, 5).unwrap().status,
            SubmissionStatus::Running
        );
        let done = table.update("a", ended(SubmissionStatus::Succeeded, 0), node, 9).unwrap();
        assert_eq!(
            (done.status, done.end_time_ms, done.driver_exit_code),
            (SubmissionStatus::Succeeded, Some(9), Some(0))
        );
        assert!(table.update("a", ended(SubmissionStatus::Failed, 1), node, 10).is_err(), "terminal is final");
        assert!(table.fail("a", "X", "late".into(), 11).is_none());
        assert_eq!(table.get("a").unwrap().status, SubmissionStatus::Succeeded);
    }

    #[test]
    fn stop_delete_and_node_death() {
        let mut table = SubmissionTable::default();
        for id in ["unplaced", "placed", "done"] {
            table.submit(pending(id)).unwrap();
        }
        let node = NodeId::random();
        table.place("placed", node, "10.0.0.1").unwrap();
        table.place("done", node, "10.0.0.1").unwrap();
        table.update("done", ended(SubmissionStatus::Failed, 2), node, 3).unwrap();
        assert!(
            matches!(table.stop("unplaced", 4).unwrap(), StopStep::StoppedHere(record) if record.status == SubmissionStatus::Stopped)
        );
        assert_eq!(table.stop("placed", 4).unwrap(), StopStep::AskNode(node));
        assert_eq!(table.stop("done", 4).unwrap(), StopStep::AlreadyEnded);
        assert_eq!(table.stop("nope", 4).unwrap_err().code, ErrorCode::NotFound);
        assert!(table.delete("placed").unwrap_err().message.contains("non-terminal"));
        assert_eq!(table.on_node(node), vec!["placed".to_string()]);
        let failed = table.fail("placed", "SUPERVISOR_NODE_DIED", "gone".into(), 6).unwrap();
        assert_eq!(failed.status, SubmissionStatus::Failed);
        table.delete("placed").unwrap();
        assert!(table.get("placed").is_none());
        let job = JobId::from_counter(4);
        table.submit(pending("driven")).unwrap();
        table.driver_started("driven", job).unwrap();
        assert_eq!(table.get(&job.to_string()).unwrap().submission_id, "driven", "found by its job id too");
        assert_eq!(table.list().len(), 3, "unplaced, done and driven");
    }

    #[test]
    fn terminal_history_is_bounded_oldest_first() {
        let mut table = SubmissionTable::default();
        let node = NodeId::random();
        for index in 0..MAX_TERMINAL_SUBMISSIONS + 3 {
            let id = format!("j{index}");
            table.submit(pending(&id)).unwrap();
            table.place(&id, node, "h").unwrap();
            table.update(&id, ended(SubmissionStatus::Succeeded, 0), node, index as u64).unwrap();
        }
        assert_eq!(table.list().len(), MAX_TERMINAL_SUBMISSIONS);
        assert!(table.get("j0").is_none() && table.get("j3").is_some());
    }
}
