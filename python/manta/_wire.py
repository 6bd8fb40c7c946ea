"""The manta wire protocol (docs/wire-protocol.md): length-prefixed msgpack
frames, the mutual handshake, and :class:`Link`, one authenticated connection
that matches replies to requests, answers pings and hands incoming requests
and events to a handler."""

import itertools
import json
import os
import socket
import ssl
import struct
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import msgpack

from . import _blake3

PROTOCOL_VERSION = 2
HANDSHAKE_MAX_FRAME_BYTES = 64 << 10
MAX_FRAME_BYTES = 64 << 20
HEARTBEAT_INTERVAL = 0.5
HEARTBEAT_TIMEOUT = 10.0
_ROLE_CODES = {"node": 0, "cli": 1, "worker": 2, "test": 3, "gcs": 4}
_KEY_CONTEXT = "manta 2026-12 cluster handshake v2"


class WireError(Exception):
    """An error a peer sent (``code`` is one of docs/wire-protocol.md's error codes)."""

    def __init__(self, code, message):
        super().__init__(f"{message} ({code})")
        self.code = code
        self.message = message


class ConnectionLost(WireError):
    """The link closed before the reply came."""

    def __init__(self, message):
        super().__init__("connection_lost", message)


def pack(value):
    return msgpack.packb(value, use_bin_type=True)


def unpack(data):
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def encode_frame(frame, cap=MAX_FRAME_BYTES):
    body = pack(frame)
    if len(body) > cap:
        raise WireError("invalid_argument", f"frame of {len(body)} bytes exceeds the {cap}-byte limit")
    return struct.pack(">I", len(body)) + body


def _read_exact(sock, count):
    chunks = []
    while count:
        chunk = sock.recv(min(count, 1 << 20))
        if not chunk:
            raise ConnectionLost("the peer closed the connection")
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


def read_frame(sock, cap=MAX_FRAME_BYTES):
    (length,) = struct.unpack(">I", _read_exact(sock, 4))
    if length > cap:
        raise WireError("invalid_argument", f"frame of {length} bytes exceeds the {cap}-byte limit")
    return unpack(_read_exact(sock, length))


def unwrap(reply, kind):
    """The payload of a ``Reply`` of ``kind`` (``{"GetObject": {...}}`` -> ``{...}``)."""
    name, payload = variant(reply)
    if name != kind:
        raise WireError("internal", f"expected a {kind} reply, got {name}")
    return payload


def variant(value):
    """The (name, payload) of an externally tagged enum value (``"Ack"`` or ``{"Name": payload}``)."""
    if isinstance(value, str):
        return value, None
    ((name, payload),) = value.items()
    return name, payload


# The handshake's proofs: a keyed BLAKE3 over both nonces, the client's role and name.
def handshake_key(token):
    return _blake3.derive_key(_KEY_CONTEXT, token.encode())


def proof(key, side, client_nonce, server_nonce, role, client_name):
    hasher = _blake3.Hasher(key=key)
    hasher.update(b"client" if side == "client" else b"server")
    for part in (client_nonce, server_nonce, client_name.encode()):
        hasher.update(struct.pack(">Q", len(part)))
        hasher.update(part)
    hasher.update(bytes([_ROLE_CODES[role]]))
    return hasher.digest()


def _refusal(frame, address):
    name, payload = variant(frame)
    if name == "Rejected":
        if payload["code"] == "authentication_failed":
            raise WireError(payload["code"], payload["message"] + " (check the cluster token: MANTA_TOKEN or the session's token file)")
        raise WireError(payload["code"], f"connection refused by {address}: {payload['message']}")
    raise WireError("invalid_argument", f"{address} answered the handshake with {name}")


