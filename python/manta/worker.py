"""Python worker mode: ``python3 -m manta.worker``, started by a node for the
Python tasks and actors of a job. It reads the worker-environment contract
(and removes it, so user code and its children never see the token), listens,
registers with its node, then runs what callers push to it."""

import ctypes
import importlib
import os
import queue
import signal
import sys
import threading
import traceback
from concurrent.futures import Future, ThreadPoolExecutor

import cloudpickle

from . import _state, _values
from ._core import TASK_NAME_MARKER, Core
from ._objects import ObjectRef, object_id
from ._remote import FUNCTIONS_NAMESPACE
from ._wire import Link, Tls, WireError, unwrap

CONTRACT = (
    "MANTA_WORKER_MODE", "MANTA_WORKER_ID", "MANTA_NODE_ADDRESS", "MANTA_NODE_ID", "MANTA_GCS_ADDRESS",
    "MANTA_TOKEN", "MANTA_JOB_ID", "MANTA_NAMESPACE", "MANTA_NODE_IP", "MANTA_RUNTIME_ENV", "MANTA_EXECUTABLE",
    "MANTA_GPU_IDS", "MANTA_TLS_CERT", "MANTA_TLS_KEY", "MANTA_TLS_CA",
)

class _Cancelled(BaseException):
    """Raised in a task's thread by ``manta.cancel`` (not caught by ``except Exception``)."""


def _failure(kind, task, message, error_type=None):
    return {"Err": {"kind": kind, "task": task, "message": message, "error_type": error_type}}


class Executor:
    """Runs the tasks and the actor of this worker."""

    def __init__(self, core):
        self.core = core
        self._functions = {}
        self._actor = None
        self._actor_spec = None
        self._actor_pool = None
        self._running = {}
        # Pushed tasks not started yet, and those of them already cancelled: a
        # cancel that arrives before its task starts is kept for the start.
        self._pending = set()
        self._cancelled = set()
        self._lock = threading.Lock()
        self._last_name = None
        # Tasks and a one-at-a-time actor's calls run on the main thread, where
        # a cancel's SIGINT interrupts even a blocking call (as in Ray).
        self._main = queue.Queue()
        self._cancel_main = None

    def serve_main(self):
        """Runs queued work on the main thread, forever."""
        signal.signal(signal.SIGINT, self._on_sigint)
        while True:
            work, done = self._main.get()
            try:
                done(work())
            except _Cancelled:
                pass

    def _on_sigint(self, _signum, _frame):
        with self._lock:
            wanted, self._cancel_main = self._cancel_main, None
            running = self._running.get(wanted) == threading.get_ident() if wanted else False
        if running:
            raise _Cancelled()

    def _on_main(self, work, done):
        self._main.put((work, done))

    def _on_main_and_wait(self, work):
        future = Future()
        self._on_main(work, future.set_result)
        return future.result()

    def running_task(self):
        with self._lock:
            return threading.get_ident() in self._running.values()

    def _announce(self, name):
        short = type(self._actor).__name__ if self._actor is not None else name
        if short != self._last_name:
            self._last_name = short
            print(f"{TASK_NAME_MARKER}{short}", flush=True)
            print(f"{TASK_NAME_MARKER}{short}", file=sys.stderr, flush=True)

    def load(self, descriptor):
        """The function or class a descriptor names: ``@key`` (pickled, in the GCS) or ``module:qualname``."""
        found = self._functions.get(descriptor)
        if found is not None:
            return found
        if descriptor.startswith("@"):
            reply = self.core.gcs.call("KvGet", {"namespace": FUNCTIONS_NAMESPACE, "key": descriptor[1:]})
            value = unwrap(reply, "KvGet")["value"]
            if value is None:
                raise LookupError(f"the function {descriptor} is not in the cluster (its job ended?)")
            found = cloudpickle.loads(value)
        else:
            module_name, _, qualname = descriptor.partition(":")
            if not qualname:
                raise LookupError(f"{descriptor!r} is not module:qualname")
            found = importlib.import_module(module_name)
            for part in qualname.split("."):
                found = getattr(found, part)
        self._functions[descriptor] = found
        return found

    def _args(self, spec):
        values = []
        stored = {entry["position"]: entry for entry in spec.get("stored_args", [])}
        for position, data in enumerate(spec["args"]):
            if position in stored:
                ref = ObjectRef(stored[position]["object"]["object_id"], stored[position]["object"]["owner"])
                data = self.core.bytes_of(ref, {"Stored": stored[position]["stored"]})
            values.append(_values.loads(bytes(data)))
        return _values.split_kwargs(values)

    def _results(self, spec, value):
        count = spec["num_returns"]
        values = [value] if count == 1 else list(value)
        if len(values) != count:
            raise ValueError(f"{spec['name']} returned {len(values)} values, declared num_returns={count}")
        task = bytes.fromhex(spec["task_id"])
        owner = spec["caller"]["worker_id"]
        bodies = [
            self.core.body_of(object_id(task, index), _values.dumps(item), owner) for index, item in enumerate(values)
        ]
        return {"Ok": [{"body": body, "nested": []} for body in bodies]}

    def _run(self, spec, call):
        name = spec["name"]
        with self._lock:
            self._pending.discard(spec["task_id"])
            if spec["task_id"] in self._cancelled:
                self._cancelled.discard(spec["task_id"])
                return _failure("cancelled", name, "cancelled by manta.cancel")
            self._running[spec["task_id"]] = threading.get_ident()
        try:
            self._announce(name)
            args, kwargs = self._args(spec)
            return self._results(spec, call(*args, **kwargs))
        except _Cancelled:
            return _failure("cancelled", name, "cancelled by manta.cancel")
        except Exception as error:  # noqa: BLE001 - the task's error is its result
            text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
            return _failure("application", name, text.rstrip(), type(error).__name__)
        finally:
            with self._lock:
                self._running.pop(spec["task_id"], None)
            sys.stdout.flush()
            sys.stderr.flush()

    # Requests.
    def dispatch(self, link, request_id, name, payload):
        """Actor calls are queued in arrival order: on the main thread for a
        one-at-a-time actor, else on the actor's pool."""
        if name == "PushTask" and payload["spec"].get("actor_call") and self._actor is not None:
            spec = payload["spec"]

            def reply(outcome):
                link.reply(request_id, {"Ok": {"Task": outcome}})

            if self._actor_pool is None:
                self._on_main(lambda: self.call_method(spec), reply)
            else:
                self._actor_pool.submit(lambda: reply(self.call_method(spec)))
            return True
        if name == "PushTask" and not payload["spec"].get("actor_call"):
            # Known as pending in arrival order, before a cancel sent after it is served.
            with self._lock:
                self._pending.add(payload["spec"]["task_id"])
        return False

    def call_method(self, spec):
        method = spec["actor_call"]["method"]
        target = getattr(self._actor, method, None)
        if target is None or method.startswith("_"):
            return _failure("unknown_function", spec["name"], f"the actor has no method {method!r}")
        return self._run(spec, target)

    def request(self, link, name, payload):
        if name == "PushTask":
            spec = payload["spec"]
            if spec.get("actor_call"):
                if self._actor is None:
                    return {"Task": _failure("actor_died", spec["name"], "this worker hosts no actor")}
                return {"Task": self.call_method(spec)}
            try:
                function = self.load(spec["function"])
            except Exception as error:  # noqa: BLE001
                with self._lock:
                    self._pending.discard(spec["task_id"])
                    self._cancelled.discard(spec["task_id"])
                return {"Task": _failure("unknown_function", spec["name"], f"cannot load {spec['function']}: {error}")}
            return {"Task": self._on_main_and_wait(lambda: self._run(spec, function))}
        if name == "CreateActor":
            return {"Task": self._on_main_and_wait(lambda: self.create_actor(payload["spec"]))}
        if name == "CancelTask":
            self.cancel(payload)
            return "Ack"
        raise WireError("unimplemented", f"a Python worker does not serve {name}")

    def create_actor(self, spec):
        if self._actor is not None:
            raise WireError("invalid_argument", "this worker already hosts an actor")
        try:
            cls = self.load(spec["class"])
        except Exception as error:  # noqa: BLE001
            return _failure("unknown_function", spec["class"], f"cannot load the class: {error}")
        name = getattr(cls, "__name__", "Actor")
        self._announce(name)
        try:
            fake = {"args": spec["args"], "stored_args": []}
            args, kwargs = self._args(fake)
            self._actor = cls(*args, **kwargs)
        except Exception as error:  # noqa: BLE001
            text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
            return _failure("application", f"{name}.__init__", text.rstrip(), type(error).__name__)
        self._last_name = name
        self._actor_spec = spec
        threads = max(1, int(spec.get("max_concurrency", 1)))
        if threads > 1:
            self._actor_pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="manta-actor")
        return {"Ok": []}

    def cancel(self, payload):
        if payload.get("force"):
            os._exit(1)
        with self._lock:
            thread = self._running.get(payload["task_id"])
            if thread is None and payload["task_id"] in self._pending:
                # Not started yet: it ends as cancelled when it would start.
                self._cancelled.add(payload["task_id"])
            if thread is not None and thread == threading.main_thread().ident:
                self._cancel_main = payload["task_id"]
        if thread is None:
            return
        if thread == threading.main_thread().ident:
            os.kill(os.getpid(), signal.SIGINT)
        else:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread), ctypes.py_object(_Cancelled))


