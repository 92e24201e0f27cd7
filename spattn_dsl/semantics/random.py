"""The deterministic generator behind ``random(r, seed = s)``.

Each query row ``q`` (absolute position, so a decoding step sees the same keys as the full
sequence) draws ``min(r, n_k)`` distinct keys from ``[0, n_k)`` with Floyd's sampling
algorithm: for ``j`` in ``n_k - r .. n_k - 1`` take ``t = H(seed, q, j) mod (j + 1)``, or ``j``
itself when ``t`` was already taken. ``H`` is SplitMix64's finaliser over a linear mix of
``(seed, q, j)`` in wrapping 64-bit arithmetic: a pure function of integers, identical on every
machine and in every process. Changing it changes users' masks: note it in the changelog.
"""
from __future__ import annotations

import numpy as np

_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def mix(seed: int, rows: np.ndarray, draw: int) -> np.ndarray:
    """H(seed, row, draw) as uint64, vectorised over rows."""
    with np.errstate(over="ignore"):
        x = (np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * np.uint64(0x9E3779B97F4A7C15)
             + rows.astype(np.uint64) * np.uint64(0xBF58476D1CE4E5B9)
             + np.uint64(draw) * np.uint64(0x94D049BB133111EB)
             + np.uint64(0x2545F4914F6CDD1D))
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def random_keys(r: int, seed: int, rows, n_k: int) -> np.ndarray:
    """int64 array ``[len(rows), min(r, n_k)]``: each row's drawn keys, in draw order."""
    rows = np.asarray(rows, dtype=np.int64)
    count = min(r, n_k)
    keys = np.empty((len(rows), count), dtype=np.int64)
    for i, j in enumerate(range(n_k - count, n_k)):
        t = (mix(seed, rows, j) % np.uint64(j + 1)).astype(np.int64)
        taken = (keys[:, :i] == t[:, None]).any(axis=1)
        keys[:, i] = np.where(taken, j, t)
    return keys


def random_mask(r: int, seed: int, rows, n_k: int) -> np.ndarray:
    """bool array ``[len(rows), n_k]``: the same draws as ``random_keys``, as a dense mask.

    Membership is read off the mask itself, so a large ``r`` costs O(r * rows), not O(r^2 * rows).
    """
    rows = np.asarray(rows, dtype=np.int64)
    count = min(r, n_k)
    mask = np.zeros((len(rows), n_k), dtype=bool)
    index = np.arange(len(rows))
    for j in range(n_k - count, n_k):
        t = (mix(seed, rows, j) % np.uint64(j + 1)).astype(np.int64)
        t = np.where(mask[index, t], j, t)
        mask[index, t] = True
    return mask