class Tls:
    """Mutual TLS with the cluster's CA (the ``MANTA_TLS_*`` files, or a TLS head's ``tls.json``)."""

    def __init__(self, cert, key, ca):
        self.cert, self.key, self.ca = cert, key, ca
        self.client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
        self.client.load_cert_chain(cert, key)
        self.server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.server.load_cert_chain(cert, key)
        self.server.load_verify_locations(cafile=ca)
        self.server.verify_mode = ssl.CERT_REQUIRED

    @classmethod
    def from_env(cls, environ=None, temp_dir=None):
        """From ``MANTA_TLS_CERT``/``_KEY``/``_CA`` (all three or none), else ``temp_dir/tls.json``; None without TLS."""
        environ = os.environ if environ is None else environ
        parts = [environ.get(name) or None for name in ("MANTA_TLS_CERT", "MANTA_TLS_KEY", "MANTA_TLS_CA")]
        if all(parts):
            return cls(*parts)
        if any(parts):
            raise ValueError("TLS needs MANTA_TLS_CERT, MANTA_TLS_KEY and MANTA_TLS_CA together")
        record = os.path.join(temp_dir, "tls.json") if temp_dir else None
        if record and os.path.exists(record):
            with open(record) as file:
                files = json.load(file)
            return cls(files["cert"], files["key"], files["ca"])
        return None

    def env(self):
        return {"MANTA_TLS_CERT": self.cert, "MANTA_TLS_KEY": self.key, "MANTA_TLS_CA": self.ca}


def dial(address, token, role, name, timeout=10.0, tls=None):
    """Connects to ``address`` (over TLS when ``tls``) and runs the client side of
    the handshake; returns the socket."""
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock = socket.create_connection((host, int(port)), timeout=min(2.0, timeout))
            break
        except OSError as error:
            if time.monotonic() >= deadline:
                raise WireError("unavailable", f"could not reach {address} within {timeout:.0f} s: {error}") from None
            time.sleep(0.05)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(timeout)
    if tls is not None:
        try:
            sock = tls.client.wrap_socket(sock, server_hostname=host)
        except ssl.SSLError as error:
            sock.close()
            raise WireError(
                "authentication_failed",
                f"TLS handshake with {address} failed: {error}; check that the cluster runs with TLS and that its "
                f"certificate is signed by {tls.ca} and names {host}",
            ) from None
    client_nonce = os.urandom(32)
    hello = {"protocol_version": PROTOCOL_VERSION, "role": role, "name": name, "nonce": client_nonce}
    sock.sendall(encode_frame({"Hello": hello}, HANDSHAKE_MAX_FRAME_BYTES))
    frame = read_frame(sock, HANDSHAKE_MAX_FRAME_BYTES)
    kind, challenge = variant(frame)
    if kind != "Challenge":
        sock.close()
        _refusal(frame, address)
    key = handshake_key(token)
    mine = proof(key, "client", client_nonce, challenge["nonce"], role, name)
    sock.sendall(encode_frame({"Proof": {"proof": mine}}, HANDSHAKE_MAX_FRAME_BYTES))
    frame = read_frame(sock, HANDSHAKE_MAX_FRAME_BYTES)
    kind, welcome = variant(frame)
    if kind != "Welcome":
        sock.close()
        _refusal(frame, address)
    expected = proof(key, "server", client_nonce, challenge["nonce"], role, name)
    if bytes(welcome["proof"]) != expected:
        sock.close()
        raise WireError("authentication_failed", f"authentication failed: {address} did not prove it knows the cluster token")
    sock.settimeout(None)
    return sock, challenge["name"]


