"""Build a repository of MNIST-shaped data, commit, branch off history, and read it back.

Run: ``python examples/quickstart.py [PATH] [--n 10000]``

It creates the repository at ``PATH`` (a new, empty directory; default: a
fresh temporary one) and prints where it is, the commit ids it made, and
shows that a read checkout pinned to a commit returns the same bytes after
later commits change the branch.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

import tensorcask as tc


def make_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded MNIST-shaped images (uint8 28x28) and labels (int64)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.int64)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    return images, labels


def main(argv: list[str] | None = None) -> None:
    """Run the walkthrough."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "path", nargs="?", type=Path, help="repository directory to create (default: a temp dir)"
    )
    parser.add_argument("--path", dest="path_option", type=Path, help="the same as PATH")
    parser.add_argument("--n", type=int, default=10_000, help="number of samples")
    args = parser.parse_args(argv)
    path = args.path or args.path_option or Path(tempfile.mkdtemp()) / "mnist-repo"

    images, labels = make_data(args.n)
    repo = tc.init(path, user_name="Ada", user_email="ada@example.org")
    print(f"repository: {path.absolute()}")
    with repo.checkout(write=True) as co:
        img_col = co.add_ndarray_column("images", shape=(28, 28), dtype="uint8")
        lbl_col = co.add_ndarray_column("labels", shape=(), dtype="int64")
        captions = co.add_str_column("captions")
        keys = np.arange(args.n)
        img_col.update(keys, images)  # the fast path: keys + a stacked batch
        lbl_col.update(keys, labels)
        with captions:  # buffered single-sample writes
            for k in range(min(args.n, 100)):
                captions[k] = f"digit {labels[k]}"
        first = co.commit(f"add {args.n} samples")
        print(f"commit {first}: {args.n} images and labels")

        # relabel one sample and drop another: a small change, a cheap commit
        lbl_col[0] = np.int64((labels[0] + 1) % 10)
        del img_col[1], lbl_col[1]
        second = co.commit("fix label 0, drop sample 1")
        print(f"commit {second}: 1 label changed, 1 sample removed")

    pinned = repo.checkout(commit=first[:8])  # any unique prefix of 4+ hex digits
    head = repo.checkout(branch="main")
    assert pinned["labels"][0] == labels[0] and head["labels"][0] != labels[0]
    assert np.array_equal(pinned["images"].get_many([1, 2]), images[1:3])
    assert 1 not in head["images"] and len(head["images"]) == args.n - 1
    print(f"pinned checkout {pinned.commit_id[:12]} still reads the original bytes")
    pinned.close()
    head.close()

    for info in repo.log():
        print(f"{info.id[:12]}  {info.time:%Y-%m-%d %H:%M:%S}  {info.message}")
    print(repo.summary())
    print(repo.verify(full=True))
    repo.close()


if __name__ == "__main__":
    main()
