"""``lower``: a pattern at ``(n_q, n_k)`` and a tile size -> its ``BlockLayout``.

The layout is shaped like FlexAttention's BlockMask, one slice per distinct head pattern
("case"; head ``h`` uses case ``h % cases``):

- ``states`` int8 ``[cases, T_q, T_k]``: the exact EMPTY / PARTIAL / FULL class of each tile;
- per query tile, the key tiles to visit: ``full_counts`` / ``full_indices`` (no predicate
  needed) and ``partial_counts`` / ``partial_indices`` (predicate and bounds applied), as
  ``[cases, T_q]`` counts and ``[cases, T_q, width]`` ascending indices;
- the transpose, per key tile its query tiles (``full_q_*``, ``partial_q_*``), for dK/dV;
- ``row_order``: query tiles heaviest first, so the longest programs start first.

In the kernel lists, a FULL tile that runs past ``n_k`` (the ragged last key tile) is moved
to the PARTIAL list, so that FULL tiles need neither a predicate nor a bounds mask.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ir.evaluate import head_count, select_head
from .classify import EMPTY, FULL, PARTIAL, classify
from .pairs import allowed

TILES_PER_CHECK = 256  # unsure tiles resolved per batch against the exact predicate


@dataclass
class BlockLayout:
    n_q: int
    n_k: int
    block_m: int
    block_n: int
    states: torch.Tensor
    full_counts: torch.Tensor
    full_indices: torch.Tensor
    partial_counts: torch.Tensor
    partial_indices: torch.Tensor
    full_q_counts: torch.Tensor
    full_q_indices: torch.Tensor
    partial_q_counts: torch.Tensor
    partial_q_indices: torch.Tensor
    row_order: torch.Tensor

    @property
    def cases(self) -> int:
        return self.states.shape[0]

    @property
    def tiles(self) -> tuple[int, int]:
        return self.states.shape[1], self.states.shape[2]

    @property
    def full_is_range(self) -> bool:
        """Every query tile's FULL key tiles are consecutive (computed, not read, in the kernel)."""
        return _is_range(self.full_counts, self.full_indices)

    @property
    def partial_is_range(self) -> bool:
        return _is_range(self.partial_counts, self.partial_indices)

    @property
    def full_q_is_range(self) -> bool:
        """Every key tile's FULL query tiles are consecutive (the dK/dV kernel's lists)."""
        return _is_range(self.full_q_counts, self.full_q_indices)

    @property
    def partial_q_is_range(self) -> bool:
        return _is_range(self.partial_q_counts, self.partial_q_indices)

    @property
    def col_order(self) -> torch.Tensor:
        """int32 ``[T_k]``: key tiles heaviest first (the dK/dV kernel's launch order)."""
        work = (self.full_q_counts + self.partial_q_counts).sum(0)
        return torch.argsort(work, descending=True, stable=True).to(torch.int32)

    @property
    def visit_start(self) -> torch.Tensor:
        """int32 ``[cases, T_q]``: each query tile's first visited key tile (0 when none)."""
        big = torch.iinfo(torch.int32).max
        first_full = torch.where(self.full_counts > 0, self.full_indices[..., 0], big)
        first_partial = torch.where(self.partial_counts > 0, self.partial_indices[..., 0], big)
        start = torch.minimum(first_full, first_partial)
        return torch.where(start == big, 0, start).to(torch.int32)

    @property
    def visit_is_range(self) -> bool:
        """Every query tile visits consecutive key tiles, its FULL ones consecutive too: one
        loop over a range can visit them all (the PARTIAL ones at its ends)."""
        if not self.full_is_range:
            return False
        total = self.full_counts + self.partial_counts
        last = torch.maximum(
            torch.where(self.full_counts > 0, self.full_indices.gather(
                -1, (self.full_counts.long() - 1).clamp(min=0).unsqueeze(-1)).squeeze(-1), -1),
            torch.where(self.partial_counts > 0, self.partial_indices.gather(
                -1, (self.partial_counts.long() - 1).clamp(min=0).unsqueeze(-1)).squeeze(-1), -1))
        return bool(((total == 0) | (last - self.visit_start + 1 == total)).all())

    def density(self) -> float:
        """Visited tiles / all tiles (over every case)."""
        return float((self.states != EMPTY).float().mean()) if self.states.numel() else 0.0

    def to(self, device) -> "BlockLayout":
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__}
        return BlockLayout(**{name: v.to(device) if isinstance(v, torch.Tensor) else v
                              for name, v in fields.items()})

    def tensors(self) -> dict:
        return {name: getattr(self, name) for name in self.__dataclass_fields__
                if isinstance(getattr(self, name), torch.Tensor)}


