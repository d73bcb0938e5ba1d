"""Shared fixtures for the public-API tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import tensorcask as tc


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
