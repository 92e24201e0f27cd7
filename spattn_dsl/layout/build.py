"""``lower``: a pattern at ``(n_q, n_k)`` and a tile size -> its ``BlockLayout``.

The layout is shaped like FlexAttention's BlockMask, one slice per distinct head pattern
("case"; head ``h`` uses case ``h % cases``):

- per query tile, the key tiles to visit: ``full_counts`` / ``full_indices`` (no predicate
  needed) and ``partial_counts`` / ``partial_indices`` (predicate and bounds applied), as
  ``[cases, T_q]`` counts and ``[cases, T_q, width]`` ascending indices;
- the transpose, per key tile its query tiles (``full_q_*``, ``partial_q_*``), for dK/dV;
- ``row_order``: query tiles heaviest first, so the longest programs start first;
- ``states`` int8 ``[cases, T_q, T_k]``: the exact EMPTY / PARTIAL / FULL class of each tile,
  kept only for small grids (at most ``DENSE_STATES_MAX`` tiles; else None): a layout is
  built from its candidate tiles only (``classify.candidates``), in time and memory
  proportional to the tiles it visits, never a dense grid.

In the kernel lists, a FULL tile that runs past ``n_k`` (the ragged last key tile) is moved
to the PARTIAL list, so that FULL tiles need neither a predicate nor a bounds mask.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ir.evaluate import head_count, select_head
from .classify import EMPTY, FULL, PARTIAL, Grid, LayoutLimitError, candidates, classify, \
    check_tiles, classify_codes, diff_interval
from .pairs import allowed

TILES_PER_CHECK = 256  # unsure tiles resolved per batch against the exact predicate
DENSE_STATES_MAX = 1 << 22  # grids up to this many tiles keep their dense ``states``
MAX_TABLE_ENTRIES = 1 << 27  # a padded index table's entries (rows x widest row), 512 MiB


@dataclass
class BlockLayout:
    n_q: int
    n_k: int
    block_m: int
    block_n: int
    full_counts: torch.Tensor
    full_indices: torch.Tensor
    partial_counts: torch.Tensor
    partial_indices: torch.Tensor
    full_q_counts: torch.Tensor
    full_q_indices: torch.Tensor
    partial_q_counts: torch.Tensor
    partial_q_indices: torch.Tensor
    row_order: torch.Tensor
    states: torch.Tensor | None = None

    @property
    def cases(self) -> int:
        return self.full_counts.shape[0]

    @property
    def tiles(self) -> tuple[int, int]:
        return self.full_counts.shape[1], self.full_q_counts.shape[1]

    def tile_counts(self) -> tuple:
        """(FULL, PARTIAL) tiles per case, int64 ``[cases]``, as the kernels visit them (a FULL
        tile on a ragged last key column is in the PARTIAL list)."""
        return self.full_counts.long().sum(-1), self.partial_counts.long().sum(-1)

    def visited_tiles(self) -> torch.Tensor:
        """int64 ``[cases]``: tiles visited per case (FULL and PARTIAL)."""
        return (self.full_counts.long() + self.partial_counts.long()).sum(-1)

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
        t_q, t_k = self.tiles
        total = self.cases * t_q * t_k
        return int(self.visited_tiles().sum()) / total if total else 0.0

    def to(self, device) -> "BlockLayout":
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__}
        return BlockLayout(**{name: v.to(device) if isinstance(v, torch.Tensor) else v
                              for name, v in fields.items()})

    def tensors(self) -> dict:
        return {name: getattr(self, name) for name in self.__dataclass_fields__
                if isinstance(getattr(self, name), torch.Tensor)}


Tiles = tuple  # (codes int64 [P] ascending, code = row * T_k + col; state int8 [P]), non-EMPTY


def tile_bounds(n: int, block: int, offset: int = 0):
    """(lo, hi) int64 ``[T]``: the first and last absolute position of each tile."""
    lo = torch.arange(0, n, block, dtype=torch.int64)
    hi = torch.clamp(lo + block, max=n) - 1
    return lo + offset, hi + offset


def tile_states(expr, n_q: int, n_k: int, block_m: int, block_n: int) -> torch.Tensor:
    """int8 ``[T_q, T_k]``: exact tile classes of a concrete, head-selected expression (dense:
    for small grids and tests; layouts use ``sparse_states``)."""
    t_q, t_k = -(-n_q // block_m), -(-n_k // block_n)
    return densify(sparse_states(expr, n_q, n_k, block_m, block_n), t_q, t_k)


def sparse_states(expr, n_q: int, n_k: int, block_m: int, block_n: int) -> Tiles:
    """The non-EMPTY tiles and their exact classes: only candidate tiles are classified
    (``classify.candidates``), the unsure ones resolved against the pair predicate."""
    check_tiles(-(-n_q // block_m), -(-n_k // block_n))
    q_lo, q_hi = tile_bounds(n_q, block_m, n_k - n_q)
    k_lo, k_hi = tile_bounds(n_k, block_n)
    grid = Grid(q_lo, q_hi, k_lo, k_hi, n_k)
    codes = candidates(expr, grid)
    state, unsure = classify_codes(expr, grid, codes, classify)
    if bool(unsure.any()):
        at = unsure.nonzero().squeeze(1)
        rows, cols = codes[at] // len(k_lo), codes[at] % len(k_lo)
        state[at] = resolve(expr, q_lo[rows], q_hi[rows], k_lo[cols], k_hi[cols],
                            block_m, block_n, n_k)
    keep = state != EMPTY
    return codes[keep], state[keep]


def densify(tiles: Tiles, t_q: int, t_k: int) -> torch.Tensor:
    codes, state = tiles
    dense = torch.zeros(t_q * t_k, dtype=torch.int8)
    dense[codes] = state
    return dense.view(t_q, t_k)


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
    tiles = [sparse_states(select_head(concrete, c), n_q, n_k, block_m, block_n)
             for c in range(cases)]
    return from_tiles(tiles, n_q, n_k, block_m, block_n)


def from_states(states: torch.Tensor, n_q: int, n_k: int, block_m: int, block_n: int) -> BlockLayout:
    """Index lists of a dense ``[cases, T_q, T_k]`` state tensor."""
    tiles = []
    for case in states:
        codes = (case.reshape(-1) != EMPTY).nonzero().squeeze(1)
        tiles.append((codes, case.reshape(-1)[codes]))
    return from_tiles(tiles, n_q, n_k, block_m, block_n)


def from_tiles(tiles: list, n_q: int, n_k: int, block_m: int, block_n: int) -> BlockLayout:
    """Index lists of each case's non-EMPTY tiles (``Tiles``): work and memory in proportion
    to those tiles and the index tables."""
    t_q, t_k = -(-n_q // block_m), -(-n_k // block_n)
    cases = len(tiles)
    case = torch.cat([torch.full((len(c),), i, dtype=torch.int64) for i, (c, _) in enumerate(tiles)])
    codes = torch.cat([c for c, _ in tiles]).to(torch.int64)
    state = torch.cat([s for _, s in tiles])
    row, col = codes // max(t_k, 1), codes % max(t_k, 1)
    full = state == FULL
    if n_k % block_n:  # the ragged last key tile needs the bounds mask: PARTIAL list
        full &= col != t_k - 1
    lists = {}
    for name, sel in (("full", full), ("partial", ~full)):
        c, r, k = case[sel], row[sel], col[sel]  # sorted by (case, row, col)
        lists[name] = _sparse_lists(c, r, k, cases, t_q)
        by_col = torch.argsort((c * t_k + k) * t_q + r)
        lists[name + "_q"] = _sparse_lists(c[by_col], k[by_col], r[by_col], cases, t_k)
    work = (lists["full"][0] + lists["partial"][0]).sum(0)
    row_order = torch.argsort(work, descending=True, stable=True).to(torch.int32)
    dense = None
    if cases * t_q * t_k <= DENSE_STATES_MAX:
        dense = torch.stack([densify(t, t_q, t_k) for t in tiles]) if tiles else \
            torch.zeros(0, t_q, t_k, dtype=torch.int8)
    return BlockLayout(n_q, n_k, block_m, block_n, *lists["full"], *lists["partial"],
                       *lists["full_q"], *lists["partial_q"], row_order, dense)


def _lists(selected: torch.Tensor):
    """The lists of a dense bool ``[cases, R, C]`` (per-call document layouts)."""
    c, r, col = selected.nonzero(as_tuple=True)
    return _sparse_lists(c, r, col, selected.shape[0], selected.shape[1])


def _sparse_lists(case, row, col, cases: int, rows: int):
    """CSR-like lists of entries sorted by (case, row, col): counts int32 ``[cases, rows]`` and
    ascending column indices int32 ``[cases, rows, width]`` (width >= 1, padded with 0)."""
    flat = case * rows + row
    counts = torch.bincount(flat, minlength=cases * rows)[:cases * rows]
    width = max(1, int(counts.max())) if counts.numel() else 1
    if cases * rows * width > MAX_TABLE_ENTRIES:
        raise LayoutLimitError(
            f"a padded index table of {cases * rows} rows x {width} tiles (the widest row) "
            f"exceeds {MAX_TABLE_ENTRIES} entries: too large to build; a shorter sequence or "
            f"larger tiles fit")
    indices = torch.zeros(cases * rows, width, dtype=torch.int32)
    if len(col):
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(len(col)) - starts[flat]
        indices[flat, slot] = col.to(torch.int32)
    return counts.to(torch.int32).view(cases, rows), indices.view(cases, rows, width)


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
    """Allowed pairs of one head: closed form for a band (``q - k`` in one interval), else
    from its tiles: FULL tile areas plus PARTIAL tiles counted with the pair predicate (no
    n x n mask)."""
    expr = select_head(concrete, head)
    band = diff_interval(expr)
    if band is not None:
        return band_pairs(n_q, n_k, *band)
    codes, state = sparse_states(expr, n_q, n_k, block, block)
    q_lo, q_hi = tile_bounds(n_q, block, n_k - n_q)
    k_lo, k_hi = tile_bounds(n_k, block)
    t_k = len(k_lo)
    rows, cols = codes // max(t_k, 1), codes % max(t_k, 1)
    full = state == FULL
    total = int(((q_hi - q_lo + 1)[rows[full]] * (k_hi - k_lo + 1)[cols[full]]).sum())
    rows, cols = rows[~full], cols[~full]
    r, c = torch.arange(block), torch.arange(block)
    for start in range(0, len(rows), TILES_PER_CHECK):
        i, j = rows[start:start + TILES_PER_CHECK], cols[start:start + TILES_PER_CHECK]
        q = (q_lo[i, None] + r)[:, :, None]
        k = (k_lo[j, None] + c)[:, None, :]
        valid = (q <= q_hi[i, None, None]) & (k <= k_hi[j, None, None])
        total += int((allowed(expr, q, k, n_k) & valid).sum())
    return total


def band_pairs(n_q: int, n_k: int, lo: int, hi: int) -> int:
    """Pairs (q in [n_k - n_q, n_k), k in [0, n_k)) with ``lo <= q - k <= hi``: per diagonal
    d = q - k, n_q + d rows below the offset, n_q up to it, n_k - d past it."""
    offset = n_k - n_q

    def series(a, b, c, s):  # sum of c + s * d for d in [a, b]
        return 0 if a > b else (b - a + 1) * c + s * (a + b) * (b - a + 1) // 2

    return (series(max(lo, -n_q + 1), min(hi, -1), n_q, 1)
            + series(max(lo, 0), min(hi, offset), n_q, 0)
            + series(max(lo, offset + 1), min(hi, n_k - 1), n_k, -1))
