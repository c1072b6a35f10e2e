"""Small datasets bundled with batchgrad, loadable offline with numpy only.

``load_digits`` returns the UCI optical handwritten digits (8x8 images, 1797
examples, 10 classes) as shipped by scikit-learn; see ``DIGITS_LICENSE.md``
next to this file for its source and licence.
"""

from __future__ import annotations

import functools
import gzip
import math
from importlib import resources

import numpy as np

__all__ = ["load_digits", "train_test_split_digits"]

_DIGITS_FILE = "digits.csv.gz"
N_DIGITS = 1797
N_FEATURES = 64


@functools.lru_cache(maxsize=1)
def _read_digits() -> tuple[np.ndarray, np.ndarray]:
    """Parse the bundled CSV once: 64 pixel columns (0..16) then the label."""
    source = resources.files(__name__).joinpath(_DIGITS_FILE)
    with source.open("rb") as raw, gzip.open(raw, "rt", encoding="ascii") as text:
        data = np.loadtxt(text, delimiter=",", dtype=np.int64, ndmin=2)
    if data.shape != (N_DIGITS, N_FEATURES + 1):
        raise RuntimeError(f"bundled {_DIGITS_FILE} has shape {data.shape}, expected {(N_DIGITS, N_FEATURES + 1)}")
    images = data[:, :N_FEATURES]
    labels = data[:, N_FEATURES]
    for arr in (images, labels):
        arr.flags.writeable = False
    return images, labels


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """Load the handwritten digits dataset.

    Returns:
        ``(X, y)`` where ``X`` is ``float32`` of shape ``(1797, 64)``: the 8x8
        pixel counts (0..16) flattened row-major and divided by 16, so in
        ``[0, 1]``; and ``y`` is ``int64`` of shape ``(1797,)`` with the digit
        class ``0..9``. Both are fresh, writable arrays.
    """
    images, labels = _read_digits()
    X = images.astype(np.float32) / np.float32(16.0)
    y = labels.astype(np.int64, copy=True)
    return X, y


def train_test_split_digits(
    test_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split the digits dataset into fixed, disjoint train and test parts.

    The split is the permutation ``np.random.default_rng(seed).permutation(1797)``:
    its first ``ceil(test_fraction * 1797)`` entries index the test set and the
    rest the training set, so the same ``seed`` always gives the same split.

    Args:
        test_fraction: fraction of examples in the test set, in ``(0, 1)``.
        seed: seed of the permutation.

    Returns:
        ``(X_train, X_test, y_train, y_test)`` (the order used by
        scikit-learn's ``train_test_split``).

    Raises:
        ValueError: if ``test_fraction`` is not in ``(0, 1)`` or leaves one
            side empty.
    """
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    X, y = load_digits()
    n = len(y)
    n_test = math.ceil(float(test_fraction) * n)
    if not 0 < n_test < n:
        raise ValueError(f"test_fraction={test_fraction!r} leaves an empty train or test set")
    perm = np.random.default_rng(seed).permutation(n)
    test_idx, train_idx = perm[:n_test], perm[n_test:]
    return X[train_idx], X[test_idx], y[train_idx], y[test_idx]
