"""The reference semantics: a concrete mask expression -> the exact torch.bool mask.

Everything else (layouts, kernels, analysis) is tested against this. Each primitive returns
a tensor that broadcasts to ``[len(q), n_k]`` (a column, a row or a full matrix), so the
common primitives never build n x n integer tensors; no Python loop runs over pairs.
"""
from __future__ import annotations

import torch

from ..errors import PatternError
from ..ir import nodes as N
from ..ir.evaluate import select_head
from .random import node_mask


def mask(expr, n_q: int, n_k: int, head: int = 0) -> torch.Tensor:
    """The ``[n_q, n_k]`` bool mask of a concrete expression, queries bottom-right aligned."""
    q = torch.arange(n_k - n_q, n_k, dtype=torch.int64)
    return evaluate(select_head(expr, head), q, n_k).expand(n_q, n_k).contiguous()


def evaluate(expr, q: torch.Tensor, n_k: int, memo: dict | None = None,
             dynamic=None) -> torch.Tensor:
    """Mask of rows at absolute positions ``q`` (1-D) over keys ``0..n_k-1``, broadcastable.

    ``memo`` (id -> (node, mask)) evaluates a sub-expression shared by several parents (a
    pattern used twice) once, for these rows. ``dynamic``: what a dynamic term stands for in
    this call, ``dynamic(node, q, n_k) -> mask`` (broadcastable like any primitive's), e.g. the
    keys its selection chose, or ``dense`` / ``none`` (``semantics.select``)."""
    memo = {} if memo is None else memo
    hit = memo.get(id(expr))
    if hit is not None:
        return hit[1]
    result = _evaluate(expr, q, n_k, memo, dynamic)
    memo[id(expr)] = (expr, result)
    return result


