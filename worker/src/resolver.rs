//! Tasks waiting for their `ObjectRef` arguments: one watch per object however
//! many tasks wait on it, and no future per task (a queued task costs its
//! table entry, not a suspended `async` state machine of several KiB).
//!
//! [`DependencyTable`] is pure: it records who waits on what and, given an
//! object's value, says which tasks are ready and which failed.
//! [`submit_waiting`] runs it: it starts a watch for each new object and hands
//! what the table says to the submitter.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex};

use manta_proto::object::ObjectBody;
use manta_proto::task::{ObjectValue, StoredArg, TaskFailure};
use manta_proto::{ObjectId, TaskId};

use crate::core::Core;
use crate::object_ref::UntypedRef;
use crate::submitter::{PendingTask, failure_kind, ready, store_failure};

/// A task (boxed: the table's spare slots stay small) and how many of its
/// reference arguments are still unresolved.
struct Waiting {
    task: Box<PendingTask>,
    missing: usize,
}

/// What an object's value means for the tasks that waited on it.
pub(crate) enum Resolved {
    /// Every argument is in: on to a worker.
    Ready(PendingTask),
    /// An argument failed: the task fails with this, without running.
    Failed(PendingTask, TaskFailure),
}

/// Who waits on which object.
#[derive(Default)]
pub(crate) struct DependencyTable {
    tasks: HashMap<TaskId, Waiting>,
    /// Each object's waiters: (task, argument position).
    objects: HashMap<ObjectId, Vec<(TaskId, usize)>>,
}

impl DependencyTable {
    /// Records `task` (it has reference arguments); returns the objects nobody
    /// waited on before, to be watched.
    pub(crate) fn add(&mut self, task: PendingTask) -> Vec<UntypedRef> {
        let task_id = task.spec.task_id;
        let mut watch = Vec::new();
        for (position, reference) in &task.arg_refs {
            match self.objects.entry(reference.object_id()) {
                Entry::Occupied(mut waiters) => waiters.get_mut().push((task_id, *position)),
                Entry::Vacant(vacant) => {
                    vacant.insert(vec![(task_id, *position)]);
                    watch.push(reference.clone());
                }
            }
        }
        let missing = task.arg_refs.len();
        self.tasks.insert(task_id, Waiting { task: Box::new(task), missing });
        watch
    }

    /// `object_id`'s value (or why it could not be fetched) reached: fills it
    /// into every waiting task.
    pub(crate) fn resolved(&mut self, object_id: ObjectId, value: &crate::Result<ObjectValue>) -> Vec<Resolved> {
        let mut out = Vec::new();
        for (task_id, position) in self.objects.remove(&object_id).unwrap_or_default() {
            let Entry::Occupied(mut entry) = self.tasks.entry(task_id) else { continue };
            let waiting = entry.get_mut();
            match value {
                Ok(Ok(ObjectBody::Inline(bytes))) => waiting.task.spec.args[position] = bytes.clone(),
                // The executor pulls it to its own node; the ref stays held until the task is done.
                Ok(Ok(ObjectBody::Stored(stored))) => {
                    let object = waiting.task.arg_refs.iter().find(|(at, _)| *at == position).map(|(_, r)| r.to_wire());
                    if let Some(object) = object {
                        let stored = stored.clone();
                        waiting.task.spec.stored_args.push(StoredArg { position: position as u32, object, stored });
                    }
                }
                Ok(Err(failure)) => {
                    let failure = failure.clone();
                    out.push(Resolved::Failed(*entry.remove().task, failure));
                    continue;
                }
                Err(error) => {
                    let task = *entry.remove().task;
                    let failure = TaskFailure {
                        kind: failure_kind(error),
                        task: task.spec.name.to_string(),
                        message: format!("argument {position} could not be fetched: {error}"),
                        error_type: None,
                    };
                    out.push(Resolved::Failed(task, failure));
                    continue;
                }
            }
            waiting.missing -= 1;
            if waiting.missing == 0 {
                let mut task = *entry.remove().task;
                let arguments = std::mem::take(&mut task.arg_refs);
                task.held.extend(arguments.into_iter().map(|(_, reference)| reference));
                out.push(Resolved::Ready(task));
            }
        }
        out
    }

    /// Tasks waiting.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.tasks.len()
    }
}

/// The process's [`DependencyTable`].
#[derive(Default)]
pub(crate) struct Dependencies(Mutex<DependencyTable>);

