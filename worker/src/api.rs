//! `get`, `put`, `wait` and task submission.

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use manta_proto::message::Request;
use manta_proto::object::{INLINE_OBJECT_MAX_BYTES, ObjectBody};
use manta_proto::task::{FailureKind, GetObjectRequest, ObjectValue, TaskFailure, TaskSpec, WorkerBlockedRequest};
use manta_proto::task::{Language, TaskState};
use manta_proto::{ErrorCode, ObjectId, TaskId};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use crate::core::{Core, Mode, block_on, block_on_here, core};
use crate::error::{Error, Result};
use crate::object_ref::{Arg, ObjectRef, UntypedRef, collecting, split_args};
use crate::options::TaskOptions;
use crate::plasma;
use crate::store::{Stored, WaitSet};
use crate::submitter::{PendingTask, submit};

thread_local! {
    /// True on a thread that is running a task (its CPU is leased).
    pub(crate) static IN_TASK: Cell<bool> = const { Cell::new(false) };
}

/// Waits for the value of `reference`.
pub fn get<T: DeserializeOwned>(reference: &ObjectRef<T>) -> Result<T> {
    get_inner(reference, None)
}

/// Waits up to `timeout` for the value of `reference`.
pub fn get_timeout<T: DeserializeOwned>(reference: &ObjectRef<T>, timeout: Duration) -> Result<T> {
    get_inner(reference, Some(timeout))
}

/// Stored objects `get_all` fetches at once (each read stays pinned until it is
/// decoded, so the window bounds what it holds).
const GET_ALL_WINDOW: usize = 16;

/// Waits for the values of all `references`, in order (the first error in order
/// wins). Runs of objects already known to be in an object store are fetched up
/// to [`GET_ALL_WINDOW`] at once; the rest are read one by one, as `get` does.
pub fn get_all<T: DeserializeOwned>(references: &[ObjectRef<T>]) -> Result<Vec<T>> {
    use futures_util::{StreamExt, TryStreamExt};
    let core = core()?;
    let mut values = Vec::with_capacity(references.len());
    let mut next = 0;
    while next < references.len() {
        let first = core.store.try_get(references[next].id());
        let stored = match &first {
            Some(Ok(ObjectBody::Stored(_))) => {
                let is_stored = |reference: &&ObjectRef<T>| {
                    matches!(core.store.try_get(reference.id()), Some(Ok(ObjectBody::Stored(_))))
                };
                1 + references[next + 1..].iter().take(GET_ALL_WINDOW - 1).take_while(is_stored).count()
            }
            _ => 0,
        };
        if stored < 2 {
            values.push(value_of(&core, &references[next], first, None)?);
            next += 1;
            continue;
        }
        let run = &references[next..next + stored];
        let blocked = blocked_guard(&core);
        let read =
            block_on_here(
                &core.handle,
                futures_util::stream::iter(run.iter().map(|reference| async {
                    decode::<T>(&fetch(&core, &reference.inner, None).await?, reference.id())
                }))
                .buffered(GET_ALL_WINDOW)
                .try_collect::<Vec<T>>(),
            );
        drop(blocked);
        values.extend(read?);
        if core.registrations_pending() {
            block_on_here(&core.handle, core.flush_registrations());
        }
        next += stored;
    }
    Ok(values)
}

fn get_inner<T: DeserializeOwned>(reference: &ObjectRef<T>, timeout: Option<Duration>) -> Result<T> {
    let core = core()?;
    let looked_up = core.store.try_get(reference.id());
    value_of(&core, reference, looked_up, timeout)
}

/// `reference`'s value, given what the store held for it a moment ago.
fn value_of<T: DeserializeOwned>(
    core: &Arc<Core>,
    reference: &ObjectRef<T>,
    looked_up: Option<ObjectValue>,
    timeout: Option<Duration>,
) -> Result<T> {
    let id = reference.id();
    let value = match looked_up {
        Some(Ok(ObjectBody::Inline(bytes))) => decode(&bytes, id),
        Some(Err(failure)) => Err(Error::from(failure)),
        _ => {
            let blocked = blocked_guard(core);
            let result = block_on_here(&core.handle, fetch(core, &reference.inner, timeout));
            drop(blocked);
            decode(&result?, id)
        }
    };
    // Refs nested in the value are registered with their owners before the
    // caller can drop the container that pins them.
    if core.registrations_pending() {
        block_on_here(&core.handle, core.flush_registrations());
    }
    value
}

