"""Values on the wire: plain msgpack for what every language reads (None, bool,
int, float, str, bytes, lists and string-keyed maps of those), and Python's own
values as cloudpickle bytes inside msgpack extension type 1, which only Python
workers read (docs/wire-protocol.md, "Values")."""

import cloudpickle
import msgpack

PICKLE_EXT = 1
KWARGS_EXT = 2
_INT_MIN, _INT_MAX = -(1 << 63), (1 << 64) - 1


def is_plain(value, depth=0):
    """True when ``value`` is a msgpack value other languages can read as it is."""
    if depth > 64:
        return False
    if value is None or isinstance(value, (bool, float, str, bytes)):
        return True
    if isinstance(value, int):
        return _INT_MIN <= value <= _INT_MAX
    if type(value) is list:
        return all(is_plain(item, depth + 1) for item in value)
    if type(value) is dict:
        return all(isinstance(key, str) and is_plain(item, depth + 1) for key, item in value.items())
    return False


def dumps(value, cross_language=False):
    """The bytes of one value (one task argument, result or put)."""
    if is_plain(value):
        return msgpack.packb(value, use_bin_type=True)
    if cross_language:
        raise TypeError(
            f"a {type(value).__name__} cannot cross to another language: pass None, bool, int, float, "
            "str, bytes, or lists and str-keyed dicts of those"
        )
    return msgpack.packb(msgpack.ExtType(PICKLE_EXT, cloudpickle.dumps(value)), use_bin_type=True)


def dumps_kwarg_names(names):
    """Keyword arguments of a Python call travel as the last ``len(names)``
    arguments, followed by this one: their names, in extension type 2."""
    packed = msgpack.packb(list(names), use_bin_type=True)
    return msgpack.packb(msgpack.ExtType(KWARGS_EXT, packed), use_bin_type=True)


def _ext(code, data):
    if code == PICKLE_EXT:
        return cloudpickle.loads(data)
    if code == KWARGS_EXT:
        return _KwargNames(msgpack.unpackb(data, raw=False))
    return msgpack.ExtType(code, data)


class _KwargNames(list):
    """The names of a call's keyword arguments (its last arguments)."""


def loads(data):
    """The value of ``data`` (plain msgpack, or a pickled Python value)."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_ext)


def split_kwargs(values):
    """(positional, keyword) from decoded arguments."""
    if values and isinstance(values[-1], _KwargNames):
        names = values[-1]
        split = len(values) - 1 - len(names)
        return values[:split], dict(zip(names, values[split:-1]))
    return values, {}
