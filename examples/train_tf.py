"""Train a small Keras model from a pinned commit through tf.data.

Run: ``python examples/train_tf.py [PATH] [--n 6000] [--epochs 3]``

It builds the same MNIST-shaped repository as ``train_torch.py`` at ``PATH``
(a new, empty directory; default: a fresh temporary one): an image and a
label for each of ``n`` keys (ten noisy class prototypes, uint8 28x28
images, int64 labels). It commits it and trains from
``tensorcask.loaders.tensorflow.repo_dataset(..., commit=...)``: the dataset
has exact dtypes and static shapes, so Keras sees ``(None, 28, 28) uint8``
batches. It prints the commit id, how many samples it trains on (all ``n``),
where the repository is, and the loss per epoch.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out

import keras
import tensorflow as tf
from mnist_like import build_repository

from tensorcask.loaders.tensorflow import repo_dataset


def main(argv: list[str] | None = None) -> None:
    """Build, commit, train."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "path", nargs="?", type=Path, help="repository directory to create (default: a temp dir)"
    )
    parser.add_argument("--path", dest="path_option", type=Path, help="the same as PATH")
    parser.add_argument("--n", type=int, default=6000, help="number of samples")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)
    path = args.path or args.path_option or Path(tempfile.mkdtemp()) / "mnist-repo"

    commit = build_repository(path, args.n)
    dataset = repo_dataset(path, ["images", "labels"], commit=commit, shuffle=True, seed=17)
    samples = int(dataset.cardinality())
    print(f"training from commit {dataset.commit} ({samples} samples: {dataset.element_spec})")
    print(f"repository: {path.absolute()}")
    batches = (
        dataset.map(lambda image, label: (tf.cast(image, tf.float32) / 255.0, label))
        .batch(128)
        .prefetch(tf.data.AUTOTUNE)
    )

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((28, 28)),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = model.fit(batches, epochs=args.epochs, shuffle=False, verbose=0)  # seeded order
    for epoch, (loss, accuracy) in enumerate(
        zip(history.history["loss"], history.history["accuracy"], strict=True), start=1
    ):
        print(f"epoch {epoch}: loss {loss:.4f}  accuracy {accuracy:.3f}")


if __name__ == "__main__":
    main()
