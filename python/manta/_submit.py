"""Submitting tasks: resolve their ObjectRef arguments, lease workers from the
node (following spillback), push tasks to leased workers, store the results,
and retry what a dying worker took with it (``max_retries``)."""

import json
import threading
from collections import deque

from ._wire import ConnectionLost, WireError, unwrap, variant
from .exceptions import TaskError

LEASE_TIMEOUT = 24 * 3600.0
TASK_TIMEOUT = 7 * 24 * 3600.0
MAX_LEASE_REQUESTS = 4
LINGER_SECONDS = 0.1


class LeaseRefused(Exception):
    def __init__(self, reason, cause):
        super().__init__(reason)
        self.reason, self.cause = reason, cause


def request_lease(core, request):
    """A worker for ``request`` (a RequestWorkerLeaseRequest): (worker address, granting node link)."""
    link, allow_spill = core.raylet, True
    for _ in range(8):
        request["allow_spill"] = allow_spill
        outcome = unwrap(link.call("RequestWorkerLease", request, timeout=LEASE_TIMEOUT), "RequestWorkerLease")
        kind, payload = variant(outcome)
        if kind == "Granted":
            return payload["worker"], link
        if kind == "Reschedule":
            link, allow_spill = core.peer(payload["node_address"]), False
            continue
        raise LeaseRefused(payload["reason"], payload.get("cause", "other"))
    raise LeaseRefused("the lease request bounced between nodes too often", "other")


def failure(kind, task, message, error_type=None):
    return {"kind": kind, "task": task, "message": message, "error_type": error_type}


class Task:
    """A submitted task until its results are stored."""

    def __init__(self, spec, arg_refs, resources, strategy, max_retries, retry_exceptions):
        self.spec = spec
        self.arg_refs = arg_refs
        self.resources = resources
        self.strategy = strategy
        self.retries_left = max_retries
        self.retry_exceptions = retry_exceptions
        self.cancelled = None
        self.running_on = None

    @property
    def task_id(self):
        return self.spec["task_id"]

    def key(self):
        return (
            self.spec.get("language", "rust"),
            json.dumps(self.resources, sort_keys=True),
            json.dumps(self.spec.get("runtime_env", {}), sort_keys=True),
            json.dumps(self.strategy, sort_keys=True),
        )

    def spend_retry(self):
        if self.retries_left == 0 or self.cancelled:
            return False
        if self.retries_left > 0:
            self.retries_left -= 1
        return True

    def may_retry_exception(self, error_type):
        if self.retry_exceptions is True:
            return True
        if isinstance(self.retry_exceptions, (list, tuple)):
            return error_type in {getattr(kind, "__name__", kind) for kind in self.retry_exceptions}
        return False


class Shape:
    def __init__(self):
        self.queue = deque()
        self.requesting = 0


