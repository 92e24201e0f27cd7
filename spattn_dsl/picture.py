"""A terminal picture of a mask: one cell per pair for short sequences, shaded tiles otherwise.

torch is imported when a picture is drawn, not with this module, so the CLI can read the
limits below without it.
"""
from __future__ import annotations

SHADES = " ░▒▓█"  # empty, <25%, <75%, partial above, full
EXACT_LIMIT = 4096  # above this many keys, tile rows are sampled instead of read in full
SAMPLED_ROWS = 16  # rows read per row of tiles when sampling, fewer for very long sequences
PAIR_BUDGET = 1 << 26  # pairs evaluated when sampling, before the row count drops
MIN_SAMPLED_ROWS = 2  # a tile's first and last row
MAX_SEQ_LEN = 1 << 20  # the longest sequence drawn: every sampled row is evaluated in full
MAX_WIDTH = 512  # the widest picture, in cells


def occupancy(pattern, n: int, cells: int, head: int = 0):
    """Fraction of allowed pairs per ``tile x tile`` cell (a float64 tensor), the tile size,
    and whether rows were sampled."""
    import torch

    from .ir.evaluate import select_head
    from .semantics.reference import evaluate

    tile = -(-n // cells)
    rows_of_tiles = -(-n // tile)
    expr = select_head(pattern.at(n), head)
    exact = n <= EXACT_LIMIT
    sampled = max(MIN_SAMPLED_ROWS, min(SAMPLED_ROWS, PAIR_BUDGET // (n * rows_of_tiles)))
    grid = torch.zeros(rows_of_tiles, rows_of_tiles, dtype=torch.float64)
    counts = torch.zeros(rows_of_tiles, dtype=torch.float64)
    for r in range(rows_of_tiles):
        lo, hi = r * tile, min(n, (r + 1) * tile)
        rows = torch.arange(lo, hi) if exact else \
            torch.linspace(lo, hi - 1, min(sampled, hi - lo)).round().long().unique()
        allowed = evaluate(expr, rows, n).expand(len(rows), n)
        grid[r] = _per_key_tile(allowed, tile).double()
        counts[r] = len(rows)
    widths = torch.full((rows_of_tiles,), float(tile), dtype=torch.float64)
    widths[-1] = n - (rows_of_tiles - 1) * tile
    return grid / (counts[:, None] * widths[None, :]), tile, not exact


def _per_key_tile(allowed, tile: int):
    """Allowed pairs per key tile, summed over the rows (a contiguous sum per tile is far
    faster than reducing across rows)."""
    import torch

    rows, n = allowed.shape
    whole = n // tile * tile
    sums = allowed[:, :whole].reshape(rows, n // tile, tile).sum(-1, dtype=torch.int64).sum(0)
    if whole < n:
        sums = torch.cat([sums, allowed[:, whole:].sum(dtype=torch.int64).reshape(1)])
    return sums


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
    title = f"{pattern}  (n = {n}{head_note(pattern.heads, head)})"
    return "\n".join([title, *(f"|{line}|" for line in body), legend])


def head_note(cases: int, head: int) -> str:
    """``, head 2 (case 0 of 2: heads wrap)``: which ``heads`` case a head index draws (SPEC:
    head h uses case h mod cases); nothing for a pattern without cases."""
    if cases <= 1:
        return ""
    case = head % cases
    return f", head {head}" + (f" (case {case} of {cases}: heads wrap)" if case != head else "")


def _shade(fraction: float) -> str:
    if fraction <= 0:
        return SHADES[0]
    if fraction >= 1:
        return SHADES[4]
    return SHADES[1] if fraction < 0.25 else SHADES[2] if fraction < 0.75 else SHADES[3]
