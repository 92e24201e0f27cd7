"""``draw_plan``: which term of the plan covers which pairs, as a terminal picture (what
``spattn show --plan`` prints). Each cell shows the letter of the term owning most of its
allowed pairs (terms are disjoint, so each pair has one owner); a legend lists the terms."""
from __future__ import annotations

import torch

from ..ir.printer import text
from ..picture import head_note
from ..semantics.reference import evaluate
from .artifacts import default_config
from .lowering import case_plans

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
SAMPLED_ROWS = 16
EXACT_LIMIT = 4096


def ownership(terms, n: int, cells: int):
    """(int ``[rows, cols]`` index of the term owning most pairs per cell, -1 = none; tile).

    Votes are the allowed pairs of the cell's rows (every row up to EXACT_LIMIT tokens, else
    SAMPLED_ROWS of them) per term; only the key tiles the term's layout lists for a row are
    looked at (a FULL tile counts all its keys, a PARTIAL one is evaluated pair by pair), so
    the work follows the visited tiles, not n."""
    tile = -(-n // cells)
    count = -(-n // tile)
    votes = torch.zeros(len(terms), count, count, dtype=torch.float64)
    for t, term in enumerate(terms):
        listed = _ListedKeys(term, n)
        for r in range(count):
            lo, hi = r * tile, min(n, (r + 1) * tile)
            rows = torch.arange(lo, hi) if n <= EXACT_LIMIT else \
                torch.linspace(lo, hi - 1, min(SAMPLED_ROWS, hi - lo)).round().long().unique()
            for keys, weight in listed.votes(rows):
                votes[t, r].index_add_(0, keys // tile, weight)
    best = votes.argmax(0)
    return torch.where(votes.sum(0) > 0, best, -1), tile


class _ListedKeys:
    """A plan term's pairs through its layout: virtual rows and columns (the gathers) back to
    positions, per query tile the FULL and PARTIAL key tiles it visits."""

    def __init__(self, term, n: int):
        layout = term.layout
        self.term, self.n, self.layout = term, n, layout
        self.block_m, self.block_n = layout.block_m, layout.block_n
        self.virtual_row = torch.full((n,), -1, dtype=torch.int64)  # position -> virtual row
        if term.q_gather is None:
            self.virtual_row[:min(n, layout.n_q)] = torch.arange(min(n, layout.n_q))
        else:
            q_gather = term.q_gather.long()
            inside = (q_gather >= 0) & (q_gather < n)
            self.virtual_row[q_gather[inside]] = torch.arange(len(q_gather))[inside]
        self.k_gather = None if term.k_gather is None else term.k_gather.long()

    def _positions(self, key_tiles: torch.Tensor) -> torch.Tensor:
        """Key positions of the listed virtual key tiles (padding dropped)."""
        if not len(key_tiles):
            return torch.zeros(0, dtype=torch.int64)
        cols = (key_tiles.long()[:, None] * self.block_n
                + torch.arange(self.block_n)).flatten()
        cols = cols[cols < self.layout.n_k]
        keys = cols if self.k_gather is None else self.k_gather[cols]
        return keys[(keys >= 0) & (keys < self.n)]

    def votes(self, rows: torch.Tensor):
        """(key positions, float64 pairs at each) of the term's allowed pairs in ``rows``."""
        from ..layout.pairs import allowed

        layout, case = self.layout, 0
        virtual = self.virtual_row[rows]
        rows, virtual = rows[virtual >= 0], virtual[virtual >= 0]
        q_tiles = virtual // self.block_m
        for q_tile in q_tiles.unique().tolist():
            in_tile = rows[q_tiles == q_tile]
            full = layout.full_indices[case, q_tile, :int(layout.full_counts[case, q_tile])]
            keys = self._positions(full)
            if len(keys):
                yield keys, torch.full((len(keys),), float(len(in_tile)), dtype=torch.float64)
            partial = layout.partial_indices[case, q_tile,
                                             :int(layout.partial_counts[case, q_tile])]
            keys = self._positions(partial)
            if len(keys):
                hit = allowed(self.term.expr, in_tile[:, None], keys[None, :], self.n)
                hit = torch.broadcast_to(hit, (len(in_tile), len(keys)))
                yield keys, hit.sum(0, dtype=torch.float64)


def draw_plan(pattern, n: int, head: int = 0, width: int = 64, head_dim: int = 128) -> str:
    """The picture of head ``head``'s plan at ``n_q = n_k = n`` (tiles as ``spattn compile``
    chooses them for ``head_dim``), then one line per term: letter, kind, tiles, pairs."""
    config = default_config(pattern, head_dim, n)
    plans = case_plans(pattern, n, n, config.block_m, config.block_n)
    plan = plans[head % len(plans)]
    owner, tile = ownership(plan.terms, n, max(1, min(width, n)))
    body = ["".join(" ." if o < 0 else LETTERS[o % 26] * 2 for o in row) for row in owner.tolist()]
    lines = [f"plan of {pattern}  (n = {n}{head_note(len(plans), head)}; each cell {tile} x {tile} tokens, "
             f"letter = the term owning most of its pairs)"]
    lines += [f"|{line}|" for line in body]
    for i, term in enumerate(plan.terms):
        lines.append(f"{LETTERS[i % 26]}: {term.kind:8s} {term.block_m}x{term.block_n} tiles, "
                     f"{term.visited_tiles} visited, {term.pairs_computed} pairs computed"
                     f"  [{term.note}]  {text(term.expr)}")
    return "\n".join(lines)