/// Decodes an object's bytes as `T`.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], id: ObjectId) -> Result<T> {
    rmp_serde::from_slice(bytes).map_err(|error| {
        Error::TypeMismatch(format!("object {id} does not decode as {}: {error}", std::any::type_name::<T>()))
    })
}

/// Tells the raylet a task thread is blocked (its CPU may be lent), until dropped.
struct BlockedGuard(Option<Arc<Core>>);

fn blocked_guard(core: &Arc<Core>) -> BlockedGuard {
    if core.mode != Mode::Worker || !IN_TASK.with(Cell::get) {
        return BlockedGuard(None);
    }
    crate::task_queue::task_thread_blocked(true);
    notify_blocked(core, true);
    BlockedGuard(Some(core.clone()))
}

impl Drop for BlockedGuard {
    fn drop(&mut self) {
        if let Some(core) = &self.0 {
            notify_blocked(core, false);
            crate::task_queue::task_thread_blocked(false);
        }
    }
}

fn notify_blocked(core: &Arc<Core>, blocked: bool) {
    let raylet = core.raylet.clone();
    let worker_id = core.worker.worker_id;
    let request = Request::WorkerBlocked(WorkerBlockedRequest { worker_id, blocked });
    let _ = block_on(&core.handle, async move { raylet.call(request, Duration::from_secs(10)).await });
}

/// The value of a reference: from this process's store, or from its owner; a
/// large one mapped from this node's object store (pulled here first if needed).
pub(crate) async fn fetch(core: &Arc<Core>, reference: &UntypedRef, timeout: Option<Duration>) -> Result<Bytes> {
    let body = fetch_value(core, reference, timeout).await?.map_err(Error::from)?;
    let mut read = materialize(core, reference, body).await;
    // Our own result, lost with its node: rebuild it by lineage and read it again.
    while let Err(Error::ObjectLost(_)) = &read
        && reference.owner().worker_id == core.worker.worker_id
    {
        crate::lineage::rebuild(core, reference.object_id()).await?;
        let body = fetch_value(core, reference, timeout).await?.map_err(Error::from)?;
        read = materialize(core, reference, body).await;
    }
    match read {
        Err(Error::ObjectLost(reason)) if reference.owner().worker_id != core.worker.worker_id => {
            // A store copy vanished: the owner's death frees its objects, so say so if it is gone.
            match core.peers.get(&reference.owner().address).await {
                Err(error) => Err(Error::OwnerDied(format!(
                    "the owner of object {} (worker {}) died, and its objects with it: {error}",
                    reference.object_id(),
                    reference.owner().worker_id.short()
                ))),
                Ok(_) => Err(Error::ObjectLost(reason)),
            }
        }
        other => other,
    }
}

/// The bytes of a value.
pub(crate) async fn materialize(core: &Core, reference: &UntypedRef, body: ObjectBody) -> Result<Bytes> {
    match body {
        ObjectBody::Inline(bytes) => Ok(bytes),
        ObjectBody::Stored(stored) => plasma::read(core, reference.object_id(), reference.owner(), &stored).await,
    }
}

