"""One layer's mask (heads unioned) in a form that never needs n x n memory at large n.

``LayerMask`` is either *rows* (a prefix, an interval and random keys per query, see
``rows.py``) or a *grid* (a boolean block mask, blocks of ``b`` tokens; ``b = 1`` is the
plain token mask, used only for small n). It answers the mask-level questions: is it causal,
how many pairs it allows, and which tiles it touches (as rectangles of allowed pairs).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..ir import nodes as N
from ..ir.evaluate import head_count, select_head
from ..semantics.reference import evaluate
from .rows import NotRepresentable, Rows, normalize, rows_of


@dataclass(frozen=True)
class LayerMask:
    n: int
    rows: Rows | None = None  # normalized: prefix and interval disjoint, extras outside both
    grid: torch.Tensor | None = None  # bool [blocks, blocks]
    b: int = 1

    @property
    def block_sizes(self) -> np.ndarray:
        starts = np.arange(-(-self.n // self.b), dtype=np.int64) * self.b
        return np.minimum(starts + self.b, self.n) - starts

    def is_causal(self) -> bool:
        if self.rows is not None:
            r = self.rows
            bad = (r.pre > np.arange(self.n) + 1) | ((r.lo <= r.hi) & (r.hi > np.arange(self.n)))
            if r.extra is not None:
                bad |= (r.extra > np.arange(self.n)[:, None]).any(axis=1)
            return not bad.any()
        above = torch.triu(self.grid, diagonal=1).any()
        diagonal_pairs = (torch.diagonal(self.grid).numpy() & (self.block_sizes > 1)).any()
        return not (bool(above) or bool(diagonal_pairs))

    def pairs_per_query(self) -> np.ndarray:
        """How many keys each query may attend (int64 [n])."""
        if self.rows is not None:
            r = self.rows
            count = r.pre + np.maximum(r.hi - r.lo + 1, 0)
            if r.extra is not None:
                count = count + (r.extra >= 0).sum(axis=1)
            return count
        per_block = self.grid.numpy() @ self.block_sizes
        return per_block[np.arange(self.n) // self.b]

    def rectangles(self):
        """Disjoint rectangles ``(q0, q1, k0, k1)`` (inclusive) covering exactly the mask."""
        if self.rows is not None:
            return _row_rectangles(self.rows)
        i, j = np.nonzero(self.grid.numpy())
        b, n = self.b, self.n
        return i * b, np.minimum(i * b + b, n) - 1, j * b, np.minimum(j * b + b, n) - 1


def _row_rectangles(r: Rows):
    q = np.arange(len(r.pre), dtype=np.int64)
    parts = []
    has_pre = r.pre > 0
    parts.append((q[has_pre], q[has_pre], np.zeros(has_pre.sum(), np.int64), r.pre[has_pre] - 1))
    has_interval = r.lo <= r.hi
    parts.append((q[has_interval], q[has_interval], r.lo[has_interval], r.hi[has_interval]))
    if r.extra is not None:
        rows_of_extra, column = np.nonzero(r.extra >= 0)
        keys = r.extra[rows_of_extra, column]
        parts.append((rows_of_extra, rows_of_extra, keys, keys))
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(4))


def layer_mask(expr, n: int, method: str) -> LayerMask:
    """The mask of a concrete expression. ``method``: 'rows', 'blocks' or 'tokens'."""
    if method == "rows":
        return LayerMask(n, rows=normalize(rows_of(expr, n)))
    if method == "blocks":
        b = block_size(expr)
        if b is None:
            raise NotRepresentable("not every head is one blocks(...) pattern of the same size")
        return LayerMask(n, grid=_block_grid(expr, n, b), b=b)
    return LayerMask(n, grid=_token_grid(expr, n))


def block_size(expr) -> int | None:
    """The block size when every head is ``blocks(b) { ... }`` with one b, else None."""
    sizes = set()
    for head in range(head_count(expr)):
        body = select_head(expr, head)
        if not isinstance(body, N.Blocks):
            return None
        sizes.add(body.size)
    return sizes.pop() if len(sizes) == 1 else None


def _block_grid(expr, n: int, b: int) -> torch.Tensor:
    blocks = -(-n // b)
    rows = torch.arange(blocks, dtype=torch.int64)
    grid = torch.zeros(blocks, blocks, dtype=torch.bool)
    for head in range(head_count(expr)):
        body = select_head(expr, head).body
        grid |= evaluate(body, rows, blocks).expand(blocks, blocks)
    return grid


def _token_grid(expr, n: int) -> torch.Tensor:
    from ..semantics.reference import mask
    grid = torch.zeros(n, n, dtype=torch.bool)
    for head in range(head_count(expr)):
        grid |= mask(expr, n, n, head)
    return grid


# ---------------------------------------------------------------- term-form masks


@dataclass
class TermMask:
    """A layer as terms (``terms.py``): on tokens (``b = 1``) or on the grid of b-token blocks."""

    n: int
    terms: list
    expr: object  # the concrete expression (heads included), for the reference occupancy
    b: int = 1

    @property
    def grid_n(self) -> int:
        return -(-self.n // self.b)

    @property
    def block_sizes(self) -> np.ndarray:
        starts = np.arange(self.grid_n, dtype=np.int64) * self.b
        return np.minimum(starts + self.b, self.n) - starts

    def is_causal(self) -> bool:
        from .terms import is_causal
        if not is_causal([self.terms], self.grid_n):
            return False
        if self.b == 1:
            return True
        ids = np.arange(self.grid_n)
        diagonal = np.zeros(self.grid_n, dtype=bool)
        for term in self.terms:
            diagonal |= term.contains(ids, ids)
        return not (diagonal & (self.block_sizes > 1)).any()

    def pairs_per_query(self) -> np.ndarray:
        from .terms import pairs_per_query
        per_row = pairs_per_query(self.terms, self.grid_n)
        if self.b == 1:
            return per_row
        ids = np.arange(self.grid_n)
        last = np.zeros(self.grid_n, dtype=bool)
        for term in self.terms:
            last |= term.contains(ids, np.full(self.grid_n, self.grid_n - 1))
        short = self.b - int(self.block_sizes[-1])
        tokens = per_row * self.b - short * last
        return tokens[np.arange(self.n) // self.b]

    def visited(self, bm: int, bn: int):
        """bool grid of tiles holding an allowed pair, or None when too many tiles."""
        from .tiles import MAX_TILE_CELLS
        rows, cols = -(-self.n // bm), -(-self.n // bn)
        if (rows + 1) * (cols + 1) > MAX_TILE_CELLS:
            return None
        return term_occupancy(self.terms, self.n, self.b, bm, bn)


def term_occupancy(terms, n: int, b: int, bm: int, bn: int) -> np.ndarray:
    """Which (bm x bn) tiles hold an allowed pair, by the same scans as the propagation: every
    grid position starts with the bits of the tile columns it covers, one layer's image (no
    identity) gathers them per query, and rows are OR-ed into their tile rows."""
    from . import bitsets as B
    grid = -(-n // b)
    rows, cols = -(-n // bm), -(-n // bn)
    words = -(-cols // 64)
    start = np.arange(grid, dtype=np.int64) * b
    end = np.minimum(start + b, n) - 1
    columns = np.zeros((grid, words), dtype=np.uint64)
    _set_ranges(columns, start // bn, end // bn)
    hit = np.zeros_like(columns)
    for term in terms:
        hit |= B.image(term, columns)
    per_row = np.zeros((rows, words), dtype=np.uint64)
    first, last = start // bm, end // bm
    for extra in range(int((last - first).max()) + 1 if grid else 0):
        ok = first + extra <= last
        np.bitwise_or.at(per_row, first[ok] + extra, hit[ok])
    bits = np.unpackbits(per_row.view(np.uint8), axis=1, bitorder="little")
    return bits[:, :cols].astype(bool)


def _set_ranges(state, first, last):
    """Set bits first[i] .. last[i] of row i."""
    rows = np.arange(len(state))
    for extra in range(int((last - first).max()) + 1 if len(state) else 0):
        ok = first + extra <= last
        j = first[ok] + extra
        np.bitwise_or.at(state, (rows[ok], j // 64), np.uint64(1) << (j % 64).astype(np.uint64))