def tile_bounds(n: int, block: int, offset: int = 0):
    """(lo, hi) int64 ``[T]``: the first and last absolute position of each tile."""
    lo = torch.arange(0, n, block, dtype=torch.int64)
    hi = torch.clamp(lo + block, max=n) - 1
    return lo + offset, hi + offset


def tile_states(expr, n_q: int, n_k: int, block_m: int, block_n: int) -> torch.Tensor:
    """int8 ``[T_q, T_k]``: exact tile classes of a concrete, head-selected expression."""
    q_lo, q_hi = tile_bounds(n_q, block_m, n_k - n_q)
    k_lo, k_hi = tile_bounds(n_k, block_n)
    state, unsure = classify(expr, q_lo[:, None], q_hi[:, None], k_lo[None, :], k_hi[None, :], n_k)
    state = state.contiguous()
    if unsure is not None and bool(unsure.any()):
        rows, cols = unsure.nonzero(as_tuple=True)
        state[rows, cols] = resolve(expr, q_lo[rows], q_hi[rows], k_lo[cols], k_hi[cols],
                                    block_m, block_n, n_k)
    return state


def resolve(expr, q_lo, q_hi, k_lo, k_hi, block_m, block_n, n_k,
            tiles_per_check: int = TILES_PER_CHECK) -> torch.Tensor:
    """Exact classes of the listed tiles, from the pair predicate (padding repeats the last
    valid row or column, which changes neither EMPTY nor FULL)."""
    out = []
    rows, cols = torch.arange(block_m), torch.arange(block_n)
    for start in range(0, len(q_lo), tiles_per_check):
        sl = slice(start, start + tiles_per_check)
        q = torch.minimum(q_lo[sl, None] + rows, q_hi[sl, None])[:, :, None]
        k = torch.minimum(k_lo[sl, None] + cols, k_hi[sl, None])[:, None, :]
        ok = allowed(expr, q, k, n_k).expand(len(q), block_m, block_n)
        hits = ok.flatten(1)
        state = torch.where(hits.all(1), FULL, torch.where(hits.any(1), PARTIAL, EMPTY))
        out.append(state.to(torch.int8))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int8)


def lower(concrete, n_q: int, n_k: int, block_m: int, block_n: int) -> BlockLayout:
    """The BlockLayout of a concrete expression (``Pattern.at(n_k)``), every head case."""
    if not 0 <= n_q <= n_k:
        raise ValueError(f"need 0 <= n_q <= n_k, got n_q = {n_q}, n_k = {n_k}")
    cases = head_count(concrete)
    states = torch.stack([tile_states(select_head(concrete, c), n_q, n_k, block_m, block_n)
                          for c in range(cases)])
    return from_states(states, n_q, n_k, block_m, block_n)


