"""Readers for the benchmark data (paths are arguments; nothing is bundled)."""

import gzip
from pathlib import Path

import numpy as np

__all__ = ["load_adbench", "load_mnist", "mnist_one_anomalous_digit"]


def _read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[:4], "big")
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_mnist(folder):
    """The MNIST test set as (images uint8 (N, 28, 28), labels (N,))."""
    folder = Path(folder)
    images = _read_idx(folder / "t10k-images-idx3-ubyte.gz")
    labels = _read_idx(folder / "t10k-labels-idx1-ubyte.gz")
    return images, labels.astype(np.int64)


def mnist_one_anomalous_digit(folder, anomaly_digit, seed=0, train_fraction=0.8):
    """GANomaly protocol: one digit is the anomaly, the other nine are normal.

    A fixed split (``seed``) puts ``train_fraction`` of the normal images in
    training; the test set holds the remaining normals and every image of
    ``anomaly_digit``. Images are zero-padded to 32x32 and kept as uint8
    (N, 1, 32, 32). Test labels use 1 = anomaly.
    """
    images, labels = load_mnist(folder)
    images = np.pad(images, ((0, 0), (2, 2), (2, 2)))[:, None]
    normal = np.flatnonzero(labels != anomaly_digit)
    rng = np.random.default_rng(seed)
    normal = rng.permutation(normal)
    n_train = int(train_fraction * normal.size)
    train, test_normal = normal[:n_train], normal[n_train:]
    test = np.concatenate([test_normal, np.flatnonzero(labels == anomaly_digit)])
    y_test = (labels[test] == anomaly_digit).astype(np.int64)
    return images[train], images[test], y_test


def load_adbench(path):
    """An ADBench .npz as (X float64, y) with y 1 = anomaly, 0 = normal."""
    with np.load(path) as data:
        return np.asarray(data["X"], dtype=np.float64), np.asarray(data["y"]).astype(
            np.int64
        )
