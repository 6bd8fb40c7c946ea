"""``@manta.remote`` functions and classes, Ray's options, and calls of
functions written in other languages by name."""

import hashlib
import inspect

import cloudpickle

from . import _actors, _runtime_env, _state, _values
from ._objects import ObjectRef, object_id, random_id
from ._core import INLINE_OBJECT_MAX_BYTES
from ._submit import Task

FUNCTIONS_NAMESPACE = "manta.functions"
_TASK_OPTIONS = {
    "num_cpus", "num_gpus", "memory", "resources", "max_retries", "retry_exceptions", "num_returns",
    "scheduling_strategy", "runtime_env", "name",
}
_ACTOR_OPTIONS = {
    "num_cpus", "num_gpus", "memory", "resources", "max_restarts", "max_task_retries", "max_concurrency",
    "scheduling_strategy", "runtime_env", "name", "namespace", "lifetime", "get_if_exists",
}


class NodeAffinitySchedulingStrategy:
    """Run on one node (``soft``: elsewhere when it cannot)."""

    def __init__(self, node_id, soft=False):
        self.node_id, self.soft = node_id, soft


class PlacementGroupSchedulingStrategy:
    """Run in a placement group's bundle (the group's hex id)."""

    def __init__(self, placement_group, placement_group_bundle_index=-1, placement_group_capture_child_tasks=False):
        self.pg_id = getattr(placement_group, "id", placement_group)
        self.bundle_index = placement_group_bundle_index
        self.capture = placement_group_capture_child_tasks


def _core():
    core = _state.core
    if core is None:
        raise RuntimeError("manta.init() has not been called")
    return core


def _strategy(value):
    if value in (None, "DEFAULT"):
        return "Default"
    if value == "SPREAD":
        return "Spread"
    if isinstance(value, NodeAffinitySchedulingStrategy):
        return {"NodeAffinity": {"node_id": value.node_id, "soft": value.soft}}
    if isinstance(value, PlacementGroupSchedulingStrategy):
        index = None if value.bundle_index in (None, -1) else value.bundle_index
        return {"PlacementGroup": {"pg_id": value.pg_id, "bundle_index": index, "capture_child_tasks": value.capture}}
    raise ValueError(f"unknown scheduling_strategy {value!r}: use 'DEFAULT', 'SPREAD' or a *SchedulingStrategy")


def _check(options, allowed, what):
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(f"unknown {what} options {sorted(unknown)}; valid: {sorted(allowed)}")
    for key in ("num_cpus", "num_gpus", "memory"):
        value = options.get(key)
        if value is not None and (not isinstance(value, (int, float)) or value < 0):
            raise ValueError(f"{key} must be a number >= 0, not {value!r}")


def _resources(options, default_cpus):
    resources = {}
    cpus = options.get("num_cpus", default_cpus)
    for name, value in (("CPU", cpus), ("GPU", options.get("num_gpus")), ("memory", options.get("memory"))):
        if value:
            resources[name] = float(value)
    for name, value in (options.get("resources") or {}).items():
        if name in ("CPU", "GPU", "memory"):
            raise ValueError(f"use num_cpus / num_gpus / memory for {name}, not resources")
        if value:
            resources[name] = float(value)
    return resources


def encode_args(args, kwargs, cross):
    """Arguments on the wire (keyword values after the positional ones, then their
    names) and the refs among them, resolved before the call runs."""
    if kwargs and cross:
        raise TypeError("keyword arguments cannot cross to another language")
    encoded, refs = [], []
    for position, arg in enumerate([*args, *kwargs.values()]):
        if not isinstance(arg, ObjectRef):
            data = _values.dumps(arg, cross_language=cross)
            if len(data) <= INLINE_OBJECT_MAX_BYTES:
                encoded.append(data)
                continue
            # A large argument goes through the node's store, as a ref would.
            arg = _core().put_encoded(data)
        encoded.append(b"")
        refs.append((position, arg))
    if kwargs:
        encoded.append(_values.dumps_kwarg_names(kwargs))
    return encoded, refs


def submit(descriptor, language, name, args, kwargs, options):
    core = _core()
    cross = language != "python"
    num_returns = options.get("num_returns", 1)
    task_id = random_id()
    refs = [ObjectRef(object_id(task_id, index), core.worker) for index in range(num_returns)]
    for ref in refs:
        core.objects.expect(ref.hex())
    encoded, arg_refs = encode_args(args, kwargs, cross)
    own_env = _runtime_env.resolve(options.get("runtime_env"), core.gcs, core.job["job_id"])
    spec = {
        "task_id": task_id.hex(),
        "job_id": core.job["job_id"],
        "function": descriptor,
        "language": language,
        "name": options.get("name") or name,
        "args": encoded,
        "num_returns": num_returns,
        "actor_call": None,
        "runtime_env": _runtime_env.inherit(core.runtime_env, own_env),
        "caller": core.worker,
        "stored_args": [],
        "placement_group": None,
    }
    task = Task(
        spec,
        arg_refs,
        _resources(options, 1),
        _strategy(options.get("scheduling_strategy")),
        options.get("max_retries", 3),
        options.get("retry_exceptions", False),
    )
    core.submitter.submit(task)
    return refs[0] if num_returns == 1 else refs


