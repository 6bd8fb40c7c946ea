"""Actors: creating one (a dedicated leased worker, ``CreateActor``, then the
GCS's directory), calling its methods in order, finding one by name, killing it."""

import queue
import threading
import time

from . import _state
from ._objects import ObjectRef, object_id, random_id
from ._submit import LeaseRefused, failure, request_lease
from ._wire import ConnectionLost, WireError, unwrap, variant
from .exceptions import ActorDiedError, RuntimeEnvSetupError, TaskUnschedulableError, from_failure

CREATE_TIMEOUT = 300.0
CALL_TIMEOUT = 7 * 24 * 3600.0


def _resolve_args(core, args):
    """Values for a constructor: refs are read first (their bytes travel inline)."""
    resolved = []
    for arg in args:
        if isinstance(arg, ObjectRef):
            outcome, body = core.entry_of(arg, None)
            if outcome == "Err":
                raise from_failure(body)
            resolved.append(core.bytes_of(arg, body))
        else:
            resolved.append(arg)
    return resolved


def create(core, descriptor, language, class_name, args, options):
    """Creates the actor; returns its ActorInfo (an existing one with ``get_if_exists``)."""
    namespace = options.get("namespace") or core.job["namespace"]
    name = options.get("name")
    if name is not None and not name:
        raise ValueError("an actor name must not be empty")
    if options.get("get_if_exists") and name:
        found = lookup(core, name, namespace)
        if found is not None:
            return found
    if core.log_printer is not None:
        core.log_printer.expecting = True
    actor_id = random_id().hex()
    detached = options.get("lifetime") == "detached"
    spec = {
        "actor_id": actor_id,
        "job_id": core.job["job_id"],
        "class": descriptor,
        "language": language,
        "args": _resolve_args(core, args),
        "max_restarts": options.get("max_restarts", 0),
        "max_concurrency": options.get("max_concurrency", 1),
        "name": name,
        "namespace": namespace,
        "detached": detached,
        "runtime_env": options["runtime_env"],
        "owner": core.worker,
        "restarts_used": 0,
    }
    lease = {
        "strategy": options["strategy"],
        "job": core.job,
        "resources": options["resources"],
        "runtime_env": options["runtime_env"],
        "actor": actor_id,
        "detached": detached,
        "allow_spill": True,
        "placement": options["placement"],
        "backlog": 0,
        "language": language,
    }
    try:
        worker, node = request_lease(core, dict(lease))
    except LeaseRefused as refused:
        error = RuntimeEnvSetupError if refused.cause == "runtime_env_setup_failed" else TaskUnschedulableError
        raise error(refused.cause, f"actor {class_name}", refused.reason) from None
    info = {
        "actor_id": actor_id,
        "class": descriptor,
        "language": language,
        "name": name,
        "namespace": namespace,
        "job_id": core.job["job_id"],
        "detached": detached,
        "worker": worker,
        "node_address": node.remote,
        "max_task_retries": options.get("max_task_retries", 0),
    }
    try:
        outcome = unwrap(core.peer(worker["address"]).call("CreateActor", {"spec": spec}, timeout=CREATE_TIMEOUT), "Task")
    except WireError as error:
        _kill_worker(core, info)
        raise ActorDiedError("actor_died", f"{class_name}.__init__", f"the actor's worker exited during construction: {error}") from None
    kind, value = variant(outcome)
    if kind == "Err":
        _kill_worker(core, info)
        raise from_failure(value)
    restart = {"spec": spec, "lease": lease} if spec["max_restarts"] != 0 else None
    registered = unwrap(core.gcs.call("RegisterActor", {"info": info, "restart": restart}), "RegisterActor")
    if registered["existing"] is not None:
        _kill_worker(core, info)
        if options.get("get_if_exists"):
            return registered["existing"]
        raise ValueError(f"the actor name {name!r} is already taken in namespace {namespace!r}")
    return info


def lookup(core, name, namespace):
    return unwrap(core.gcs.call("GetNamedActor", {"name": name, "namespace": namespace}), "GetNamedActor")["info"]


def _kill_worker(core, info):
    try:
        request = {"worker_id": info["worker"]["worker_id"], "reason": f"actor {info['actor_id']} was killed"}
        core.peer(info["node_address"]).call("KillWorker", request, timeout=10)
    except WireError:
        pass


def kill(core, info):
    record = unwrap(core.gcs.call("GetActor", {"actor_id": info["actor_id"]}), "GetActor")["record"]
    if record is not None:
        core.gcs.call("UnregisterActor", {"actor_id": info["actor_id"]})
    else:
        _kill_worker(core, info)


