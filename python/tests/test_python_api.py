"""The Python package against a real cluster: Ray's samples, runtime envs
(env_vars, working_dir, pip from a local wheel), 1,000 tasks, retries after a
worker dies, errors, cancel, wait, named actors, and worker output on the
driver with the `(Name pid=…)` prefix."""

import os
import pathlib
import re
import subprocess
import sys
import textwrap
import zipfile

import pytest

import manta
from conftest import Cluster, wait_for

COUNTER = """
import os
import manta

manta.init(runtime_env={"env_vars": {"counter_name": "test_counter"}})

@manta.remote
class Counter:
    def __init__(self):
        self.name = os.environ.get("counter_name", "counter")
        self.count = 0

    def increment(self):
        self.count += 1
        print(f"{self.name} incremented to {self.count}")
        return f"{self.name} got {self.count}"

counter = Counter.remote()
for reply in [counter.increment.remote() for _ in range(5)]:
    print(manta.get(reply))
"""

GPUS = """
import os
import manta

manta.init()

@manta.remote(num_gpus=1)
class GpuActor:
    def ping(self):
        return f"actor GPU ids: {manta.get_gpu_ids()}, CUDA_VISIBLE_DEVICES: {os.environ.get('CUDA_VISIBLE_DEVICES')}"

@manta.remote(num_gpus=1)
def gpu_task():
    return f"task GPU ids: {manta.get_gpu_ids()}, CUDA_VISIBLE_DEVICES: {os.environ.get('CUDA_VISIBLE_DEVICES')}"

actor = GpuActor.remote()
print(manta.get(actor.ping.remote()))
print(manta.get(gpu_task.remote()))
"""


def test_the_counter_sample_prints_test_counter_got_1_to_5(cluster):
    run = cluster.run_driver(COUNTER)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert [line for line in lines if line.startswith("test_counter got")] == [f"test_counter got {n}" for n in range(1, 6)]
    # The actor's own prints reach the driver with Ray's prefix.
    assert any(re.fullmatch(r"\(Counter pid=\d+\) test_counter incremented to 5", line) for line in lines), run.stdout


def test_the_gpu_sample_gives_the_actor_gpu_0_and_the_task_gpu_1(cluster):
    run = cluster.run_driver(GPUS)
    assert run.returncode == 0, run.stderr
    assert "actor GPU ids: [0], CUDA_VISIBLE_DEVICES: 0" in run.stdout, run.stdout
    assert "task GPU ids: [1], CUDA_VISIBLE_DEVICES: 1" in run.stdout, run.stdout


