"""A checksum tree over an exported folder: one root digest for every file in it.

:func:`write_checksum_tree` hashes every file under a root (a local folder or
any fsspec URL, e.g. ``s3://bucket/out.zarr``) and writes the manifest
*beside* that root, named after it with the suffix
``.tensorcask-checksums.json`` (:data:`MANIFEST_SUFFIX`):

    out.zarr/                            the export, with nothing added
    out.zarr.tensorcask-checksums.json   its manifest

(``s3://b/x.zarr`` -> ``s3://b/x.zarr.tensorcask-checksums.json``), so that
tools listing the store (zarr-python) see only the store's own files.
:func:`manifest_path` names it. :func:`verify_checksum_tree` hashes the files
again and names each one that changed, is missing or was added since.

Exports written before the manifest moved kept it inside the root, as
``<root>/.tensorcask-checksums.json`` (:data:`MANIFEST_NAME`); verification
falls back to such a manifest (leaving it out of the tree it checks) when
there is none beside the root. Otherwise a file of that name inside a root
is an ordinary file.

Format
------
* A file's digest is BLAKE2b with a 32-byte digest over its bytes
  (``b2sum -l 256 FILE`` prints the same hex).
* A directory's digest is BLAKE2b-256 (personalisation
  ``tensorcask-dir-1``) over the 8-byte big-endian count of its entries,
  then, for each entry sorted by UTF-8 name then kind: the kind (``f`` for a
  file, ``d`` for a directory), the 4-byte big-endian length of the UTF-8
  name, the name, and the entry's 32 raw digest bytes. Length prefixes and
  fixed-size digests make the encoding unambiguous.
* Directories exist only as the parents of files (object stores have no
  empty directories), so an empty directory is not part of the tree; the
  root digest is the digest of the root directory. The manifest, beside
  the root, is not part of the tree.
* The manifest is JSON: ``format`` (``"tensorcask-checksum-tree"``),
  ``version`` (1), ``algorithm`` (``"blake2b-256"``), ``root`` (hex),
  ``directories`` (relative path -> hex; ``""`` is the root) and ``files``
  (relative path with ``/`` separators -> ``{"digest": hex, "size": bytes}``).

Both functions read each file once, streaming it in blocks, and keep only
the digests in memory: time and memory are O(files).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..errors import CaskError, CorruptionError
from ..storage.base import fsync_path
from .util import is_url

__all__ = [
    "MANIFEST_NAME",
    "MANIFEST_SUFFIX",
    "TreeCheck",
    "manifest_path",
    "verify_checksum_tree",
    "write_checksum_tree",
]

#: Appended to a root's path to name its manifest, which lies beside the root.
MANIFEST_SUFFIX = ".tensorcask-checksums.json"
#: The manifest's name inside the root in the old layout (read only as a fallback).
MANIFEST_NAME = ".tensorcask-checksums.json"
FORMAT = "tensorcask-checksum-tree"
VERSION = 1
ALGORITHM = "blake2b-256"

_BLOCK = 1 << 20
_WORKERS = 8  # files are hashed in threads: hashlib and remote reads release the GIL
_DIR_PERSON = b"tensorcask-dir-1"
_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class TreeCheck:
    """What :func:`verify_checksum_tree` found.

    Attributes
    ----------
    ok : bool
        Every file matches the manifest and nothing was added.
    root : str
        The root digest of the files as they are now (hex).
    expected_root : str
        The root digest the manifest records (hex).
    differing : list of str
        Relative paths of every file that changed, is missing or is extra, sorted.
    changed, missing, extra : list of str
        The same paths by how they differ, each sorted.
    path : str
        The root that was checked, as given (without the suffix when the
        manifest's path was given).
    files : int
        Files the manifest lists.
    """

    ok: bool
    root: str
    expected_root: str
    differing: list[str]
    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    path: str = ""
    files: int = 0

    def summary(self) -> str:
        """A report naming every differing file and what to do about it."""
        if self.ok:
            return (
                f"export {self.path}: ok, {_files(self.files)} match the checksum manifest "
                f"(root {self.root[:16]})"
            )
        lines = [
            f"export {self.path} does not match its checksum manifest: "
            f"{_files(len(self.differing))} differing (root {self.root[:16]}, "
            f"expected {self.expected_root[:16]})"
        ]
        for how, paths in (
            ("changed", self.changed),
            ("missing", self.missing),
            ("extra", self.extra),
        ):
            lines += [f"  {how}: {p}" for p in paths]
        lines.append("restore those files from the original, or export again")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _files(n: int) -> str:
    return f"{n:,} file" if n == 1 else f"{n:,} files"


def manifest_path(root: str | os.PathLike[str]) -> str:
    """The path of the manifest of ``root``: beside it, ``root`` plus :data:`MANIFEST_SUFFIX`.

    Parameters
    ----------
    root : str or path-like
        A local folder or an fsspec URL (a trailing ``/`` is ignored).

    Returns
    -------
    str
        ``"out.zarr"`` -> ``"out.zarr.tensorcask-checksums.json"``,
        ``"s3://b/x.zarr/"`` -> ``"s3://b/x.zarr.tensorcask-checksums.json"``;
        a local path without a name of its own (``"."``, ``".."``) is made
        absolute first.
    """
    text = os.fspath(root)
    stripped = text.rstrip("/") or text
    if not is_url(text) and os.path.basename(stripped) in ("", ".", ".."):
        stripped = os.path.abspath(stripped)
    return stripped + MANIFEST_SUFFIX


def write_checksum_tree(
    root: str | os.PathLike[str], *, storage_options: dict[str, Any] | None = None
) -> str:
    """Hash every file under ``root`` and write the manifest beside ``root``.

    The manifest goes to :func:`manifest_path` of ``root`` (same parent
    folder), replacing one already there; nothing inside ``root`` is added
    or left out. A local manifest is written atomically (a temporary file,
    fsynced, renamed into place); on an object store, one upload is atomic.

    Parameters
    ----------
    root : str or path-like
        A local folder or an fsspec URL (``memory://out.zarr``, ``s3://...``).
    storage_options : dict, optional
        Passed to fsspec (e.g. ``{"endpoint_url": ...}``).

    Returns
    -------
    str
        The root digest (64 hex digits).

    Raises
    ------
    FileNotFoundError
        If ``root`` is not a directory.
    ValueError
        If ``root`` has no parent folder to hold the manifest (a bucket or
        filesystem root).
    """
    where = _locate(root, storage_options, given_manifest=False)
    parent, _, name = where.store.rpartition("/")
    if not name or not (parent or where.store.startswith("/")):
        raise ValueError(
            f"{where.shown_store} has no parent folder to hold its checksum manifest beside "
            "it: export into a folder (e.g. s3://bucket/out.zarr, not s3://bucket)"
        )
    files = _hash_files(where.fs, _list_files(where.fs, where.store))
    digests = {rel: digest for rel, (digest, _) in files.items()}
    directories = _directory_digests(digests)
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "algorithm": ALGORITHM,
        "root": directories[""],
        "directories": directories,
        "files": {rel: {"digest": d, "size": size} for rel, (d, size) in sorted(files.items())},
    }
    _write_file(where.fs, where.manifest, json.dumps(manifest, indent=1).encode("ascii"))
    return directories[""]


def verify_checksum_tree(
    root: str | os.PathLike[str], *, storage_options: dict[str, Any] | None = None
) -> TreeCheck:
    """Hash every file under ``root`` again and compare with its manifest.

    The manifest is the one beside ``root`` (:func:`manifest_path`). An
    export written before manifests moved beside the root has it inside,
    as ``<root>/.tensorcask-checksums.json``: when there is none beside,
    that one is used and left out of the files checked.

    Parameters
    ----------
    root : str or path-like
        A local folder or an fsspec URL exported with a manifest from
        :func:`write_checksum_tree`, or the manifest's own path (then the
        root is that path without :data:`MANIFEST_SUFFIX`).
    storage_options : dict, optional
        Passed to fsspec.

    Returns
    -------
    TreeCheck
        ``ok``, both root digests, and every changed, missing and extra file.

    Raises
    ------
    FileNotFoundError
        If ``root`` is not a directory or has no manifest (the message names
        where it was looked for).
    CorruptionError
        If the manifest is malformed or does not agree with itself (edited or
        damaged).
    """
    where = _locate(root, storage_options, given_manifest=True)
    fs = where.fs
    manifest, shown_manifest = where.manifest, where.shown_manifest
    inside = f"{where.store}/{MANIFEST_NAME}"
    shown_inside = f"{where.shown_store.rstrip('/')}/{MANIFEST_NAME}"
    try:
        text = fs.cat_file(manifest)
    except FileNotFoundError:
        text = None
    if text is None and not where.explicit:
        try:
            text = fs.cat_file(inside)
        except FileNotFoundError:
            pass
        else:
            manifest, shown_manifest = inside, shown_inside
    if text is None:
        if where.explicit:
            looked = f"its checksum manifest {shown_manifest} does not exist"
        else:
            looked = (
                f"it has no checksum manifest: neither {shown_manifest} (beside it) nor "
                f"{shown_inside} (inside it, from older exports) exists"
            )
        raise FileNotFoundError(
            f"cannot verify export {where.shown_store}: {looked}. It was not exported by "
            "tensorcask, or the manifest was removed or not copied along with it (it lies "
            "beside the export, not in it); export it again to check it"
        )
    expected = _parse_manifest(text, shown_manifest)
    present = _list_files(fs, where.store)
    if manifest == inside:  # an old export: its manifest lies among the files it covers
        present.pop(MANIFEST_NAME, None)
    actual = _hash_files(fs, present)
    changed = sorted(
        rel for rel, (d, _) in actual.items() if rel in expected and expected[rel] != d
    )
    missing = sorted(rel for rel in expected if rel not in actual)
    extra = sorted(rel for rel in actual if rel not in expected)
    now = _directory_digests({rel: d for rel, (d, _) in actual.items()})[""]
    expected_root = _directory_digests(expected)[""]
    differing = sorted([*changed, *missing, *extra])
    return TreeCheck(
        ok=not differing and now == expected_root,
        root=now,
        expected_root=expected_root,
        differing=differing,
        changed=changed,
        missing=missing,
        extra=extra,
        path=where.shown_store,
        files=len(expected),
    )


@dataclass(frozen=True)
class _Where:
    """A root and its manifest: the filesystem, their paths in it, and as shown."""

    fs: Any
    store: str  # no trailing "/"
    manifest: str
    shown_store: str
    shown_manifest: str
    explicit: bool  # the manifest's path was given, not the root's


def _locate(
    root: str | os.PathLike[str], options: dict[str, Any] | None, *, given_manifest: bool
) -> _Where:
    """Find the root (a directory) and its manifest's path, from either of them if allowed."""
    import fsspec

    shown = os.fspath(root)
    fs, path = fsspec.core.url_to_fs(shown, **(options or {}))
    path = str(path).rstrip("/") or str(path)
    explicit = given_manifest and path.endswith(MANIFEST_SUFFIX) and not fs.isdir(path)
    if explicit:
        named = shown.rstrip("/")[: -len(MANIFEST_SUFFIX)]
        shown_store = named.rstrip("/") or named or "."
        store, manifest, shown_manifest = path[: -len(MANIFEST_SUFFIX)].rstrip("/"), path, shown
    else:
        store, shown_store = path, shown
        manifest, shown_manifest = path + MANIFEST_SUFFIX, manifest_path(shown)
    if not fs.isdir(store):
        raise FileNotFoundError(f"{shown_store} is not a directory: check the path of the export")
    return _Where(fs, store, manifest, shown_store, shown_manifest, explicit)


def _write_file(fs: Any, path: str, data: bytes) -> None:
    """Write ``data`` to ``path``, atomically where the filesystem allows."""
    from fsspec.implementations.local import LocalFileSystem

    if not isinstance(fs, LocalFileSystem):
        fs.pipe_file(path, data)  # one object upload: readers see the old or the new one
        return
    parent, name = os.path.split(path)
    # Beside the target, so that the rename stays within one filesystem.
    temporary = os.path.join(parent, f".{name}.{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    fsync_path(parent or ".")


def _list_files(fs: Any, base: str) -> dict[str, str]:
    """Relative path -> full path of every file under ``base``."""
    prefix = base + "/"
    out: dict[str, str] = {}
    for name in fs.find(base, withdirs=False):
        name = str(name)
        if name.startswith(prefix):
            out[name[len(prefix) :]] = name
    return out


def _hash_files(fs: Any, files: Mapping[str, str]) -> dict[str, tuple[str, int]]:
    """Relative path -> (hex digest, size) of each file."""

    def one(path: str) -> tuple[str, int]:
        h = hashlib.blake2b(digest_size=32)
        size = 0
        with fs.open(path, "rb") as f:
            while block := f.read(_BLOCK):
                h.update(block)
                size += len(block)
        return h.hexdigest(), size

    with ThreadPoolExecutor(_WORKERS) as pool:
        return dict(zip(files, pool.map(one, files.values()), strict=True))


def _directory_digests(files: Mapping[str, str]) -> dict[str, str]:
    """Relative directory path (``""`` for the root) -> hex digest, from file digests."""
    entries: dict[str, list[tuple[bytes, bytes, bytes]]] = {"": []}
    for rel, digest in files.items():
        parent, _, name = rel.rpartition("/")
        entries.setdefault(parent, []).append((_utf8(name), b"f", bytes.fromhex(digest)))
        while parent and (up := parent.rpartition("/")[0]) not in entries:
            entries[up] = []
            parent = up
    out: dict[str, str] = {}
    # Deepest first, so that every subdirectory is done before its parent.
    for directory in sorted(entries, key=lambda d: -1 if not d else d.count("/"), reverse=True):
        h = hashlib.blake2b(digest_size=32, person=_DIR_PERSON)
        children = sorted(entries[directory])
        h.update(len(children).to_bytes(8, "big"))
        for raw_name, kind, raw_digest in children:
            h.update(kind + len(raw_name).to_bytes(4, "big") + raw_name + raw_digest)
        out[directory] = h.hexdigest()
        if directory:
            parent, _, name = directory.rpartition("/")
            entries[parent].append((_utf8(name), b"d", h.digest()))
    return dict(sorted(out.items()))


def _utf8(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def _parse_manifest(text: bytes, where: str) -> dict[str, str]:
    """Relative path -> hex digest from a manifest, checked against its own digests."""

    def bad(problem: str) -> CorruptionError:
        return CorruptionError(
            f"checksum manifest {where} is unusable: {problem}; it was damaged or edited: "
            "export again to get a fresh one",
            path=where,
        )

    try:
        manifest = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad(f"it is not JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise bad(f"it is not a {FORMAT} manifest")
    version = manifest.get("version")
    if isinstance(version, int) and version > VERSION:
        raise CaskError(
            f"checksum manifest {where} has format version {version}, newer than this "
            f"tensorcask reads ({VERSION}): upgrade tensorcask (pip install -U tensorcask)"
        )
    if version != VERSION or manifest.get("algorithm") != ALGORITHM:
        raise bad(f"version {version!r} / algorithm {manifest.get('algorithm')!r} are unknown")
    files, directories = manifest.get("files"), manifest.get("directories")
    if not isinstance(files, dict) or not isinstance(directories, dict):
        raise bad("'files' or 'directories' is missing")
    expected: dict[str, str] = {}
    for rel, entry in files.items():
        digest = entry.get("digest") if isinstance(entry, dict) else None
        if not isinstance(digest, str) or not _HEX.fullmatch(digest):
            raise bad(f"the entry of {rel!r} has no valid digest")
        expected[rel] = digest
    if _directory_digests(expected) != directories or directories.get("") != manifest.get("root"):
        raise bad("its directory and root digests do not match its file digests")
    return expected
