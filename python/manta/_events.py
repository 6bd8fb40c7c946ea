"""Task state changes, reported to the GCS in batches (``Event::TaskEvents``)
so Python tasks show in ``manta list tasks``, the state API and the dashboard.
Never on the call path: a thread sends what gathered once a second."""

import threading
import time

from ._wire import WireError

MAX_BUFFERED = 10_000
FLUSH_SECONDS = 1.0


class TaskEvents:
    def __init__(self, core):
        self._core = core
        self._lock = threading.Lock()
        self._events = []
        self._dropped = 0
        threading.Thread(target=self._loop, name="manta-task-events", daemon=True).start()

    def record(self, spec, state, worker=None, error=None):
        event = {
            "task_id": spec["task_id"],
            "job_id": spec["job_id"],
            "name": spec["name"],
            "state": state,
            "node_id": worker["node_id"] if worker else None,
            "worker_id": worker["worker_id"] if worker else None,
            "actor_id": spec["actor_call"]["actor_id"] if spec.get("actor_call") else None,
            "error": error,
            "lease_outcome": None,
            "time_ms": int(time.time() * 1000),
        }
        with self._lock:
            if len(self._events) >= MAX_BUFFERED:
                self._dropped += 1
            else:
                self._events.append(event)

    def flush(self):
        with self._lock:
            events, dropped = self._events, self._dropped
            self._events, self._dropped = [], 0
        if events or dropped:
            try:
                self._core.gcs.send_event("TaskEvents", {"events": events, "dropped": dropped})
            except WireError:
                pass

    def _loop(self):
        while not self._core.stopping:
            time.sleep(FLUSH_SECONDS)
            self.flush()
