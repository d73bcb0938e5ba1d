"""Train a small PyTorch model from a pinned commit of a tensorcask repository.

Run: ``python examples/train_torch.py [PATH] [--n 6000] [--epochs 3] [--workers 2]``

It builds a repository of MNIST-shaped data at ``PATH`` (a new, empty
directory; default: a fresh temporary one) with an image and a label for each
of ``n`` keys (uint8 28x28 images of ten noisy class prototypes, int64
labels), commits it, then trains a small network for a few epochs with a
standard ``DataLoader`` over ``repo_dataset(..., commit=...)``. It prints the
commit id the run is pinned to, how many samples it trains on (all ``n``),
where the repository is, and the loss per epoch: the same commit id gives the
same bytes, in the same order for the same seed, on any machine.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from mnist_like import build_repository
from torch import nn
from torch.utils.data import DataLoader

from tensorcask.loaders.torch import repo_dataset


def main(argv: list[str] | None = None) -> None:
    """Build, commit, train."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "path", nargs="?", type=Path, help="repository directory to create (default: a temp dir)"
    )
    parser.add_argument("--path", dest="path_option", type=Path, help="the same as PATH")
    parser.add_argument("--n", type=int, default=6000, help="number of samples")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    args = parser.parse_args(argv)
    path = args.path or args.path_option or Path(tempfile.mkdtemp()) / "mnist-repo"

    commit = build_repository(path, args.n)
    dataset = repo_dataset(path, ["images", "labels"], commit=commit)
    print(f"training from commit {dataset.commit} ({len(dataset)} samples)")
    print(f"repository: {path.absolute()}")

    torch.manual_seed(0)
    loader = DataLoader(
        dataset,
        batch_size=128,
        shuffle=True,
        num_workers=args.workers,
        generator=torch.Generator().manual_seed(17),
    )
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(args.epochs):
        total, correct, seen = 0.0, 0, 0
        for images, labels in loader:
            logits = model(images.float() / 255.0)
            loss = loss_fn(logits, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(labels)
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
        print(f"epoch {epoch + 1}: loss {total / seen:.4f}  accuracy {correct / seen:.3f}")


if __name__ == "__main__":
    main()
