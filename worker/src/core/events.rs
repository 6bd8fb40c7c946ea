//! The owner's buffer of task events for the GCS: one event per task per batch.
//! A call's states (pending, submitted, finished) usually all land in one batch;
//! folded, they cost one name, one map entry on the wire and one table update
//! in the GCS instead of three, as Ray's task event buffer does.

use std::collections::HashMap;

use manta_proto::TaskId;
use manta_proto::task::{TaskEvent, TaskEventsBatch};

/// Task events waiting for the next batch, folded per task.
#[derive(Default)]
pub(super) struct EventBuffer {
    events: Vec<TaskEvent>,
    /// Where each task's event is in `events`.
    index: HashMap<TaskId, usize>,
    /// Events dropped since the last batch (the GCS could not take them).
    pub(super) dropped: u64,
}

impl EventBuffer {
    /// Adds `event`, folded into the task's event already waiting if there is one.
    pub(super) fn push(&mut self, event: TaskEvent) {
        if let Some(&at) = self.index.get(&event.task_id)
            && self.events[at].can_fold(&event)
        {
            self.events[at].fold(event);
            return;
        }
        self.index.insert(event.task_id, self.events.len());
        self.events.push(event);
    }

    /// Events waiting (after folding).
    pub(super) fn len(&self) -> usize {
        self.events.len()
    }

    /// The batch to send, if there is anything to say; the buffer starts over.
    pub(super) fn take(&mut self) -> Option<TaskEventsBatch> {
        if self.events.is_empty() && self.dropped == 0 {
            return None;
        }
        self.index.clear();
        Some(TaskEventsBatch { events: std::mem::take(&mut self.events), dropped: std::mem::take(&mut self.dropped) })
    }
}

#[cfg(test)]
mod tests {
    use manta_proto::JobId;
    use manta_proto::task::TaskState;

    use super::*;

    fn event(task_id: TaskId, state: TaskState, time_ms: u64, lease: Option<&str>) -> TaskEvent {
        TaskEvent {
            lease_outcome: lease.map(str::to_string),
            ..TaskEvent::entered(task_id, JobId::from_counter(1), "f".into(), state, time_ms)
        }
    }

    #[test]
    fn one_event_per_task_per_batch() {
        let mut buffer = EventBuffer::default();
        let (first, second) = (TaskId::random(), TaskId::random());
        buffer.push(event(first, TaskState::PendingNodeAssignment, 1, None));
        buffer.push(event(second, TaskState::PendingNodeAssignment, 2, None));
        buffer.push(event(first, TaskState::SubmittedToWorker, 3, Some("granted")));
        buffer.push(event(first, TaskState::Finished, 4, None));
        assert_eq!(buffer.len(), 2);
        let batch = buffer.take().expect("a batch");
        assert_eq!(batch.events[0].task_id, first);
        assert_eq!(batch.events[0].state, TaskState::Finished);
        assert_eq!(batch.events[0].time_ms, 4);
        assert_eq!(batch.events[0].lease_outcome.as_deref(), Some("granted"));
        assert_eq!(
            batch.events[0].earlier,
            vec![(TaskState::PendingNodeAssignment, 1), (TaskState::SubmittedToWorker, 3)]
        );
        assert_eq!(batch.events[1].task_id, second);
        assert!(batch.events[1].earlier.is_empty());
        assert!(buffer.take().is_none(), "nothing left, nothing sent");
    }

    #[test]
    fn a_second_lease_outcome_starts_a_new_event() {
        let mut buffer = EventBuffer::default();
        let task = TaskId::random();
        buffer.push(event(task, TaskState::PendingNodeAssignment, 1, Some("reschedule")));
        buffer.push(event(task, TaskState::SubmittedToWorker, 2, Some("granted")));
        buffer.push(event(task, TaskState::Finished, 3, None));
        let batch = buffer.take().expect("a batch");
        let outcomes: Vec<_> = batch.events.iter().map(|event| event.lease_outcome.as_deref()).collect();
        assert_eq!(outcomes, vec![Some("reschedule"), Some("granted")]);
        assert_eq!(batch.events[1].state, TaskState::Finished, "later events fold into the newest one");
        // The next batch starts afresh.
        buffer.push(event(task, TaskState::Finished, 4, None));
        assert_eq!(buffer.take().expect("a batch").events.len(), 1);
    }
}
