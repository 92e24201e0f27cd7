"""Each query row's key set as a prefix, an interval and a few extra keys, for all rows at once.

A ``Rows`` value describes, for every query ``q`` in ``0..n-1`` (numpy arrays indexed by q),
the key set ``[0, pre) | [lo, hi] | {extra[q, j] : extra[q, j] >= 0}``. The empty interval is
``lo > hi``. Windows, bands, causal, chunks, sinks, global tokens and prefixes all land in
this form without any n x n structure; ``random`` keys are the extras. Set operations that
would leave the form (a stride, a summary, two disjoint intervals) raise ``NotRepresentable``
and the caller picks another method.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir import nodes as N
from ..ir.evaluate import head_count, select_head
from .draws import drawn_keys, node_random


class NotRepresentable(Exception):
    """The mask is not a prefix plus one interval (plus random keys) in every row."""


@dataclass(frozen=True)
class Rows:
    pre: np.ndarray  # int64 [n]: keys [0, pre)
    lo: np.ndarray  # int64 [n]
    hi: np.ndarray  # int64 [n]: keys [lo, hi], empty when lo > hi
    extra: np.ndarray | None = None  # int64 [n, m]: more keys, -1 where none

    @property
    def n(self) -> int:
        return len(self.pre)

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """Whether each ``keys[q, j]`` is in row q's prefix or interval (extras ignored)."""
        pre, lo, hi = self.pre[:, None], self.lo[:, None], self.hi[:, None]
        return (keys < pre) | ((keys >= lo) & (keys <= hi))


def rows_of(expr, n: int, queries: np.ndarray | None = None) -> Rows:
    """The rows of a concrete mask expression (heads unioned) over keys ``0..n-1``."""
    q = np.arange(n, dtype=np.int64) if queries is None else queries
    result = None
    for head in range(head_count(expr)):
        rows = _rows(select_head(expr, head), q, n, {})
        result = rows if result is None else union(result, rows, n)
    return result


# ---------------------------------------------------------------- primitives
def _interval(q, lo, hi, n) -> Rows:
    zero = np.zeros_like(q)
    return Rows(zero, np.maximum(lo, 0), np.minimum(hi, n - 1))


def _prefix(q, pre, n) -> Rows:
    return Rows(np.clip(pre, 0, n), np.ones_like(q), np.zeros_like(q))


def _rows(expr, q: np.ndarray, n: int, memo: dict) -> Rows:
    """The rows of ``expr`` for queries ``q`` on ``n`` keys. ``memo`` holds each shared
    sub-expression's rows (a pattern that uses another twice: ``p_i { p_j | p_j & causal }``
    nested nine deep expands to 2**10 nodes, but has 28 distinct sub-expressions)."""
    key = (expr, id(q), n)  # equal sub-expressions, not only the same object
    if key not in memo:
        memo[key] = (q, _rows_of_node(expr, q, n, memo))  # q held: its id stays its own
    return memo[key][1]


def _rows_of_node(expr, q: np.ndarray, n: int, memo: dict) -> Rows:
    t = type(expr)
    if t is N.Dense:
        return _prefix(q, np.full_like(q, n), n)
    if t is N.Empty:
        return _prefix(q, np.zeros_like(q), n)
    if t is N.Causal:
        return _prefix(q, q + 1, n)
    if t is N.Window:
        return _interval(q, q - expr.w + 1, q + expr.w - 1, n)
    if t is N.Band:
        return _interval(q, q - expr.before, q + expr.after, n)
    if t is N.Dilated and (expr.d == 1 or expr.w == 1):
        return _interval(q, q - expr.w + 1, q + expr.w - 1, n) if expr.d == 1 \
            else _interval(q, q, q, n)
    if t is N.Stride and (expr.s == 1 or expr.s >= n):
        return _prefix(q, np.full_like(q, n), n) if expr.s == 1 else _interval(q, q, q, n)
    if t is N.Chunk:
        start = q // expr.l * expr.l
        return _interval(q, start, start + expr.l - 1, n)
    if t is N.Summary and (expr.c == expr.l or n <= expr.l):
        return _interval(q, np.full_like(q, expr.l - expr.c), np.full_like(q, n - 1), n)
    if t is N.Sink:
        return _prefix(q, np.full_like(q, expr.g), n)
    if t is N.Prefix:
        return _prefix(q, np.where(q < expr.p, expr.p, 0), n)
    if t is N.Global:
        return _prefix(q, np.where(q < expr.first, n, expr.first), n)
    if t is N.GlobalTokens:
        return _global_tokens(expr.tokens, q, n)
    if t is N.Random:
        keys = drawn_keys(node_random(expr), q, n)
        return Rows(np.zeros_like(q), np.ones_like(q), np.zeros_like(q), keys)
    if t is N.Union:
        return union(_rows(expr.left, q, n, memo), _rows(expr.right, q, n, memo), n)
    if t is N.Intersect:
        return intersect(_rows(expr.left, q, n, memo), _rows(expr.right, q, n, memo), n)
    if t is N.Difference:
        return intersect(_rows(expr.left, q, n, memo),
                         complement(_rows(expr.right, q, n, memo), n), n)
    if t is N.Complement:
        return complement(_rows(expr.operand, q, n, memo), n)
    if t is N.Blocks:
        return _blocks(expr, q, n, memo)
    if t is N.Compare:
        return _compare(expr, q, n)
    raise NotRepresentable(f"{_name(expr)} has no interval form at n = {n}")


