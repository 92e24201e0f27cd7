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
