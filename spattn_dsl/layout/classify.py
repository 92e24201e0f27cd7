"""Analytic tile classification: a concrete mask expression over rectangles of (q, k).

A rectangle is a query interval ``[q_lo, q_hi]`` times a key interval ``[k_lo, k_hi]`` of
absolute positions on the current grid (token or block grid, key count ``n``). The query
bounds are ``[T_q, 1]`` int64 tensors, the key bounds ``[1, T_k]``: every pass is vectorised
over all ``T_q x T_k`` rectangles at once.

Each primitive is classified exactly (EMPTY: no pair allowed, FULL: every pair allowed,
PARTIAL: some), by interval arithmetic on ``q - k`` or on one coordinate. Combinators use
three-valued logic, which can only err by calling a tile PARTIAL that is really EMPTY or
FULL; such tiles are flagged ``unsure`` and resolved by ``layout.build`` against the exact
pair predicate. ``where`` (``Compare``) is bounded by interval arithmetic and flagged unsure
when undecided; ``random`` is classified exactly by counting its draws per rectangle.
"""
from __future__ import annotations

import math

import torch

from ..ir import nodes as N
from ..semantics.random import random_keys

EMPTY, PARTIAL, FULL = 0, 1, 2
_INF = 1 << 60  # beyond any position or clamped parameter (both <= 2**48); int64 bounds


def classify(expr, q_lo, q_hi, k_lo, k_hi, n: int):
    """(state int8 [T_q, T_k], unsure bool [T_q, T_k] or None) for a concrete expression."""
    q_lo, q_hi, k_lo, k_hi = (t.to(torch.int64) for t in (q_lo, q_hi, k_lo, k_hi))
    rule = _RULES.get(type(expr))
    if rule is None:
        raise TypeError(f"no tile classifier for {type(expr).__name__} (select a head first)")
    state, unsure = rule(expr, q_lo, q_hi, k_lo, k_hi, n)
    shape = (q_lo.shape[0], k_lo.shape[1])
    return state.to(torch.int8).expand(shape), None if unsure is None else unsure.expand(shape)


# ------------------------------------------------------------------ counting helpers
def _by_count(count, size):
    """State from how many of ``size`` candidates are allowed."""
    return (count > 0).to(torch.int8) + (count >= size).to(torch.int8)


def _count_interval(lo, hi, a: int, b: int):
    """How many integers of ``[lo, hi]`` lie in ``[a, b]``."""
    a, b = max(a, -_INF), min(b, _INF)
    return (torch.clamp(hi, max=b) - torch.clamp(lo, min=a) + 1).clamp(min=0)


def _count_multiples(lo, hi, s: int):
    """How many multiples of ``s`` lie in ``[lo, hi]`` (0 where the interval is empty)."""
    count = torch.div(hi, s, rounding_mode="floor") - torch.div(lo - 1, s, rounding_mode="floor")
    return torch.where(hi >= lo, count, 0)


def _diff_range(q_lo, q_hi, k_lo, k_hi):
    """Every value of ``q - k`` over the rectangle: the contiguous range ``[lo, hi]``."""
    return q_lo - k_hi, q_hi - k_lo


def _on_diff(allowed_count):
    def rule(expr, q_lo, q_hi, k_lo, k_hi, n):
        lo, hi = _diff_range(q_lo, q_hi, k_lo, k_hi)
        return _by_count(allowed_count(expr, lo, hi), hi - lo + 1), None
    return rule


def _dilated_count(expr, lo, hi):
    span = min(expr.w * expr.d, _INF)
    lo, hi = lo.clamp(min=-span + 1), hi.clamp(max=span - 1)
    return _count_multiples(lo, hi, expr.d)


def _either(a, b):
    """Union of a query-only and a key-only condition (exact: the two are independent)."""
    return torch.maximum(a, b)


def _both(a, b):
    return torch.minimum(a, b)


def _below(lo, hi, g: int):
    """State of ``x < g`` over ``[lo, hi]``."""
    return _by_count(_count_interval(lo, hi, -_INF, g - 1), hi - lo + 1)


def _summary_count(x, l: int, c: int):  # noqa: E741
    """How many ``k`` in ``[0, x)`` have ``k mod l >= l - c``."""
    return torch.div(x, l, rounding_mode="floor") * c + (torch.remainder(x, l) - (l - c)).clamp(min=0)