def _name(expr) -> str:
    from ..ir.printer import text
    return text(expr)


def _global_tokens(tokens, q, n) -> Rows:
    inside = sorted({t for t in tokens if t < n})
    if not inside:
        return _prefix(q, np.zeros_like(q), n)
    if inside[-1] - inside[0] + 1 != len(inside):
        raise NotRepresentable("global tokens that are not contiguous have no interval form")
    is_global = np.isin(q, np.array(inside))
    keys = _interval(q, np.full_like(q, inside[0]), np.full_like(q, inside[-1]), n)
    every = _prefix(q, np.where(is_global, n, 0), n)
    return union(keys, every, n)


def _compare(expr, q, n) -> Rows:
    """``where`` comparisons on q - k, q or k alone whose allowed set is one interval, or
    of ``k`` against any expression of ``q`` (``_threshold``)."""
    from .terms import layer_terms
    try:
        terms = layer_terms(expr, n)
    except NotRepresentable:
        return _threshold(expr, q, n)
    if not terms:
        return _prefix(q, np.zeros_like(q), n)
    (term,) = terms
    if term.qmask is not None:
        return _prefix(q, np.where(term.qmask[q], n, 0), n)
    if term.kmask is not None:
        lo, hi = _one_run(term.kmask, "keys")
        return _prefix(q, np.full_like(q, hi + 1), n) if lo == 0 else \
            _interval(q, np.full_like(q, lo), np.full_like(q, hi), n)
    lo, hi = _one_run(term.offsets, "offsets")
    return _interval(q, q - (hi - (n - 1)), q - (lo - (n - 1)), n)


# k OP t, with OP flipped when k comes with a minus sign
_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}


def _threshold(expr, q, n) -> Rows:
    """``a*k + h(q, n) OP 0`` with ``a = +-1`` and ``h`` free of k (a NATTEN neighbourhood:
    ``k >= min(max(q - 2, 0), n - 5) & k < ... + 5``): ``k OP t(q)`` with ``t`` evaluated
    for every row at once, so each row is a prefix, an interval or both (``!=``). O(n)."""
    import torch

    from ..semantics.reference import _int
    difference = N.BinOp("-", expr.left, expr.right)
    a = _k_coefficient(difference)
    if a not in (1, -1):
        raise NotRepresentable("a where(...) comparison that mixes q and k beyond q - k")
    rows = torch.from_numpy(np.ascontiguousarray(q))
    h = _int(difference, rows, torch.zeros(1, dtype=torch.int64))  # the value at k = 0
    h = np.broadcast_to(np.asarray(h.numpy() if hasattr(h, "numpy") else h, dtype=np.int64),
                        q.shape)
    t, op = (-h, expr.op) if a == 1 else (h, _FLIP[expr.op])
    none = np.zeros_like(q)
    if op in ("<", "<="):
        return _prefix(q, t + (op == "<="), n)
    if op in (">", ">="):
        return _interval(q, t + (op == ">"), np.full_like(q, n - 1), n)
    if op == "==":
        return _interval(q, t, t, n)
    return Rows(np.clip(t, 0, n), np.maximum(t + 1, 0), np.full_like(q, n - 1)) \
        if len(q) else Rows(none, none, none)


def _k_coefficient(expr):
    """``a`` when the expression is ``a*k`` plus terms free of k, joined by + and - (k only
    as a summand), else None."""
    from ..ir.evaluate import mentions
    if not mentions(expr, {"k"}):
        return 0
    if isinstance(expr, N.Var):
        return 1
    if isinstance(expr, N.Neg):
        inner = _k_coefficient(expr.operand)
        return None if inner is None else -inner
    if isinstance(expr, N.BinOp) and expr.op in "+-":
        left, right = _k_coefficient(expr.left), _k_coefficient(expr.right)
        if left is None or right is None:
            return None
        return left + right if expr.op == "+" else left - right
    return None


def _one_run(flags, what):
    allowed = np.flatnonzero(flags)
    if len(allowed) == 0 or allowed[-1] - allowed[0] + 1 != len(allowed):
        raise NotRepresentable(f"a where(...) whose allowed {what} are not one interval")
    return int(allowed[0]), int(allowed[-1])


