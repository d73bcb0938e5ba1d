"""Sample keys and column names: validation and the order-preserving encoding.

A key is a ``str`` (1-255 UTF-8 bytes, no control characters, no ``/``) or an
``int`` in ``[0, 2**64)``. ``"1"`` and ``1`` are different keys. Keys are
stored as bytes whose byte order is the key order: ints (tag ``0x00`` and
8 big-endian bytes) sort numerically before strs (tag ``0x01`` and UTF-8,
which sorts by code point). LMDB and the record tree then keep keys sorted
for free.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TypeAlias

import numpy as np

__all__ = [
    "Key",
    "decode_key",
    "encode_key",
    "encode_keys",
    "validate_name",
]

Key: TypeAlias = int | str

_INT_TAG = b"\x00"
_STR_TAG = b"\x01"
_MAX_INT = 2**64
_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f/]")


def _str_key(key: str, what: str) -> bytes:
    raw = key.encode("utf-8")
    if not 1 <= len(raw) <= 255:
        raise ValueError(f"{what} {key!r} must be 1 to 255 UTF-8 bytes long (it is {len(raw)})")
    bad = _BAD_CHARS.search(key)
    if bad:
        raise ValueError(
            f"{what} {key!r} contains {bad.group()!r}: keys may not contain '/' "
            "or control characters"
        )
    return raw


def encode_key(key: object) -> bytes:
    """Validate ``key`` and return its order-preserving byte encoding.

    Raises
    ------
    TypeError
        For anything but ``str`` and (non-bool) integers.
    ValueError
        For a malformed str or a negative / too large int.
    """
    if type(key) is str:
        return _STR_TAG + _str_key(key, "key")
    if isinstance(key, int | np.integer) and not isinstance(key, bool | np.bool_):
        value = int(key)
        if not 0 <= value < _MAX_INT:
            raise ValueError(f"int key {value} is out of range: int keys must be in [0, 2**64)")
        return _INT_TAG + value.to_bytes(8, "big")
    if isinstance(key, str):  # a str subclass: store as the plain str it equals
        return _STR_TAG + _str_key(str(key), "key")
    raise TypeError(
        f"key {key!r} has type {type(key).__name__}: keys must be str or int (not bool)"
    )


def encode_keys(keys: Iterable[object] | np.ndarray) -> list[bytes]:
    """Encode many keys; a numpy integer array takes a vectorised path."""
    if isinstance(keys, np.ndarray):
        if keys.dtype.kind in "iu" and keys.ndim == 1:
            if keys.size and (keys.min() < 0):
                raise ValueError(f"int key {int(keys.min())} is negative: int keys must be >= 0")
            raw = keys.astype(">u8").tobytes()
            return [_INT_TAG + raw[i : i + 8] for i in range(0, len(raw), 8)]
        if keys.dtype.kind == "b":
            raise TypeError("keys must be str or int, not bool")
        keys = keys.tolist()
    keys = list(keys)
    if keys and all(type(k) is int for k in keys):
        try:
            return encode_keys(np.array(keys, dtype=np.int64))
        except OverflowError:
            pass  # ints >= 2**63: take the general path
    return [encode_key(k) for k in keys]


def decode_key(raw: bytes) -> Key:
    """Inverse of :func:`encode_key`."""
    if raw[:1] == _INT_TAG:
        return int.from_bytes(raw[1:], "big")
    return bytes(raw[1:]).decode("utf-8")


def validate_name(name: object, what: str = "column name") -> str:
    """Validate a column or ref name (same rules as str keys)."""
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, not {type(name).__name__}")
    _str_key(name, what)
    return name
