"""Object refs and the owner's table of values.

A process owns the results of the tasks it submits and the values it puts; it
keeps small values in memory and answers other processes' ``GetObject`` for
them. Large values a Rust worker returns stay in its node's store
(``ObjectBody::Stored``) and are read through the local node (``PullObject``).
"""

import os
import struct
import threading

from . import _state


def object_id(task_id, index):
    """The id of return value ``index`` of ``task_id`` (16 bytes), as hex."""
    return (task_id + struct.pack(">I", index)).hex()


def put_id(task_id, counter):
    return object_id(task_id, 0xFFFFFFFF - counter)


class ObjectRef:
    """A reference to an immutable object, owned by the process that made it."""

    __slots__ = ("_id", "_owner", "__weakref__")

    def __init__(self, object_id_hex, owner):
        self._id = object_id_hex
        self._owner = owner
        core = _state.core
        if core is not None:
            core.objects.add_ref(object_id_hex)

    def hex(self):
        return self._id

    @property
    def owner(self):
        return self._owner

    def wire(self):
        return {"object_id": self._id, "owner": self._owner}

    def __reduce__(self):
        core = _state.core
        if core is not None:
            # A ref inside a value may be read anywhere: the owner keeps the value.
            core.objects.pin(self._id)
        return (ObjectRef, (self._id, self._owner))

    def __del__(self):
        core = _state.core
        if core is not None:
            try:
                core.objects.drop_ref(self._id)
            except Exception:  # noqa: BLE001 - interpreter shutdown
                pass

    def __eq__(self, other):
        return isinstance(other, ObjectRef) and other._id == self._id

    def __hash__(self):
        return hash(self._id)

    def __repr__(self):
        return f"ObjectRef({self._id})"


class ObjectTable:
    """Values this process owns: ``("Ok", body)`` or ``("Err", failure)`` per id,
    with waiters and a count of live refs per id (freed at zero unless pinned)."""

    def __init__(self, on_free):
        self._entries = {}
        self._pending = set()
        self._refs = {}
        self._pinned = set()
        self._callbacks = {}
        self._cond = threading.Condition()
        self._on_free = on_free

    def expect(self, oid):
        with self._cond:
            self._pending.add(oid)

    def set(self, oid, outcome, body):
        with self._cond:
            self._pending.discard(oid)
            if oid in self._refs or oid in self._pinned:
                self._entries[oid] = (outcome, body)
            callbacks = self._callbacks.pop(oid, [])
            self._cond.notify_all()
        for callback in callbacks:
            callback((outcome, body))

    def get(self, oid):
        with self._cond:
            return self._entries.get(oid)

    def known(self, oid):
        with self._cond:
            return oid in self._entries or oid in self._pending

    def wait(self, oid, timeout):
        """The entry, waiting up to ``timeout`` seconds (None: forever) while it is pending."""
        with self._cond:
            self._cond.wait_for(lambda: oid in self._entries or oid not in self._pending, timeout)
            return self._entries.get(oid)

    def when_ready(self, oid, callback):
        """Calls ``callback(entry)`` once the value is there (at once if it is)."""
        with self._cond:
            entry = self._entries.get(oid)
            if entry is None and oid in self._pending:
                self._callbacks.setdefault(oid, []).append(callback)
                return
        callback(entry)

    def add_ref(self, oid):
        with self._cond:
            self._refs[oid] = self._refs.get(oid, 0) + 1

    def drop_ref(self, oid):
        with self._cond:
            count = self._refs.get(oid, 0) - 1
            if count > 0:
                self._refs[oid] = count
                return
            self._refs.pop(oid, None)
            if oid in self._pinned:
                return
            entry = self._entries.pop(oid, None)
        if entry is not None and entry[0] == "Ok" and "Stored" in entry[1]:
            self._on_free(oid, entry[1]["Stored"])

    def pin(self, oid):
        with self._cond:
            self._pinned.add(oid)

    def __len__(self):
        with self._cond:
            return len(self._entries)


def random_id(size=16):
    return os.urandom(size)
