"""Image folders as a source: layout, keys, decoded and raw values, batches."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import tensorcask as tc
from tensorcask.interop import images as images_module
from tensorcask.interop import import_source
from tensorcask.interop.images import ImageFolderSource, key_for, path_for
from tensorcask.interop.source import Batch
from tensorcask.keys import encode_key

RNG = np.random.default_rng(0)


def save(path: Path, array: np.ndarray, mode: str | None = None, **kwargs: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    image.save(path, **kwargs)
    return path


def gray(h: int = 6, w: int = 5) -> np.ndarray:
    return RNG.integers(0, 256, (h, w), dtype=np.uint8)


def rgb(h: int = 6, w: int = 5) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def pillow(path: Path, mode: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert(mode))


def collect(source: ImageFolderSource) -> dict[str, dict[str, Any]]:
    """Column -> key -> value over every batch, checking order and batch shapes."""
    out: dict[str, dict[str, Any]] = {}
    for batch in source.batches():
        assert len(batch.keys) == len(batch.values)
        column = out.setdefault(batch.column, {})
        for key, value in zip(batch.keys, batch.values, strict=True):
            assert key not in column
            column[str(key)] = value
    for column in out.values():
        assert list(column) == sorted(column)
    return out


@pytest.fixture
def classes(tmp_path: Path) -> Path:
    """cat: 2 gray PNGs (one nested), dog: 1 gray PNG; same size; extras to skip."""
    root = tmp_path / "data"
    save(root / "cat" / "b.png", gray())
    save(root / "cat" / "deep" / "er" / "a.PNG", gray())
    save(root / "dog" / "x.png", gray())
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "labels.csv").write_text("x")
    save(root / "dog" / ".hidden.png", gray())
    save(root / ".cache" / "c.png", gray())
    save(root / "cat" / ".thumbs" / "t.png", gray())
    return root


def test_class_folders_give_images_labels_and_classes(classes: Path) -> None:
    source = ImageFolderSource(classes)
    assert source.classes == ["cat", "dog"]
    assert source.skipped == 2  # notes.txt and labels.csv; hidden files are not counted
    specs = source.columns()
    assert [(c.name, c.kind, c.shape, c.dtype) for c in specs] == [
        ("images", "ndarray", (6, 5), np.dtype(np.uint8)),
        ("labels", "ndarray", (), np.dtype(np.int64)),
        ("classes", "str", None, None),
    ]
    data = collect(source)
    keys = ["cat%2Fb.png", "cat%2Fdeep%2Fer%2Fa.PNG", "dog%2Fx.png"]
    assert list(data["images"]) == keys
    assert [int(v) for v in data["labels"].values()] == [0, 0, 1]
    assert data["classes"] == {"0": "cat", "1": "dog"}
    for key, value in data["images"].items():
        np.testing.assert_array_equal(value, pillow(classes / path_for(key), "L"))
    assert source.total_samples() == 6 + 2
    assert source.total_bytes() == 3 * 30 + 3 * 8 + len("catdog")
    assert source.description == (
        f"image folder {classes}/ (2 classes, 3 images -> images, labels, classes)"
    )


def test_classes_batch_has_int_keys_and_labels_index_it(classes: Path) -> None:
    source = ImageFolderSource(classes)
    (batch,) = [b for b in source.batches() if b.column == "classes"]
    assert isinstance(batch.keys, np.ndarray) and batch.keys.dtype == np.int64
    assert batch.keys.tolist() == [0, 1] and list(batch.values) == ["cat", "dog"]
    assert batch.nbytes == len("catdog")
    labels = collect(source)["labels"]
    for key, label in labels.items():
        assert source.classes[int(label)] == path_for(key).split("/")[0]


def test_fixed_shape_batches_are_stacked_arrays(classes: Path) -> None:
    batches = list(ImageFolderSource(classes).batches())
    assert [b.column for b in batches] == ["classes", "images", "labels"]
    _, images, labels = batches
    assert isinstance(images.values, np.ndarray) and images.values.shape == (3, 6, 5)
    assert images.nbytes == images.values.nbytes
    assert isinstance(labels.values, np.ndarray) and labels.values.dtype == np.int64
    assert list(labels.keys) == list(images.keys)


def test_mixed_modes_become_rgb_and_sizes_variable(tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    save(root / "a" / "gray.png", gray(4, 7))
    save(root / "a" / "photo.jpg", rgb(8, 8), quality=90)
    palette = Image.fromarray(rgb(5, 6)).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    (root / "b").mkdir()
    palette.save(root / "b" / "pal.png")
    bw = Image.fromarray(gray(3, 3)).convert("1")
    bw.save(root / "b" / "bw.bmp")
    source = ImageFolderSource(root)
    spec = source.columns()[0]
    assert spec.shape == (None, None, 3)
    data = collect(source)["images"]
    for key, value in data.items():
        expected = pillow(root / path_for(key), "RGB")
        assert isinstance(value, np.ndarray) and value.dtype == np.uint8
        np.testing.assert_array_equal(value, expected)
    assert data["a%2Fgray.png"].shape == (4, 7, 3)
    batch = next(batches_of(source))
    assert isinstance(batch.values, list)  # variable shape: one array per sample


def test_alpha_anywhere_makes_rgba(tmp_path: Path) -> None:
    root = tmp_path / "alpha"
    save(root / "x" / "rgba.png", RNG.integers(0, 256, (4, 4, 4), dtype=np.uint8))
    save(root / "x" / "rgb.png", rgb(4, 4))
    save(root / "y" / "la.png", gray(4, 4), mode="LA")
    source = ImageFolderSource(root)
    assert source.columns()[0].shape == (4, 4, 4)
    for key, value in collect(source)["images"].items():
        np.testing.assert_array_equal(value, pillow(root / path_for(key), "RGBA"))


def test_gray_only_folder_stays_two_dimensional_with_variable_size(tmp_path: Path) -> None:
    root = tmp_path / "g"
    save(root / "k" / "one.png", gray(2, 3))
    save(root / "k" / "two.tif", gray(4, 1))
    save(root / "k" / "bw.png", gray(5, 5), mode="1")
    source = ImageFolderSource(root)
    assert source.columns()[0].shape == (None, None)
    for key, value in collect(source)["images"].items():
        np.testing.assert_array_equal(value, pillow(root / path_for(key), "L"))


def test_flat_folder_has_no_labels(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    for name in ("b.png", "a.png", "c.jpeg"):
        save(root / name, rgb())
    source = ImageFolderSource(root)
    assert source.classes == [] and not source.labelled
    assert [c.name for c in source.columns()] == ["images"]
    data = collect(source)
    assert list(data) == ["images"] and list(data["images"]) == ["a.png", "b.png", "c.jpeg"]
    assert source.total_samples() == 3
    assert "3 images" in source.description and "classes" not in source.description


def test_raw_mode_keeps_file_bytes(classes: Path) -> None:
    source = ImageFolderSource(classes, raw=True)
    assert [(c.name, c.kind) for c in source.columns()] == [
        ("images", "bytes"),
        ("labels", "ndarray"),
        ("classes", "str"),
    ]
    data = collect(source)
    for key, value in data["images"].items():
        assert value == (classes / path_for(key)).read_bytes()
    assert data["classes"] == {"0": "cat", "1": "dog"}
    sizes = sum(len(v) for v in data["images"].values())
    assert source.total_bytes() == sizes + 3 * 8 + len("catdog")


def test_raw_mode_needs_no_decoding(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "a").mkdir(parents=True)
    (root / "a" / "broken.png").write_bytes(b"not really a png")
    batches = list(batches_of(ImageFolderSource(root, raw=True)))
    assert batches[0].values == [b"not really a png"]


def test_empty_class_folder_keeps_its_label_index(tmp_path: Path) -> None:
    root = tmp_path / "e"
    save(root / "a" / "1.png", gray())
    (root / "b").mkdir()
    save(root / "c" / "1.png", gray())
    source = ImageFolderSource(root)
    assert source.classes == ["a", "b", "c"]
    data = collect(source)
    assert {k: int(v) for k, v in data["labels"].items()} == {
        "a%2F1.png": 0,
        "c%2F1.png": 2,
    }
    assert data["classes"] == {"0": "a", "1": "b", "2": "c"}
    assert "3 classes, 2 images" in source.description


def test_train_and_val_with_the_same_class_folders_label_alike(tmp_path: Path) -> None:
    save(tmp_path / "train" / "cat" / "1.png", gray())
    save(tmp_path / "train" / "dog" / "1.png", gray())
    save(tmp_path / "train" / "eel" / "1.png", gray())
    save(tmp_path / "val" / "cat" / "2.png", gray())
    (tmp_path / "val" / "dog").mkdir()  # no validation images of this class
    save(tmp_path / "val" / "eel" / "2.png", gray())
    train = collect(ImageFolderSource(tmp_path / "train"))
    val = collect(ImageFolderSource(tmp_path / "val"))
    assert train["classes"] == val["classes"] == {"0": "cat", "1": "dog", "2": "eel"}
    assert int(train["labels"]["eel%2F1.png"]) == int(val["labels"]["eel%2F2.png"]) == 2


def test_an_added_class_folder_changes_the_classes_column(tmp_path: Path) -> None:
    root = tmp_path / "grow"
    save(root / "ant" / "1.png", gray())
    save(root / "cow" / "1.png", gray())
    before = collect(ImageFolderSource(root))
    (root / "bee").mkdir()  # sorts between the two: "cow" is renumbered
    after = collect(ImageFolderSource(root))
    assert before["classes"] == {"0": "ant", "1": "cow"}
    assert after["classes"] == {"0": "ant", "1": "bee", "2": "cow"}
    assert int(before["labels"]["cow%2F1.png"]) == 1
    assert int(after["labels"]["cow%2F1.png"]) == 2
    assert before["images"].keys() == after["images"].keys()
    for data in (before, after):  # either way, the label names the right folder
        assert data["classes"][str(int(data["labels"]["cow%2F1.png"]))] == "cow"


@pytest.mark.skipif(os.name != "posix", reason="needs byte file names")
def test_undecodable_class_folder_names_are_escaped(repo: tc.Repository, tmp_path: Path) -> None:
    root = tmp_path / "bytes"
    try:
        os.makedirs(os.path.join(os.fsencode(root), b"caf\xe9"))
    except OSError:
        pytest.skip("the filesystem refuses names that are not UTF-8")
    folder = root / os.fsdecode(b"caf\xe9")
    save(folder / "1.png", gray())
    save(root / "tea" / "1.png", gray())
    source = ImageFolderSource(root)
    assert source.classes == ["caf\\xe9", "tea"]
    result = import_source(repo, root)
    with repo.checkout(commit=result.commit) as co:
        assert [co["classes"][i] for i in range(2)] == ["caf\\xe9", "tea"]


def test_awkward_names_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "names"
    names = ["ünïcode 猫.png", "100%.png", "a%2Fb.png", "tab\there.png", "colon:x.png"]
    for name in names:
        save(root / "cls" / name, gray())
    source = ImageFolderSource(root)
    data = collect(source)["images"]
    assert len(data) == len(names)
    assert {path_for(k) for k in data} == {f"cls/{n}" for n in names}
    assert "cls%2Fa%252Fb.png" in data and "cls%2F100%25.png" in data
    assert "cls%2Ftab%09here.png" in data
    for key, value in data.items():
        encode_key(key)  # a valid key
        np.testing.assert_array_equal(value, pillow(root / path_for(key), "L"))


@pytest.mark.parametrize(
    "path",
    ["cat/001.png", "a/b/c d.jpg", "%", "%25/%2F", "x\x7fy\x85z", "猫/ü.png", "a:b", "\udcff.png"],
)
def test_key_for_is_valid_and_reversible(path: str) -> None:
    key = key_for(path)
    assert "/" not in key
    encode_key(key)
    assert path_for(key) == path


def test_key_for_rules() -> None:
    assert key_for("cat/001.png") == "cat%2F001.png"
    assert key_for(Path("cat") / "x.png") == "cat%2Fx.png"
    assert key_for("100%") == "100%25"
    with pytest.raises(ValueError, match="255"):
        key_for("d/" + "x" * 260 + ".png")
    with pytest.raises(ValueError, match="relative"):
        key_for("/abs.png")
    for bad in ("a/b", "%2", "%41", "%zz"):
        with pytest.raises(ValueError, match="not the key"):
            path_for(bad)


def test_too_long_path_is_named(tmp_path: Path) -> None:
    root = tmp_path / "long"
    name = "n" * 200 + ".png"
    save(root / ("c" * 60) / name, gray())
    with pytest.raises(tc.SchemaError, match=name[:50]):
        ImageFolderSource(root)


def test_corrupt_image_is_named(tmp_path: Path) -> None:
    root = tmp_path / "bad"
    save(root / "a" / "good.png", gray())
    (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    source = ImageFolderSource(root)
    with pytest.raises(tc.CaskError, match=r"broken\.png"):
        source.columns()


def test_truncated_image_is_named_when_decoded(tmp_path: Path) -> None:
    root = tmp_path / "trunc"
    path = save(root / "a" / "cut.png", rgb(64, 64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    source = ImageFolderSource(root)
    source.columns()  # the header is intact
    with pytest.raises(tc.CaskError, match=r"cut\.png"):
        list(source.batches())


def test_high_bit_depth_is_refused_with_remedy(tmp_path: Path) -> None:
    root = tmp_path / "deep"
    save(root / "a" / "16.png", RNG.integers(0, 65535, (4, 4), dtype=np.uint16))
    with pytest.raises(tc.CaskError, match="raw=True"):
        ImageFolderSource(root).columns()


def test_empty_and_missing_folders(tmp_path: Path) -> None:
    with pytest.raises(tc.CaskError, match="no images") as info:
        ImageFolderSource(tmp_path)
    assert str(tmp_path) in str(info.value)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "readme.md").write_text("x")
    with pytest.raises(tc.CaskError, match="no images"):
        ImageFolderSource(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ImageFolderSource(tmp_path / "nowhere")
    with pytest.raises(NotADirectoryError):
        ImageFolderSource(tmp_path / "a" / "readme.md")


def test_images_beside_class_folders_are_refused(tmp_path: Path) -> None:
    save(tmp_path / "a" / "1.png", gray())
    save(tmp_path / "stray.png", gray())
    with pytest.raises(tc.CaskError, match=r"stray\.png"):
        ImageFolderSource(tmp_path)


def test_missing_pillow_names_the_extra(classes: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "PIL", None)
    source = ImageFolderSource(classes)
    with pytest.raises(tc.CaskError, match=r"tensorcask\[images\]"):
        source.columns()
    assert ImageFolderSource(classes, raw=True).columns()[0].kind == "bytes"


def batches_of(source: ImageFolderSource) -> Iterator[Batch]:
    return (b for b in source.batches() if b.column == "images")


def test_batches_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "many"
    for i in range(23):
        save(root / "c" / f"{i:03}.png", gray(4, 4))
    monkeypatch.setattr(images_module, "BATCH_BYTES", 16 * 5)  # 5 images of 16 bytes
    sizes = [len(b.keys) for b in batches_of(ImageFolderSource(root))]
    assert sizes == [5, 5, 5, 5, 3]
    monkeypatch.setattr(images_module, "BATCH_BYTES", 1 << 30)
    monkeypatch.setattr(images_module, "MAX_BATCH_SAMPLES", 10)
    sizes = [len(b.keys) for b in batches_of(ImageFolderSource(root))]
    assert sizes == [10, 10, 3]
    monkeypatch.setattr(images_module, "BATCH_BYTES", 1)  # one oversized image per batch
    assert {len(b.keys) for b in batches_of(ImageFolderSource(root, raw=True))} == {1}


def test_order_is_deterministic(classes: Path) -> None:
    first = [(b.column, list(b.keys)) for b in ImageFolderSource(classes).batches()]
    second = [(b.column, list(b.keys)) for b in ImageFolderSource(classes).batches()]
    assert first == second


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")
def test_symlink_loop_inside_a_class_ends(tmp_path: Path) -> None:
    save(tmp_path / "a" / "1.png", gray())
    os.symlink(tmp_path / "a", tmp_path / "a" / "loop")
    source = ImageFolderSource(tmp_path)
    assert list(collect(source)["images"]) == ["a%2F1.png"]


def test_import_source_end_to_end(repo: tc.Repository, classes: Path) -> None:
    result = import_source(repo, classes)
    assert result.committed and result.columns == {"images": 3, "labels": 3, "classes": 2}
    with repo.checkout(commit=result.commit) as co:
        keys = list(co["images"].keys())
        assert keys == ["cat%2Fb.png", "cat%2Fdeep%2Fer%2Fa.PNG", "dog%2Fx.png"]
        assert co["images"].shape == (6, 5)
        stacked = co["images"].get_many(keys)
        for key, value in zip(keys, stacked, strict=True):
            np.testing.assert_array_equal(value, pillow(classes / path_for(str(key)), "L"))
        assert [int(co["labels"][k]) for k in keys] == [0, 0, 1]
        assert co["classes"].kind == "str"
        assert sorted(co["classes"].keys()) == [0, 1]
        for key in keys:
            name = co["classes"][int(co["labels"][key])]
            assert name == path_for(str(key)).split("/")[0]
    assert import_source(repo, classes).committed is False  # the same data adds nothing


def test_import_source_raw_variable_folder(repo: tc.Repository, tmp_path: Path) -> None:
    root = tmp_path / "v"
    save(root / "a" / "1%.png", rgb(3, 4))
    save(root / "b" / "x" / "2.jpg", rgb(5, 2))
    result = import_source(repo, root, raw=True)
    with repo.checkout(commit=result.commit) as co:
        assert co["images"].kind == "bytes"
        for key in co["images"]:
            assert co["images"][key] == (root / path_for(str(key))).read_bytes()


def test_import_source_of_a_corrupt_folder_commits_nothing(
    repo: tc.Repository, tmp_path: Path
) -> None:
    root = tmp_path / "c"
    save(root / "a" / "good.png", rgb(8, 8))
    path = save(root / "a" / "cut.png", rgb(64, 64))
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(tc.CaskError, match=r"cut\.png"):
        import_source(repo, root)
    with repo.checkout(write=True) as co:
        assert co.commit_id is None and not co.diff()
