"""A terminal picture of a mask: one cell per pair for short sequences, shaded tiles otherwise.

A dynamic pattern (docs/language.md §5) is drawn as its static part (every dynamic term replaced by
``none``) with the candidates marked ``+``: the pairs where some term may spend its budget.
``draw_selection`` draws the mask under one selection instead.

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
MAX_SELECTION_SEQ_LEN = 4096  # the longest sequence drawn under a sampled selection
CANDIDATE = "+"  # marks a cell where a dynamic term's budget may go


def occupancy(pattern, n: int, cells: int, head: int = 0):
    """Fraction of allowed pairs per ``tile x tile`` cell (a float64 tensor), the tile size,
    and whether rows were sampled."""
    from .ir.evaluate import select_head
    from .semantics.reference import evaluate

    expr = select_head(pattern.at(n), head)
    return _occupancy(lambda rows: evaluate(expr, rows, n), n, cells)


def _occupancy(allowed_rows, n: int, cells: int):
    """``occupancy`` of any ``allowed_rows(rows) -> broadcastable [len(rows), n] bool``."""
    import torch

    tile = -(-n // cells)
    rows_of_tiles = -(-n // tile)
    exact = n <= EXACT_LIMIT
    sampled = max(MIN_SAMPLED_ROWS, min(SAMPLED_ROWS, PAIR_BUDGET // (n * rows_of_tiles)))
    grid = torch.zeros(rows_of_tiles, rows_of_tiles, dtype=torch.float64)
    counts = torch.zeros(rows_of_tiles, dtype=torch.float64)
    for r in range(rows_of_tiles):
        lo, hi = r * tile, min(n, (r + 1) * tile)
        rows = torch.arange(lo, hi) if exact else \
            torch.linspace(lo, hi - 1, min(sampled, hi - lo)).round().long().unique()
        allowed = allowed_rows(rows).expand(len(rows), n)
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
    """The picture as text: a header, the grid (queries down, keys across), a legend. A
    dynamic pattern shows its static part, its candidates marked ``+``."""
    cells = max(1, min(width, n))
    if not pattern.dynamic:
        fraction, tile, sampled = occupancy(pattern, n, cells, head)
        return _render(f"{pattern}  (n = {n}{head_note(pattern.heads, head)})", fraction,
                       None, tile, sampled)
    from .semantics.select import candidate_pairs, static_pairs

    fraction, tile, sampled = _occupancy(lambda rows: static_pairs(pattern, n, head, rows), n,
                                         cells)
    candidates = _occupancy(lambda rows: candidate_pairs(pattern, n, head, rows), n, cells)[0]
    title = (f"{pattern}  (n = {n}{head_note(pattern.heads, head)}; static part, "
             f"{CANDIDATE} where the budget may go)")
    return _render(title, fraction, candidates, tile, sampled)


def draw_selection(pattern, n: int, seed: int, head: int = 0, width: int = 64) -> str:
    """The mask of a dynamic pattern under one selection: ``select`` on random normal q and k
    (and scores) drawn from ``seed``, one batch row, head ``head``."""
    from .semantics.select import sample_selection

    mask = sample_selection(pattern, n, seed, head)
    fraction, tile, sampled = _occupancy(lambda rows: mask[rows], n, max(1, min(width, n)))
    title = (f"{pattern}  (n = {n}{head_note(pattern.heads, head)}; one selection on random "
             f"inputs, seed {seed})")
    return _render(title, fraction, None, tile, sampled)


def _render(title: str, fraction, candidates, tile: int, sampled: bool) -> str:
    """Title, grid and legend; ``candidates`` (or None): the fraction of candidate pairs per
    cell, marked in the cell's second character."""
    rows = fraction.tolist()
    marks = candidates.tolist() if candidates is not None else [[0] * len(r) for r in rows]
    if tile == 1:
        body = ["".join("██" if f > 0 else CANDIDATE * 2 if c > 0 else "· "
                        for f, c in zip(row, mark)) for row, mark in zip(rows, marks)]
        legend = "██ allowed   · not allowed"
    else:
        body = ["".join(_shade(f) + (CANDIDATE if c > 0 and f < 1 else _shade(f))
                        for f, c in zip(row, mark)) for row, mark in zip(rows, marks)]
        legend = (f"each cell is {tile} x {tile} tokens: ' ' none, ░ <25%, ▒ <75%, ▓ partial, "
                  f"█ all allowed" + ("  (rows sampled)" if sampled else ""))
    if candidates is not None:
        legend += (f"\n{CANDIDATE} candidates: pairs where a dynamic term may select keys "
                   "(shading shows the static part only)")
    return "\n".join([title, *(f"|{line}|" for line in body), legend])


def head_note(cases: int, head: int) -> str:
    """``, head 2 (case 0 of 2: heads wrap)``: which ``heads`` case a head draws (docs/language.md:
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