def export(value):
    """Stores a pickled function or class in the GCS once; returns its descriptor ``@<key>``."""
    core = _core()
    data = cloudpickle.dumps(value)
    key = f"{core.job['job_id']}/{hashlib.blake2b(data, digest_size=16).hexdigest()}"
    cache = core.__dict__.setdefault("_exported", set())
    if key not in cache:
        core.gcs.call("KvPut", {"namespace": FUNCTIONS_NAMESPACE, "key": key, "value": data, "overwrite": False})
        cache.add(key)
    return "@" + key


class RemoteFunction:
    """A function run as tasks: ``f.remote(...)``, ``f.options(...).remote(...)``."""

    def __init__(self, function, options):
        _check(options, _TASK_OPTIONS, "task")
        self._function, self._options = function, options
        self._descriptor = None
        self.__name__ = getattr(function, "__name__", "function")
        self.__doc__ = getattr(function, "__doc__", None)

    def __call__(self, *args, **kwargs):
        raise TypeError(f"remote function {self.__name__} cannot be called directly; use {self.__name__}.remote()")

    def options(self, **options):
        _check(options, _TASK_OPTIONS, "task")
        clone = RemoteFunction(self._function, {**self._options, **options})
        clone._descriptor = self._descriptor
        return clone

    def remote(self, *args, **kwargs):
        if self._descriptor is None:
            self._descriptor = export(self._function)
        return submit(self._descriptor, "python", self.__name__, args, kwargs, self._options)


class CrossLanguageFunction:
    """A function of another language, by name: ``manta.rust_function("add").remote(1, 2)``."""

    def __init__(self, language, descriptor, options=None):
        self._language, self._descriptor, self._options = language, descriptor, dict(options or {})

    def options(self, **options):
        _check(options, _TASK_OPTIONS, "task")
        return CrossLanguageFunction(self._language, self._descriptor, {**self._options, **options})

    def remote(self, *args):
        name = self._descriptor.split("::")[-1].split(":")[-1]
        return submit(self._descriptor, self._language, name, args, {}, self._options)


class ActorClass:
    """A class run as actors: ``Counter.remote(...)``, ``Counter.options(name=...).remote(...)``."""

    def __init__(self, cls, options):
        _check(options, _ACTOR_OPTIONS, "actor")
        self._cls, self._options = cls, options
        self.__name__ = cls.__name__

    def __call__(self, *args, **kwargs):
        raise TypeError(f"actor class {self.__name__} cannot be instantiated directly; use {self.__name__}.remote()")

    def options(self, **options):
        _check(options, _ACTOR_OPTIONS, "actor")
        return ActorClass(self._cls, {**self._options, **options})

    def remote(self, *args, **kwargs):
        core = _core()
        options = dict(self._options)
        descriptor = export(self._cls)
        encoded, refs = encode_args(args, kwargs, False)
        for position, ref in refs:
            encoded[position] = ref
        own_env = _runtime_env.resolve(options.get("runtime_env"), core.gcs, core.job["job_id"])
        held = _resources(options, 0)
        wire = {
            **options,
            "runtime_env": _runtime_env.inherit(core.runtime_env, own_env),
            "strategy": _strategy(options.get("scheduling_strategy")),
            "resources": held,
            # An actor that holds no CPU still needs one free to be placed (as in Ray).
            "placement": None if "num_cpus" in options else {**held, "CPU": 1.0},
        }
        info = _actors.create(core, descriptor, "python", self.__name__, encoded, wire)
        return _actors.ActorHandle(info, self.__name__)


def remote(*args, **options):
    """``@manta.remote`` or ``@manta.remote(num_cpus=..., ...)`` on a function or a class."""

    def wrap(target):
        if inspect.isclass(target):
            return ActorClass(target, options)
        if callable(target):
            return RemoteFunction(target, options)
        raise TypeError("@manta.remote decorates a function or a class")

    if len(args) == 1 and not options and callable(args[0]):
        return wrap(args[0])
    if args:
        raise TypeError("use @manta.remote or @manta.remote(option=value, ...)")
    return wrap