def accept_handshake(sock, token, name):
    """Runs the server side of the handshake on an accepted socket; returns the peer's (role, name)."""
    sock.settimeout(5.0)
    kind, hello = variant(read_frame(sock, HANDSHAKE_MAX_FRAME_BYTES))
    if kind != "Hello":
        raise WireError("invalid_argument", f"expected Hello, got {kind}")
    if hello["protocol_version"] != PROTOCOL_VERSION:
        message = f"protocol version {hello['protocol_version']} is not {PROTOCOL_VERSION}"
        sock.sendall(encode_frame({"Rejected": {"code": "version_mismatch", "message": message}}))
        raise WireError("version_mismatch", message)
    server_nonce = os.urandom(32)
    challenge = {"protocol_version": PROTOCOL_VERSION, "name": name, "nonce": server_nonce}
    sock.sendall(encode_frame({"Challenge": challenge}, HANDSHAKE_MAX_FRAME_BYTES))
    kind, client_proof = variant(read_frame(sock, HANDSHAKE_MAX_FRAME_BYTES))
    key = handshake_key(token)
    args = (bytes(hello["nonce"]), server_nonce, hello["role"], hello["name"])
    if kind != "Proof" or bytes(client_proof["proof"]) != proof(key, "client", *args):
        message = "authentication failed: wrong cluster token"
        sock.sendall(encode_frame({"Rejected": {"code": "authentication_failed", "message": message}}))
        raise WireError("authentication_failed", message)
    welcome = {"protocol_version": PROTOCOL_VERSION, "name": name, "proof": proof(key, "server", *args)}
    sock.sendall(encode_frame({"Welcome": welcome}, HANDSHAKE_MAX_FRAME_BYTES))
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return hello["role"], hello["name"]


class Handler:
    """What a process does with what arrives on its links (override the methods)."""

    def request(self, link, name, payload):
        raise WireError("unimplemented", f"this peer does not serve {name} requests")

    def dispatch(self, link, request_id, name, payload):
        """Called on the reader thread: True when the handler took the request
        (and will ``link.reply``); False runs ``request`` on the pool."""
        return False

    def event(self, link, name, payload):
        pass

    def closed(self, link, reason):
        pass


_POOL = ThreadPoolExecutor(max_workers=32, thread_name_prefix="manta-request")