def from_states(states: torch.Tensor, n_q: int, n_k: int, block_m: int, block_n: int) -> BlockLayout:
    """Index lists of a ``[cases, T_q, T_k]`` state tensor."""
    full = states == FULL
    partial = states == PARTIAL
    if n_k % block_n and states.shape[2]:
        partial[:, :, -1] |= full[:, :, -1]
        full[:, :, -1] = False
    full_counts, full_indices = _lists(full)
    partial_counts, partial_indices = _lists(partial)
    full_q_counts, full_q_indices = _lists(full.transpose(1, 2))
    partial_q_counts, partial_q_indices = _lists(partial.transpose(1, 2))
    work = (full_counts + partial_counts).sum(0)
    row_order = torch.argsort(work, descending=True, stable=True).to(torch.int32)
    return BlockLayout(n_q, n_k, block_m, block_n, states, full_counts, full_indices,
                       partial_counts, partial_indices, full_q_counts, full_q_indices,
                       partial_q_counts, partial_q_indices, row_order)


def _lists(selected: torch.Tensor):
    """CSR-like lists of a bool ``[cases, R, C]``: counts int32 ``[cases, R]`` and ascending
    column indices int32 ``[cases, R, width]`` (width >= 1, padded with 0)."""
    cases, rows, _ = selected.shape
    counts = selected.sum(-1, dtype=torch.int32)
    width = max(1, int(counts.max())) if counts.numel() else 1
    indices = torch.zeros(cases, rows, width, dtype=torch.int32)
    c, r, col = selected.nonzero(as_tuple=True)
    if len(col):
        flat_row = c * rows + r
        starts = torch.cumsum(counts.flatten(), 0) - counts.flatten()
        slot = torch.arange(len(col)) - starts[flat_row]
        indices.view(cases * rows, width)[flat_row, slot] = col.to(torch.int32)
    return counts, indices


def _is_range(counts, indices) -> bool:
    last = indices.gather(-1, (counts.long() - 1).clamp(min=0).unsqueeze(-1)).squeeze(-1)
    ok = (counts == 0) | (last - indices[..., 0] == counts - 1)
    return bool(ok.all())


def states_from_mask(mask: torch.Tensor, block_m: int, block_n: int) -> torch.Tensor:
    """int8 ``[T_q, T_k]`` tile classes read off a dense bool mask (the test oracle)."""
    n_q, n_k = mask.shape
    t_q, t_k = -(-n_q // block_m), -(-n_k // block_n)
    padded = torch.zeros(t_q * block_m, t_k * block_n, dtype=torch.int32)
    padded[:n_q, :n_k] = mask.to(torch.int32)
    hits = padded.view(t_q, block_m, t_k, block_n).sum((1, 3))
    q_lo, q_hi = tile_bounds(n_q, block_m)
    k_lo, k_hi = tile_bounds(n_k, block_n)
    area = (q_hi - q_lo + 1)[:, None] * (k_hi - k_lo + 1)[None, :]
    return torch.where(hits == 0, EMPTY, torch.where(hits == area, FULL, PARTIAL)).to(torch.int8)


def pair_count(concrete, n_q: int, n_k: int, head: int = 0, block: int = 128) -> int:
    """Allowed pairs of one head, from its layout: FULL tile areas plus PARTIAL tiles counted
    with the pair predicate (no n x n mask)."""
    expr = select_head(concrete, head)
    states = tile_states(expr, n_q, n_k, block, block)
    q_lo, q_hi = tile_bounds(n_q, block, n_k - n_q)
    k_lo, k_hi = tile_bounds(n_k, block)
    area = (q_hi - q_lo + 1)[:, None] * (k_hi - k_lo + 1)[None, :]
    total = int(area[states == FULL].sum())
    rows, cols = (states == PARTIAL).nonzero(as_tuple=True)
    r, c = torch.arange(block), torch.arange(block)
    for start in range(0, len(rows), TILES_PER_CHECK):
        i, j = rows[start:start + TILES_PER_CHECK], cols[start:start + TILES_PER_CHECK]
        q = (q_lo[i, None] + r)[:, :, None]
        k = (k_lo[j, None] + c)[:, None, :]
        valid = (q <= q_hi[i, None, None]) & (k <= k_hi[j, None, None])
        total += int((allowed(expr, q, k, n_k) & valid).sum())
    return total
