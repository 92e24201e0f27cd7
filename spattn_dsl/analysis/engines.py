"""Two exact ways to compose layer relations; the driver (``propagate``) works with either.

A *state* is a composed dependency ``D`` (docs/analysis.md); a layer's relation ``R = M | id``
is a state too. Every engine offers the same small interface:

``identity()``, ``compose(outer, inner)`` (= outer o inner: first ``inner``, then ``outer``),
``same(a, b)``, ``has(state, q, k)``, ``rows(state)`` -> ``RowFigures`` (per query: size,
lowest and highest key of the receptive field, whether it covers every admissible key) and
``missing(state)`` -> an admissible pair not in the state, or None.

- ``SpanEngine``: every receptive field is ``[0, pre) | [lo, hi]`` with ``lo <= q <= hi``.
  If each layer's relation has that form, so does every composition (a union of intervals
  that each contain their own index, over a contiguous range of indices, is an interval),
  and composing is a range minimum / maximum: O(n) per layer at any length.
- ``GridEngine``: boolean matrices on a grid of blocks of ``b`` tokens (``b = 1``: tokens, the
  brute-force oracle). A block pattern's relation is the block relation lifted to tokens, plus
  the identity; so ``D`` is ``lift(E) | id`` and the engine keeps ``E`` (no identity).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .ranges import range_max, range_min
from .rows import NotRepresentable, Rows, normalize, union


@dataclass(frozen=True)
class RowFigures:
    size: np.ndarray  # |RF(q)|
    low: np.ndarray  # min RF(q)
    high: np.ndarray  # max RF(q)
    full: np.ndarray  # RF(q) holds every admissible key


# ---------------------------------------------------------------- intervals
@dataclass(frozen=True)
class Span:
    pre: np.ndarray
    lo: np.ndarray
    hi: np.ndarray


class SpanEngine:
    def __init__(self, n: int, causal: bool):
        self.n, self.causal = n, causal
        self.q = np.arange(n, dtype=np.int64)

    def identity(self) -> Span:
        return Span(np.zeros(self.n, dtype=np.int64), self.q.copy(), self.q.copy())

    def relation(self, mask_rows: Rows) -> Span:
        """``R = M | id`` from the mask's rows (random extras must already be dropped)."""
        q = self.q
        rows = normalize(union(mask_rows, Rows(np.zeros_like(q), q, q), self.n))
        empty = rows.lo > rows.hi
        if (~empty & ((rows.lo > q) | (rows.hi < q))).any():
            raise NotRepresentable("a row's interval does not hold its own query")
        lo = np.where(empty, 0, rows.lo)
        hi = np.where(empty, rows.pre - 1, rows.hi)
        return self._canonical(rows.pre.copy(), lo, hi)

    def _canonical(self, pre, lo, hi) -> Span:
        """Merge a prefix that reaches the interval into it, so equal sets compare equal."""
        merged = (lo <= pre) & (pre > 0)
        if not merged.any():
            return Span(pre, lo, hi)
        return Span(np.where(merged, 0, pre), np.where(merged, 0, lo),
                    np.where(merged, np.maximum(hi, pre - 1), hi))

    def compose(self, outer: Span, inner: Span) -> Span:
        a, b, c = outer.lo, outer.hi, outer.pre
        lo = range_min(inner.lo, a, b)
        hi = range_max(inner.hi, a, b)
        pre = range_max(inner.pre, a, b) if inner.pre.any() else inner.pre
        if c.any():
            reach_of_prefix = np.maximum.accumulate(np.maximum(inner.hi + 1, inner.pre))
            pre = np.maximum(pre, np.where(c > 0, reach_of_prefix[np.maximum(c - 1, 0)], 0))
        return self._canonical(pre, lo, hi)

    def same(self, x: Span, y: Span) -> bool:
        return all(np.array_equal(u, v) for u, v in ((x.pre, y.pre), (x.lo, y.lo), (x.hi, y.hi)))

    def has(self, s: Span, q: int, k: int) -> bool:
        return bool(k < s.pre[q] or s.lo[q] <= k <= s.hi[q])

    def rows(self, s: Span) -> RowFigures:
        size = s.hi - s.lo + 1 + s.pre
        low = np.where(s.pre > 0, 0, s.lo)
        full = (s.lo == 0) if self.causal else (s.lo == 0) & (s.hi == self.n - 1)
        return RowFigures(size, low, s.hi.copy(), full)

    def missing(self, s: Span):
        figures = self.rows(s)
        short = np.flatnonzero(~figures.full)
        if not len(short):
            return None
        q = int(short[0])
        return (q, int(s.pre[q])) if s.lo[q] > 0 else (q, int(s.hi[q]) + 1)


