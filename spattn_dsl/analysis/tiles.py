"""Tile occupancy from rectangles of allowed pairs: tile density, waste and mask pictures."""
from __future__ import annotations

import numpy as np

MAX_TILE_CELLS = 1 << 24


def occupancy(rectangles, n: int, bm: int, bn: int) -> np.ndarray | None:
    """bool [ceil(n/bm), ceil(n/bn)]: tiles holding an allowed pair; None when too many tiles."""
    rows, cols = -(-n // bm), -(-n // bn)
    if (rows + 1) * (cols + 1) > MAX_TILE_CELLS:
        return None
    q0, q1, k0, k1 = rectangles
    r0, r1, c0, c1 = q0 // bm, q1 // bm + 1, k0 // bn, k1 // bn + 1
    width = cols + 1
    corners = np.concatenate([r0 * width + c0, r0 * width + c1, r1 * width + c0, r1 * width + c1])
    signs = np.concatenate([np.ones_like(r0), -np.ones_like(r0), -np.ones_like(r0),
                            np.ones_like(r0)])
    diff = np.bincount(corners, weights=signs, minlength=(rows + 1) * width)
    counts = diff.reshape(rows + 1, width).cumsum(axis=0).cumsum(axis=1)
    return counts[:rows, :cols] > 0.5


def tile_figures(rectangles, allowed_pairs: int, n: int, bm: int, bn: int, causal: bool):
    """(tile density, waste) or (None, None) when the tile grid is too large."""
    return visited_figures(occupancy(rectangles, n, bm, bn), allowed_pairs, n, bm, bn, causal)


def visited_figures(visited, allowed_pairs: int, n: int, bm: int, bn: int, causal: bool):
    """(tile density, waste) from the grid of visited tiles; (None, None) without one."""
    if visited is None:
        return None, None
    rows, cols = visited.shape
    row_start = np.arange(rows) * bm
    col_start = np.arange(cols) * bn
    heights = np.minimum(row_start + bm, n) - row_start
    widths = np.minimum(col_start + bn, n) - col_start
    if causal:
        admissible = col_start[None, :] <= (row_start + heights - 1)[:, None]
    else:
        admissible = np.ones_like(visited)
    density = float(visited.sum()) / float(admissible.sum())
    computed = float((visited * heights[:, None] * widths[None, :]).sum())
    waste = computed / allowed_pairs if allowed_pairs else None
    return density, waste


def picture(rectangles, n: int, pixels: int = 256) -> tuple[np.ndarray, int]:
    """The mask downsampled to at most ``pixels`` square tiles a side (a tile is lit if it
    holds an allowed pair), and the tile size used."""
    tile = max(1, -(-n // pixels))
    return occupancy(rectangles, n, tile, tile), tile