class Submitter:
    def __init__(self, core):
        self.core = core
        self._lock = threading.Condition()
        self._shapes = {}
        self._tasks = {}
        self._stopped = False

    # Submitting.
    def submit(self, task):
        if self.core.log_printer is not None:
            self.core.log_printer.expecting = True
        self.core.task_events.record(task.spec, "PENDING_NODE_ASSIGNMENT")
        with self._lock:
            self._tasks[task.task_id] = task
        pending = list(task.arg_refs)
        if not pending:
            self._enqueue(task)
            return
        remaining = [len(pending)]
        lock = threading.Lock()

        def resolved(position, ref, entry):
            if entry is None:
                entry = ("Err", failure("object_lost", task.spec["name"], f"argument {position} ({ref.hex()}) was lost"))
            outcome, body = entry
            if outcome == "Err":
                self.finish(task, ("Err", body))
            else:
                kind, value = next(iter(body.items()))
                if kind == "Inline":
                    task.spec["args"][position] = bytes(value)
                else:
                    task.spec["stored_args"].append({"position": position, "object": ref.wire(), "stored": value})
            with lock:
                remaining[0] -= 1
                done = remaining[0] == 0
            if done and outcome != "Err":
                self._enqueue(task)

        for position, ref in pending:
            callback = lambda entry, position=position, ref=ref: resolved(position, ref, entry)  # noqa: E731
            if ref.owner["worker_id"] == self.core.worker_id:
                self.core.objects.when_ready(ref.hex(), callback)
            else:
                threading.Thread(target=self._fetch_arg, args=(ref, callback), daemon=True).start()

    def _fetch_arg(self, ref, callback):
        try:
            entry = self.core.entry_of(ref, None)
        except TaskError as error:
            entry = ("Err", failure(error.kind, error.task, error.message))
        callback(entry)

    def _enqueue(self, task):
        with self._lock:
            if task.cancelled:
                return
            shape = self._shapes.setdefault(task.key(), Shape())
            shape.queue.append(task)
            self._lock.notify_all()
            start = shape.requesting < MAX_LEASE_REQUESTS and shape.requesting < len(shape.queue)
            if start:
                shape.requesting += 1
        if start:
            threading.Thread(target=self._lease_loop, args=(task.key(), shape, task), daemon=True).start()

    # A lease: obtained for a shape, it runs the shape's tasks until none is left.
    def _lease_loop(self, key, shape, first):
        language, _, runtime_env, strategy = key
        request = {
            "strategy": json.loads(strategy),
            "job": self.core.job,
            "resources": first.resources,
            "runtime_env": json.loads(runtime_env),
            "actor": None,
            "detached": False,
            "allow_spill": True,
            "placement": None,
            "backlog": max(0, len(shape.queue) - shape.requesting),
            "language": language,
        }
        try:
            worker, node = request_lease(self.core, request)
            link = self.core.peer(worker["address"])
        except (LeaseRefused, WireError) as error:
            with self._lock:
                shape.requesting -= 1
                refused = list(shape.queue)
                shape.queue.clear()
            cause = getattr(error, "cause", "other")
            kind = "runtime_env_setup_failed" if cause == "runtime_env_setup_failed" else "unschedulable"
            for task in refused:
                self.finish(task, ("Err", failure(kind, task.spec["name"], str(error))))
            return
        with self._lock:
            shape.requesting -= 1
        alive = True
        while alive:
            with self._lock:
                if not shape.queue:
                    self._lock.wait_for(lambda: shape.queue or self._stopped, LINGER_SECONDS)
                if not shape.queue or self._stopped:
                    break
                task = shape.queue.popleft()
                task.running_on = worker
            alive = self._run(task, link)
        if alive:
            try:
                node.call("ReturnWorkerLease", {"worker_id": worker["worker_id"]}, timeout=10)
            except WireError:
                pass
        with self._lock:
            restart = shape.queue and shape.requesting == 0 and not self._stopped
            if restart:
                shape.requesting += 1
        if restart:
            threading.Thread(target=self._lease_loop, args=(key, shape, shape.queue[0]), daemon=True).start()

    def _run(self, task, link):
        """Pushes ``task`` to the leased worker; False when the worker died."""
        self.core.task_events.record(task.spec, "SUBMITTED_TO_WORKER", task.running_on)
        try:
            reply = unwrap(link.call("PushTask", {"spec": task.spec}, timeout=TASK_TIMEOUT), "Task")
        except ConnectionLost as error:
            if task.cancelled:
                self.finish(task, ("Err", failure("cancelled", task.spec["name"], task.cancelled)))
            elif task.spend_retry():
                task.running_on = None
                self._enqueue(task)
            else:
                message = f"the worker running it died ({error.message}) and no retry was left"
                self.finish(task, ("Err", failure("worker_died", task.spec["name"], message)))
            return False
        except WireError as error:
            self.finish(task, ("Err", failure("worker_died", task.spec["name"], str(error))))
            return True
        outcome, value = variant(reply)
        if outcome == "Err" and value["kind"] == "application" and task.may_retry_exception(value.get("error_type")):
            if task.spend_retry():
                self._enqueue(task)
                return True
        self.finish(task, (outcome, value))
        if outcome == "Ok" and any(ret.get("nested") for ret in value):
            try:
                link.send_event("ReleaseReturns", {"task_id": task.task_id})
            except WireError:
                pass
        return True

    def finish(self, task, result):
        with self._lock:
            self._tasks.pop(task.task_id, None)
        self.core.store_results(task.spec, result, task.running_on)

    # Cancelling.
    def cancel(self, task_id, force, recursive):
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None:
                return False
            task.cancelled = "cancelled by manta.cancel"
            queued = None
            for shape in self._shapes.values():
                if task in shape.queue:
                    shape.queue.remove(task)
                    queued = task
            running_on = task.running_on
        if queued is not None or running_on is None:
            self.finish(task, ("Err", failure("cancelled", task.spec["name"], task.cancelled)))
            return True
        request = {"task_id": task_id, "force": force, "recursive": recursive, "at_executor": True}
        try:
            self.core.peer(running_on["address"]).call("CancelTask", request, timeout=10)
        except WireError:
            pass
        return True

    def stop(self):
        with self._lock:
            self._stopped = True
            self._lock.notify_all()