def _tokens_in(tokens, lo, hi):
    table = torch.tensor(sorted(set(tokens)), dtype=lo.dtype)
    count = torch.searchsorted(table, hi.contiguous(), right=True) - \
        torch.searchsorted(table, lo.contiguous(), right=False)
    return _by_count(count, hi - lo + 1)


# ------------------------------------------------------------------ primitives
def _dense(expr, q_lo, q_hi, k_lo, k_hi, n):
    return torch.full((1, 1), FULL), None


def _empty(expr, q_lo, q_hi, k_lo, k_hi, n):
    return torch.full((1, 1), EMPTY), None


def _chunk(expr, q_lo, q_hi, k_lo, k_hi, n):
    l = expr.l  # noqa: E741
    qa, qb = q_lo // l, q_hi // l
    ka, kb = k_lo // l, k_hi // l
    overlap = (qa <= kb) & (ka <= qb)
    single = (qa == qb) & (ka == kb) & (qa == ka)
    return overlap.to(torch.int8) + single.to(torch.int8), None


def _summary(expr, q_lo, q_hi, k_lo, k_hi, n):
    count = _summary_count(k_hi + 1, expr.l, expr.c) - _summary_count(k_lo, expr.l, expr.c)
    return _by_count(count, k_hi - k_lo + 1), None


def _global(expr, q_lo, q_hi, k_lo, k_hi, n):
    return _either(_below(q_lo, q_hi, expr.first), _below(k_lo, k_hi, expr.first)), None


def _global_tokens(expr, q_lo, q_hi, k_lo, k_hi, n):
    if not expr.tokens:
        return torch.full((1, 1), EMPTY), None
    return _either(_tokens_in(expr.tokens, q_lo, q_hi), _tokens_in(expr.tokens, k_lo, k_hi)), None


def _sink(expr, q_lo, q_hi, k_lo, k_hi, n):
    return _below(k_lo, k_hi, expr.g), None


def _prefix(expr, q_lo, q_hi, k_lo, k_hi, n):
    return _both(_below(q_lo, q_hi, expr.p), _below(k_lo, k_hi, expr.p)), None


def _covering(lo, hi, x):
    """For sorted intervals ``[lo_j, hi_j]`` (both non-decreasing), the first and last j
    containing each value of ``x``; first > last when none does."""
    x = x.contiguous()
    first = torch.searchsorted(hi.contiguous(), x, right=False)
    last = torch.searchsorted(lo.contiguous(), x, right=True) - 1
    return first, last


def _sorted_order(lo, hi):
    """(the order sorting intervals by (lo, hi), whether hi is then non-decreasing too: what
    ``_covering`` needs; false only for nested intervals)."""
    order = torch.argsort(hi, stable=True)
    order = order[torch.argsort(lo[order], stable=True)]
    ends = hi[order]
    return order, bool((ends[1:] >= ends[:-1]).all())


def _random(expr, q_lo, q_hi, k_lo, k_hi, n):
    """Exact: count the drawn pairs falling in each rectangle (a draw may lie in several
    rectangles when intervals repeat, as on a block grid coarser than the tiles, or overlap,
    as the tiles of residue classes do)."""
    qa, qb, ka, kb = (t.reshape(-1).long() for t in (q_lo, q_hi, k_lo, k_hi))
    t_q, t_k = len(qa), len(ka)
    area = (qb - qa + 1)[:, None] * (kb - ka + 1)[None, :]
    if expr.r == 0 or t_q == 0 or t_k == 0:
        return _by_count(torch.zeros(t_q, t_k, dtype=torch.int64), area), None
    q_order, q_sorted = _sorted_order(qa, qb)
    k_order, k_sorted = _sorted_order(ka, kb)
    if not (q_sorted and k_sorted):
        return _by_count(_random_counts_per_row_interval(expr, qa, qb, ka, kb, n), area), None
    counts = torch.zeros(t_q, t_k, dtype=torch.int64)
    counts[q_order[:, None], k_order[None, :]] = _random_counts_sorted(
        expr, qa[q_order], qb[q_order], ka[k_order], kb[k_order], n)
    return _by_count(counts, area), None


