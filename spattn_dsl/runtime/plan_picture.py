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
    """(int ``[rows, cols]`` index of the term owning most pairs per cell, -1 = none; tile)."""
    tile = -(-n // cells)
    count = -(-n // tile)
    key_tile = torch.arange(n) // tile
    votes = torch.zeros(len(terms), count, count, dtype=torch.float64)
    for r in range(count):
        lo, hi = r * tile, min(n, (r + 1) * tile)
        rows = torch.arange(lo, hi) if n <= EXACT_LIMIT else \
            torch.linspace(lo, hi - 1, min(SAMPLED_ROWS, hi - lo)).round().long().unique()
        for t, term in enumerate(terms):
            allowed = evaluate(term.expr, rows, n).expand(len(rows), n)
            votes[t, r].index_add_(0, key_tile, allowed.sum(0, dtype=torch.float64))
    best = votes.argmax(0)
    return torch.where(votes.sum(0) > 0, best, -1), tile


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
