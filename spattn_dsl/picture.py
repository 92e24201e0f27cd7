"""A terminal picture of a mask: one cell per pair for short sequences, shaded tiles otherwise."""
from __future__ import annotations

import torch

from .ir.evaluate import select_head
from .semantics.reference import evaluate

SHADES = " ░▒▓█"  # empty, <25%, <75%, partial above, full
EXACT_LIMIT = 4096  # above this many keys, tile rows are sampled instead of read in full
SAMPLED_ROWS = 16


def occupancy(pattern, n: int, cells: int, head: int = 0) -> tuple[torch.Tensor, int, bool]:
    """Fraction of allowed pairs per ``tile x tile`` cell, the tile size, and whether sampled."""
    tile = -(-n // cells)
    rows_of_tiles = -(-n // tile)
    expr = select_head(pattern.at(n), head)
    exact = n <= EXACT_LIMIT
    grid = torch.zeros(rows_of_tiles, rows_of_tiles, dtype=torch.float64)
    counts = torch.zeros(rows_of_tiles, dtype=torch.float64)
    key_tile = torch.arange(n) // tile
    for r in range(rows_of_tiles):
        lo, hi = r * tile, min(n, (r + 1) * tile)
        rows = torch.arange(lo, hi) if exact else \
            torch.linspace(lo, hi - 1, min(SAMPLED_ROWS, hi - lo)).round().long().unique()
        allowed = evaluate(expr, rows, n).expand(len(rows), n)
        grid[r].index_add_(0, key_tile, allowed.sum(0, dtype=torch.float64))
        counts[r] = len(rows)
    widths = torch.bincount(key_tile, minlength=rows_of_tiles).double()
    return grid / (counts[:, None] * widths[None, :]), tile, not exact


def draw(pattern, n: int, head: int = 0, width: int = 64) -> str:
    """The picture as text: a header, the grid (queries down, keys across), a legend."""
    cells = max(1, min(width, n))
    fraction, tile, sampled = occupancy(pattern, n, cells, head)
    if tile == 1:
        body = ["".join("██" if f > 0 else "· " for f in row) for row in fraction.tolist()]
        legend = "██ allowed   · not allowed"
    else:
        body = ["".join(_shade(f) * 2 for f in row) for row in fraction.tolist()]
        legend = (f"each cell is {tile} x {tile} tokens: ' ' none, ░ <25%, ▒ <75%, ▓ partial, "
                  f"█ all allowed" + ("  (rows sampled)" if sampled else ""))
    head_note = f", head {head}" if pattern.heads > 1 else ""
    title = f"{pattern}  (n = {n}{head_note})"
    return "\n".join([title, *(f"|{line}|" for line in body), legend])


def _shade(fraction: float) -> str:
    if fraction <= 0:
        return SHADES[0]
    if fraction >= 1:
        return SHADES[4]
    return SHADES[1] if fraction < 0.25 else SHADES[2] if fraction < 0.75 else SHADES[3]
