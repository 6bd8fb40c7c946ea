"""The wire's conformance vectors (proto-msgs/vectors/, made from the Rust
types): this package's codec decodes every frame to the meaning its JSON
gives and re-encodes it byte for byte; the handshake vector's proofs match."""

import json
import pathlib
import struct

import pytest

from manta import _wire

VECTORS = pathlib.Path(__file__).resolve().parents[2] / "proto-msgs" / "vectors"
FRAMES = sorted(path for path in VECTORS.glob("*.json") if path.name != "handshake.json")


def as_json(value):
    """A decoded msgpack value as serde JSON shows it (bytes as arrays of numbers)."""
    if isinstance(value, (bytes, bytearray)):
        return list(value)
    if isinstance(value, list):
        return [as_json(item) for item in value]
    if isinstance(value, dict):
        return {key: as_json(item) for key, item in value.items()}
    return value


def test_there_are_vectors():
    assert len(FRAMES) >= 50


@pytest.mark.parametrize("path", FRAMES, ids=[path.stem for path in FRAMES])
def test_a_vector_decodes_to_its_meaning_and_re_encodes_byte_for_byte(path):
    vector = json.loads(path.read_text())
    data = bytes.fromhex(vector["hex"])
    (length,) = struct.unpack(">I", data[:4])
    assert length == len(data) - 4
    frame = _wire.unpack(data[4:])
    assert as_json(frame) == vector["frame"]
    assert _wire.encode_frame(frame) == data


def test_the_handshake_proofs_match_rust():
    vector = json.loads((VECTORS / "handshake.json").read_text())
    key = _wire.handshake_key(vector["token"])
    nonces = bytes.fromhex(vector["client_nonce"]), bytes.fromhex(vector["server_nonce"])
    for side in ("client", "server"):
        proof = _wire.proof(key, side, *nonces, vector["role"], vector["client_name"])
        assert proof.hex() == vector[f"{side}_proof"]


def test_the_python_handshake_refuses_a_wrong_token_both_ways():
    from manta import _wire

    class Echo(_wire.Handler):
        def request(self, link, name, payload):
            return {"Echo": payload}

    listener = _wire.Listener("127.0.0.1", "right-token", "test listener", Echo())
    try:
        link = _wire.Link.connect(listener.address, "right-token", "worker", "test client")
        assert link.call("Echo", {"x": 1}) == {"Echo": {"x": 1}}
        link.close()
        with pytest.raises(_wire.WireError) as refused:
            _wire.Link.connect(listener.address, "wrong-token", "worker", "test client")
        assert refused.value.code == "authentication_failed"
    finally:
        listener.close()
