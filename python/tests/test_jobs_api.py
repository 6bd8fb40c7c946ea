"""The head's Jobs REST API driven from Python: plain `requests` and
`websocket-client` on Ray's routes, and Ray's own `JobSubmissionClient`
pointed at manta unchanged (only the token header added).

Each test module starts a real head (`manta start --head`, free ports, a
private temp dir) and stops it with `manta stop --temp-dir` (the nodes it
started, by their recorded pids). `MANTA_BIN` names the manta binary
(default: target/debug/manta of this checkout).
"""

import os
import pathlib
import shutil
import subprocess
import tempfile

import pytest
import requests
import websocket

from conftest import wait_for

ROOT = pathlib.Path(__file__).resolve().parents[2]
MANTA = os.environ.get("MANTA_BIN", str(ROOT / "target" / "debug" / "manta"))


def manta(temp_dir, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MANTA_")}
    env["MANTA_TEMP_DIR"] = temp_dir
    return subprocess.run([MANTA, *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def head():
    temp_dir = tempfile.mkdtemp(prefix="manta-pytest-")
    os.chmod(temp_dir, 0o700)
    started = manta(temp_dir, "start", "--head", "--port", "0", "--dashboard-port", "0", "--num-cpus", "2")
    assert started.returncode == 0, started.stderr
    url = pathlib.Path(temp_dir, "dashboard_url").read_text().strip()
    token = pathlib.Path(temp_dir, "token").read_text().strip()
    yield {"url": url, "token": token, "temp_dir": temp_dir}
    manta(temp_dir, "stop")
    shutil.rmtree(temp_dir, ignore_errors=True)


def auth(head):
    return {"Authorization": f"Bearer {head['token']}"}


def test_routes_statuses_and_refusals(head):
    base = head["url"]
    version = requests.get(f"{base}/api/version")
    assert version.status_code == 200 and "ray_version" in version.json()
    assert requests.get(f"{base}/api/jobs/").status_code == 401
    assert requests.get(f"{base}/api/jobs/", headers={"Authorization": "Bearer wrong"}).status_code == 403

    body = {"entrypoint": "echo one; echo two >&2; exit 4", "submission_id": "py-failing", "metadata": {"who": "pytest"}}
    submitted = requests.post(f"{base}/api/jobs/", json=body, headers=auth(head))
    assert submitted.status_code == 200, submitted.text
    assert submitted.json()["submission_id"] == "py-failing"
    duplicate = requests.post(f"{base}/api/jobs/", json=body, headers=auth(head))
    assert duplicate.status_code == 400 and "already exists" in duplicate.text

    job = wait_for("the job ended", lambda: (lambda j: j if j["status"] == "FAILED" else None)(
        requests.get(f"{base}/api/jobs/py-failing", headers=auth(head)).json()))
    assert job["driver_exit_code"] == 4
    assert job["metadata"]["who"] == "pytest"
    assert job["type"] == "SUBMISSION" and job["end_time"] >= job["start_time"]
    logs = requests.get(f"{base}/api/jobs/py-failing/logs", headers=auth(head)).json()["logs"]
    assert "one\n" in logs and "two\n" in logs

    bad = requests.post(f"{base}/api/jobs/", json={"entrypoint": "true", "runtime_env": {"nonsense": 1}}, headers=auth(head))
    assert bad.status_code == 400 and "nonsense" in bad.text
    missing = requests.post(f"{base}/api/jobs/", json={"submission_id": "x"}, headers=auth(head))
    assert missing.status_code == 400 and "entrypoint" in missing.text
    assert requests.get(f"{base}/api/jobs/nobody", headers=auth(head)).status_code == 404

    ids = [j["submission_id"] for j in requests.get(f"{base}/api/jobs/", headers=auth(head)).json()]
    assert "py-failing" in ids
    assert requests.delete(f"{base}/api/jobs/py-failing", headers=auth(head)).json() == {"deleted": True}
    assert requests.get(f"{base}/api/jobs/py-failing", headers=auth(head)).status_code == 404


def test_websocket_tail_streams_until_the_job_ends(head):
    base = head["url"]
    entry = "for i in 1 2 3; do echo line $i; sleep 0.2; done"
    submitted = requests.post(f"{base}/api/jobs/", json={"entrypoint": entry, "submission_id": "py-tail"}, headers=auth(head))
    assert submitted.status_code == 200, submitted.text
    ws_url = base.replace("http://", "ws://") + "/api/jobs/py-tail/logs/tail"
    with pytest.raises(websocket.WebSocketBadStatusException):
        websocket.create_connection(ws_url)
    socket = websocket.create_connection(ws_url, header=[f"Authorization: Bearer {head['token']}"], timeout=30)
    received = ""
    while True:
        try:
            frame = socket.recv()
        except websocket.WebSocketConnectionClosedException:
            break
        if not frame:
            break
        received += frame
    assert received == "line 1\nline 2\nline 3\n"
    status = requests.get(f"{base}/api/jobs/py-tail", headers=auth(head)).json()["status"]
    assert status == "SUCCEEDED"


def test_stop_over_rest(head):
    base = head["url"]
    requests.post(f"{base}/api/jobs/", json={"entrypoint": "sleep 300", "submission_id": "py-stop"}, headers=auth(head))
    wait_for("the job runs", lambda: requests.get(f"{base}/api/jobs/py-stop", headers=auth(head)).json()["status"] == "RUNNING")
    assert requests.post(f"{base}/api/jobs/py-stop/stop", headers=auth(head)).json() == {"stopped": True}
    wait_for("the job stopped", lambda: requests.get(f"{base}/api/jobs/py-stop", headers=auth(head)).json()["status"] == "STOPPED")
    assert requests.post(f"{base}/api/jobs/py-stop/stop", headers=auth(head)).json() == {"stopped": False}


def test_ray_s_own_job_client_works_unchanged(head, tmp_path):
    job_submission = pytest.importorskip("ray.job_submission")
    client = job_submission.JobSubmissionClient(head["url"], headers=auth(head))
    (tmp_path / "script.py").write_text("import os\nprint('hello from', os.environ['counter_name'])\n")
    sid = client.submit_job(
        entrypoint="python3 script.py",
        runtime_env={"working_dir": str(tmp_path), "env_vars": {"counter_name": "ray-client"}},
        metadata={"from": "ray"},
    )
    wait_for("the job succeeded", lambda: client.get_job_status(sid) == job_submission.JobStatus.SUCCEEDED)
    assert client.get_job_logs(sid) == "hello from ray-client\n"
    info = client.get_job_info(sid)
    assert info.driver_exit_code == 0 and info.metadata["from"] == "ray"
    assert info.runtime_env["working_dir"].startswith("gcs://_ray_pkg_")
    assert sid in [job.submission_id for job in client.list_jobs()]
    assert client.stop_job(sid) is False
    assert client.delete_job(sid) is True