def _blocks(expr, q, n, memo) -> Rows:
    b = expr.size
    grid = _rows(expr.body, q // b, -(-n // b), memo)
    if grid.extra is not None:
        raise NotRepresentable("random keys inside blocks(...) have no interval form")
    empty = grid.lo > grid.hi
    lo = np.where(empty, 1, grid.lo * b)
    hi = np.where(empty, 0, np.minimum(grid.hi * b + b - 1, n - 1))
    return Rows(np.minimum(grid.pre * b, n), lo, hi)


# ---------------------------------------------------------------- set algebra
def _empty(rows: Rows) -> np.ndarray:
    return rows.lo > rows.hi


def normalize(rows: Rows) -> Rows:
    """Fold an interval that touches the prefix into it; drop interval keys under the prefix."""
    touches = ~_empty(rows) & (rows.lo <= rows.pre)
    pre = np.where(touches, np.maximum(rows.pre, rows.hi + 1), rows.pre)
    lo = np.where(touches, 1, rows.lo)
    hi = np.where(touches, 0, rows.hi)
    extra = rows.extra
    if extra is not None:
        inside = Rows(pre, lo, hi).contains(extra)
        extra = np.where(inside, -1, extra)
        extra = None if (extra < 0).all() else extra
    return Rows(pre, lo, hi, extra)


def union(a: Rows, b: Rows, n: int) -> Rows:
    pre = np.maximum(a.pre, b.pre)
    a = normalize(Rows(pre, a.lo, a.hi, a.extra))
    b = normalize(Rows(pre, b.lo, b.hi, b.extra))
    pre = np.maximum(a.pre, b.pre)
    a_empty, b_empty = _empty(a), _empty(b)
    meets = (a.lo <= b.hi + 1) & (b.lo <= a.hi + 1)
    if (~a_empty & ~b_empty & ~meets).any():
        raise NotRepresentable("a union of two separate intervals has no interval form")
    lo = np.where(a_empty, b.lo, np.where(b_empty, a.lo, np.minimum(a.lo, b.lo)))
    hi = np.where(a_empty, b.hi, np.where(b_empty, a.hi, np.maximum(a.hi, b.hi)))
    return normalize(Rows(pre, lo, hi, _join_extra(a.extra, b.extra)))


def _join_extra(x, y):
    if x is None or y is None:
        return y if x is None else x
    both = np.concatenate([x, y], axis=1)
    both.sort(axis=1)
    repeated = np.zeros_like(both, dtype=bool)
    repeated[:, 1:] = both[:, 1:] == both[:, :-1]
    return np.where(repeated, -1, both)


def _keep_extra(extra, other: Rows):
    """The extras of one side that the other side also allows."""
    if extra is None:
        return None
    allowed = other.contains(extra) | _in_extra(extra, other.extra)
    return np.where(allowed & (extra >= 0), extra, -1)


def _in_extra(keys, extra):
    if extra is None:
        return np.zeros(keys.shape, dtype=bool)
    return (keys[:, :, None] == extra[:, None, :]).any(axis=2)


def intersect(a: Rows, b: Rows, n: int) -> Rows:
    pieces = [
        Rows(np.minimum(a.pre, b.pre), np.ones_like(a.pre), np.zeros_like(a.pre)),
        Rows(np.zeros_like(a.pre), a.lo, np.minimum(a.hi, b.pre - 1)),
        Rows(np.zeros_like(a.pre), b.lo, np.minimum(b.hi, a.pre - 1)),
        Rows(np.zeros_like(a.pre), np.maximum(a.lo, b.lo), np.minimum(a.hi, b.hi)),
    ]
    result = pieces[0]
    for piece in pieces[1:]:
        result = union(result, piece, n)
    extra = _join_extra(_keep_extra(a.extra, b), _keep_extra(b.extra, Rows(a.pre, a.lo, a.hi)))
    return normalize(Rows(result.pre, result.lo, result.hi, extra))


def complement(a: Rows, n: int) -> Rows:
    a = normalize(a)
    if a.extra is not None:
        raise NotRepresentable("the complement of random keys has no interval form")
    empty = _empty(a)
    top = np.where(empty, a.pre, a.hi + 1)  # first key after the set
    gap_lo = np.where(empty, n, a.pre)  # the hole between prefix and interval: [pre, lo)
    gap_hi = np.where(empty, n - 1, a.lo - 1)
    no_prefix = a.pre == 0
    holes = ~empty & ~no_prefix & (gap_lo <= gap_hi) & (top <= n - 1)
    if holes.any():
        raise NotRepresentable("a complement with two separate gaps has no interval form")
    # no prefix: [0, lo) is the new prefix and [hi + 1, n) the interval
    pre = np.where(no_prefix & ~empty, a.lo, 0)
    lo = np.where(no_prefix & ~empty, top, np.where(~empty & (top > n - 1), gap_lo, top))
    hi = np.where(no_prefix & ~empty, n - 1, np.where(~empty & (top > n - 1), gap_hi, n - 1))
    return normalize(Rows(pre, lo, hi))