class Link:
    """One authenticated connection: ``call`` a request and wait for its reply,
    ``send_event``, and a reader thread dispatching what the peer sends."""

    def __init__(self, sock, remote, handler=None):
        self.sock = sock
        self.remote = remote
        self.handler = handler or Handler()
        self._ids = itertools.count(1)
        self._pending = {}
        self._write_lock = threading.Lock()
        self._lock = threading.Lock()
        self.closed = None
        self._last_heard = time.monotonic()
        threading.Thread(target=self._read_loop, name=f"manta-link {remote}", daemon=True).start()
        threading.Thread(target=self._heartbeat, name=f"manta-ping {remote}", daemon=True).start()

    @classmethod
    def connect(cls, address, token, role, name, handler=None, timeout=10.0, tls=None):
        sock, _ = dial(address, token, role, name, timeout, tls)
        return cls(sock, address, handler)

    def _write(self, frame):
        data = encode_frame(frame)
        with self._write_lock:
            if self.closed:
                raise ConnectionLost(f"the link to {self.remote} is closed: {self.closed}")
            try:
                self.sock.sendall(data)
            except OSError as error:
                self._close(f"write failed: {error}")
                raise ConnectionLost(f"the link to {self.remote} is closed: {error}") from None

    def call_async(self, name, payload, timeout=30.0):
        """Sends request ``name`` and returns a future of its reply payload."""
        future = Future()
        request_id = next(self._ids)
        with self._lock:
            if self.closed:
                future.set_exception(ConnectionLost(f"the link to {self.remote} is closed: {self.closed}"))
                return future
            self._pending[request_id] = future
        body = {name: payload}
        frame = {"Request": {"id": request_id, "budget_ms": int(timeout * 1000), "body": body}}
        try:
            self._write(frame)
        except WireError as error:
            with self._lock:
                self._pending.pop(request_id, None)
            if not future.done():
                future.set_exception(error)
        return future

    def call(self, name, payload, timeout=30.0):
        """Sends request ``name`` and waits for its reply payload (raises :class:`WireError`)."""
        future = self.call_async(name, payload, timeout)
        try:
            return future.result(timeout + 5.0)
        except FutureTimeout:
            raise WireError("deadline_exceeded", f"{name} to {self.remote} got no reply in {timeout:.0f} s") from None

    def send_event(self, name, payload):
        self._write({"Event": {name: payload}})

    def _read_loop(self):
        reason = "closed"
        try:
            while True:
                frame = read_frame(self.sock)
                self._last_heard = time.monotonic()
                kind, payload = variant(frame)
                if kind == "Reply":
                    with self._lock:
                        future = self._pending.pop(payload["id"], None)
                    if future is not None and not future.done():
                        outcome, value = variant(payload["result"])
                        if outcome == "Ok":
                            future.set_result(value)
                        else:
                            future.set_exception(WireError(value["code"], value["message"]))
                elif kind == "Request":
                    name, body = variant(payload["body"])
                    if not self.handler.dispatch(self, payload["id"], name, body):
                        _POOL.submit(self._serve, payload["id"], name, body)
                elif kind == "Event":
                    name, event = variant(payload)
                    try:
                        self.handler.event(self, name, event)
                    except Exception as error:  # noqa: BLE001 - a handler bug must not end the link
                        print(f"manta: handling {name} failed: {error!r}", flush=True)
                elif kind == "Ping":
                    self._write({"Pong": {"nonce": payload["nonce"]}})
                elif kind == "Error":
                    reason = f"the peer closed the link: {payload['message']}"
                    break
        except (OSError, WireError, ValueError) as error:
            reason = str(error)
        self._close(reason)

    def _serve(self, request_id, name, payload):
        try:
            result = {"Ok": self.handler.request(self, name, payload)}
        except WireError as error:
            result = {"Err": {"code": error.code, "message": error.message}}
        except Exception as error:  # noqa: BLE001 - reported to the caller as an internal error
            result = {"Err": {"code": "internal", "message": f"{name} failed: {error!r}"}}
        self.reply(request_id, result)

    def reply(self, request_id, result):
        """Sends the reply (``{"Ok": reply}`` or ``{"Err": error}``) to request ``request_id``."""
        try:
            self._write({"Reply": {"id": request_id, "result": result}})
        except WireError:
            pass

    def _heartbeat(self):
        nonce = itertools.count(1)
        while not self.closed:
            time.sleep(HEARTBEAT_INTERVAL)
            if time.monotonic() - self._last_heard > HEARTBEAT_TIMEOUT:
                self._close(f"no traffic from {self.remote} for {HEARTBEAT_TIMEOUT:.0f} s")
                return
            try:
                self._write({"Ping": {"nonce": next(nonce)}})
            except WireError:
                return

    def _close(self, reason):
        with self._lock:
            if self.closed:
                return
            self.closed = reason or "closed"
            pending, self._pending = self._pending, {}
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for future in pending.values():
            if not future.done():
                future.set_exception(ConnectionLost(f"the link to {self.remote} closed: {reason}"))
        try:
            self.handler.closed(self, reason)
        except Exception:  # noqa: BLE001
            pass

    def close(self):
        self._close("closed by this process")


class Listener:
    """Accepts links on ``host:0`` and hands them to ``handler``."""

    def __init__(self, host, token, name, handler, tls=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(128)
        self.address = f"{host}:{self.sock.getsockname()[1]}"
        self._token, self._name, self._handler, self._tls = token, name, handler, tls
        self.links = []
        threading.Thread(target=self._accept_loop, name="manta-listener", daemon=True).start()

    def _accept_loop(self):
        while True:
            try:
                sock, peer = self.sock.accept()
            except OSError:
                return
            # A thread per handshake (5 s at most): slow peers never hold up requests.
            threading.Thread(target=self._handshake, args=(sock, peer), daemon=True).start()

    def _handshake(self, sock, peer):
        try:
            if self._tls is not None:
                sock.settimeout(5.0)
                sock = self._tls.server.wrap_socket(sock, server_side=True)
            accept_handshake(sock, self._token, self._name)
        except (OSError, WireError, ValueError, KeyError, TypeError):
            sock.close()
            return
        self.links.append(Link(sock, f"{peer[0]}:{peer[1]}", self._handler))

    def close(self):
        self.sock.close()
