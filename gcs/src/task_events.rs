//! [`TaskEvents`]: the task history behind `manta list tasks`, fed by batches
//! of events that owners send asynchronously (never on the task's hot path),
//! bounded to the newest tasks.

use std::collections::{HashMap, VecDeque};

use manta_proto::TaskId;
use manta_proto::query::{FilterOp, StateQuery};
use manta_proto::task::{ListStateReply, StateRows, TaskEvent, TaskEventsBatch, TaskRecord, TaskState};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::Shared;

/// Tasks kept, by default (Ray's `task_events_max_num_task_in_gcs`).
pub const DEFAULT_MAX_TASKS: usize = 100_000;

/// Task records folded from events, newest last, bounded.
#[derive(Debug)]
pub struct TaskTable {
    records: HashMap<TaskId, TaskRecord>,
    order: VecDeque<TaskId>,
    max_tasks: usize,
    dropped: u64,
    /// Tasks seen to reach a terminal state, ever.
    completed: u64,
}

impl Default for TaskTable {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_TASKS)
    }
}

impl TaskTable {
    /// A table keeping at most `max_tasks` tasks.
    pub fn new(max_tasks: usize) -> Self {
        Self { records: HashMap::new(), order: VecDeque::new(), max_tasks: max_tasks.max(1), dropped: 0, completed: 0 }
    }

    /// Folds a batch in.
    pub fn apply(&mut self, batch: TaskEventsBatch) {
        self.dropped += batch.dropped;
        for event in batch.events {
            self.apply_event(event);
        }
    }

    fn apply_event(&mut self, event: TaskEvent) {
        let record = match self.records.get_mut(&event.task_id) {
            Some(record) => record,
            None => {
                self.order.push_back(event.task_id);
                while self.order.len() > self.max_tasks {
                    if let Some(evicted) = self.order.pop_front() {
                        self.records.remove(&evicted);
                        self.dropped += 1;
                    }
                }
                self.records.entry(event.task_id).or_insert_with(|| TaskRecord {
                    task_id: event.task_id,
                    job_id: event.job_id,
                    name: event.name.clone(),
                    state: event.earlier.first().map_or(event.state, |(state, _)| *state),
                    node_id: None,
                    worker_id: None,
                    actor_id: event.actor_id,
                    error: None,
                    history: Vec::new(),
                    lease_outcomes: Vec::new(),
                })
            }
        };
        // An owner folds a task's events of one batch into one (`earlier`, then `state`).
        for (state, time_ms) in event.earlier.into_iter().chain([(event.state, event.time_ms)]) {
            enter(record, state, time_ms, &mut self.completed);
        }
        record.node_id = event.node_id.or(record.node_id);
        record.worker_id = event.worker_id.or(record.worker_id);
        record.error = event.error.or(record.error.take());
        if let Some(outcome) = event.lease_outcome {
            record.lease_outcomes.push(outcome);
        }
    }

    /// Tasks per state (for the `manta_tasks` gauge).
    pub fn count_by_state(&self) -> std::collections::BTreeMap<String, usize> {
        let mut counts: HashMap<TaskState, usize> = HashMap::new();
        for record in self.records.values() {
            *counts.entry(record.state).or_default() += 1;
        }
        counts.into_iter().map(|(state, count)| (state.as_str().to_string(), count)).collect()
    }

    /// The page `query` selects, newest first, with the counts.
    pub fn query(&self, query: &StateQuery) -> ListStateReply {
        // One task by id (a task's page, `manta logs --task-id`): a lookup, not a scan.
        let by_id = query.filters.iter().find(|filter| filter.key == "task_id" && filter.op == FilterOp::Eq);
        let page = match by_id.map(|filter| filter.value.parse::<TaskId>()) {
            Some(Ok(task_id)) => query.page(self.records.get(&task_id).into_iter(), self.records.len()),
            _ => {
                query.page(self.order.iter().rev().filter_map(|task_id| self.records.get(task_id)), self.records.len())
            }
        };
        ListStateReply {
            rows: StateRows::Tasks(page.rows),
            total: page.total,
            matched: page.matched,
            dropped: self.dropped,
            counts: self.count_by_state(),
            completed_total: self.completed,
        }
    }
}

/// Records that the task entered `state` at `time_ms`; counts it completed
/// the first time it reaches a terminal state.
fn enter(record: &mut TaskRecord, state: TaskState, time_ms: u64, completed: &mut u64) {
    let was_terminal = !record.history.is_empty() && record.state.is_terminal();
    if !was_terminal && state.is_terminal() {
        *completed += 1;
    }
    // Events of one task may arrive out of order across batches: the terminal state wins.
    if !record.state.is_terminal() || state.is_terminal() {
        record.state = state;
    }
    record.history.push((state, time_ms));
}

/// The task events actor. Stateless; its state is the shared [`TaskTable`].
#[derive(Debug, Default)]
pub struct TaskEvents;

