"""Rust and Python in one cluster (worker/examples/cross_language.rs): a Rust
driver calls Python functions by name, with a value and with a ref it made;
a Python driver calls Rust functions by name, with a value and with a ref it
made, and calls the Rust driver's named, detached actor."""

import os
import pathlib

import pytest

import manta

from conftest import ROOT

PROGRAM = os.environ.get("MANTA_CROSS_LANGUAGE_EXAMPLE", str(ROOT / "target" / "debug" / "examples" / "cross_language"))
HELPERS = """
def double(x):
    return 2 * x


def total(values):
    return sum(values)
"""


@pytest.fixture(scope="module")
def program():
    if not os.path.exists(PROGRAM):
        pytest.fail(f"{PROGRAM} is missing: build it with `cargo build -p manta --example cross_language`")
    return PROGRAM


def test_rust_and_python_call_each_other_by_name(cluster, program, tmp_path):
    folder = str(tmp_path)
    pathlib.Path(folder, "xlang_helpers.py").write_text(HELPERS)
    rust = cluster.run_driver(None, program=program, args=("xlang-tally", folder), timeout=180)
    assert rust.returncode == 0, rust.stderr + rust.stdout
    assert "rust tally xlang-tally: 1" in rust.stdout
    assert "python double(21) = 42" in rust.stdout, "Rust called a Python function by name"
    assert "python total(rust ref) = 10" in rust.stdout, "a Rust object reached Python"

    manta.init(address=cluster.address, token=cluster.token, namespace="xlang", rust_program=program)
    try:
        assert manta.get(manta.rust_function("add").remote(2, 3)) == 5
        numbers = manta.put([5, 6, 7])
        assert manta.get(manta.rust_function("total").remote(numbers)) == 18, "a Python object reached Rust"
        tally = manta.get_actor("xlang-tally")
        assert manta.get(tally.add.remote(10)) == 11, "the Rust driver's actor, by name"
        with pytest.raises(TypeError, match="cannot cross"):
            manta.rust_function("add").remote((1, 2), 3)
        with pytest.raises(manta.TaskError) as wrong:
            manta.get(manta.rust_function("add").remote("two", 3))
        assert wrong.value.kind == "type_mismatch"
        with pytest.raises(manta.TaskError) as unknown:
            manta.get(manta.rust_function("no_such_function").remote())
        assert unknown.value.kind == "unknown_function"
        manta.kill(tally)
    finally:
        manta.shutdown()
