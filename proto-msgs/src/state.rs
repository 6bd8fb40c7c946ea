//! The states the GCS tables and `manta list` show, as enums whose wire and
//! JSON text is Ray's (`RUNNING`, `ALIVE`, `PENDING_NODE_ASSIGNMENT`, ...).

use serde::{Deserialize, Serialize};

/// State of a job in the GCS job table (`manta list jobs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    /// Its driver is connected (or, after a head restart, may reattach).
    Running,
    /// Its driver ended it, or went away.
    Finished,
}

/// State of an actor in the GCS actor directory (`manta list actors`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ActorState {
    /// Running; calls go to its worker.
    Alive,
    /// Its process or node died and it is being re-created elsewhere.
    Restarting,
    /// Killed, out of restarts, or ended with its owner or job. Never alive again.
    Dead,
}

/// State of a task as its owner reports it (`manta list tasks`), Ray's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskState {
    /// Waiting for a worker lease (or, for an actor call, queued at its handle).
    PendingNodeAssignment,
    /// Sent to a worker.
    SubmittedToWorker,
    /// Returned its values.
    Finished,
    /// Failed (an error, a panic, its worker died, or it was cancelled).
    Failed,
}

impl JobState {
    /// As shown in listings and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "RUNNING",
            JobState::Finished => "FINISHED",
        }
    }
}

impl ActorState {
    /// As shown in listings and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ActorState::Alive => "ALIVE",
            ActorState::Restarting => "RESTARTING",
            ActorState::Dead => "DEAD",
        }
    }
}

impl TaskState {
    /// As shown in listings and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::PendingNodeAssignment => "PENDING_NODE_ASSIGNMENT",
            TaskState::SubmittedToWorker => "SUBMITTED_TO_WORKER",
            TaskState::Finished => "FINISHED",
            TaskState::Failed => "FAILED",
        }
    }

    /// True for the states a task does not leave.
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskState::Finished | TaskState::Failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_keep_their_wire_and_json_text() {
        for state in
            [TaskState::PendingNodeAssignment, TaskState::SubmittedToWorker, TaskState::Finished, TaskState::Failed]
        {
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
            let wire = rmp_serde::to_vec_named(&state).unwrap();
            assert_eq!(rmp_serde::from_slice::<TaskState>(&wire).unwrap(), state);
        }
        for state in [ActorState::Alive, ActorState::Restarting, ActorState::Dead] {
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
        }
        for state in [JobState::Running, JobState::Finished] {
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
        }
        assert!(TaskState::Failed.is_terminal() && !TaskState::SubmittedToWorker.is_terminal());
    }
}