def _display_name(info):
    """A class name for task names: from a Rust key or `module:Class`; a pickled class's actor name."""
    descriptor = info["class"]
    if descriptor.startswith("@"):
        return info.get("name") or "Actor"
    return descriptor.split(":")[-1].split("#")[0].split("::")[-1]


class ActorMethod:
    def __init__(self, handle, name, num_returns=1):
        self._handle, self._name, self._num_returns = handle, name, num_returns

    def options(self, num_returns=1, **_ignored):
        return ActorMethod(self._handle, self._name, num_returns)

    def remote(self, *args, **kwargs):
        return self._handle._call(self._name, args, kwargs, self._num_returns)


class ActorHandle:
    """A handle to an actor: ``handle.method.remote(...)``. Calls from one handle run in order."""

    def __init__(self, info, class_name=None):
        self._info = info
        self._class_name = class_name or _display_name(info)
        self._calls = queue.Queue()
        self._sender = None
        self._lock = threading.Lock()

    @property
    def actor_id(self):
        return self._info["actor_id"]

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return ActorMethod(self, name)

    def __reduce__(self):
        return (ActorHandle, (self._info, self._class_name))

    def __repr__(self):
        return f"Actor({self._info['class']}, {self._info['actor_id']})"

    def _call(self, method, args, kwargs, num_returns):
        core = _state.core
        if core is None:
            raise RuntimeError("manta.init() has not been called")
        cross = self._info.get("language", "rust") != "python"
        task_id = random_id()
        refs = [ObjectRef(object_id(task_id, index), core.worker) for index in range(num_returns)]
        for ref in refs:
            core.objects.expect(ref.hex())
        from ._remote import encode_args  # noqa: PLC0415

        encoded, arg_refs = encode_args(args, kwargs, cross)
        class_name = self._class_name
        spec = {
            "task_id": task_id.hex(),
            "job_id": core.job["job_id"],
            "function": self._info["class"],
            "language": self._info.get("language", "rust"),
            "name": f"{class_name}.{method}",
            "args": encoded,
            "num_returns": num_returns,
            "actor_call": {"actor_id": self.actor_id, "method": method},
            "caller": core.worker,
            "stored_args": [],
            "placement_group": None,
        }
        with self._lock:
            if self._sender is None:
                self._sender = threading.Thread(target=self._send_loop, args=(core,), daemon=True)
                self._sender.start()
        core.task_events.record(spec, "PENDING_NODE_ASSIGNMENT")
        self._calls.put((spec, arg_refs, refs))
        return refs[0] if num_returns == 1 else refs

    def _send_loop(self, core):
        while True:
            spec, arg_refs, refs = self._calls.get()
            failed = None
            for position, ref in arg_refs:
                try:
                    outcome, body = core.entry_of(ref, None)
                except Exception as error:  # noqa: BLE001
                    failed = failure("object_lost", spec["name"], str(error))
                    break
                if outcome == "Err":
                    failed = body
                    break
                kind, value = next(iter(body.items()))
                if kind == "Inline":
                    spec["args"][position] = bytes(value)
                else:
                    spec["stored_args"].append({"position": position, "object": ref.wire(), "stored": value})
            if failed is not None:
                self._store(core, spec, ("Err", failed))
                continue
            self._push(core, spec)

    def _push(self, core, spec):
        try:
            link = core.peer(self._info["worker"]["address"])
        except WireError:
            link = None
        if link is None or link.closed:
            if not self._relocate(core):
                self._store(core, spec, ("Err", failure("actor_died", spec["name"], "the actor is dead")))
                return
            link = core.peer(self._info["worker"]["address"])
        core.task_events.record(spec, "SUBMITTED_TO_WORKER", self._info["worker"])
        future = link.call_async("PushTask", {"spec": spec}, timeout=CALL_TIMEOUT)
        future.add_done_callback(lambda done: self._done(core, spec, done))

    def _done(self, core, spec, done):
        try:
            outcome, value = variant(unwrap(done.result(), "Task"))
        except ConnectionLost as error:
            outcome, value = "Err", failure("actor_unavailable", spec["name"], f"the actor's process died during the call: {error.message}")
        except WireError as error:
            outcome, value = "Err", failure("actor_died", spec["name"], str(error))
        self._store(core, spec, (outcome, value))

    def _relocate(self, core, patience=30.0):
        """Waits for a restarting actor's new worker; False when it is dead."""
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            record = unwrap(core.gcs.call("GetActor", {"actor_id": self.actor_id}), "GetActor")["record"]
            if record is None or record["state"] == "DEAD":
                return False
            if record["state"] == "ALIVE" and record["info"]["worker"] != self._info["worker"]:
                self._info = record["info"]
                return True
            time.sleep(0.05)
        return False

    def _store(self, core, spec, result):
        core.store_results(spec, result, self._info["worker"])
