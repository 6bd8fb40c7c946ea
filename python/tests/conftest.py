"""Real clusters for the Python tests: `manta start --head` on free ports in a
private temp dir, with `MANTA_PYTHON` set to this interpreter (where the
`manta` package is installed) so nodes start Python workers with it, stopped
with `manta stop --temp-dir` (the nodes it started, by their recorded pids).
`MANTA_BIN` names the manta binary (default: target/debug/manta of this checkout)."""

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
MANTA = os.environ.get("MANTA_BIN", str(ROOT / "target" / "debug" / "manta"))


def manta_cli(temp_dir, *args):
    env = {key: value for key, value in os.environ.items() if not key.startswith("MANTA_")}
    env["MANTA_TEMP_DIR"] = temp_dir
    env["MANTA_PYTHON"] = sys.executable
    return subprocess.run([MANTA, *args], env=env, capture_output=True, text=True, timeout=120)


class Cluster:
    def __init__(self, *start_args):
        self.temp_dir = tempfile.mkdtemp(prefix="manta-pytest-")
        os.chmod(self.temp_dir, 0o700)
        started = manta_cli(self.temp_dir, "start", "--head", "--port", "0", "--dashboard-port", "0", *start_args)
        assert started.returncode == 0, started.stderr
        self.address = pathlib.Path(self.temp_dir, "address").read_text().strip()
        self.token = pathlib.Path(self.temp_dir, "token").read_text().strip()

    def env(self):
        env = {key: value for key, value in os.environ.items() if not key.startswith("MANTA_")}
        env.update(MANTA_ADDRESS=self.address, MANTA_TOKEN=self.token, PYTHONUNBUFFERED="1")
        return env

    def run_driver(self, code, timeout=120, args=(), program=None):
        """Runs ``code`` as a Python driver script (or ``program``) against this cluster."""
        if program:
            return subprocess.run([program, *args], env=self.env(), capture_output=True, text=True, timeout=timeout)
        with tempfile.TemporaryDirectory(prefix="manta-driver-") as folder:
            script = pathlib.Path(folder, "driver.py")
            script.write_text(code)
            command = [sys.executable, str(script), *args]
            return subprocess.run(command, env=self.env(), capture_output=True, text=True, timeout=timeout)

    def stop(self):
        manta_cli(self.temp_dir, "stop")
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    started = Cluster("--num-cpus", "4", "--num-gpus", "2")
    yield started
    started.stop()


def wait_for(what, condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