def _evaluate(expr, q, n_k, memo, dynamic=None) -> torch.Tensor:
    qc = q[:, None]
    k = torch.arange(n_k, dtype=torch.int64)[None, :]
    t = type(expr)
    if t is N.Dense:
        return torch.ones(1, 1, dtype=torch.bool)
    if t is N.Empty:
        return torch.zeros(1, 1, dtype=torch.bool)
    if t is N.Causal:
        return k <= qc
    if t is N.Window:
        return (k > qc - expr.w) & (k < qc + expr.w)
    if t is N.Band:
        return (k >= qc - expr.before) & (k <= qc + expr.after)
    if t is N.Dilated:
        span = expr.w * expr.d
        near = (k > qc - span) & (k < qc + span)
        return near & ((k % expr.d) == (qc % expr.d))
    if t is N.Stride:
        return (k % expr.s) == (qc % expr.s)
    if t is N.Chunk:
        return (k // expr.l) == (qc // expr.l)
    if t is N.Summary:
        return (k % expr.l) >= expr.l - expr.c
    if t is N.Global:
        return (qc < expr.first) | (k < expr.first)
    if t is N.GlobalTokens:
        tokens = torch.tensor(expr.tokens, dtype=torch.int64)
        return torch.isin(qc, tokens) | torch.isin(k, tokens)
    if t is N.Sink:
        return k < expr.g
    if t is N.Prefix:
        return (qc < expr.p) & (k < expr.p)
    if t is N.Random:
        return torch.from_numpy(node_mask(expr, q.numpy(), n_k))  # (fresh: among its candidates)
    if t is N.Compare:
        return _compare(expr, qc, k)
    if t is N.Union:
        return _sub(expr.left, q, n_k, memo, dynamic) | _sub(expr.right, q, n_k, memo, dynamic)
    if t is N.Intersect:
        return _sub(expr.left, q, n_k, memo, dynamic) & _sub(expr.right, q, n_k, memo, dynamic)
    if t is N.Difference:
        return _sub(expr.left, q, n_k, memo, dynamic) & ~_sub(expr.right, q, n_k, memo, dynamic)
    if t is N.Complement:
        return ~_sub(expr.operand, q, n_k, memo, dynamic)
    if t is N.Blocks:
        return _blocks(expr, q, n_k)
    if t in N.DYNAMIC:
        if dynamic is None:
            raise ValueError("a dynamic term has no mask of its own: pass a selection "
                             "(Pattern.mask(..., selection=spattn_dsl.select(...)))")
        return dynamic(expr, q, n_k)
    if t is N.Heads:
        raise TypeError("select a head before evaluating (semantics.reference.mask does)")
    raise TypeError(f"no reference semantics for {t.__name__}")


_sub = evaluate  # a shorter name for the recursive calls above


def _blocks(expr, q: torch.Tensor, n_k: int) -> torch.Tensor:
    b = expr.size
    qb = q // b
    first = int(qb.min()) if len(q) else 0
    grid_rows = torch.arange(first, int(qb.max()) + 1 if len(q) else 0, dtype=torch.int64)
    nb = -(-n_k // b)
    grid = evaluate(expr.body, grid_rows, nb).expand(len(grid_rows), nb)
    kb = torch.arange(n_k, dtype=torch.int64) // b
    return grid.index_select(0, qb - first).index_select(1, kb)


_COMPARE = {"<": torch.lt, "<=": torch.le, "==": torch.eq, "!=": torch.ne,
            ">=": torch.ge, ">": torch.gt}


def _compare(expr, q, k) -> torch.Tensor:
    return _COMPARE[expr.op](_int(expr.left, q, k), _int(expr.right, q, k))


def _int(expr, q, k):
    """An integer expression over q and k, as a broadcastable int64 tensor (or int)."""
    if isinstance(expr, N.Num):
        return expr.value
    if isinstance(expr, N.Var):
        return q if expr.name == "q" else k
    if isinstance(expr, N.Neg):
        return -_int(expr.operand, q, k)
    if isinstance(expr, N.Call):
        args = [_as_tensor(_int(a, q, k)) for a in expr.args]
        if expr.func == "min":
            return torch.minimum(*args)
        if expr.func == "max":
            return torch.maximum(*args)
        x = args[0]
        if expr.func == "isqrt":
            _require(bool((x >= 0).all()), "isqrt() of a negative value", expr)
            return floor_sqrt(x)
        _require(bool((x > 0).all()), "log2() of a value <= 0", expr)
        return floor_log2(x)
    a, b = _int(expr.left, q, k), _int(expr.right, q, k)
    if expr.op == "+":
        return a + b
    if expr.op == "-":
        return a - b
    if expr.op == "*":
        return a * b
    _require(bool((_as_tensor(b) != 0).all()), "division by zero inside where(...)", expr)
    if expr.op == "//":
        return torch.div(_as_tensor(a), b, rounding_mode="floor")
    if expr.op == "%":
        return torch.remainder(_as_tensor(a), b)
    raise PatternError("'/' is not allowed on q or k: use '//'", expr.span)


def floor_sqrt(x: torch.Tensor) -> torch.Tensor:
    """isqrt on int64, exact for x in [0, 2**62] (where(...)'s range): a float estimate, corrected."""
    root = torch.sqrt(x.clamp(min=0).double()).floor().long()
    root = root - (root * root > x).long()
    return root + ((root + 1) * (root + 1) <= x).long()


def floor_log2(x: torch.Tensor) -> torch.Tensor:
    """log2 (floor) on int64, exact for x in [1, 2**62]: a float estimate corrected by right
    shifts (``1 << (bits + 1)`` overflows at 2**62); shift counts stay in [0, 63]."""
    bits = torch.log2(x.clamp(min=1).double()).floor().long().clamp(max=62)
    bits = bits - ((x >> bits) == 0).long()  # 2**bits > x
    return bits + ((x >> (bits + 1)) > 0).long()  # 2**(bits + 1) <= x


def _as_tensor(x):
    return x if isinstance(x, torch.Tensor) else torch.tensor(x, dtype=torch.int64)


def _require(ok: bool, message: str, expr):
    if not ok:
        raise PatternError(message, expr.span)
