"""The keys of ``random(r, seed)`` for many rows, identical to ``semantics.random.random_keys``
but in O(rows * r log r) instead of O(rows * r^2) (random(4096) at 4096 tokens: seconds, not
hours).

Floyd's algorithm draws ``t_i = H(seed, q, j_i) mod (j_i + 1)`` for ``j_i = n - r + i`` and
keeps ``t_i`` unless it is already taken, when it keeps ``j_i``. Call draw i *collided*
(``c_i``). ``t_i`` is taken exactly when an earlier draw had the same ``t`` (it was kept
then, or was itself already taken), or when ``t_i = j_m`` for an earlier m that collided:

    c_i = dup_i or (n - r <= t_i < j_i and c_{t_i - (n - r)})

``dup`` comes from one sort per row; the second clause refers only to earlier draws, so
iterating from ``c = dup`` reaches the exact answer in as many rounds as the longest chain.

``random(r, seed, fresh = 1)`` draws among each row's candidates, which come from the rest of
the pattern: ``drawn_keys`` takes them from the reference draws (``semantics.random.node_keys``,
O(rows * n) to find the candidates).
"""
from __future__ import annotations

import numpy as np

from ..semantics import random as reference_draws
from ..semantics.random import mix

BLOCK = 1 << 20  # draws per block of rows: bounds the working memory


_WHOLE_GRID: dict = {}  # (r, seed, n_k) -> every row's draws (an analysis asks several times)
_WHOLE_GRID_BYTES = 1 << 28


def random_keys(r: int, seed: int, rows, n_k: int) -> np.ndarray:
    """int64 ``[len(rows), min(r, n_k)]``: each row's drawn keys, in draw order."""
    rows = np.asarray(rows, dtype=np.int64)
    whole = len(rows) == n_k and np.array_equal(rows, np.arange(n_k))
    if whole and (r, seed, n_k) in _WHOLE_GRID:
        return _WHOLE_GRID[(r, seed, n_k)].copy()
    out = _draw(r, seed, rows, n_k)
    if whole and out.nbytes <= _WHOLE_GRID_BYTES:
        _WHOLE_GRID.clear()  # one grid at a time bounds the memory
        _WHOLE_GRID[(r, seed, n_k)] = out.copy()
    return out


def _draw(r: int, seed: int, rows: np.ndarray, n_k: int) -> np.ndarray:
    count = min(r, n_k)
    out = np.empty((len(rows), count), dtype=np.int64)
    if count == 0 or len(rows) == 0:
        return out
    step = max(1, BLOCK // count)
    for start in range(0, len(rows), step):
        out[start:start + step] = _block(seed, rows[start:start + step], n_k, count)
    return out


def _block(seed, rows, n_k, count):
    j = np.arange(n_k - count, n_k, dtype=np.int64)
    t = (mix(seed, rows[:, None], j[None, :].astype(np.uint64))
         % (j + 1).astype(np.uint64)[None, :]).astype(np.int64)
    order = np.argsort(t, axis=1, kind="stable")  # equal draws: the earliest first
    ordered = np.take_along_axis(t, order, axis=1)
    dup = np.zeros_like(t, dtype=bool)
    np.put_along_axis(dup, order[:, 1:], ordered[:, 1:] == ordered[:, :-1], axis=1)
    earlier = t - (n_k - count)  # the draw m with j_m = t_i
    chained = (earlier >= 0) & (t < j[None, :])
    at = np.where(chained, earlier, 0)
    collided = dup
    while True:
        grown = dup | (chained & np.take_along_axis(collided, at, axis=1))
        if np.array_equal(grown, collided):
            break
        collided = grown
    return np.where(collided, j[None, :], t)


def drawn_keys(random: tuple, rows, n_k: int) -> np.ndarray:
    """int64 ``[len(rows), m]``: the keys drawn for ``rows`` by a term's ``random``:
    ``(r, seed)`` (``random_keys``, ``m = min(r, n_k)``) or ``(r, seed, among)`` for
    ``fresh = 1`` (``m = r``, -1 past a row's candidates)."""
    if len(random) == 2:
        return random_keys(random[0], random[1], rows, n_k)
    r, seed, among = random
    return reference_draws.node_keys(_fresh_node(r, seed, among), rows, n_k)


def node_random(expr) -> tuple:
    """A concrete ``Random`` node as a term's ``random`` (see ``drawn_keys``)."""
    return (expr.r, expr.seed) + ((expr.among,) if expr.fresh else ())


def _fresh_node(r, seed, among):
    from ..ir import nodes as N

    return N.Random(r, seed, fresh=1, among=among)
