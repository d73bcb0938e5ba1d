"""Sample keys and column names: validation and the order-preserving encoding.

A key is a ``str`` (1-255 UTF-8 bytes, no control characters, no ``/``) or an
``int`` in ``[0, 2**64)``. ``"1"`` and ``1`` are different keys. Keys are
stored as bytes whose byte order is the key order: ints (tag ``0x00`` and
8 big-endian bytes) sort numerically before strs (tag ``0x01`` and UTF-8,
which sorts by code point). LMDB and the record tree then keep keys sorted
for free.

Branch and tag names follow git's ``check-ref-format`` rules, and may not be
4 to 40 hex digits, so that a name never reads as a commit id or prefix
(:func:`validate_ref_name`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TypeAlias

import numpy as np

from .errors import SchemaError

__all__ = [
    "Key",
    "decode_key",
    "encode_key",
    "encode_keys",
    "utf8",
    "validate_name",
    "validate_ref_name",
]

Key: TypeAlias = int | str

_INT_TAG = b"\x00"
_STR_TAG = b"\x01"
_MAX_INT = 2**64
_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f/]")


def utf8(text: str, what: str, error: type[ValueError] = ValueError) -> bytes:
    """``text`` as UTF-8; a lone surrogate raises ``error`` naming it and where it is."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        shown = text if len(text) <= 60 else text[:60] + "..."
        raise error(
            f"{what} {shown!r} contains the lone surrogate {text[exc.start]!r} at index "
            f"{exc.start}, which is not valid Unicode and cannot be stored as UTF-8; "
            "fix the text (e.g. decode its bytes with errors='replace')"
        ) from None


def _str_key(key: str, what: str, error: type[ValueError] = ValueError) -> bytes:
    raw = utf8(key, what, error)
    if not 1 <= len(raw) <= 255:
        raise error(f"{what} {key!r} must be 1 to 255 UTF-8 bytes long (it is {len(raw)})")
    bad = _BAD_CHARS.search(key)
    if bad:
        raise error(
            f"{what} {key!r} contains {bad.group()!r}: {what}s may not contain '/' "
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
    raise TypeError(_wrong_key_type(key))


def _wrong_key_type(key: object) -> str:
    kind = type(key).__name__
    if isinstance(key, bool | np.bool_):
        hint = "bool keys are refused so that True and 1 are never confused"
    elif isinstance(key, float | np.floating) and float(key).is_integer():
        hint = f"use int({key!r})"
    elif isinstance(key, bytes | bytearray):
        hint = "decode bytes to str first"
    else:
        hint = "convert it to one of those"
    return f"key {key!r} has type {kind}, but keys must be str or int (>= 0); {hint}"


def encode_keys(keys: Iterable[object] | np.ndarray) -> list[bytes]:
    """Encode many keys; a numpy integer array takes a vectorised path."""
    if isinstance(keys, np.ndarray):
        if keys.dtype.kind in "iu" and keys.ndim == 1:
            if keys.size and (keys.min() < 0):
                raise ValueError(f"int key {int(keys.min())} is negative: int keys must be >= 0")
            raw = keys.astype(">u8").tobytes()
            return [_INT_TAG + raw[i : i + 8] for i in range(0, len(raw), 8)]
        if keys.dtype.kind == "b":
            raise TypeError(
                "keys must be str or int (>= 0), not bool: bool keys are refused so that True "
                "and 1 are never confused"
            )
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
    """Validate a column name (the rules of str keys).

    Raises ``TypeError`` for a non-str and :class:`~tensorcask.errors.SchemaError`
    (a ``ValueError``) for a malformed name.
    """
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, not {type(name).__name__}")
    _str_key(name, what, SchemaError)
    return name


MAX_REF_BYTES = 255
_REF_BAD_CHARS = re.compile(r"[\x00-\x20\x7f-\x9f~^:?*\[\\]")
_HEX_NAME = re.compile(r"[0-9a-fA-F]{4,40}")


def _ref_name_problem(name: str, raw: bytes) -> str | None:
    """Why ``name`` is not a valid branch or tag name, or None if it is."""
    if not name:
        return "it is empty"
    if len(raw) > MAX_REF_BYTES:
        return f"it is {len(raw)} UTF-8 bytes long (at most {MAX_REF_BYTES})"
    bad = _REF_BAD_CHARS.search(name)
    if bad:
        return (
            f"it contains {bad.group()!r} (no spaces, control characters or any of ~ ^ : ? * [ \\)"
        )
    for part, reason in (("..", "'..'"), ("@{", "'@{'"), ("//", "an empty component ('//')")):
        if part in name:
            return f"it contains {reason}"
    if name in ("HEAD", "@"):
        return f"{name!r} is reserved"
    if name.startswith("-"):
        return "it starts with '-' (it would read as a command-line option)"
    if name.startswith("/") or name.endswith("/"):
        return "it starts or ends with '/'"
    if name.endswith("."):
        return "it ends with '.'"
    for component in name.split("/"):
        if component.startswith("."):
            return f"its component {component!r} starts with '.'"
        if component.endswith(".lock"):
            return f"its component {component!r} ends with '.lock'"
    if _HEX_NAME.fullmatch(name):
        return (
            f"it is {len(name)} hex digits, so it would read as a commit id or id prefix "
            f"(add a non-hex character, e.g. 'v{name}')"
        )
    return None


def validate_ref_name(name: object, what: str = "ref name") -> str:
    """Validate a branch or tag name and return it.

    The rules are git's ``check-ref-format`` (as ``git branch`` applies them):
    no ``..``, ``@{``, space, ASCII control character or any of
    ``~ ^ : ? * [ \\``; no component that starts with ``.`` or ends with
    ``.lock``; no leading ``-``, leading or trailing ``/``, ``//`` or
    trailing ``.``; not ``HEAD`` or ``@``; at most 255 UTF-8 bytes. ``/``
    separates components (``feature/x``). A name may also not be 4 to 40 hex
    digits, so it can never shadow a commit id or prefix.

    Raises
    ------
    TypeError
        If ``name`` is not a str.
    ValueError
        If ``name`` breaks a rule; the message says which.
    """
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, not {type(name).__name__}")
    problem = _ref_name_problem(name, utf8(name, what))
    if problem is not None:
        raise ValueError(
            f"{what} {name!r} is not allowed: {problem}. Branch and tag names follow git's "
            "rules, e.g. 'dev', 'feature/x' or 'v1.0'"
        )
    return name