def _random_counts_sorted(expr, qa, qb, ka, kb, n):
    """Drawn pairs per rectangle, for intervals sorted as ``_covering`` needs."""
    t_q, t_k = len(qa), len(ka)
    counts = torch.zeros(t_q * t_k, dtype=torch.int64)
    rows = torch.arange(int(qa.min()), int(qb.max()) + 1, dtype=torch.int64)
    keys = torch.from_numpy(random_keys(expr.r, expr.seed, rows.numpy(), n))
    draw_rows = rows[:, None].expand_as(keys).reshape(-1)
    keys = keys.reshape(-1)
    i0, i1 = _covering(qa, qb, draw_rows)
    j0, j1 = _covering(ka, kb, keys)
    for di in range(int((i1 - i0).max().clamp(min=-1)) + 1):
        for dj in range(int((j1 - j0).max().clamp(min=-1)) + 1):
            i, j = i0 + di, j0 + dj
            ok = (i <= i1) & (j <= j1)
            counts += torch.bincount((i * t_k + j)[ok], minlength=t_q * t_k)
    return counts.view(t_q, t_k)


def _random_counts_per_row_interval(expr, qa, qb, ka, kb, n):
    """The same for any intervals (nested ones too): each row interval's draws against every
    key interval."""
    counts = torch.zeros(len(qa), len(ka), dtype=torch.int64)
    for i in range(len(qa)):
        rows = torch.arange(int(qa[i]), int(qb[i]) + 1, dtype=torch.int64)
        keys = torch.from_numpy(random_keys(expr.r, expr.seed, rows.numpy(), n)).reshape(-1, 1)
        counts[i] = ((keys >= ka[None, :]) & (keys <= kb[None, :])).sum(0)
    return counts


# ------------------------------------------------------------------ where(...)
def _interval(expr, q, k):
    """Float64 interval (lo, hi) of an integer expression; +-inf where unbounded."""
    if isinstance(expr, N.Num):
        v = torch.tensor(float(expr.value), dtype=torch.float64)
        return v, v
    if isinstance(expr, N.Var):
        return q if expr.name == "q" else k
    if isinstance(expr, N.Neg):
        lo, hi = _interval(expr.operand, q, k)
        return -hi, -lo
    if isinstance(expr, N.Call):
        args = [_interval(a, q, k) for a in expr.args]
        if expr.func in ("min", "max"):
            f = torch.minimum if expr.func == "min" else torch.maximum
            return _clean(f(args[0][0], args[1][0]), f(args[0][1], args[1][1]))
        lo, hi = args[0]
        if expr.func == "isqrt":
            return _clean(torch.floor(torch.sqrt(lo.clamp(min=0))) - 1,
                          torch.floor(torch.sqrt(hi.clamp(min=0))) + 1)
        return _clean(torch.floor(torch.log2(lo.clamp(min=1))) - 1,
                      torch.floor(torch.log2(hi.clamp(min=1))) + 1)
    (alo, ahi), (blo, bhi) = _interval(expr.left, q, k), _interval(expr.right, q, k)
    if expr.op == "+":
        return _clean(alo + blo, ahi + bhi)
    if expr.op == "-":
        return _clean(alo - bhi, ahi - blo)
    if expr.op == "*":
        prods = torch.stack(torch.broadcast_tensors(alo * blo, alo * bhi, ahi * blo, ahi * bhi))
        return _clean(prods.nan_to_num(nan=-math.inf).amin(0), prods.nan_to_num(nan=math.inf).amax(0))
    constant = _constant(blo, bhi)
    if expr.op == "//" and constant is not None and constant > 0:
        return _clean(torch.floor(alo / constant), torch.floor(ahi / constant))
    if expr.op == "%" and constant is not None and constant > 0:
        same = torch.floor(alo / constant) == torch.floor(ahi / constant)
        lo = torch.where(same, alo - constant * torch.floor(alo / constant), 0.0)
        hi = torch.where(same, ahi - constant * torch.floor(ahi / constant), constant - 1.0)
        return _clean(lo, hi)
    inf = torch.tensor(math.inf, dtype=torch.float64)
    return -inf, inf


def _constant(lo, hi):
    if lo.numel() == 1 and hi.numel() == 1 and float(lo) == float(hi) and math.isfinite(float(lo)):
        return float(lo)
    return None


def _clean(lo, hi):
    """Widen NaN and very large bounds (past exact float64 integers) to infinity."""
    big = float(1 << 50)
    lo = torch.where(torch.isnan(lo) | (lo < -big), -math.inf, lo)
    hi = torch.where(torch.isnan(hi) | (hi > big), math.inf, hi)
    return lo, hi


