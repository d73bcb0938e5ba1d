"""Checksum trees over exported folders: write, verify, and name what changed."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest

import tensorcask as tc
from tensorcask.interop.checksum_tree import (
    MANIFEST_NAME,
    MANIFEST_SUFFIX,
    TreeCheck,
    manifest_path,
    verify_checksum_tree,
    write_checksum_tree,
)

FILES = {
    "zarr.json": b'{"zarr_format": 3}',
    "images/zarr.json": b"{}",
    "images/c/0/0": bytes(range(256)) * 5000,  # more than one read block
    "images/c/0/1": b"",
    "labels/c/0": b"\x01\x02",
    "deep/a/b/c/d.bin": b"deep",
    "ünï/x y.bin": b"unicode",
}


def make_tree(root: Path, files: dict[str, bytes] = FILES) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def beside(tree: Path) -> Path:
    return tree.parent / (tree.name + MANIFEST_SUFFIX)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "out.zarr")


def test_write_then_verify_ok(tree: Path) -> None:
    digest = write_checksum_tree(tree)
    assert len(digest) == 64 and int(digest, 16) >= 0
    check = verify_checksum_tree(tree)
    assert isinstance(check, TreeCheck)
    assert check.ok and check.root == check.expected_root == digest
    assert check.differing == check.changed == check.missing == check.extra == []
    assert check.files == len(FILES)
    assert check.path == str(tree)
    assert "ok" in str(check) and str(tree) in check.summary()


def test_manifest_lies_beside_the_tree_and_nothing_is_added_to_it(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "out.zarr")
    before = sorted(p.relative_to(tree) for p in tree.rglob("*"))
    write_checksum_tree(tree)
    assert sorted(p.relative_to(tree) for p in tree.rglob("*")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "out.zarr",
        "out.zarr.tensorcask-checksums.json",  # no temporary file left behind
    ]
    assert manifest_path(tree) == str(beside(tree))
    assert manifest_path(f"{tree}/") == str(beside(tree))
    assert manifest_path("s3://b/x.zarr/") == "s3://b/x.zarr.tensorcask-checksums.json"
    assert manifest_path(".") == os.path.abspath(".") + MANIFEST_SUFFIX


def test_rewriting_replaces_the_manifest(tree: Path) -> None:
    first = write_checksum_tree(tree)
    (tree / "labels/c/0").write_bytes(b"\x09")
    second = write_checksum_tree(tree)
    assert second != first
    assert json.loads(beside(tree).read_text())["root"] == second
    assert verify_checksum_tree(tree).ok


def test_a_relative_path_and_a_trailing_slash(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tree.parent)
    digest = write_checksum_tree("out.zarr/")
    assert beside(tree).is_file()
    check = verify_checksum_tree("out.zarr")
    assert check.ok and check.root == digest and check.path == "out.zarr"
    monkeypatch.chdir(tree)
    assert write_checksum_tree(".") == digest  # "." is named by its absolute path
    assert verify_checksum_tree(".").ok


def test_the_manifest_path_itself_can_be_given(tree: Path) -> None:
    digest = write_checksum_tree(tree)
    check = verify_checksum_tree(beside(tree))
    assert check.ok and check.root == digest
    assert check.path == str(tree)
    (tree / "zarr.json").write_bytes(b"{}")
    assert verify_checksum_tree(str(beside(tree))).changed == ["zarr.json"]


def test_zarr_lists_an_export_with_its_manifest_beside_without_warnings(
    tmp_path: Path,
) -> None:
    zarr = pytest.importorskip("zarr")
    store = tmp_path / "out.zarr"
    root = zarr.open_group(store, mode="w")
    root.create_array("images", shape=(4, 3), chunks=(2, 3), dtype="uint8")[...] = 7
    root.create_group("group").create_array("x", shape=(2,), dtype="int64")[...] = [1, 2]
    write_checksum_tree(store)
    assert beside(store).is_file() and not (store / MANIFEST_NAME).exists()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opened = zarr.open_group(store, mode="r")
        names = sorted(name for name, _ in opened.members(max_depth=None))
        assert sorted(opened.array_keys()) == ["images"]
        assert int(opened["images"][...].sum()) == 7 * 12
    assert names == ["group", "group/x", "images"]
    assert [str(w.message) for w in caught] == []
    assert verify_checksum_tree(store).ok


def test_manifest_format(tree: Path) -> None:
    digest = write_checksum_tree(tree)
    manifest = json.loads(beside(tree).read_text())
    assert manifest["format"] == "tensorcask-checksum-tree" and manifest["version"] == 1
    assert manifest["algorithm"] == "blake2b-256" and manifest["root"] == digest
    assert set(manifest["files"]) == set(FILES)
    for rel, data in FILES.items():
        entry = manifest["files"][rel]
        assert entry == {
            "digest": hashlib.blake2b(data, digest_size=32).hexdigest(),
            "size": len(data),
        }
    assert manifest["directories"][""] == digest
    assert {"images", "images/c", "images/c/0", "deep/a/b/c", "ünï"} <= set(manifest["directories"])


def test_root_digest_is_deterministic_and_content_bound(tmp_path: Path) -> None:
    first = write_checksum_tree(make_tree(tmp_path / "a"))
    assert write_checksum_tree(make_tree(tmp_path / "b")) == first
    assert write_checksum_tree(tmp_path / "a") == first  # the manifest is not part of the tree
    assert write_checksum_tree(tmp_path / "a") == first
    renamed = {("images/c/0/2" if k == "images/c/0/1" else k): v for k, v in FILES.items()}
    assert write_checksum_tree(make_tree(tmp_path / "c", renamed)) != first
    moved = {("images/c/1" if k == "labels/c/0" else k): v for k, v in FILES.items()}
    assert write_checksum_tree(make_tree(tmp_path / "d", moved)) != first


def test_flipped_byte_names_the_file(tree: Path) -> None:
    write_checksum_tree(tree)
    target = tree / "images/c/0/0"
    data = bytearray(target.read_bytes())
    data[300_000] ^= 1
    target.write_bytes(bytes(data))
    check = verify_checksum_tree(tree)
    assert not check.ok and check.root != check.expected_root
    assert check.changed == check.differing == ["images/c/0/0"]
    assert "changed: images/c/0/0" in str(check)


def test_missing_and_extra_files_are_named(tree: Path) -> None:
    write_checksum_tree(tree)
    (tree / "deep/a/b/c/d.bin").unlink()
    (tree / "labels/c/0").write_bytes(b"\x01\x03")
    (tree / "images/c/9").write_bytes(b"new")
    (tree / ".extra").write_bytes(b"hidden files count too")
    check = verify_checksum_tree(tree)
    assert not check.ok
    assert check.missing == ["deep/a/b/c/d.bin"]
    assert check.changed == ["labels/c/0"]
    assert check.extra == [".extra", "images/c/9"]
    assert check.differing == sorted([".extra", "deep/a/b/c/d.bin", "images/c/9", "labels/c/0"])
    text = check.summary()
    for line in ("missing: deep/a/b/c/d.bin", "changed: labels/c/0", "extra: images/c/9"):
        assert line in text
    assert "export again" in text


def test_empty_directories_are_not_part_of_the_tree(tree: Path) -> None:
    digest = write_checksum_tree(tree)
    (tree / "empty" / "dirs").mkdir(parents=True)
    assert verify_checksum_tree(tree).ok
    assert write_checksum_tree(tree) == digest


def test_missing_manifest_says_what_to_do(tree: Path) -> None:
    with pytest.raises(FileNotFoundError, match="export it again") as info:
        verify_checksum_tree(tree)
    message = str(info.value)
    assert str(beside(tree)) in message and str(tree / MANIFEST_NAME) in message
    assert "not copied along" in message
    with pytest.raises(FileNotFoundError, match="export it again") as info:
        verify_checksum_tree(beside(tree))
    assert str(beside(tree)) in str(info.value) and str(tree) in str(info.value)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        verify_checksum_tree(tree / "nowhere")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        verify_checksum_tree(tree.parent / ("nowhere" + MANIFEST_SUFFIX))
    with pytest.raises(FileNotFoundError, match="not a directory"):
        write_checksum_tree(tree / "zarr.json")


def write_old_layout(tree: Path) -> str:
    """An export as written before the manifest moved: the manifest inside the tree."""
    digest = write_checksum_tree(tree)
    beside(tree).rename(tree / MANIFEST_NAME)
    return digest


def test_an_old_export_with_the_manifest_inside_still_verifies(tree: Path) -> None:
    digest = write_old_layout(tree)
    check = verify_checksum_tree(tree)
    assert check.ok and check.root == digest and check.files == len(FILES)
    assert MANIFEST_NAME not in check.differing  # the manifest is not one of the files
    assert verify_checksum_tree(tree / MANIFEST_NAME).ok  # its own path, given
    (tree / "deep/a/b/c/d.bin").write_bytes(b"DEEP")
    check = verify_checksum_tree(tree)
    assert check.differing == check.changed == ["deep/a/b/c/d.bin"]
    assert "changed: deep/a/b/c/d.bin" in check.summary()


def test_a_manifest_beside_wins_and_one_inside_is_then_an_ordinary_file(tree: Path) -> None:
    write_old_layout(tree)
    digest = write_checksum_tree(tree)  # rewritten: the old manifest is one of the files
    manifest = json.loads(beside(tree).read_text())
    assert MANIFEST_NAME in manifest["files"]
    check = verify_checksum_tree(tree)
    assert check.ok and check.root == digest and check.files == len(FILES) + 1
    (tree / MANIFEST_NAME).unlink()
    assert verify_checksum_tree(tree).missing == [MANIFEST_NAME]


def edit_manifest(tree: Path, change: Callable[[dict[str, Any]], object]) -> None:
    path = beside(tree)
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m["files"]["labels/c/0"].update(digest="0" * 64),
        lambda m: m.update(root="f" * 64),
        lambda m: m["files"].pop("zarr.json"),
        lambda m: m["files"].update({"new": {"digest": "a" * 64, "size": 1}}),
        lambda m: m["files"]["labels/c/0"].update(digest="xyz"),
        lambda m: m.pop("directories"),
        lambda m: m.update(algorithm="md5"),
        lambda m: m.update(format="other"),
    ],
)
def test_tampered_manifest_is_refused(
    tree: Path, change: Callable[[dict[str, Any]], object]
) -> None:
    write_checksum_tree(tree)
    edit_manifest(tree, change)
    with pytest.raises(tc.CorruptionError, match="export again") as info:
        verify_checksum_tree(tree)
    assert info.value.path == str(beside(tree))


def test_garbled_manifest_is_refused(tree: Path) -> None:
    write_checksum_tree(tree)
    beside(tree).write_bytes(b'{"format": "tensorcask-checksum-tree", "vers')
    with pytest.raises(tc.CorruptionError, match="not JSON"):
        verify_checksum_tree(tree)


def test_newer_manifest_version_asks_for_an_upgrade(tree: Path) -> None:
    write_checksum_tree(tree)
    edit_manifest(tree, lambda m: m.update(version=99))
    with pytest.raises(tc.CaskError, match="upgrade"):
        verify_checksum_tree(tree)


@pytest.fixture
def memory_root() -> Iterator[str]:
    url = f"memory://checks-{uuid.uuid4().hex}/out.zarr"
    fs, path = fsspec.core.url_to_fs(url)
    for rel, data in FILES.items():
        fs.pipe_file(f"{path}/{rel}", data)
    yield url
    fs.rm(path, recursive=True)


def test_memory_store(memory_root: str, tmp_path: Path) -> None:
    digest = write_checksum_tree(memory_root, storage_options={})
    assert digest == write_checksum_tree(make_tree(tmp_path / "local"))
    assert verify_checksum_tree(memory_root).ok
    fs, path = fsspec.core.url_to_fs(memory_root)
    fs.pipe_file(f"{path}/images/c/0/1", b"x")
    fs.rm(f"{path}/zarr.json")
    check = verify_checksum_tree(memory_root)
    assert (check.changed, check.missing, check.extra) == (["images/c/0/1"], ["zarr.json"], [])
    assert memory_root in check.summary()


def test_memory_store_manifest_lies_beside(memory_root: str) -> None:
    digest = write_checksum_tree(memory_root)
    fs, path = fsspec.core.url_to_fs(memory_root)
    assert fs.isfile(path + MANIFEST_SUFFIX)
    assert not fs.exists(f"{path}/{MANIFEST_NAME}")
    assert json.loads(fs.cat_file(path + MANIFEST_SUFFIX))["root"] == digest
    check = verify_checksum_tree(memory_root + MANIFEST_SUFFIX)
    assert check.ok and check.path == memory_root and check.root == digest
    fs.rm(path + MANIFEST_SUFFIX)
    with pytest.raises(FileNotFoundError, match=MANIFEST_SUFFIX.replace(".", r"\.")):
        verify_checksum_tree(memory_root)


def test_memory_store_old_layout_still_verifies(memory_root: str) -> None:
    digest = write_checksum_tree(memory_root)
    fs, path = fsspec.core.url_to_fs(memory_root)
    fs.mv(path + MANIFEST_SUFFIX, f"{path}/{MANIFEST_NAME}")
    check = verify_checksum_tree(memory_root)
    assert check.ok and check.root == digest and check.files == len(FILES)


def test_a_root_without_a_parent_has_no_place_beside_it() -> None:
    with pytest.raises(ValueError, match="no parent folder"):
        write_checksum_tree("/")
