"""MNIST-shaped data for the examples: ten noisy class prototypes, committed to a repository."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import tensorcask as tc


def make_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images of ten noisy prototypes, and their labels."""
    rng = np.random.default_rng(seed)
    prototypes = rng.integers(0, 256, (10, 28, 28)).astype(np.float32)
    labels = rng.integers(0, 10, n).astype(np.int64)
    noise = rng.normal(0, 60, (n, 28, 28)).astype(np.float32)
    images = np.clip(prototypes[labels] + noise, 0, 255).astype(np.uint8)
    return images, labels


def build_repository(path: Path, n: int) -> str:
    """Create a repository at ``path`` and commit an image and a label for each of the keys
    ``0..n-1`` (equal key sets, so a loader over both columns yields all ``n``); return the
    commit id."""
    images, labels = make_data(n)
    repo = tc.init(path, user_name="Ada", user_email="ada@example.org")
    with repo.checkout(write=True) as co:
        co.add_ndarray_column("images", shape=(28, 28), dtype="uint8").update(np.arange(n), images)
        co.add_ndarray_column("labels", shape=(), dtype="int64").update(np.arange(n), labels)
        commit = co.commit(f"{n} MNIST-shaped samples")
    repo.close()
    return commit