def _wheel(folder):
    """A one-module wheel built by hand (no network, no build backend)."""
    path = pathlib.Path(folder, "mantatiny-1.0-py3-none-any.whl")
    files = {
        "mantatiny/__init__.py": "VALUE = 'installed from a local wheel'\n",
        "mantatiny-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: mantatiny\nVersion: 1.0\n",
        "mantatiny-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: manta-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in files) + "mantatiny-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
        archive.writestr("mantatiny-1.0.dist-info/RECORD", record)
    return path


def test_a_pip_runtime_env_installs_a_local_wheel_into_the_task_s_venv(cluster, tmp_path):
    wheel = _wheel(str(tmp_path))
    run = cluster.run_driver(textwrap.dedent(f"""
        import manta
        manta.init()

        @manta.remote(runtime_env={{"pip": [{str(wheel)!r}]}})
        def use_it():
            import sys
            import mantatiny
            return mantatiny.VALUE, sys.prefix

        value, prefix = manta.get(use_it.remote(), timeout=300)
        print("value:", value)
        print("prefix:", prefix)
    """), timeout=360)
    assert run.returncode == 0, run.stderr
    assert "value: installed from a local wheel" in run.stdout
    assert "venv_" in run.stdout, "the task ran in the runtime env's virtualenv"


def test_working_dir_and_functions_by_name(cluster, tmp_path):
    folder = str(tmp_path)
    pathlib.Path(folder, "helpers_mod.py").write_text("def triple(x):\n    return 3 * x\n")
    run = cluster.run_driver(textwrap.dedent(f"""
        import manta
        manta.init(runtime_env={{"working_dir": {folder!r}}})

        @manta.remote
        def uses_module(x):
            import helpers_mod
            return helpers_mod.triple(x)

        print("remote:", manta.get(uses_module.remote(5)))
        print("by name:", manta.get(manta.python_function("helpers_mod", "triple").remote(7)))
    """))
    assert run.returncode == 0, run.stderr
    assert "remote: 15" in run.stdout and "by name: 21" in run.stdout


def test_a_thousand_tasks_and_a_killed_task_retried(cluster, tmp_path):
    marker = pathlib.Path(tmp_path, "first-attempt")
    run = cluster.run_driver(textwrap.dedent(f"""
        import os, signal
        import manta
        manta.init()

        @manta.remote
        def square(x):
            return x * x

        values = manta.get([square.remote(i) for i in range(1000)])
        assert values == [i * i for i in range(1000)], values[:10]
        print("1000 tasks ok")

        @manta.remote(max_retries=2)
        def dies_once(marker):
            if not os.path.exists(marker):
                open(marker, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)
            return "second attempt"

        print("retried:", manta.get(dies_once.remote({str(marker)!r})))

        @manta.remote(max_retries=0)
        def always_dies():
            os.kill(os.getpid(), signal.SIGKILL)

        try:
            manta.get(always_dies.remote())
        except manta.WorkerCrashedError as error:
            print("no retry left:", error.kind)
    """), timeout=180)
    assert run.returncode == 0, run.stderr
    assert "1000 tasks ok" in run.stdout
    assert "retried: second attempt" in run.stdout
    assert "no retry left: worker_died" in run.stdout


@pytest.fixture(scope="module")
def driver(cluster):
    manta.init(address=cluster.address, token=cluster.token, namespace="pytest")
    yield
    manta.shutdown()


def test_values_errors_and_options(driver):
    @manta.remote
    def echo(*args, **kwargs):
        return args, kwargs

    ref = manta.put({"nested": [1, 2.5, "three", b"four", None]})
    assert manta.get(echo.remote(ref, key=ref)) == (({"nested": [1, 2.5, "three", b"four", None]},), {"key": {"nested": [1, 2.5, "three", b"four", None]}})

    @manta.remote(num_returns=2)
    def pair():
        return 1, 2

    first, second = pair.remote()
    assert manta.get([first, second]) == [1, 2]

    @manta.remote
    def fails():
        raise KeyError("missing")

    with pytest.raises(KeyError):
        manta.get(fails.remote())
    with pytest.raises(manta.TaskError) as failed:
        manta.get(fails.remote())
    assert "KeyError" in str(failed.value) and failed.value.cause_type == "KeyError"

    with pytest.raises(ValueError, match="unknown task options"):
        echo.options(num_cpu=1)

    # Python tasks show in the state API (`manta list tasks`, the dashboard).
    def listed():
        request = {"table": "tasks", "limit": 1000, "offset": 0, "filters": []}
        reply = manta._state.core.gcs.call("ListState", request)["ListState"]
        rows = reply["rows"]["Tasks"]
        return [row for row in rows if row["name"] == "fails" and row["state"] == "FAILED"]

    assert wait_for("the failed tasks listed", listed)
    with pytest.raises(manta.GetTimeoutError):
        manta.get(echo.options(resources={"unobtainium": 1}).remote(), timeout=0.5)


def test_wait_cancel_named_actors_and_kill(driver):
    @manta.remote
    def sleeper(seconds):
        import time

        time.sleep(seconds)
        return seconds

    quick, slow = sleeper.remote(0), sleeper.remote(60)
    ready, not_ready = manta.wait([slow, quick], num_returns=1, timeout=30)
    assert ready == [quick] and not_ready == [slow]
    assert manta.cancel(slow)
    with pytest.raises(manta.TaskCancelledError):
        manta.get(slow, timeout=30)

    @manta.remote
    class Box:
        def __init__(self, value):
            self.value = value

        def get(self):
            return self.value

        def pid(self):
            return os.getpid()

    box = Box.options(name="box", max_concurrency=1).remote("boxed")
    found = manta.get_actor("box")
    assert manta.get(found.get.remote()) == "boxed"
    with pytest.raises(ValueError, match="already taken"):
        Box.options(name="box").remote("again")
    assert manta.get(Box.options(name="box", get_if_exists=True).remote("again").get.remote()) == "boxed"
    manta.kill(box)
    with pytest.raises((manta.ActorDiedError, manta.ActorUnavailableError)):
        manta.get(box.get.remote(), timeout=30)
    with pytest.raises(ValueError, match="no actor named"):
        manta.get_actor("nobody")


def test_large_values_go_through_the_node_store_and_actors_restart(driver):
    @manta.remote
    def blob(size):
        return b"x" * size

    @manta.remote
    def length(data):
        return len(data)

    big = blob.remote(5 << 20)
    assert len(manta.get(big)) == 5 << 20
    assert manta.get(length.remote(big)) == 5 << 20, "a stored result passed on as a ref"
    assert manta.get(length.remote(b"y" * (3 << 20))) == 3 << 20, "a large argument"
    assert manta.get(manta.put(list(range(100_000)))) == list(range(100_000)), "a large put"

    @manta.remote(max_restarts=1)
    class Fragile:
        def __init__(self):
            self.calls = 0

        def call(self):
            self.calls += 1
            return self.calls

        def crash(self):
            os._exit(1)

    fragile = Fragile.remote()
    assert manta.get(fragile.call.remote()) == 1
    with pytest.raises(manta.ActorUnavailableError):
        manta.get(fragile.crash.remote(), timeout=30)
    assert manta.get(fragile.call.remote(), timeout=60) == 1, "restarted with fresh state"


def test_a_wrong_token_is_refused_by_the_cluster(cluster):
    from manta import _wire

    with pytest.raises(_wire.WireError) as refused:
        _wire.Link.connect(cluster.address, "not-the-token", "worker", "pytest")
    assert refused.value.code == "authentication_failed"
    run = cluster.run_driver("import manta\nmanta.init(token='not-the-token')\n")
    assert run.returncode != 0 and "authentication failed" in run.stderr


def _certificates(folder):
    """A CA and one certificate for 127.0.0.1 signed by it (openssl)."""

    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "ca.key",
            "-out", "ca.pem", "-days", "2", "-subj", "/CN=manta-test-ca",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "node.key",
            "-out", "node.csr", "-subj", "/CN=127.0.0.1")
    pathlib.Path(folder, "ext.cnf").write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
    )
    openssl("x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "node.pem", "-days", "2", "-extfile", "ext.cnf")
    return {name: str(pathlib.Path(folder, file)) for name, file in
            (("MANTA_TLS_CERT", "node.pem"), ("MANTA_TLS_KEY", "node.key"), ("MANTA_TLS_CA", "ca.pem"))}


def test_a_tls_cluster_runs_python_drivers_and_workers_over_mutual_tls(tmp_path):
    files = _certificates(str(tmp_path))
    tls_cluster = Cluster("--num-cpus", "2", "--tls-cert", files["MANTA_TLS_CERT"], "--tls-key",
                          files["MANTA_TLS_KEY"], "--tls-ca", files["MANTA_TLS_CA"])
    try:
        code = textwrap.dedent("""
            import manta
            manta.init()

            @manta.remote
            def square(x):
                return x * x

            @manta.remote
            class Echo:
                def echo(self, value):
                    return value

            print("tasks:", manta.get([square.remote(i) for i in range(4)]))
            print("actor:", manta.get(Echo.remote().echo.remote("over tls")))
        """)
        plain = tls_cluster.run_driver(code, timeout=60)
        assert plain.returncode != 0, "a driver without the TLS files is refused"
        env = {**tls_cluster.env(), **files}
        secure = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert secure.returncode == 0, secure.stderr
        assert "tasks: [0, 1, 4, 9]" in secure.stdout and "actor: over tls" in secure.stdout
    finally:
        tls_cluster.stop()
