"""The remote object store and refs pass the same conformance rules as the local ones,
on every transport: local files, fsspec's memory filesystem, and S3 (moto, through s3fs)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from tensorcask.history.objectstore import ObjectStore
from tensorcask.history.refs import RefsContainer
from tensorcask.remote.objects import RemoteObjectStore
from tensorcask.remote.refs import RemoteRefs
from tensorcask.remote.transport import open_transport

from .conformance import ObjectStoreConformance, RefsConformance


class FileTransport:
    def url(self, tmp_path: Path) -> tuple[str, dict[str, Any]]:
        return f"file://{tmp_path}/remote", {}


class MemoryTransport:
    def url(self, tmp_path: Path) -> tuple[str, dict[str, Any]]:
        return f"memory://remote-{uuid.uuid4().hex}", {}


class S3Transport:
    @pytest.fixture(autouse=True)
    def _server(self, s3_server: Any) -> None:
        self.server = s3_server

    def url(self, tmp_path: Path) -> tuple[str, dict[str, Any]]:
        return f"s3://{self.server.new_bucket()}/remote", self.server.storage_options


class _Objects(ObjectStoreConformance):
    def make_store(self, tmp_path: Path) -> ObjectStore:
        url, options = self.url(tmp_path)  # type: ignore[attr-defined]
        return RemoteObjectStore(open_transport(url, options))


class _Refs(RefsConformance):
    def make_refs(self, tmp_path: Path) -> RefsContainer:
        url, options = self.url(tmp_path)  # type: ignore[attr-defined]
        return RemoteRefs(open_transport(url, options))


class TestFileObjectStore(FileTransport, _Objects):
    pass


class TestMemoryObjectStore(MemoryTransport, _Objects):
    pass


class TestS3ObjectStore(S3Transport, _Objects):
    pass


class TestFileRefs(FileTransport, _Refs):
    pass


class TestMemoryRefs(MemoryTransport, _Refs):
    pass


class TestS3Refs(S3Transport, _Refs):
    pass