# ---------------------------------------------------------------- boolean grids
class GridEngine:
    """Relations on blocks of ``b`` tokens; a state ``E`` means ``lift(E) | id``."""

    def __init__(self, n: int, b: int, causal: bool):
        self.n, self.b, self.causal = n, b, causal
        self.blocks = -(-n // b)
        starts = np.arange(self.blocks, dtype=np.int64) * b
        self.sizes = np.minimum(starts + b, n) - starts
        self.q = np.arange(n, dtype=np.int64)

    def identity(self) -> torch.Tensor:
        return torch.zeros(self.blocks, self.blocks, dtype=torch.bool)

    def relation(self, block_mask: torch.Tensor) -> torch.Tensor:
        return block_mask.clone()

    def compose(self, outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
        through = (outer.float() @ inner.float()) > 0
        return through | outer | inner

    def same(self, x, y) -> bool:
        return torch.equal(x, y)

    def has(self, e, q: int, k: int) -> bool:
        return q == k or bool(e[q // self.b, k // self.b])

    def rows(self, e: torch.Tensor) -> RowFigures:
        e_np = e.numpy()
        block = self.q // self.b
        own = e_np[np.arange(self.blocks), np.arange(self.blocks)]
        size = (e_np @ self.sizes)[block] + ~own[block]
        any_block = e_np.any(axis=1)
        first = np.where(any_block, e_np.argmax(axis=1), self.blocks)
        last = np.where(any_block, self.blocks - 1 - e_np[:, ::-1].argmax(axis=1), -1)
        low = np.minimum(first[block] * self.b, self.q)
        high = np.maximum(np.minimum(last[block] * self.b + self.b, self.n) - 1, self.q)
        ids = np.arange(self.blocks)
        others = ids[None, :] < ids[:, None] if self.causal else ids[None, :] != ids[:, None]
        others_in = ~(others & ~e_np).any(axis=1)
        # without its own block in E, q's receptive field meets that block only at q
        alone = self.q == block * self.b if self.causal else self.sizes[block] == 1
        full = others_in[block] & (own[block] | alone)
        return RowFigures(size, low, high, full)

    def missing(self, e):
        figures = self.rows(e)
        short = np.flatnonzero(~figures.full)
        if not len(short):
            return None
        q = int(short[0])
        keys = np.arange(q + 1 if self.causal else self.n)
        inside = e[q // self.b].numpy()[keys // self.b] | (keys == q)
        return q, int(keys[np.argmin(inside)])


# ---------------------------------------------------------------- residue classes
class ResidueEngine:
    """Patterns whose every allowed offset q - k is a multiple of ``s`` (dilations, strides,
    their unions with each other and with ``causal``): tokens split into the s classes
    ``r, r + s, r + 2s, ...``, and inside a class the pattern is an interval pattern on the
    class index. Classes of one length are the same graph, so one ``SpanEngine`` per distinct
    class length (at most two) does all of them, exact at any length. A relation is given as
    the interval ``[low, high]`` of class offsets ``(q - k) / s`` it allows (holding 0)."""

    def __init__(self, n: int, s: int, causal: bool):
        self.n, self.s, self.causal = n, s, causal
        self.sizes = np.array([-(-(n - r) // s) for r in range(s)], dtype=np.int64)
        self.lengths = sorted({int(m) for m in self.sizes if m > 0})
        self.inner = {m: SpanEngine(m, causal=False) for m in self.lengths}

    def identity(self):
        return {m: e.identity() for m, e in self.inner.items()}

    def relation(self, span):
        low, high = span
        out = {}
        for m, engine in self.inner.items():
            i = np.arange(m, dtype=np.int64)
            rows = Rows(np.zeros_like(i), np.maximum(i - high, 0), np.minimum(i - low, m - 1))
            out[m] = engine.relation(rows)
        return out

    def compose(self, outer, inner):
        return {m: e.compose(outer[m], inner[m]) for m, e in self.inner.items()}

    def same(self, x, y) -> bool:
        return all(e.same(x[m], y[m]) for m, e in self.inner.items())

    def has(self, state, q: int, k: int) -> bool:
        m = int(self.sizes[q % self.s])
        return (q - k) % self.s == 0 and self.inner[m].has(state[m], q // self.s, k // self.s)

    def _spans(self, state, tokens):
        """Each token's class-index interval [lo, hi] (no prefix in these relations)."""
        lo = np.empty(len(tokens), dtype=np.int64)
        hi = np.empty(len(tokens), dtype=np.int64)
        length = self.sizes[tokens % self.s]
        for m in self.lengths:
            pick = length == m
            i = tokens[pick] // self.s
            lo[pick], hi[pick] = state[m].lo[i], state[m].hi[i]
        return lo, hi

    def rows(self, state) -> RowFigures:
        q = np.arange(self.n, dtype=np.int64)
        lo, hi = self._spans(state, q)
        r = q % self.s
        size = hi - lo + 1
        full = size == (q + 1 if self.causal else self.n)
        return RowFigures(size, r + self.s * lo, r + self.s * hi, full)

    def row_keys(self, state, q: int, keys):
        """bool per key: whether it reaches row q."""
        lo, hi = self._spans(state, np.array([q]))
        i = keys // self.s
        return ((q - keys) % self.s == 0) & (i >= lo[0]) & (i <= hi[0])

    def missing(self, state):
        return first_missing(self, state)


def first_missing(engine, state):
    """(q, k): the first row that is not full and its first admissible key that does not
    reach it (``engine.row_keys``), or None when every row is full."""
    short = np.flatnonzero(~engine.rows(state).full)
    if not len(short):
        return None
    q = int(short[0])
    keys = np.arange(q + 1 if engine.causal else engine.n)
    return q, int(keys[np.argmin(engine.row_keys(state, q, keys))])
