"""BLAKE3 in pure Python: the keyed hash and key derivation the handshake uses.

The handshake hashes a few hundred bytes once per connection, so speed does not
matter there. Packages (``working_dir``) are hashed with the ``blake3`` wheel when
it is installed, and with this module otherwise (about 1 MB/s).
"""

_MASK = 0xFFFFFFFF
_IV = (0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19)
_PERMUTATION = (2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8)
_BLOCK_LEN = 64
_CHUNK_LEN = 1024
_CHUNK_START, _CHUNK_END, _PARENT, _ROOT = 1, 2, 4, 8
_KEYED_HASH, _DERIVE_KEY_CONTEXT, _DERIVE_KEY_MATERIAL = 16, 32, 64


def _g(state, a, b, c, d, x, y):
    state[a] = (state[a] + state[b] + x) & _MASK
    v = state[d] ^ state[a]
    state[d] = ((v >> 16) | (v << 16)) & _MASK
    state[c] = (state[c] + state[d]) & _MASK
    v = state[b] ^ state[c]
    state[b] = ((v >> 12) | (v << 20)) & _MASK
    state[a] = (state[a] + state[b] + y) & _MASK
    v = state[d] ^ state[a]
    state[d] = ((v >> 8) | (v << 24)) & _MASK
    state[c] = (state[c] + state[d]) & _MASK
    v = state[b] ^ state[c]
    state[b] = ((v >> 7) | (v << 25)) & _MASK


def _compress(cv, block, counter, block_len, flags):
    state = list(cv) + list(_IV[:4]) + [counter & _MASK, (counter >> 32) & _MASK, block_len, flags]
    m = list(block)
    for round_index in range(7):
        _g(state, 0, 4, 8, 12, m[0], m[1])
        _g(state, 1, 5, 9, 13, m[2], m[3])
        _g(state, 2, 6, 10, 14, m[4], m[5])
        _g(state, 3, 7, 11, 15, m[6], m[7])
        _g(state, 0, 5, 10, 15, m[8], m[9])
        _g(state, 1, 6, 11, 12, m[10], m[11])
        _g(state, 2, 7, 8, 13, m[12], m[13])
        _g(state, 3, 4, 9, 14, m[14], m[15])
        if round_index < 6:
            m = [m[i] for i in _PERMUTATION]
    for i in range(8):
        state[i] ^= state[i + 8]
        state[i + 8] ^= cv[i]
    return state


def _words(data):
    data = data + b"\0" * (64 - len(data))
    return [int.from_bytes(data[i:i + 4], "little") for i in range(0, 64, 4)]


class _Output:
    def __init__(self, cv, block, counter, block_len, flags):
        self.cv, self.block, self.counter, self.block_len, self.flags = cv, block, counter, block_len, flags

    def chaining_value(self):
        return _compress(self.cv, self.block, self.counter, self.block_len, self.flags)[:8]

    def root_bytes(self, length):
        out = bytearray()
        counter = 0
        while len(out) < length:
            words = _compress(self.cv, self.block, counter, self.block_len, self.flags | _ROOT)
            out += b"".join(word.to_bytes(4, "little") for word in words)
            counter += 1
        return bytes(out[:length])


class _ChunkState:
    def __init__(self, key, counter, flags):
        self.cv, self.counter, self.flags = list(key), counter, flags
        self.block = b""
        self.blocks_compressed = 0

    def __len__(self):
        return _BLOCK_LEN * self.blocks_compressed + len(self.block)

    def _start_flag(self):
        return _CHUNK_START if self.blocks_compressed == 0 else 0

    def update(self, data):
        while data:
            if len(self.block) == _BLOCK_LEN:
                flags = self.flags | self._start_flag()
                self.cv = _compress(self.cv, _words(self.block), self.counter, _BLOCK_LEN, flags)[:8]
                self.blocks_compressed += 1
                self.block = b""
            take = min(_BLOCK_LEN - len(self.block), len(data))
            self.block += data[:take]
            data = data[take:]

    def output(self):
        flags = self.flags | self._start_flag() | _CHUNK_END
        return _Output(self.cv, _words(self.block), self.counter, len(self.block), flags)


class Hasher:
    """An incremental BLAKE3 hasher (plain, keyed, or deriving a key)."""

    def __init__(self, key=None, flags=0):
        self._key = list(_IV) if key is None else [int.from_bytes(key[i:i + 4], "little") for i in range(0, 32, 4)]
        if key is not None and not flags:
            flags = _KEYED_HASH
        self._flags = flags
        self._chunk = _ChunkState(self._key, 0, flags)
        self._stack = []

    def update(self, data):
        data = bytes(data)
        while data:
            if len(self._chunk) == _CHUNK_LEN:
                cv = self._chunk.output().chaining_value()
                total = self._chunk.counter + 1
                while total & 1 == 0:
                    cv = self._parent(self._stack.pop(), cv).chaining_value()
                    total >>= 1
                self._stack.append(cv)
                self._chunk = _ChunkState(self._key, self._chunk.counter + 1, self._flags)
            take = min(_CHUNK_LEN - len(self._chunk), len(data))
            self._chunk.update(data[:take])
            data = data[take:]
        return self

    def _parent(self, left, right):
        return _Output(self._key, list(left) + list(right), 0, _BLOCK_LEN, _PARENT | self._flags)

    def digest(self, length=32):
        output = self._chunk.output()
        for cv in reversed(self._stack):
            output = self._parent(cv, output.chaining_value())
        return output.root_bytes(length)

    def hexdigest(self, length=32):
        return self.digest(length).hex()


def blake3(data=b"", key=None):
    """A hasher over ``data`` (keyed when ``key``, 32 bytes, is given)."""
    return Hasher(key).update(data)


def derive_key(context, material):
    """BLAKE3's key derivation: a 32-byte key for ``material`` in ``context``."""
    context_key = Hasher(flags=_DERIVE_KEY_CONTEXT).update(context.encode()).digest()
    return Hasher(key=context_key, flags=_DERIVE_KEY_MATERIAL).update(material).digest()


def fast_hasher():
    """The ``blake3`` wheel's hasher when installed (for large packages), else this module's."""
    try:
        import blake3 as native  # noqa: PLC0415

        return native.blake3()
    except ImportError:
        return Hasher()
