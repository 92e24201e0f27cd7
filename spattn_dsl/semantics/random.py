"""The deterministic generator behind ``random(r, seed = s)``.

Each query row ``q`` (absolute position, so a decoding step sees the same keys as the full
sequence) draws ``min(r, n_k)`` distinct keys from ``[0, n_k)`` with Floyd's sampling
algorithm: for ``j`` in ``n_k - r .. n_k - 1`` take ``t = H(seed, q, j) mod (j + 1)``, or ``j``
itself when ``t`` was already taken. ``H`` is SplitMix64's finaliser over a linear mix of
``(seed, q, j)`` in wrapping 64-bit arithmetic: a pure function of integers, identical on every
machine and in every process. Changing it changes users' masks: note it in the changelog.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

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


# ------------------------------------------------------------ random(r, seed = s, fresh = 1)
# A fresh term draws among the keys of its row where a draw adds a pair (``Random.among``,
# bound by ``ir.evaluate.bind_fresh``): with the row's ``m`` candidates ``c_0 < ... < c_{m-1}``,
# Floyd's algorithm as above over ``[0, m)`` instead of ``[0, n_k)`` (the same ``H(seed, q, j)``
# for ``j`` in ``m - min(r, m) .. m - 1``), draw ``i`` standing for the key ``c_i``. With every
# key a candidate these are ``random``'s draws exactly; a row with fewer than ``r`` candidates
# takes them all.
CANDIDATE_CELLS = 1 << 24  # rows x keys of candidates evaluated at once


def floyd_indices(r: int, seed: int, rows, m) -> np.ndarray:
    """int64 ``[len(rows), r]``: Floyd's draws of ``min(r, m[i])`` distinct indices in
    ``[0, m[i])`` for each row ``rows[i]`` (``m`` per row), in draw order, -1 past them."""
    rows = np.asarray(rows, dtype=np.int64)
    m = np.broadcast_to(np.asarray(m, dtype=np.int64), rows.shape)
    count = np.minimum(r, m)
    keys = np.full((len(rows), r), -1, dtype=np.int64)
    for i in range(r):
        active = i < count
        j = np.maximum(m - count + i, 0)  # Floyd's j for this draw, per row
        with np.errstate(over="ignore"):
            t = (mix(seed, rows, j) % (j + 1).astype(np.uint64)).astype(np.int64)
        taken = (keys[:, :i] == t[:, None]).any(axis=1)
        keys[:, i] = np.where(active, np.where(taken, j, t), -1)
    return keys


def fresh_keys(r: int, seed: int, rows, candidates) -> np.ndarray:
    """int64 ``[len(rows), r]``: the draws of ``random(r, seed, fresh = 1)`` for rows ``rows``
    whose candidate keys are the bool ``candidates`` ``[len(rows), n_k]``, -1 past them."""
    candidates = torch.as_tensor(candidates, dtype=torch.bool)
    rank = torch.cumsum(candidates, dim=1, dtype=torch.int64)  # [rows, n_k]
    m = rank[:, -1].numpy() if candidates.shape[1] else np.zeros(len(candidates), np.int64)
    index = torch.from_numpy(floyd_indices(r, seed, rows, m))
    if candidates.shape[1] == 0:
        return index.numpy()
    keys = torch.searchsorted(rank.contiguous(), (index + 1).contiguous())  # the (i+1)-th hit
    return torch.where(index >= 0, keys, -1).numpy()


def node_keys(expr, rows, n_k: int) -> np.ndarray:
    """int64 ``[len(rows), r]``: a concrete ``Random`` node's draws for rows ``rows`` of a grid
    of ``n_k`` keys, in draw order, padded with -1 past them (``random_keys`` for
    ``fresh = 0``, padded; the draws among its candidates for ``fresh = 1``)."""
    rows = np.asarray(rows, dtype=np.int64)
    r = int(expr.r)
    if not expr.fresh:
        keys = random_keys(r, int(expr.seed), rows, n_k)
        if keys.shape[1] < r:
            keys = np.concatenate([keys, np.full((len(rows), r - keys.shape[1]), -1, np.int64)], 1)
        return keys
    if expr.among is None:
        raise ValueError("random(..., fresh = 1) has no candidates before instantiation "
                         "(Pattern.at / ir.evaluate.instantiate binds them)")
    inside = len(rows) == 0 or (rows.min() >= 0 and rows.max() < n_k)
    if inside and 4 * len(rows) >= n_k:  # most of the grid: draw every row once, keep it
        return _fresh_table(expr, n_k)[rows]
    return _fresh_rows(expr, rows, n_k)


@functools.lru_cache(maxsize=16)
def _fresh_table(expr, n_k: int) -> np.ndarray:
    """A fresh node's draws for every row of its grid (layouts and kernels ask for them
    several times: once per tile configuration); read-only."""
    table = _fresh_rows(expr, np.arange(n_k, dtype=np.int64), n_k)
    table.setflags(write=False)
    return table


def _fresh_rows(expr, rows, n_k: int) -> np.ndarray:
    from .reference import evaluate  # (reference imports this module)

    r = int(expr.r)
    out = np.full((len(rows), r), -1, dtype=np.int64)
    step = max(1, CANDIDATE_CELLS // max(n_k, 1))
    for start in range(0, len(rows), step):
        part = rows[start:start + step]
        cand = evaluate(expr.among, torch.from_numpy(part), n_k).expand(len(part), n_k)
        out[start:start + step] = fresh_keys(r, int(expr.seed), part, cand)
    return out


def node_mask(expr, rows, n_k: int) -> np.ndarray:
    """bool ``[len(rows), n_k]``: a concrete ``Random`` node's draws as a mask."""
    if not expr.fresh:
        return random_mask(int(expr.r), int(expr.seed), rows, n_k)
    keys = node_keys(expr, rows, n_k)
    mask = np.zeros((len(keys), n_k + 1), dtype=bool)  # column n_k takes the -1 padding
    mask[np.arange(len(keys))[:, None], np.where(keys < 0, n_k, keys)] = True
    return mask[:, :n_k]