/// Queues `task` (it has reference arguments) until they are all resolved.
pub(crate) fn submit_waiting(core: &Arc<Core>, task: PendingTask) {
    let watch = core.dependencies.0.lock().expect("dependencies lock").add(task);
    for reference in watch {
        let core = core.clone();
        core.handle.clone().spawn(async move {
            let value = crate::api::fetch_value(&core, &reference, None).await;
            let resolved =
                core.dependencies.0.lock().expect("dependencies lock").resolved(reference.object_id(), &value);
            for outcome in resolved {
                match outcome {
                    Resolved::Ready(task) => ready(&core, task),
                    Resolved::Failed(task, failure) => store_failure(&core, &task.spec, failure),
                }
            }
        });
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use bytes::Bytes;
    use manta_proto::object::StoredObject;
    use manta_proto::task::{FailureKind, TaskSpec, WorkerAddress};
    use manta_proto::{JobId, NodeId, WorkerId};

    use super::*;

    fn owner() -> WorkerAddress {
        WorkerAddress { worker_id: WorkerId::random(), node_id: NodeId::random(), address: "127.0.0.1:1".into() }
    }

    /// A task spec of `arity` empty arguments from `caller`, for tests.
    pub(crate) fn spec(caller: WorkerAddress, arity: usize) -> TaskSpec {
        TaskSpec {
            task_id: TaskId::random(),
            job_id: JobId::from_counter(1),
            function: "f".into(),
            language: Default::default(),
            name: "f".into(),
            args: vec![Bytes::new(); arity],
            num_returns: 1,
            actor_call: None,
            runtime_env: Default::default(),
            caller: caller.into(),
            stored_args: Vec::new(),
            placement_group: None,
        }
    }

    fn task(refs: &[(usize, &UntypedRef)], arity: usize) -> PendingTask {
        let spec = spec(owner(), arity);
        PendingTask {
            spec,
            arg_refs: refs.iter().map(|(at, reference)| (*at, (*reference).clone())).collect(),
            held: Vec::new(),
            resources: Default::default(),
            strategy: Default::default(),
            retries: crate::retry::RetryBudget::new(0),
            retry_exceptions: Default::default(),
            attempts: Vec::new(),
            lost_on: None,
        }
    }

    fn object() -> UntypedRef {
        UntypedRef::new(ObjectId::random(), Arc::new(owner()))
    }

    #[test]
    fn one_watch_per_object_and_tasks_leave_when_all_arguments_are_in() {
        let (gate, other) = (object(), object());
        let mut table = DependencyTable::default();
        let mut watched = 0;
        for _ in 0..1000 {
            watched += table.add(task(&[(0, &gate)], 1)).len();
        }
        watched += table.add(task(&[(0, &gate), (2, &other)], 3)).len();
        assert_eq!(watched, 2, "one watch per object, not per task");
        assert_eq!(table.len(), 1001);

        let value: crate::Result<ObjectValue> = Ok(Ok(ObjectBody::Inline(Bytes::from_static(b"\x07"))));
        let ready = table.resolved(gate.object_id(), &value);
        assert_eq!(ready.len(), 1000, "every task waiting only on the gate is ready");
        for outcome in &ready {
            let Resolved::Ready(task) = outcome else { panic!("not ready") };
            assert_eq!(task.spec.args[0], Bytes::from_static(b"\x07"));
            assert!(task.arg_refs.is_empty() && task.held.len() == 1, "the argument is held until the task is done");
        }
        assert_eq!(table.len(), 1, "the task with two arguments still waits");
        assert!(table.resolved(gate.object_id(), &value).is_empty(), "an object resolves once");

        let stored = StoredObject { node_id: NodeId::random(), node_address: "127.0.0.1:2".into(), size: 1 << 20 };
        let value: crate::Result<ObjectValue> = Ok(Ok(ObjectBody::Stored(stored.clone())));
        let [Resolved::Ready(task)] = &table.resolved(other.object_id(), &value)[..] else { panic!("not ready") };
        assert_eq!(task.spec.stored_args.len(), 1);
        assert_eq!((task.spec.stored_args[0].position, &task.spec.stored_args[0].stored), (2, &stored));
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn a_failed_argument_fails_its_tasks_once() {
        let (a, b) = (object(), object());
        let mut table = DependencyTable::default();
        table.add(task(&[(0, &a), (1, &b)], 2));
        let lost: crate::Result<ObjectValue> = Err(crate::Error::ObjectLost("gone".into()));
        let [Resolved::Failed(_, failure)] = &table.resolved(a.object_id(), &lost)[..] else { panic!("not failed") };
        assert_eq!(failure.kind, FailureKind::ObjectLost);
        assert!(failure.message.contains("argument 0"), "{}", failure.message);
        let fine: crate::Result<ObjectValue> = Ok(Ok(ObjectBody::Inline(Bytes::new())));
        assert!(table.resolved(b.object_id(), &fine).is_empty(), "the failed task is gone");
        assert_eq!(table.len(), 0);
    }
}
