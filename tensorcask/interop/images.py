"""Image folders as a :class:`~tensorcask.interop.source.Source`: images, labels, classes.

Layout
------
One subfolder per class, images anywhere below it::

    root/cat/001.png          -> labels 0 ("cat")
    root/cat/night/002.jpg    -> labels 0 (nested folders belong to their class)
    root/dog/x.jpg            -> labels 1 ("dog")

Columns
-------
* ``images``: one sample per image file (see Keys and Values).
* ``labels``: int64, the same keys as ``images``; the image's class index.
* ``classes``: str, keyed by the class index (int keys ``0..C-1``); the class
  folder's name. ``co["classes"][co["labels"][k]]`` names the class of
  sample ``k``, so labels stay interpretable after an import or export.

Class indexes follow the sorted class folder names (sorted by code point).
Every non-hidden subfolder of the root is a class, even one without images
(empty, or holding only skipped files): the index of a class then depends
only on the folder names, so ``train/`` and ``val/`` folders with the same
class folders give the same labels, even if one of them has no images of
some class. Adding or removing a class folder renumbers the classes after
it: re-importing such a folder changes ``labels`` and ``classes`` of samples
already committed, which the importer refuses unless told to overwrite. A
class folder name with bytes that are not valid UTF-8 is stored with each
such byte written as ``\\xNN`` (a ``str`` column holds valid Unicode only).

A root with images directly in it and no subfolders gives only an
``images`` column (no ``labels``, no ``classes``). Image files are
recognised by their suffix (``.png .jpg .jpeg .bmp .gif .webp .tif
.tiff``, any case); other files are skipped and counted (``skipped``), and
hidden files and folders (a name starting with ``.``) are ignored.

Keys
----
A key is the file's path relative to the root, with ``/`` separators,
escaped so that it is a valid key (keys may not contain ``/`` or control
characters): ``%``, ``/``, the control characters (U+0000-U+001F,
U+007F-U+009F) are replaced by ``%`` and two uppercase hex digits per UTF-8
byte (``/`` -> ``%2F``, ``%`` -> ``%25``), and a byte of a file name that is
not valid UTF-8 (decoded by Python as a surrogate escape) by ``%`` and that
byte. Everything else is kept, so ``cat/001.png`` has the key
``cat%2F001.png``. :func:`key_for` and :func:`path_for` convert; a key must
be at most 255 UTF-8 bytes long.

Values
------
Decoded (the default): uint8 arrays as Pillow decodes them (the first frame
of an animation; no EXIF rotation applied), in one mode for the whole
folder: ``L`` (2-D arrays) if every image is grayscale (mode ``1`` or ``L``)
without transparency, else ``RGBA`` if any image has an alpha channel or
transparency, else ``RGB`` (3-D arrays, channels last); palette images
count as colour. If every image has
the same size the column has a fixed shape, otherwise its height and width
are variable. Images of more than 8 bits per channel (modes ``I``, ``I;16``,
``F``) are refused; import them with ``raw=True``. Raw (``raw=True``): a
bytes column with each file's bytes unchanged (nothing is decoded).
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, cast

import numpy as np

from ..errors import CaskError, SchemaError
from ..keys import encode_key
from .source import BATCH_BYTES, Batch, ColumnSpec, Source
from .util import require

__all__ = ["IMAGE_SUFFIXES", "ImageFolderSource", "key_for", "path_for"]

#: File suffixes read as images (compared in lower case).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

#: At most this many samples per batch, whatever their size.
MAX_BATCH_SAMPLES = 4096

_ESCAPED = re.compile("[%/\x00-\x1f\x7f-\x9f\udc80-\udcff]")
_GRAY = frozenset({"1", "L"})
_ALPHA = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
_CHANNELS = {"L": 0, "RGB": 3, "RGBA": 4}
_WORKERS = min(8, (os.cpu_count() or 1) + 2)  # Pillow decodes without the GIL


def _escape(match: re.Match[str]) -> str:
    return "".join(f"%{b:02X}" for b in match.group().encode("utf-8", "surrogateescape"))


def key_for(relative_path: str | os.PathLike[str]) -> str:
    """The key of a file from its path relative to the image folder.

    ``%``, ``/``, control characters and undecodable bytes become ``%XX``
    escapes (see the module docstring); everything else is kept.

    Parameters
    ----------
    relative_path : str or path-like
        A relative path with ``/`` separators, e.g. ``"cat/001.png"``.

    Returns
    -------
    str
        A valid tensorcask key, e.g. ``"cat%2F001.png"``.

    Raises
    ------
    SchemaError
        If the path is empty or absolute, or its key would be longer than
        255 UTF-8 bytes.
    """
    text = relative_path.as_posix() if isinstance(relative_path, PurePath) else relative_path
    text = os.fspath(text)
    if not text or text.startswith("/"):
        raise SchemaError(f"{text!r} is not a relative file path: cannot make a key of it")
    key = _ESCAPED.sub(_escape, text)
    try:
        encode_key(key)
    except ValueError as exc:
        raise SchemaError(
            f"image file {text!r} cannot be imported: its key {key!r} is invalid ({exc}); "
            "rename it or move it to a shorter path"
        ) from None
    return key


def path_for(key: str) -> str:
    """The relative file path a key of :func:`key_for` stands for (its inverse).

    Raises
    ------
    ValueError
        If ``key`` is not a key :func:`key_for` makes (e.g. a bare ``/``, or
        ``%`` not followed by the escape of an escaped character).
    """
    path = urllib.parse.unquote(key, encoding="utf-8", errors="surrogateescape")
    if _ESCAPED.sub(_escape, path) != key:
        raise ValueError(
            f"{key!r} is not the key of an image file path: keys escape '%' as '%25' "
            "and '/' as '%2F' and keep every other printable character"
        )
    return path


@dataclass(frozen=True, slots=True)
class _Entry:
    key: str
    path: str
    label: int
    size: int  # file bytes


@dataclass(frozen=True, slots=True)
class _Header:
    size: tuple[int, int]  # (width, height), as Pillow gives it
    gray: bool
    alpha: bool


def _pillow() -> Any:
    """``PIL.Image``, or a :class:`MissingDependencyError` naming the extra to install."""
    require("PIL", "decoding images (raw=True / --raw imports the encoded files without it)")
    from PIL import Image

    return Image


class ImageFolderSource(Source):
    """An image folder (one subfolder per class) as ``images``, ``labels`` and ``classes``.

    Keys are the files' relative paths with ``%`` escaped as ``%25`` and
    ``/`` as ``%2F`` (control characters and undecodable bytes as ``%XX`` too):
    ``cat/001.png`` is the key ``cat%2F001.png``; :func:`key_for` and
    :func:`path_for` convert. ``labels`` (int64) holds each image's class
    index; ``classes`` (str, int keys ``0..C-1``) holds the class folder
    name of each index, so ``co["classes"][co["labels"][k]]`` names the
    class of sample ``k``. Classes are the sorted non-hidden subfolders,
    empty ones included (so folders with the same class folders label
    alike). A folder of images without subfolders gives only ``images``.
    See the module docstring for the decoded mode and shape rules.

    Parameters
    ----------
    path : str or path-like
        The image folder.
    raw : bool, default False
        Keep each file's encoded bytes in a bytes column instead of decoding.

    Attributes
    ----------
    path : str
        The folder, as given.
    raw : bool
        Whether values are the encoded files.
    classes : list of str
        Class names (folder names), in label order: the values of the
        ``classes`` column (empty without class folders).
    description : str
        The folder, its class and image counts, and the columns it brings.
    skipped : int
        Files that are not images by their suffix (hidden files not counted).

    Raises
    ------
    FileNotFoundError, NotADirectoryError
        If ``path`` does not exist or is not a folder.
    CaskError
        If the folder holds no images, or images both directly in it and in
        class folders.
    SchemaError
        If a file's key would be invalid (longer than 255 bytes).
    """

    def __init__(self, path: str | os.PathLike[str], *, raw: bool = False) -> None:
        self.path = os.fspath(path)
        self.raw = raw
        self.skipped = 0
        self.classes: list[str] = []
        self._entries = self._scan()
        self._headers: list[_Header] | None = None
        self._mode = ""
        self._shape: tuple[int | None, ...] = ()
        shown = self.path if self.path.endswith(("/", os.sep)) else self.path + "/"
        counted = f"{len(self.classes):,} classes, " if self.classes else ""
        brings = "images, labels, classes" if self.classes else "images"
        self.description = (
            f"image folder {shown} ({counted}{len(self._entries):,} images -> {brings})"
        )

    @property
    def labelled(self) -> bool:
        """Whether the folder has class folders (and so ``labels`` and ``classes`` columns)."""
        return bool(self.classes)

    def _scan(self) -> list[_Entry]:
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"image folder {self.path} does not exist: check the path")
        if not os.path.isdir(self.path):
            raise NotADirectoryError(
                f"{self.path} is not a folder: pass the folder that holds one subfolder "
                "of images per class"
            )
        top_images: list[tuple[str, int]] = []
        class_dirs: list[str] = []
        for entry in sorted(os.scandir(self.path), key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                class_dirs.append(entry.name)
            elif entry.is_file():
                if self._is_image(entry.name):
                    top_images.append((entry.name, entry.stat().st_size))
                else:
                    self.skipped += 1
        if class_dirs and top_images:
            names = ", ".join(name for name, _ in top_images[:3])
            raise CaskError(
                f"image folder {self.path} has class folders and also {len(top_images):,} "
                f"images directly in it ({names}{', ...' if len(top_images) > 3 else ''}): "
                "move those images into a class folder, or remove them"
            )
        found: list[tuple[str, int, int]] = [(name, -1, size) for name, size in top_images]
        self.classes = [_class_name(name) for name in class_dirs]
        for label, name in enumerate(class_dirs):
            for relative, size in self._walk(os.path.join(self.path, name), name, set()):
                found.append((relative, label, size))
        if not found:
            raise CaskError(
                f"image folder {self.path} holds no images (files ending in "
                f"{', '.join(sorted(IMAGE_SUFFIXES))}; {self.skipped:,} other files): "
                "check the path"
            )
        entries = [
            _Entry(key_for(rel), os.path.join(self.path, rel), label, size)
            for rel, label, size in found
        ]
        entries.sort(key=lambda e: e.key)
        return entries

    def _walk(
        self, folder: str, relative: str, seen: set[tuple[int, int]]
    ) -> list[tuple[str, int]]:
        """``(relative path, size)`` of the images under ``folder``, any depth."""
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in seen:  # a symbolic link loop
            return []
        seen.add((st.st_dev, st.st_ino))
        out: list[tuple[str, int]] = []
        for entry in os.scandir(folder):
            if entry.name.startswith("."):
                continue
            rel = f"{relative}/{entry.name}"
            if entry.is_dir():
                out.extend(self._walk(entry.path, rel, seen))
            elif entry.is_file():
                if self._is_image(entry.name):
                    out.append((rel, entry.stat().st_size))
                else:
                    self.skipped += 1
        return out

    @staticmethod
    def _is_image(name: str) -> bool:
        return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES

    # -- schema ---------------------------------------------------------------

    def _read_headers(self) -> None:
        """Mode and size of every image (Pillow reads headers only), then the schema."""
        if self._headers is not None:
            return
        image = _pillow()
        with ThreadPoolExecutor(_WORKERS) as pool:
            headers = list(pool.map(lambda e: _header(image, e.path), self._entries))
        if all(h.gray for h in headers):
            self._mode = "L"
        else:
            self._mode = "RGBA" if any(h.alpha for h in headers) else "RGB"
        channels = _CHANNELS[self._mode]
        tail: tuple[int, ...] = (channels,) if channels else ()
        sizes = {h.size for h in headers}
        if len(sizes) == 1:
            width, height = sizes.pop()
            self._shape = (height, width, *tail)
        else:
            self._shape = (None, None, *tail)
        self._headers = headers

    def columns(self) -> list[ColumnSpec]:
        """``images`` (uint8 ndarray, or bytes when raw) and, with classes, ``labels``
        (int64) and ``classes`` (str)."""
        if self.raw:
            images = ColumnSpec("images", "bytes")
        else:
            self._read_headers()
            images = ColumnSpec("images", "ndarray", self._shape, np.dtype(np.uint8))
        if not self.labelled:
            return [images]
        labels = ColumnSpec("labels", "ndarray", (), np.dtype(np.int64))
        return [images, labels, ColumnSpec("classes", "str")]

    def total_samples(self) -> int:
        """Images, times two with labels, plus one per class."""
        if not self.labelled:
            return len(self._entries)
        return 2 * len(self._entries) + len(self.classes)

    def total_bytes(self) -> int:
        """File bytes (raw) or decoded bytes, plus 8 per label and the class names' UTF-8."""
        if not self.labelled:
            return sum(self._sizes())
        return sum(self._sizes()) + 8 * len(self._entries) + self._classes_batch().nbytes

    def _classes_batch(self) -> Batch:
        names = list(self.classes)
        keys = np.arange(len(names), dtype=np.int64)
        return Batch("classes", keys, names, sum(len(n.encode("utf-8")) for n in names))

    def _sizes(self) -> list[int]:
        """Value bytes of each image, in key order."""
        if self.raw:
            return [e.size for e in self._entries]
        self._read_headers()
        assert self._headers is not None
        pixels = max(_CHANNELS[self._mode], 1)
        return [h.size[0] * h.size[1] * pixels for h in self._headers]

    # -- values ---------------------------------------------------------------

    def _chunks(self) -> Iterator[range]:
        """Consecutive entries of about BATCH_BYTES (at least one, at most 4096)."""
        sizes = self._sizes()
        start, total = 0, 0
        for i, size in enumerate(sizes):
            if i > start and (total + size > BATCH_BYTES or i - start >= MAX_BATCH_SAMPLES):
                yield range(start, i)
                start, total = i, 0
            total += size
        yield range(start, len(sizes))

    def batches(self) -> Iterator[Batch]:
        """``classes`` (one batch), then images and labels for each chunk of keys, in key order."""
        if not self.raw:
            self._read_headers()
        if self.labelled:
            yield self._classes_batch()
        with ThreadPoolExecutor(_WORKERS) as pool:
            for chunk in self._chunks():
                entries = self._entries[chunk.start : chunk.stop]
                keys = [e.key for e in entries]
                yield self._images_batch(pool, keys, entries)
                if self.labelled:
                    labels = np.fromiter((e.label for e in entries), np.int64, len(entries))
                    yield Batch("labels", keys, labels, labels.nbytes)

    def _images_batch(self, pool: Executor, keys: list[str], entries: list[_Entry]) -> Batch:
        if self.raw:
            data = list(pool.map(_read_bytes, entries))
            return Batch("images", keys, data, sum(map(len, data)))
        image, mode, shape = _pillow(), self._mode, self._shape
        if None in shape:
            arrays = list(pool.map(lambda e: _decode(image, e.path, mode, shape), entries))
            return Batch("images", keys, arrays, sum(a.nbytes for a in arrays))
        # Decode straight into the stacked batch: no second copy of it.
        out = np.empty((len(entries), *cast(tuple[int, ...], shape)), np.uint8)

        def fill(i: int) -> None:
            out[i] = _decode(image, entries[i].path, mode, shape)

        list(pool.map(fill, range(len(entries))))
        return Batch("images", keys, out, out.nbytes)

    def close(self) -> None:
        """Nothing to release: every file is opened and closed as it is read."""

    def __repr__(self) -> str:
        return f"ImageFolderSource({self.path!r}, raw={self.raw})"


