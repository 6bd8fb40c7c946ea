"""``runtime_env`` dicts (Ray's fields) made into the wire's ``RuntimeEnvSpec``:
local folders are zipped and uploaded once, content-addressed, to the cluster."""

import io
import os
import zipfile

from ._blake3 import fast_hasher
from ._wire import unwrap

CHUNK_BYTES = 4 << 20
PACKAGE_SCHEME = "gcs://"
_KNOWN = {"env_vars", "working_dir", "py_modules", "pip", "config", "excludes"}
_SKIPPED_DIRS = {"__pycache__", ".git"}


def _zip(path, keep_top):
    buffer = io.BytesIO()
    root = os.path.abspath(path)
    base = os.path.dirname(root) if keep_top else root
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(name for name in dirs if name not in _SKIPPED_DIRS)
            for name in sorted(files):
                full = os.path.join(folder, name)
                info = zipfile.ZipInfo(os.path.relpath(full, base), date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = (os.stat(full).st_mode & 0o777) << 16
                with open(full, "rb") as file:
                    archive.writestr(info, file.read(), zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def upload(gcs, job_id, name, data):
    """Stores ``data`` as package ``name`` unless the cluster has it already."""
    if unwrap(gcs.call("UsePackage", {"name": name, "job_id": job_id}), "UsePackage")["info"] is not None:
        return
    digest = _digest(data)
    for offset in range(0, max(len(data), 1), CHUNK_BYTES):
        chunk = {
            "name": name,
            "size": len(data),
            "digest": digest,
            "offset": offset,
            "data": data[offset:offset + CHUNK_BYTES],
            "job_id": job_id,
        }
        gcs.call("PutPackage", chunk, timeout=300)


def _digest(data):
    hasher = fast_hasher()
    hasher.update(data)
    return hasher.hexdigest()


def upload_dir(gcs, job_id, path, field, keep_top=False):
    if path.startswith(PACKAGE_SCHEME):
        return path
    if not os.path.isdir(path):
        raise ValueError(f"runtime_env {field}: {path} is not a folder")
    data = _zip(path, keep_top)
    name = f"_manta_pkg_{_digest(data)}.zip"
    upload(gcs, job_id, name, data)
    return PACKAGE_SCHEME + name


def upload_program(gcs, job_id, path):
    """Uploads a Rust program (the job's executable for cross-language calls); returns its package name."""
    with open(path, "rb") as file:
        data = file.read()
    name = f"_manta_exe_{_digest(data)}"
    upload(gcs, job_id, name, data)
    return name


def _pip_spec(pip):
    if isinstance(pip, str):
        with open(pip) as file:
            packages = [line.strip() for line in file if line.strip() and not line.startswith("#")]
        pip = {"packages": packages}
    elif isinstance(pip, (list, tuple)):
        pip = {"packages": list(pip)}
    if not isinstance(pip, dict) or not isinstance(pip.get("packages"), list):
        raise ValueError("runtime_env pip must be a list of requirements, a requirements file, or {'packages': [...]}")
    # Local wheels and folders are installed on this machine's nodes by absolute path.
    packages = [
        os.path.abspath(item) if (item.startswith((".", "/")) or item.endswith(".whl")) and os.path.exists(item) else item
        for item in pip["packages"]
    ]
    return {
        "installer": "pip",
        "packages": packages,
        "pip_check": bool(pip.get("pip_check", False)),
        "pip_version": pip.get("pip_version"),
    }


def resolve(runtime_env, gcs, job_id):
    """The wire spec of a user's ``runtime_env`` dict (None or {} gives {})."""
    if not runtime_env:
        return {}
    unknown = set(runtime_env) - _KNOWN
    if unknown:
        raise ValueError(f"runtime_env fields {sorted(unknown)} are not supported; use {sorted(_KNOWN)}")
    spec = {}
    env_vars = runtime_env.get("env_vars")
    if env_vars:
        if not all(isinstance(key, str) and isinstance(value, str) for key, value in env_vars.items()):
            raise TypeError("runtime_env env_vars must map str to str")
        spec["env_vars"] = dict(env_vars)
    if runtime_env.get("working_dir"):
        spec["working_dir"] = upload_dir(gcs, job_id, runtime_env["working_dir"], "working_dir")
    if runtime_env.get("py_modules"):
        spec["py_modules"] = [upload_dir(gcs, job_id, path, "py_modules", keep_top=True) for path in runtime_env["py_modules"]]
    if runtime_env.get("pip"):
        spec["pip"] = _pip_spec(runtime_env["pip"])
    if runtime_env.get("config"):
        config = runtime_env["config"]
        spec["config"] = {
            "setup_timeout_seconds": int(config.get("setup_timeout_seconds", 600)),
            "eager_install": bool(config.get("eager_install", True)),
        }
    return spec


def inherit(parent, child):
    """The child's env over its parent's (env_vars merged, the child's winning)."""
    if not child:
        return parent
    merged = {**parent, **{key: value for key, value in child.items() if key != "env_vars"}}
    env_vars = {**parent.get("env_vars", {}), **child.get("env_vars", {})}
    if env_vars:
        merged["env_vars"] = env_vars
    return merged
