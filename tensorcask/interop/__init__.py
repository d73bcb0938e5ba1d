"""Import and export: numpy, HDF5, Zarr and image folders (SPEC section 8).

>>> from tensorcask.interop import export, import_source, verify_export
>>> res = import_source(repo, "data/train.npz", message="MNIST train")  # doctest: +SKIP
>>> res.commit, res.columns  # doctest: +SKIP
('3fa9c2...', {'images': 60000, 'labels': 60000})
>>> export(repo, "main", "out.zarr").path  # doctest: +SKIP
'out.zarr'
>>> verify_export("out.zarr").ok  # doctest: +SKIP
True

:func:`import_source` reads ``.npy``, ``.npz``, HDF5 files, Zarr stores (local
or fsspec URLs) and image folders into columns and commits once
(:mod:`~tensorcask.interop.importer`); :func:`export` writes a commit's
columns to ``.npz``, HDF5 or Zarr (:mod:`~tensorcask.interop.export`, which
documents the layout); :func:`verify_export` checks a Zarr export against the
checksum tree written beside it. Every format reads through the
:class:`~tensorcask.interop.source.Source` seam, in bounded batches.
"""

from .checksum_tree import TreeCheck
from .checksum_tree import verify_checksum_tree as verify_export
from .export import ExportResult, export
from .importer import ImportResult, import_source, open_source
from .source import Batch, ColumnSpec, Source
from .util import MissingDependencyError

__all__ = [
    "Batch",
    "ColumnSpec",
    "ExportResult",
    "ImportResult",
    "MissingDependencyError",
    "Source",
    "TreeCheck",
    "export",
    "import_source",
    "open_source",
    "verify_export",
]
