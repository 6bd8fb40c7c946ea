"""manta for Python: tasks, actors and objects on a manta cluster, with Ray's API.

    import manta
    manta.init()

    @manta.remote
    def square(x):
        return x * x

    print(manta.get([square.remote(i) for i in range(4)]))

The package speaks manta's msgpack wire protocol (docs/wire-protocol.md) itself;
it needs only ``msgpack`` and ``cloudpickle``.
"""

from . import _actors, _state
from ._init import init, is_initialized, shutdown
from ._objects import ObjectRef
from ._remote import (
    CrossLanguageFunction,
    NodeAffinitySchedulingStrategy,
    PlacementGroupSchedulingStrategy,
    remote,
)
from .exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    GetTimeoutError,
    MantaError,
    ObjectLostError,
    RuntimeEnvSetupError,
    TaskCancelledError,
    TaskError,
    TaskUnschedulableError,
    WorkerCrashedError,
)

__version__ = "0.1.0"


def _core():
    core = _state.core
    if core is None:
        raise RuntimeError("manta.init() has not been called")
    return core


def get(refs, *, timeout=None):
    """The value of a ref, or the values of a list of refs, waiting for them
    (``timeout`` seconds at most: then :class:`GetTimeoutError`). A failed task's
    error is raised here."""
    return _core().get(refs, timeout)


def put(value):
    """Stores ``value`` in the cluster; returns its ref."""
    if isinstance(value, ObjectRef):
        raise TypeError("manta.put of an ObjectRef is not allowed; pass the ref itself")
    return _core().put(value)


def wait(refs, *, num_returns=1, timeout=None, fetch_local=True):
    """(ready, not_ready): the first ``num_returns`` refs whose values are there,
    within ``timeout`` seconds, in the order given."""
    del fetch_local
    return _core().wait(refs, num_returns, timeout)


def kill(actor, *, no_restart=True):
    """Ends an actor for good (it is not restarted)."""
    del no_restart
    if not isinstance(actor, _actors.ActorHandle):
        raise TypeError(f"manta.kill takes an actor handle, not {type(actor).__name__}")
    _actors.kill(_core(), actor._info)


def cancel(ref, *, force=False, recursive=True):
    """Cancels the task that makes ``ref``: a queued task never runs; a running
    one gets ``TaskCancelledError`` raised in it (``force``: its worker exits)."""
    return _core().submitter.cancel(ref.hex()[:32], force, recursive)


def get_actor(name, namespace=None):
    """The actor registered as ``name`` (Python's or another language's)."""
    core = _core()
    info = _actors.lookup(core, name, namespace or core.job["namespace"])
    if info is None:
        raise ValueError(f"no actor named {name!r} in namespace {namespace or core.job['namespace']!r}")
    return _actors.ActorHandle(info)


def get_gpu_ids():
    """The GPU ids given to this worker (``[]`` in a driver)."""
    return list(_state.gpu_ids)


def nodes():
    """Every node of the cluster, as the GCS has it."""
    return _core().gcs.call("GetAllNodes", {})["GetAllNodes"]["nodes"]


def rust_function(name):
    """A Rust ``#[manta::remote]`` function of the job's program (``manta.init(rust_program=...)``),
    by name: ``manta.rust_function("add").remote(1, 2)``. Values cross as msgpack."""
    return CrossLanguageFunction("rust", name)


def python_function(module, qualname):
    """A Python function by module and name (``module:qualname``), importable by the workers."""
    return CrossLanguageFunction("python", f"{module}:{qualname}")


__all__ = [
    "init", "shutdown", "is_initialized", "remote", "get", "put", "wait", "kill", "cancel", "get_actor",
    "get_gpu_ids", "nodes", "rust_function", "python_function", "ObjectRef", "NodeAffinitySchedulingStrategy",
    "PlacementGroupSchedulingStrategy", "MantaError", "TaskError", "WorkerCrashedError", "ActorDiedError",
    "ActorUnavailableError", "TaskCancelledError", "ObjectLostError", "RuntimeEnvSetupError",
    "TaskUnschedulableError", "GetTimeoutError",
]