def _class_name(folder: str) -> str:
    """The ``classes`` value of a class folder: its name, undecodable bytes as ``\\xNN``."""
    return folder.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _header(image: Any, path: str) -> _Header:
    try:
        with image.open(path) as im:
            mode, size, info = im.mode, im.size, im.info
    except Exception as exc:  # Pillow raises many kinds for a bad file
        raise _bad_image(path, exc) from exc
    if mode.startswith(("I", "F")):
        raise CaskError(
            f"image {path} has mode {mode!r} (more than 8 bits per channel), which would "
            "lose precision as uint8: import the folder with raw=True (--raw) to keep the "
            "encoded files, or convert the images to 8 bits"
        )
    transparent = "transparency" in info
    return _Header(size, mode in _GRAY and not transparent, mode in _ALPHA or transparent)


def _decode(image: Any, path: str, mode: str, shape: Sequence[int | None]) -> np.ndarray:
    try:
        with image.open(path) as im:
            array = np.asarray(im if im.mode == mode else im.convert(mode))
    except Exception as exc:
        raise _bad_image(path, exc) from exc
    fits = array.ndim == len(shape) and all(
        n is None or n == m for n, m in zip(shape, array.shape, strict=True)
    )
    if array.dtype != np.uint8 or not fits:
        raise CaskError(
            f"image {path} decoded to a {array.dtype} array of shape {array.shape}, not "
            f"{shape} as its header said: the file may be damaged; replace or remove it"
        )
    return array


def _read_bytes(entry: _Entry) -> bytes:
    with open(entry.path, "rb") as f:
        return f.read()


def _bad_image(path: str, exc: BaseException) -> CaskError:
    return CaskError(
        f"cannot decode image {path}: {exc}; the file is damaged or not an image: "
        "replace or remove it (or import the encoded files with raw=True / --raw)"
    )
