"""Errors raised by the manta API, named as Ray's."""

import builtins


class MantaError(Exception):
    """Base of every manta error."""


class TaskError(MantaError):
    """A task or actor method failed. ``kind`` is the wire's failure kind
    (``application``, ``worker_died``, ...), ``cause_type`` the raised exception's
    type name when the function raised. When the cause is a builtin exception the
    error is also an instance of it (``except ZeroDivisionError`` works, as in Ray)."""

    def __init__(self, kind, task, message, cause_type=None):
        super().__init__(f"{task} failed ({kind}): {message}")
        self.kind = kind
        self.task = task
        self.message = message
        self.cause_type = cause_type


class WorkerCrashedError(TaskError):
    """The worker running the task died and no retry was left."""


class ActorDiedError(TaskError):
    """The actor is dead (killed, out of restarts, or its constructor failed)."""


class ActorUnavailableError(TaskError):
    """The actor's process died during the call; the actor may be restarting."""


class TaskCancelledError(TaskError):
    """The task was cancelled (``manta.cancel``)."""


class ObjectLostError(TaskError):
    """An object's value was lost."""


class RuntimeEnvSetupError(TaskError):
    """The task's runtime environment could not be set up on its node."""


class TaskUnschedulableError(TaskError):
    """No node can run the task."""


class GetTimeoutError(MantaError, TimeoutError):
    """``manta.get`` timed out."""


class ObjectStoreFullError(TaskError):
    """A value did not fit in the node's object store."""


_BY_KIND = {
    "worker_died": WorkerCrashedError,
    "actor_died": ActorDiedError,
    "actor_unavailable": ActorUnavailableError,
    "cancelled": TaskCancelledError,
    "object_lost": ObjectLostError,
    "owner_died": ObjectLostError,
    "runtime_env_setup_failed": RuntimeEnvSetupError,
    "unschedulable": TaskUnschedulableError,
    "object_store_full": ObjectStoreFullError,
}
_DERIVED = {}


def from_failure(failure):
    """The exception for a wire ``TaskFailure``."""
    kind, task, message = failure["kind"], failure["task"], failure["message"]
    cause_type = failure.get("error_type")
    base = _BY_KIND.get(kind, TaskError)
    builtin = getattr(builtins, cause_type or "", None)
    if kind == "application" and isinstance(builtin, type) and issubclass(builtin, Exception):
        if cause_type not in _DERIVED:
            _DERIVED[cause_type] = type(f"TaskError({cause_type})", (TaskError, builtin), {"__init__": TaskError.__init__, "__str__": TaskError.__str__})
        base = _DERIVED[cause_type]
    return base(kind, task, message, cause_type)
