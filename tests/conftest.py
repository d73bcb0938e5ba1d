"""Shared fixtures for the public-API tests."""

from __future__ import annotations

import gc
import itertools
import logging
import os
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tensorcask as tc

# One test process runs tf.data and forks DataLoader workers. A forked child
# that garbage-collects a tf.data iterator its parent had dropped runs its
# destructor, which waits for TensorFlow threads that do not exist in the child:
# the worker hangs. Objects alive at a fork are frozen, so children never collect
# them (the parent unfreezes its own at once).
os.register_at_fork(before=gc.freeze, after_in_parent=gc.unfreeze)


@pytest.fixture(autouse=True)
def _close_repositories(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Close every repository a test opened and left open.

    Each open repository maps a large LMDB address range; hundreds left to
    the garbage collector can exhaust the address space of the test process.
    """
    opened: list[weakref.ref[tc.Repository]] = []  # dropped ones release themselves
    original = tc.Repository.__init__

    def init(self: tc.Repository, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        opened.append(weakref.ref(self))

    monkeypatch.setattr(tc.Repository, "__init__", init)
    yield
    for ref in opened:
        repository = ref()
        if repository is not None:
            repository.close()


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[tc.Repository]:
    """A fresh, empty repository with a fixed identity; closed at teardown."""
    repository = tc.init(tmp_path / "repo", user_name="Ada", user_email="ada@example.org")
    try:
        yield repository
    finally:
        repository.close()


@pytest.fixture
def mnist_like() -> tuple[np.ndarray, np.ndarray]:
    """32 MNIST-shaped uint8 images and int64 labels from a seeded generator."""
    rng = np.random.default_rng(20240611)
    images = rng.integers(0, 256, size=(32, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=32, dtype=np.int64)
    return images, labels


# -- a real S3-protocol server (moto) on 127.0.0.1, reached through s3fs -------

_BUCKETS = itertools.count()


class S3Server:
    """One moto server on an ephemeral port (started by :meth:`start`)."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.endpoint_url = ""
        self._admin: Any = None

    def start(self) -> S3Server:
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        self._server.stop()

    @property
    def storage_options(self) -> dict[str, Any]:
        """What a user passes to reach this server (``add_remote(..., **options)``)."""
        return {
            "key": "testing",
            "secret": "testing",
            "endpoint_url": self.endpoint_url,
            "client_kwargs": {"region_name": "us-east-1"},
            "use_listings_cache": False,
        }

    def filesystem(self) -> Any:
        """A fresh s3fs filesystem on this server (no instance cache)."""
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options)

    def new_bucket(self) -> str:
        """Create a bucket of its own for one test; its name."""
        if self._admin is None:  # a new s3fs client costs about a second
            self._admin = self.filesystem()
        name = f"bucket-{next(_BUCKETS)}"
        self._admin.call_s3("create_bucket", Bucket=name)
        return name


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's threaded S3 server for the whole session.

    It enforces ``If-None-Match`` and ``If-Match`` (412) as S3 does. Tests
    take a bucket of their own (:meth:`S3Server.new_bucket`)."""
    server = S3Server().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_url(s3_server: S3Server) -> str:
    """``s3://<a fresh bucket>/repo``: reach it with ``s3_server.storage_options``."""
    return f"s3://{s3_server.new_bucket()}/repo"
