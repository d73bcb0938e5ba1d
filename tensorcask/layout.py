"""Names of the files and directories of a repository, each defined once.

The on-disk layout of a repository directory::

    TENSORCASK      FORMAT_FILE       format marker, written last by init
    meta/           META_DIR          LMDB environment: content index, history, refs, staging
    data/<backend>/ DATA_DIR          sample storage (memmap/, hdf5/, lmdb/)
    index/          INDEX_DIR         run files of the content index
    cache/          CACHE_DIR         checksummed column tables (rebuildable; see table_cache.py)
    writer.lock     WRITER_LOCK_FILE  the writer lock (holder info inside)

An LMDB environment (``meta/`` and ``data/lmdb/``) is a directory holding
:data:`LMDB_DATA_FILE` and :data:`LMDB_LOCK_FILE`. This module imports
nothing, so every layer may use it.
"""

from __future__ import annotations

__all__ = [
    "CACHE_DIR",
    "DATA_DIR",
    "FORMAT_FILE",
    "INDEX_DIR",
    "LMDB_DATA_FILE",
    "LMDB_LOCK_FILE",
    "META_DIR",
    "WRITER_LOCK_FILE",
]

FORMAT_FILE = "TENSORCASK"
META_DIR = "meta"
DATA_DIR = "data"
INDEX_DIR = "index"
CACHE_DIR = "cache"
WRITER_LOCK_FILE = "writer.lock"
LMDB_DATA_FILE = "data.mdb"
LMDB_LOCK_FILE = "lock.mdb"
