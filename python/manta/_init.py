"""``manta.init``: find the cluster (an address, the session's files, or a new
local cluster), register the job, and start this process's core."""

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from . import _runtime_env, _state
from ._core import Core
from ._logs import LogPrinter, flush_nodes, subscribe_logs
from ._wire import Link, Tls, unwrap

_LOCAL = {"process": None, "temp_dir": None}


def default_temp_dir():
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        return os.path.join(runtime, "manta")
    return f"/tmp/manta-{os.geteuid()}"


def _read(path):
    try:
        with open(path) as file:
            return file.read().strip() or None
    except OSError:
        return None


def _start_local_cluster(num_cpus, num_gpus, resources):
    """Starts ``manta start --head --block`` in a fresh session folder (ended at exit)."""
    binary = os.environ.get("MANTA_BIN") or shutil.which("manta")
    if binary is None:
        raise RuntimeError(
            "no cluster to join: give manta.init(address=...), set MANTA_ADDRESS, start one with "
            "`manta start --head`, or put the manta binary on PATH (or in MANTA_BIN) to start one here"
        )
    temp_dir = tempfile.mkdtemp(prefix="manta-py-")
    command = [binary, "start", "--head", "--block", "--port", "0", "--dashboard-port", "0", "--temp-dir", temp_dir]
    if num_cpus is not None:
        command += ["--num-cpus", str(num_cpus)]
    if num_gpus is not None:
        command += ["--num-gpus", str(num_gpus)]
    if resources:
        command += ["--resources", json.dumps(resources)]
    log = open(os.path.join(temp_dir, "python-init-head.log"), "wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    _LOCAL.update(process=process, temp_dir=temp_dir)
    atexit.register(_stop_local_cluster)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        address, token = _read(os.path.join(temp_dir, "address")), _read(os.path.join(temp_dir, "token"))
        if address and token:
            return address, token
        if process.poll() is not None:
            raise RuntimeError(f"the local cluster did not start; see {log.name}")
        time.sleep(0.02)
    raise RuntimeError(f"the local cluster did not start within 60 s; see {log.name}")


def _stop_local_cluster():
    process = _LOCAL["process"]
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
    _LOCAL["process"] = None


def _pick_node(nodes, wanted):
    alive = [node for node in nodes if node["state"] == "ALIVE"]
    if wanted:
        chosen = [node for node in alive if node["address"] == wanted]
    else:
        chosen = [node for node in alive if node["is_head"] and node["address"].startswith("127.0.0.1:")]
        chosen = chosen or [node for node in alive if node["address"].startswith("127.0.0.1:")] or alive
    if not chosen:
        raise RuntimeError("the cluster has no alive node to run work on")
    return chosen[0]


def init(
    address=None,
    *,
    token=None,
    namespace=None,
    runtime_env=None,
    log_to_driver=True,
    temp_dir=None,
    num_cpus=None,
    num_gpus=None,
    resources=None,
    rust_program=None,
    ignore_reinit_error=False,
):
    """Connects this process to a cluster as a driver and starts a job.

    ``address``: the GCS address (``host:port``); else ``MANTA_ADDRESS``; else the
    local session's (``temp_dir``, default ``/tmp/manta-<uid>``); else a new local
    cluster (the ``manta`` binary on PATH or in ``MANTA_BIN``, ended at exit, with
    ``num_cpus``/``num_gpus``/``resources``). ``token``: else ``MANTA_TOKEN``, else the
    session's. A TLS cluster's files come from ``MANTA_TLS_CERT``/``_KEY``/``_CA`` or the
    session's ``tls.json``. ``rust_program``: a Rust program built with manta whose
    ``#[manta::remote]`` functions this job calls by name (``manta.rust_function``)."""
    if _state.core is not None:
        if ignore_reinit_error:
            return
        raise RuntimeError("manta.init() was already called; call manta.shutdown() first")
    temp_dir = temp_dir or os.environ.get("MANTA_TEMP_DIR") or default_temp_dir()
    address = address or os.environ.get("MANTA_ADDRESS")
    token = token or os.environ.get("MANTA_TOKEN")
    if address is None:
        address = _read(os.path.join(temp_dir, "address"))
        token = token or _read(os.path.join(temp_dir, "token"))
    if address is None:
        address, token = _start_local_cluster(num_cpus, num_gpus, resources)
    if token is None:
        token = _read(os.path.join(temp_dir, "token"))
    if token is None:
        raise RuntimeError("no cluster token: pass manta.init(token=...) or set MANTA_TOKEN")
    tls = Tls.from_env(temp_dir=temp_dir)
    gcs = Link.connect(address, token, "worker", "python driver", tls=tls)
    nodes = unwrap(gcs.call("GetAllNodes", {}), "GetAllNodes")["nodes"]
    node = _pick_node(nodes, os.environ.get("MANTA_NODE_ADDRESS"))
    registered = unwrap(
        gcs.call(
            "RegisterJob",
            {
                "namespace": namespace or "",
                "driver_pid": os.getpid(),
                "reattach": None,
                "submission_id": os.environ.get("MANTA_SUBMISSION_ID") or None,
            },
        ),
        "RegisterJob",
    )
    job_id = registered["job_id"]
    executable = _runtime_env.upload_program(gcs, job_id, rust_program) if rust_program else ""
    spec = _runtime_env.resolve(runtime_env, gcs, job_id)
    submitted = os.environ.get("MANTA_JOB_RUNTIME_ENV")
    if submitted:
        spec = _runtime_env.inherit(json.loads(submitted), spec)
    env = {"job_id": job_id, "executable": executable, "runtime_env": spec}
    gcs.call("SetJobRuntimeEnv", {"job_id": job_id, "env": env})
    job = {"job_id": job_id, "namespace": registered["namespace"], "executable": executable, "gcs_address": address}
    node_ip = node["address"].rsplit(":", 1)[0]
    core = Core("driver", token, gcs, node["node_id"], node["address"], node_ip, job, spec, tls=tls)
    _state.core = core
    core.raylet.send_event("DriverStarted", {"worker_id": core.worker_id, "address": core.worker["address"]})
    if log_to_driver:
        core.log_printer = LogPrinter(node_ip)
        threading.Thread(target=subscribe_logs, args=(core,), daemon=True).start()
    atexit.register(shutdown)


def shutdown():
    """Ends the job: the cluster stops its workers (detached actors live on)."""
    core = _state.core
    if core is None:
        return
    # The workers' last lines: each node sends what they printed and says so (an
    # older node: wait for 0.3 s without lines, 2 s at most).
    if core.log_printer is not None and core.log_printer.expecting and not flush_nodes(core):
        core.log_printer.settle(quiet=0.3, limit=2.0)
    core.shutdown()
    sys.stdout.flush()
    if _LOCAL["process"] is not None:
        _stop_local_cluster()


def is_initialized():
    return _state.core is not None