def _compare(expr, q_lo, q_hi, k_lo, k_hi, n):
    q = (q_lo.double(), q_hi.double())
    k = (k_lo.double(), k_hi.double())
    (alo, ahi), (blo, bhi) = _interval(expr.left, q, k), _interval(expr.right, q, k)
    op = expr.op
    if op in (">", ">="):
        (alo, ahi), (blo, bhi), op = (blo, bhi), (alo, ahi), "<" if op == ">" else "<="
    if op == "<":
        true, false = ahi < blo, alo >= bhi
    elif op == "<=":
        true, false = ahi <= blo, alo > bhi
    else:
        true = (alo == ahi) & (blo == bhi) & (alo == blo)
        false = (ahi < blo) | (bhi < alo)
        if op == "!=":
            true, false = false, true
    state = torch.where(true, FULL, torch.where(false, EMPTY, PARTIAL))
    return state, state == PARTIAL


# ------------------------------------------------------------------ combinators
def _union(expr, q_lo, q_hi, k_lo, k_hi, n):
    a, ua = classify(expr.left, q_lo, q_hi, k_lo, k_hi, n)
    b, ub = classify(expr.right, q_lo, q_hi, k_lo, k_hi, n)
    return torch.maximum(a, b), _merge_unsure(a, ua, b, ub, settled=EMPTY)


def _intersect(expr, q_lo, q_hi, k_lo, k_hi, n):
    a, ua = classify(expr.left, q_lo, q_hi, k_lo, k_hi, n)
    b, ub = classify(expr.right, q_lo, q_hi, k_lo, k_hi, n)
    return torch.minimum(a, b), _merge_unsure(a, ua, b, ub, settled=FULL)


def _difference(expr, q_lo, q_hi, k_lo, k_hi, n):
    a, ua = classify(expr.left, q_lo, q_hi, k_lo, k_hi, n)
    b, ub = classify(expr.right, q_lo, q_hi, k_lo, k_hi, n)
    b = FULL - b
    return torch.minimum(a, b), _merge_unsure(a, ua, b, ub, settled=FULL)


def _complement(expr, q_lo, q_hi, k_lo, k_hi, n):
    a, ua = classify(expr.operand, q_lo, q_hi, k_lo, k_hi, n)
    return FULL - a, ua


def _merge_unsure(a, ua, b, ub, settled: int):
    """A PARTIAL result is exact only when one side is an exact PARTIAL and the other is the
    neutral state (EMPTY for a union, FULL for an intersection)."""
    exact_a = (a == PARTIAL) & (b == settled)
    exact_b = (b == PARTIAL) & (a == settled)
    if ua is not None:
        exact_a &= ~ua
    if ub is not None:
        exact_b &= ~ub
    partial = (a == PARTIAL) | (b == PARTIAL)
    return partial & ~exact_a & ~exact_b & (a != FULL - settled) & (b != FULL - settled)


def _blocks(expr, q_lo, q_hi, k_lo, k_hi, n):
    """A token rectangle covers exactly the block rectangle of its end points' blocks."""
    b = expr.size
    return classify(expr.body, q_lo // b, q_hi // b, k_lo // b, k_hi // b, -(-n // b))


_RULES = {
    N.Dense: _dense, N.Empty: _empty,
    N.Causal: _on_diff(lambda e, lo, hi: _count_interval(lo, hi, 0, _INF)),
    N.Window: _on_diff(lambda e, lo, hi: _count_interval(lo, hi, -e.w + 1, e.w - 1)),
    N.Band: _on_diff(lambda e, lo, hi: _count_interval(lo, hi, -e.after, e.before)),
    N.Dilated: _on_diff(_dilated_count),
    N.Stride: _on_diff(lambda e, lo, hi: _count_multiples(lo, hi, e.s)),
    N.Chunk: _chunk, N.Summary: _summary, N.Global: _global, N.GlobalTokens: _global_tokens,
    N.Sink: _sink, N.Prefix: _prefix, N.Random: _random, N.Compare: _compare,
    N.Union: _union, N.Intersect: _intersect, N.Difference: _difference,
    N.Complement: _complement, N.Blocks: _blocks,
}

__all__ = ["classify", "EMPTY", "PARTIAL", "FULL"]