/// Like [`fetch`], keeping a task failure as a value.
pub(crate) async fn fetch_value(
    core: &Arc<Core>,
    reference: &UntypedRef,
    timeout: Option<Duration>,
) -> Result<ObjectValue> {
    let id = reference.object_id();
    if reference.owner().worker_id == core.worker.worker_id || core.store.is_ready(id) {
        return match core.store.wait(id, timeout).await {
            Some(value) => Ok(value),
            None if !core.store.is_referenced(id) => Err(freed(id)),
            None => Err(Error::GetTimeout(timeout.unwrap_or_default())),
        };
    }
    let owner = core.peers.get(&reference.owner().address).await.map_err(|error| {
        Error::OwnerDied(format!(
            "the owner of object {id} (worker {} at {}) cannot be reached, so the object is lost: {error}",
            reference.owner().worker_id.short(),
            reference.owner().address
        ))
    })?;
    let deadline = timeout.map(|timeout| Instant::now() + timeout);
    loop {
        let slice = match deadline {
            Some(deadline) => deadline.saturating_duration_since(Instant::now()).min(Duration::from_secs(30)),
            None => Duration::from_secs(30),
        };
        let request = GetObjectRequest { object_id: id, timeout_ms: slice.as_millis() as u64 };
        match owner.rpc(request, slice + Duration::from_secs(10)).await {
            Ok(reply) => {
                if let Some(value) = reply.value {
                    // A cached copy (dropped with this process's last ref).
                    let _ = core.store.put(id, value.clone(), &[]);
                    return Ok(value);
                }
            }
            Err(error @ manta_proto::net::CallError::UnexpectedReply { .. }) => {
                return Err(Error::Cluster(error.to_string()));
            }
            Err(error) if error.code() == ErrorCode::NotFound => return Err(Error::ObjectLost(error.to_string())),
            Err(error) => {
                return Err(Error::OwnerDied(format!(
                    "the owner of object {id} (worker {}) went away ({error}); the object is lost",
                    reference.owner().worker_id.short()
                )));
            }
        }
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            return Err(Error::GetTimeout(timeout.unwrap_or_default()));
        }
    }
}

fn freed(id: ObjectId) -> Error {
    Error::ObjectLost(format!("object {id} was freed: no reference to it was left"))
}

/// Stores `value` as an object owned by this process. Values over 100 KiB are
/// written straight into this node's object store (waiting for room while it is
/// full, then failing with [`Error::ObjectStoreFull`]).
pub fn put<T: Serialize>(value: &T) -> Result<ObjectRef<T>> {
    let core = core()?;
    let (size, _) = collecting(|| plasma::encoded_size(value));
    let size = size?;
    let id = core.next_put_id();
    let reference = UntypedRef::new(id, core.caller.clone());
    let (body, nested) = if size as usize <= INLINE_OBJECT_MAX_BYTES {
        let (bytes, nested) = collecting(|| rmp_serde::to_vec_named(value));
        let bytes =
            bytes.map_err(|error| Error::InvalidArgument(format!("the value cannot be serialized: {error}")))?;
        (ObjectBody::Inline(Bytes::from(bytes)), nested)
    } else {
        let (stored, nested) = collecting(|| plasma::put_value(&core, id, value, size));
        (ObjectBody::Stored(stored?), nested)
    };
    let nested: Vec<_> = nested.iter().map(|inner| inner.nested_entry(&core.worker)).collect();
    if let Stored::Kept(actions) = core.store.put(id, Ok(body), &nested) {
        core.apply(actions);
    }
    Ok(ObjectRef::from_untyped(reference))
}

/// What `wait` returns: (ready, not ready), each in input order.
pub type WaitResult<T> = (Vec<ObjectRef<T>>, Vec<ObjectRef<T>>);

/// Waits until `num_returns` of `references` are ready or `timeout` passes.
/// Returns (ready, not ready), each in input order. As in Ray, a large object
/// counts as ready once a copy is on this node (`fetch_local`); see [`wait_with`].
pub fn wait<T>(references: &[ObjectRef<T>], num_returns: usize, timeout: Option<Duration>) -> Result<WaitResult<T>> {
    wait_with(references, num_returns, timeout, true)
}

