"""Worker output on the driver's terminal: lines from every node's log monitor,
printed as ``(Name pid=N) line`` (with ``ip=`` for other machines), as Ray does."""

import sys
import threading
import time

from ._wire import WireError


class LogPrinter:
    def __init__(self, local_ip):
        self._local_ip = local_ip
        self._lock = threading.Lock()
        self._last = 0.0
        self.expecting = False
        self.subscribed = set()

    def print_batch(self, batch):
        with self._lock:
            self._last = time.monotonic()
            for stream in batch["streams"]:
                name, pid = stream["name"], stream["pid"]
                where = f"pid={pid}" if batch["ip"] == self._local_ip else f"pid={pid}, ip={batch['ip']}"
                prefix = f"({name} {where})" if name else f"({where})"
                out = sys.stderr if stream["is_err"] else sys.stdout
                for line in stream["lines"]:
                    print(f"{prefix} {line}", file=out)
                if stream.get("held_back"):
                    print(f"{prefix} [{stream['held_back']} lines held back by the rate limit; see {stream['file']}]", file=out)
            sys.stdout.flush()
            sys.stderr.flush()

    def settle(self, quiet, limit):
        """Once the job started work, waits for its workers' last lines: until no
        batch came for ``quiet`` seconds since shutdown began (at most ``limit``)."""
        if not self.expecting:
            return
        started = time.monotonic()
        while time.monotonic() < started + limit:
            with self._lock:
                now = time.monotonic()
                since = min(now - self._last, now - started)
            if since >= quiet:
                return
            time.sleep(quiet - since)


def _subscribe_new(core, printer):
    """Subscribes to the job's worker output on every alive node not subscribed yet."""
    try:
        nodes = core.gcs.call("GetAllNodes", {}, timeout=5)["GetAllNodes"]["nodes"]
        for node in nodes:
            if node["state"] != "ALIVE" or node["address"] in printer.subscribed:
                continue
            core.peer(node["address"]).call("SubscribeLogs", {"job_id": core.job["job_id"]}, timeout=5)
            printer.subscribed.add(node["address"])
    except (WireError, KeyError):
        pass


def subscribe_logs(core):
    """Keeps the job subscribed on every alive node (new ones as they join)."""
    while not core.stopping:
        _subscribe_new(core, core.log_printer)
        time.sleep(0.5)


def flush_nodes(core):
    """The job's last lines: each subscribed node sends what the job's workers
    printed so far, then answers (``FlushLogs``). False when one could not."""
    printer = core.log_printer
    _subscribe_new(core, printer)
    results = []

    def flush(address):
        try:
            core.peer(address).call("FlushLogs", {"job_id": core.job["job_id"]}, timeout=3)
            results.append(True)
        except WireError:
            results.append(False)

    threads = [threading.Thread(target=flush, args=(address,)) for address in list(printer.subscribed)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return all(results)
