"""An independent oracle for the analysis: boolean composition of reference masks.

Built only from ``Pattern.mask`` (the reference semantics) and torch matrix products, so it
shares no code with ``spattn_dsl.analysis``. Small n only.
"""
from __future__ import annotations

import math
import random

import torch

from spattn_dsl.ir import nodes as N
from spattn_dsl.ir.program import Pattern


def layer_mask(pattern: Pattern, n: int) -> torch.Tensor:
    """docs/analysis.md: the pair is in the layer's mask when ANY head allows it."""
    mask = torch.zeros(n, n, dtype=torch.bool)
    for head in range(pattern.heads):
        mask |= pattern.mask(n, head=head)
    return mask


def compose(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    return (outer.double() @ inner.double()) > 0


class Oracle:
    """Every figure of docs/analysis.md for a schedule of patterns (repeated), by brute force."""

    def __init__(self, schedule, n: int):
        self.n = n
        self.masks = [layer_mask(p, n) for p in schedule]
        eye = torch.eye(n, dtype=torch.bool)
        self.relations = [m | eye for m in self.masks]
        self.causal = not any(torch.triu(m, 1).any() for m in self.masks)
        self.admissible = torch.tril(torch.ones(n, n, dtype=torch.bool)) if self.causal \
            else torch.ones(n, n, dtype=torch.bool)

    def states(self, depth: int):
        """D_1 .. D_depth, the schedule repeated."""
        state = torch.eye(self.n, dtype=torch.bool)
        out = []
        for layer in range(depth):
            state = compose(self.relations[layer % len(self.relations)], state)
            out.append(state)
        return out

    def hop_depth(self, holds, limit: int | None = None):
        """Least L with holds(D_L), inf once a whole period changes nothing."""
        limit = limit or (self.n + 1) * len(self.relations) + 1
        state = torch.eye(self.n, dtype=torch.bool)
        if holds(state):
            return 0
        period_start = state
        for layer in range(1, limit + 1):
            state = compose(self.relations[(layer - 1) % len(self.relations)], state)
            if holds(state):
                return layer
            if layer % len(self.relations) == 0:
                if torch.equal(state, period_start):
                    return math.inf
                period_start = state
        raise AssertionError("no fixpoint within the limit")

    def diameter(self):
        return self.hop_depth(lambda d: bool((d | ~self.admissible).all()))

    def reach_to_first(self):
        return self.hop_depth(lambda d: bool(d[self.n - 1, 0]))

    def figures(self, state: torch.Tensor) -> dict:
        size = state.sum(1)
        idx = torch.arange(self.n)
        low = torch.where(state, idx[None, :], self.n).min(1).values
        high = torch.where(state, idx[None, :], -1).max(1).values
        reach = (idx - low) if self.causal else torch.maximum(idx - low, high - idx)
        return {
            "rf_min": int(size.min()), "rf_mean": float(size.double().mean()),
            "rf_max": int(size.max()), "rf_last": int(size[-1]), "reach": int(reach.max()),
            "span": int((high - low + 1).max()), "span_middle": int((high - low + 1)[self.n // 2]),
            "coverage": float((state & self.admissible).sum()) / float(self.admissible.sum()),
        }

    def density(self, mask: torch.Tensor) -> float:
        return float(mask.sum()) / (self.n * self.n)


# ---------------------------------------------------------------- random patterns
def _num(x):
    return N.Num(x)


def random_primitive(rng: random.Random, n: int):
    kind = rng.choice(["dense", "none", "causal", "window", "band", "dilated", "stride", "chunk",
                       "summary", "global", "tokens", "sink", "prefix", "random", "where"])
    small = lambda: rng.randint(1, max(1, n // 3))  # noqa: E731
    if kind == "dense":
        return N.Dense()
    if kind == "none":
        return N.Empty()
    if kind == "causal":
        return N.Causal()
    if kind == "window":
        return N.Window(_num(small()))
    if kind == "band":
        return N.Band(_num(rng.randint(0, n // 3)), _num(rng.randint(0, n // 3)))
    if kind == "dilated":
        return N.Dilated(_num(rng.randint(1, 4)), _num(rng.randint(1, 4)))
    if kind == "stride":
        return N.Stride(_num(rng.randint(1, 6)))
    if kind == "chunk":
        return N.Chunk(_num(small()))
    if kind == "summary":
        length = rng.randint(1, 8)
        return N.Summary(_num(length), _num(rng.randint(1, length)))
    if kind == "global":
        return N.Global(_num(rng.randint(0, 3)))
    if kind == "tokens":
        return N.GlobalTokens(tuple(_num(rng.randint(0, n)) for _ in range(rng.randint(1, 3))))
    if kind == "sink":
        return N.Sink(_num(rng.randint(0, 3)))
    if kind == "prefix":
        return N.Prefix(_num(rng.randint(0, n // 2)))
    if kind == "random":
        return N.Random(_num(rng.randint(0, 3)), _num(rng.randint(0, 5)))
    return N.Compare(rng.choice(["<", "<=", "==", ">="]),
                     N.BinOp("%", N.Var("q"), _num(rng.randint(1, 5))),
                     N.BinOp("%", N.Var("k"), _num(rng.randint(1, 5))))


def random_expr(rng: random.Random, n: int, depth: int = 2):
    if depth == 0 or rng.random() < 0.3:
        return random_primitive(rng, n)
    kind = rng.choice(["union", "union", "intersect", "difference", "complement", "blocks",
                       "causal"])
    if kind == "union":
        return N.Union(random_expr(rng, n, depth - 1), random_expr(rng, n, depth - 1))
    if kind == "intersect":
        return N.Intersect(random_expr(rng, n, depth - 1), random_expr(rng, n, depth - 1))
    if kind == "difference":
        return N.Difference(random_expr(rng, n, depth - 1), random_expr(rng, n, depth - 1))
    if kind == "complement":
        return N.Complement(random_expr(rng, n, depth - 1))
    if kind == "blocks":
        return N.Blocks(_num(rng.randint(1, 5)), random_expr(rng, max(2, n // 3), depth - 1))
    return N.Intersect(N.Causal(), random_expr(rng, n, depth - 1))


def random_pattern(rng: random.Random, n: int) -> Pattern:
    if rng.random() < 0.2:
        bodies = tuple(random_expr(rng, n) for _ in range(rng.randint(2, 3)))
        return Pattern(N.Heads(bodies), name="heads")
    return Pattern(random_expr(rng, n), name="random")
