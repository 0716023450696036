"""The digits data (scikit-learn's 8x8 images) without torch: for demos, tests and clients.

`load_split()` is the fixed split the digits family was trained and measured on; `heldout_batch(n)`
gives the first n held-out images with their labels, in the worker's input format.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

DIGITS_VARIANTS = ("digits-linear", "digits-mlp", "digits-cnn")


@lru_cache(maxsize=1)
def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, x_test, y_train, y_test): 75/25 stratified split (random_state=0), x float32
    (n, 64) in [0, 1] (pixel values / 16), y int64."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)
    return xtr, xte, ytr, yte


def heldout_batch(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `n` (<= 450) held-out images (float32 (n, 64)) and their labels."""
    _, xte, _, yte = load_split()
    if not 1 <= n <= len(xte):
        raise ValueError(f"n must be in 1..{len(xte)}, got {n}")
    return xte[:n].copy(), yte[:n].copy()