/// Messages to [`TaskEvents`].
#[derive(Debug)]
pub enum TaskEventsMsg {
    /// A batch from an owner.
    Report(TaskEventsBatch),
    /// A page of the history.
    Query(StateQuery, RpcReplyPort<ListStateReply>),
}

impl Actor for TaskEvents {
    type Msg = TaskEventsMsg;
    type State = Shared<TaskTable>;
    type Arguments = Shared<TaskTable>;

    async fn pre_start(
        &self,
        _myself: ActorRef<TaskEventsMsg>,
        table: Shared<TaskTable>,
    ) -> Result<Shared<TaskTable>, ActorProcessingErr> {
        Ok(table)
    }

    async fn handle(
        &self,
        _myself: ActorRef<TaskEventsMsg>,
        message: TaskEventsMsg,
        table: &mut Shared<TaskTable>,
    ) -> Result<(), ActorProcessingErr> {
        let mut table = table.lock();
        match message {
            TaskEventsMsg::Report(batch) => table.apply(batch),
            TaskEventsMsg::Query(query, reply) => {
                let _ = reply.send(table.query(&query));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use manta_proto::JobId;
    use manta_proto::task::TaskState;

    use super::*;

    fn event(task_id: TaskId, state: TaskState, time_ms: u64) -> TaskEvent {
        TaskEvent {
            error: (state == TaskState::Failed).then(|| "boom".to_string()),
            lease_outcome: (state == TaskState::SubmittedToWorker).then(|| "granted".to_string()),
            ..TaskEvent::entered(task_id, JobId::from_counter(1), "f".into(), state, time_ms)
        }
    }

    #[test]
    fn folds_events_and_keeps_the_terminal_state() {
        let mut table = TaskTable::new(10);
        let task = TaskId::random();
        table.apply(TaskEventsBatch { events: vec![event(task, TaskState::Failed, 3)], dropped: 0 });
        table.apply(TaskEventsBatch {
            events: vec![
                event(task, TaskState::PendingNodeAssignment, 1),
                event(task, TaskState::SubmittedToWorker, 2),
            ],
            dropped: 2,
        });
        let reply = table.query(&StateQuery::newest(10));
        let (StateRows::Tasks(rows), dropped) = (reply.rows, reply.dropped) else { panic!("tasks") };
        assert_eq!(reply.completed_total, 1, "one task ended, whatever the order of its events");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].state, TaskState::Failed);
        assert_eq!(rows[0].error.as_deref(), Some("boom"));
        assert_eq!(rows[0].lease_outcomes, vec!["granted"]);
        assert_eq!(rows[0].history.len(), 3);
        assert_eq!(dropped, 2);
    }

    #[test]
    fn a_folded_event_counts_as_its_states() {
        let mut table = TaskTable::new(10);
        let task = TaskId::random();
        let mut folded = event(task, TaskState::PendingNodeAssignment, 1);
        for (state, time_ms) in [(TaskState::SubmittedToWorker, 2), (TaskState::Failed, 3)] {
            folded.fold(event(task, state, time_ms));
        }
        table.apply(TaskEventsBatch { events: vec![folded], dropped: 0 });
        let reply = table.query(&StateQuery::newest(10));
        let StateRows::Tasks(rows) = reply.rows else { panic!("tasks") };
        assert_eq!(reply.completed_total, 1);
        assert_eq!(rows[0].state, TaskState::Failed);
        assert_eq!(rows[0].error.as_deref(), Some("boom"));
        assert_eq!(rows[0].lease_outcomes, vec!["granted"]);
        let expected =
            vec![(TaskState::PendingNodeAssignment, 1), (TaskState::SubmittedToWorker, 2), (TaskState::Failed, 3)];
        assert_eq!(rows[0].history, expected);
    }

    #[test]
    fn history_is_bounded() {
        let mut table = TaskTable::new(3);
        let tasks: Vec<_> = (0..5).map(|_| TaskId::random()).collect();
        for (index, task) in tasks.iter().enumerate() {
            table.apply(TaskEventsBatch { events: vec![event(*task, TaskState::Finished, index as u64)], dropped: 0 });
        }
        let reply = table.query(&StateQuery::newest(100));
        let StateRows::Tasks(rows) = reply.rows else { panic!("tasks") };
        let newest_first: Vec<_> = tasks[2..].iter().rev().copied().collect();
        assert_eq!(rows.iter().map(|row| row.task_id).collect::<Vec<_>>(), newest_first);
        assert_eq!((reply.dropped, reply.total, reply.completed_total), (2, 3, 5));
        let filter = manta_proto::query::StateFilter::parse(&format!("task_id={}", tasks[3])).unwrap();
        let one = table.query(&StateQuery { filters: vec![filter], offset: 0, limit: 10 });
        assert_eq!((one.matched, one.counts.get("FINISHED").copied()), (1, Some(3)));
    }
}