def main():
    contract = {name: os.environ.pop(name, None) for name in CONTRACT}
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    if contract["MANTA_GPU_IDS"]:
        _state.gpu_ids = [int(item) for item in contract["MANTA_GPU_IDS"].split(",") if item.strip()]
    token = contract["MANTA_TOKEN"]
    gcs_address = contract["MANTA_GCS_ADDRESS"]
    import json  # noqa: PLC0415

    runtime_env = json.loads(contract["MANTA_RUNTIME_ENV"] or "{}")
    job = {
        "job_id": contract["MANTA_JOB_ID"],
        "namespace": contract["MANTA_NAMESPACE"] or "",
        "executable": contract["MANTA_EXECUTABLE"] or "",
        "gcs_address": gcs_address,
    }
    tls = Tls.from_env({name: contract[name] for name in ("MANTA_TLS_CERT", "MANTA_TLS_KEY", "MANTA_TLS_CA")})
    gcs = Link.connect(gcs_address, token, "worker", "python worker", tls=tls)
    core = Core(
        "worker",
        token,
        gcs,
        contract["MANTA_NODE_ID"],
        contract["MANTA_NODE_ADDRESS"],
        contract["MANTA_NODE_IP"] or "127.0.0.1",
        job,
        runtime_env,
        worker_id=contract["MANTA_WORKER_ID"],
        tls=tls,
    )
    core.executor = Executor(core)
    _state.core = core
    register = {"worker_id": core.worker_id, "address": core.worker["address"], "pid": os.getpid()}
    core.raylet.call("RegisterWorker", register, timeout=10)
    core.executor.serve_main()


if __name__ == "__main__":
    main()
