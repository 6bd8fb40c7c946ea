"""The core of a Python driver or worker: its links to the GCS and its node,
its listener (other processes ask it for the objects it owns), the values it
owns, and getting values wherever they are."""

import os
import sys
import threading
import time

from . import _state, _values
from ._objects import ObjectRef, ObjectTable, object_id, put_id, random_id
from ._wire import ConnectionLost, Handler, Link, Listener, WireError, unwrap
from .exceptions import GetTimeoutError, ObjectLostError, from_failure

TASK_NAME_MARKER = ":manta_task_name:"
INLINE_OBJECT_MAX_BYTES = 100 * 1024


class Core(Handler):
    """One process's runtime: ``mode`` is ``"driver"`` or ``"worker"``."""

    def __init__(self, mode, token, gcs, node_id, raylet_address, node_ip, job, runtime_env, worker_id=None, tls=None):
        self.mode = mode
        self.token = token
        self.tls = tls
        self.worker_id = worker_id or random_id().hex()
        self.label = f"python {mode} {self.worker_id[:8]}"
        self.gcs = gcs
        gcs.handler = self
        self.raylet_address = raylet_address
        self.raylet = Link.connect(raylet_address, token, "worker", self.label, handler=self, tls=tls)
        self.listener = Listener(node_ip, token, self.label, self, tls=tls)
        self.worker = {"worker_id": self.worker_id, "address": self.listener.address, "node_id": node_id}
        self.node_id = node_id
        self.job = job
        self.runtime_env = runtime_env
        self.objects = ObjectTable(self.free_stored)
        self.task_id = random_id()
        self._puts = 0
        self._peers = {}
        self._peers_lock = threading.Lock()
        self.executor = None
        self.log_printer = None
        self.stopping = False
        from ._events import TaskEvents  # noqa: PLC0415
        from ._submit import Submitter  # noqa: PLC0415

        self.submitter = Submitter(self)
        self.task_events = TaskEvents(self)

    # Links to other processes (workers, nodes), one per address.
    def peer(self, address):
        if address == self.raylet_address and not self.raylet.closed:
            return self.raylet
        with self._peers_lock:
            link = self._peers.get(address)
            if link is not None and not link.closed:
                return link
        link = Link.connect(address, self.token, "worker", self.label, handler=self, timeout=5.0, tls=self.tls)
        with self._peers_lock:
            self._peers[address] = link
        return link

    # What other processes send this one.
    def request(self, link, name, payload):
        if name == "GetObject":
            return {"GetObject": self._serve_get(payload)}
        if name == "AddBorrower":
            unknown = [oid for oid in payload["object_ids"] if not self.objects.known(oid)]
            return {"AddBorrower": {"unknown": unknown}}
        if self.executor is not None and name in ("PushTask", "CreateActor", "CancelTask"):
            return self.executor.request(link, name, payload)
        raise WireError("unimplemented", f"this Python {self.mode} does not serve {name} requests")

    def dispatch(self, link, request_id, name, payload):
        if self.executor is not None:
            return self.executor.dispatch(link, request_id, name, payload)
        return False

    def event(self, link, name, payload):
        if name == "LogBatch" and self.log_printer is not None:
            self.log_printer.print_batch(payload)
        elif name == "Warning":
            print(f"manta: {payload['message']}", file=sys.stderr, flush=True)

    def closed(self, link, reason):
        if link is self.raylet and self.mode == "worker" and not self.stopping:
            # A worker lives as long as its node's link to it.
            os._exit(0)

    def _serve_get(self, payload):
        oid = payload["object_id"]
        if not self.objects.known(oid):
            raise WireError("not_found", f"object {oid} was freed by its owner: no reference to it was left")
        entry = self.objects.wait(oid, payload["timeout_ms"] / 1000.0)
        return {"value": None if entry is None else {entry[0]: entry[1]}}

    # Objects.
    def put(self, value):
        return self.put_encoded(_values.dumps(value))

    def put_encoded(self, data):
        """A new object owned here with the encoded value ``data`` (over 100 KiB: in the node's store)."""
        self._puts += 1
        oid = put_id(self.task_id, self._puts)
        ref = ObjectRef(oid, self.worker)
        self.objects.set(oid, "Ok", self.body_of(oid, data, self.worker_id))
        return ref

    def body_of(self, oid, data, owner):
        """The ``ObjectBody`` of a value: inline, or written into this node's store when large."""
        if len(data) <= INLINE_OBJECT_MAX_BYTES:
            return {"Inline": data}
        request = {"object_id": oid, "size": len(data), "owner": owner, "job_id": self.job["job_id"]}
        place = unwrap(self.raylet.call("CreateObject", request, timeout=300), "CreateObject")
        path, offset = place["path"], place.get("offset")
        written = False
        try:
            if offset is not None:
                # A range of the node's arena, this writer's alone until the seal.
                fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
                try:
                    view, done = memoryview(data), 0
                    while done < len(data):
                        done += os.pwrite(fd, view[done:], offset + done)
                finally:
                    os.close(fd)
            else:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "wb") as file:
                    file.write(data)
            written = True
        finally:
            self.raylet.call("SealObject", {"object_id": oid, "ok": written}, timeout=30)
        return {"Stored": {"node_id": self.node_id, "node_address": self.raylet_address, "size": len(data)}}

    def free_stored(self, oid, stored):
        """Frees the store copy of an object this process owned and no longer references."""
        try:
            self.peer(stored["node_address"]).send_event("FreeObjects", {"object_ids": [oid]})
        except WireError:
            pass

    def entry_of(self, ref, timeout):
        """The ``("Ok", body)`` or ``("Err", failure)`` of ``ref``, waiting up to ``timeout``."""
        if ref.owner["worker_id"] == self.worker_id:
            if not self.objects.known(ref.hex()):
                raise ObjectLostError("object_lost", ref.hex(), "this process no longer has the object")
            return self.objects.wait(ref.hex(), timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
            try:
                reply = self.peer(ref.owner["address"]).call(
                    "GetObject", {"object_id": ref.hex(), "timeout_ms": int(left * 1000)}, timeout=left + 30
                )
            except ConnectionLost as error:
                raise ObjectLostError("owner_died", ref.hex(), f"the object's owner is gone: {error}") from None
            except WireError as error:
                if error.code == "not_found":
                    raise ObjectLostError("object_lost", ref.hex(), error.message) from None
                raise
            value = unwrap(reply, "GetObject")["value"]
            if value is not None:
                (outcome, body), = value.items()
                return outcome, body
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def bytes_of(self, ref, body):
        """The value bytes of an ``ObjectBody``: inline, or read from the local node's store."""
        kind, payload = next(iter(body.items()))
        if kind == "Inline":
            return bytes(payload)
        reader = self.worker_id
        for attempt in range(3):
            pulled = self.raylet.call(
                "PullObject",
                {
                    "object_id": ref.hex(),
                    "stored": payload,
                    "owner": ref.owner["worker_id"],
                    "job_id": self.job["job_id"],
                    "reader": reader,
                },
                timeout=300,
            )
            reply = unwrap(pulled, "PullObject")
            path, offset = reply["path"], reply.get("offset")
            try:
                if offset is not None:
                    # A range of the node's arena, pinned for this process until released.
                    try:
                        fd = os.open(path, os.O_RDONLY)
                        try:
                            size, parts = payload["size"], []
                            while size > 0:
                                part = os.pread(fd, size, offset)
                                if not part:
                                    raise ObjectLostError("object_lost", ref.hex(), "the node's arena ended early")
                                parts.append(part)
                                size, offset = size - len(part), offset + len(part)
                            return b"".join(parts) if len(parts) != 1 else parts[0]
                        finally:
                            os.close(fd)
                    finally:
                        self.raylet.call("ReleaseObject", {"object_id": ref.hex(), "reader": reader}, timeout=30)
                with open(path, "rb") as file:
                    return file.read()
            except FileNotFoundError:
                # Spilled to disk between the answer and the open: ask where it is now.
                if attempt == 2:
                    raise

    def get(self, refs, timeout=None):
        single = isinstance(refs, ObjectRef)
        wanted = [refs] if single else list(refs)
        deadline = None if timeout is None else time.monotonic() + timeout
        values = []
        blocked = self.mode == "worker" and self.executor is not None and self.executor.running_task()
        if blocked:
            self._blocked(True)
        try:
            for ref in wanted:
                if not isinstance(ref, ObjectRef):
                    raise TypeError(f"manta.get takes ObjectRefs, not {type(ref).__name__}")
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                entry = self.entry_of(ref, left)
                if entry is None:
                    raise GetTimeoutError(f"manta.get timed out after {timeout} s waiting for {ref.hex()}")
                outcome, body = entry
                if outcome == "Err":
                    raise from_failure(body)
                values.append(_values.loads(self.bytes_of(ref, body)))
        finally:
            if blocked:
                self._blocked(False)
        return values[0] if single else values

    def store_results(self, spec, result, worker):
        """A finished task's or call's results (``("Ok", returns)`` or ``("Err", failure)``),
        stored under its return ids and reported as its final state."""
        outcome, value = result
        error = None if outcome == "Ok" else f"{value['kind']}: {value['message']}"
        self.task_events.record(spec, "FINISHED" if outcome == "Ok" else "FAILED", worker, error)
        task = bytes.fromhex(spec["task_id"])
        for index in range(spec["num_returns"]):
            oid = object_id(task, index)
            if outcome == "Err":
                self.objects.set(oid, "Err", value)
            else:
                # A return the executor left out reads as nil.
                self.objects.set(oid, "Ok", value[index]["body"] if index < len(value) else {"Inline": b"\xc0"})

    def _blocked(self, blocked):
        try:
            self.raylet.call("WorkerBlocked", {"worker_id": self.worker_id, "blocked": blocked}, timeout=10)
        except WireError:
            pass

    def wait(self, refs, num_returns=1, timeout=None):
        refs = list(refs)
        if num_returns > len(refs):
            raise ValueError(f"num_returns ({num_returns}) is more than the {len(refs)} refs given")
        ready_events = []
        for ref in refs:
            event = threading.Event()
            ready_events.append(event)
            if ref.owner["worker_id"] == self.worker_id:
                self.objects.when_ready(ref.hex(), lambda _entry, event=event: event.set())
            else:
                threading.Thread(target=self._watch_remote, args=(ref, event), daemon=True).start()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            ready = [ref for ref, event in zip(refs, ready_events) if event.is_set()]
            if len(ready) >= num_returns or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(0.0005 if len(refs) < 100 else 0.002)
        ready = ready[:num_returns]
        chosen = set(id(ref) for ref in ready)
        return ready, [ref for ref in refs if id(ref) not in chosen]

    def _watch_remote(self, ref, event):
        try:
            self.entry_of(ref, None)
        except Exception:  # noqa: BLE001 - a lost object is "ready" (get raises)
            pass
        event.set()

    def shutdown(self):
        self.stopping = True
        self.submitter.stop()
        self.task_events.flush()
        if self.mode == "driver":
            try:
                self.gcs.call("FinishJob", {"job_id": self.job["job_id"]}, timeout=5)
            except WireError as error:
                print(f"manta: could not tell the cluster the job ended: {error}", file=sys.stderr)
        for link in [self.raylet, self.gcs, *self._peers.values()]:
            link.close()
        self.listener.close()
        if _state.core is self:
            _state.core = None