/// [`wait`] with Ray's `fetch_local` flag: when true, a large object is ready
/// once it has been pulled to this node; when false, once it exists anywhere.
pub fn wait_with<T>(
    references: &[ObjectRef<T>],
    num_returns: usize,
    timeout: Option<Duration>,
    fetch_local: bool,
) -> Result<WaitResult<T>> {
    if num_returns > references.len() {
        return Err(Error::InvalidArgument(format!(
            "num_returns ({num_returns}) is larger than the number of references ({})",
            references.len()
        )));
    }
    let mut seen = rustc_hash::FxHashSet::default();
    seen.reserve(references.len());
    if !references.iter().all(|reference| seen.insert(reference.id())) {
        return Err(Error::InvalidArgument("wait requires a list of unique object refs".into()));
    }
    let core = core()?;
    // As in Ray: at most num_returns refs are reported ready, the first in input
    // order, so the scan stops once it has them. Only the rest are watched.
    let mut ready = Vec::new();
    let mut waiting = Vec::new();
    for (index, reference) in references.iter().enumerate() {
        if ready.len() == num_returns {
            break;
        }
        let here = match core.store.try_get(reference.id()) {
            Some(Ok(ObjectBody::Stored(stored))) => !fetch_local || stored.node_id == core.worker.node_id,
            Some(_) => true,
            None => false,
        };
        if here {
            ready.push(index);
        } else {
            waiting.push((index, reference.inner.clone()));
        }
    }
    if ready.len() < num_returns && !waiting.is_empty() {
        let task_core = core.clone();
        let still_needed = num_returns - ready.len();
        // As in `get`: a task that waits lends its CPU back (and its worker's queued tasks go elsewhere).
        let blocked = blocked_guard(&core);
        let mut later =
            block_on(
                &core.handle,
                async move { wait_for(task_core, waiting, still_needed, timeout, fetch_local).await },
            );
        drop(blocked);
        ready.append(&mut later);
    }
    let mut is_ready = vec![false; references.len()];
    for index in ready {
        is_ready[index] = true;
    }
    let (mut done, mut not_done) = (Vec::new(), Vec::with_capacity(references.len()));
    for (reference, ready) in references.iter().zip(is_ready) {
        if ready { done.push(reference.clone()) } else { not_done.push(reference.clone()) }
    }
    Ok((done, not_done))
}

/// Waits until `needed` of `waiting` (index, ref) are ready or `timeout` passes;
/// returns at most `needed` indices. Objects this process owns or holds are watched in its
/// table; others are asked of their owners, one request each.
async fn wait_for(
    core: Arc<Core>,
    waiting: Vec<(usize, UntypedRef)>,
    needed: usize,
    timeout: Option<Duration>,
    fetch_local: bool,
) -> Vec<usize> {
    let set = Arc::new(WaitSet::default());
    let _closed = CloseOnDrop(&set);
    let mut fetching = tokio::task::JoinSet::new();
    let mut watched = Vec::new();
    for (position, (_, reference)) in waiting.iter().enumerate() {
        let id = reference.object_id();
        if reference.owner().worker_id == core.worker.worker_id || core.store.is_ready(id) {
            watched.push((position, id));
            continue;
        }
        let (core, reference) = (core.clone(), reference.clone());
        fetching.spawn(async move {
            let value = fetch_value(&core, &reference, None).await?;
            if let Ok(ObjectBody::Stored(stored)) = &value {
                make_local(&core, &reference, stored, fetch_local).await?;
            }
            Ok::<_, Error>(position)
        });
    }
    // Objects that can still become ready: each leaves this count once, ready or not.
    let mut outstanding = core.store.watch(&set, &watched) + fetching.len();
    let deadline = timeout.map(|timeout| Instant::now() + timeout);
    let mut ready = Vec::new();
    while ready.len() < needed && outstanding > 0 {
        tokio::select! {
            // What is ready counts even when the deadline has passed too.
            biased;
            positions = set.ready() => {
                for position in positions {
                    let reference = &waiting[position].1;
                    match core.store.try_get(reference.object_id()) {
                        Some(Ok(ObjectBody::Stored(stored)))
                            if fetch_local && stored.node_id != core.worker.node_id =>
                        {
                            let (core, reference) = (core.clone(), reference.clone());
                            fetching.spawn(async move {
                                make_local(&core, &reference, &stored, true).await?;
                                Ok(position)
                            });
                        }
                        _ => {
                            outstanding -= 1;
                            ready.push(position);
                        }
                    }
                }
            }
            Some(joined) = fetching.join_next(), if !fetching.is_empty() => {
                outstanding -= 1;
                if let Ok(Ok(position)) = joined {
                    ready.push(position);
                }
            }
            _ = sleep_until(deadline) => break,
        }
    }
    fetching.abort_all();
    // Several may arrive at once: keep the first `needed` in input order.
    let mut indices: Vec<usize> = ready.into_iter().map(|position| waiting[position].0).collect();
    indices.sort_unstable();
    indices.truncate(needed);
    indices
}

/// Closes a [`WaitSet`] when the wait ends, however it ends.
struct CloseOnDrop<'a>(&'a WaitSet);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Pulls a stored object to this node when `fetch_local` asks for it.
async fn make_local(
    core: &Arc<Core>,
    reference: &UntypedRef,
    stored: &manta_proto::object::StoredObject,
    fetch_local: bool,
) -> Result<()> {
    if fetch_local {
        plasma::local_copy(core, reference.object_id(), reference.owner(), stored, None).await?;
    }
    Ok(())
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Every node of the cluster, alive and dead (as `ray.nodes()`).
pub fn nodes() -> Result<Vec<manta_proto::node::NodeInfo>> {
    let core = core()?;
    let gcs = core.gcs.clone();
    block_on(&core.handle, async move { gcs.get_all_nodes().await }).map_err(Error::from)
}

/// Submits a remote function call (used by `#[manta::remote]`).
pub fn submit_task(key: &str, name: &str, args: Vec<Arg>, options: TaskOptions, num_returns: u32) -> Vec<UntypedRef> {
    submit_task_in(Language::Rust, key, name, args, options, num_returns)
}

/// Submits a call of a function written in `language`, named by its descriptor.
pub(crate) fn submit_task_in(
    language: Language,
    key: &str,
    name: &str,
    args: Vec<Arg>,
    mut options: TaskOptions,
    num_returns: u32,
) -> Vec<UntypedRef> {
    let core = match core() {
        Ok(core) => core,
        Err(error) => panic!("cannot submit {name}: {error}"),
    };
    let task_id = TaskId::random();
    let returns: Vec<UntypedRef> = (0..num_returns)
        .map(|index| UntypedRef::new(ObjectId::for_return(task_id, index), core.caller.clone()))
        .collect();
    let display = options.name.clone().unwrap_or_else(|| name.to_string());
    let runtime_env = crate::runtime_env::effective(&core, options.runtime_env.as_ref(), &options.env_vars);
    // A task running in a placement group that captures its children puts them there too.
    if options.strategy == crate::SchedulingStrategy::Default
        && let Some(pg_id) = crate::context::get_current_placement_group()
    {
        options.strategy =
            crate::SchedulingStrategy::PlacementGroup { pg_id, bundle_index: None, capture_child_tasks: true };
    }
    let placement_group = match &options.strategy {
        crate::SchedulingStrategy::PlacementGroup { pg_id, capture_child_tasks: true, .. } => Some(*pg_id),
        _ => None,
    };
    let mut spec = TaskSpec {
        task_id,
        job_id: core.job.job_id,
        function: core.submitter.names.text(key),
        language,
        // Function names are few and shared; names set per call may all differ, so they are not kept.
        name: match &options.name {
            Some(custom) => custom.as_str().into(),
            None => core.submitter.names.text(name),
        },
        args: Vec::with_capacity(args.len()),
        num_returns,
        actor_call: None,
        runtime_env: Default::default(),
        caller: core.caller.clone(),
        stored_args: Vec::new(),
        placement_group,
    };
    match runtime_env {
        Ok(runtime_env) => spec.runtime_env = core.submitter.runtime_envs.get(runtime_env),
        Err(error) => {
            let failure = TaskFailure {
                kind: FailureKind::RuntimeEnvSetupFailed,
                task: display,
                message: error.to_string(),
                error_type: None,
            };
            crate::submitter::store_failure(&core, &spec, failure);
            return returns;
        }
    }
    let split = match split_args(args, &mut spec.args) {
        Ok(split) => split,
        Err(message) => {
            let failure = TaskFailure { kind: FailureKind::TypeMismatch, task: display, message, error_type: None };
            crate::submitter::store_failure(&core, &spec, failure);
            return returns;
        }
    };
    core.task_event(&spec, TaskState::PendingNodeAssignment, None, Default::default());
    core.cancels.submitted(task_id);
    let task = PendingTask {
        spec,
        arg_refs: split.references,
        held: split.nested,
        resources: core.submitter.resource_sets.get(options.resource_set()),
        strategy: options.strategy.clone(),
        retries: crate::retry::RetryBudget::new(options.max_retries),
        retry_exceptions: options.retry_exceptions.clone(),
        attempts: Vec::new(),
        lost_on: None,
    };
    submit(&core, task);
    returns
}
