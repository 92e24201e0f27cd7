"""The exact pair predicate on arbitrary broadcastable position tensors.

``allowed(expr, q, k, n)``: ``q`` and ``k`` are int64 tensors of absolute positions on a grid
of ``n`` keys that broadcast against each other (e.g. ``[T, BLOCK_M, 1]`` and
``[T, 1, BLOCK_N]``). It agrees with ``semantics.reference`` pair by pair but never builds
rows over all keys, so it can check a few tiles of a long sequence. The same operators also
work on 0-dim tensors, which is how FlexAttention's ``mask_mod`` uses it.
"""
from __future__ import annotations

import numpy as np
import torch

from ..ir import nodes as N
from ..semantics.random import node_keys
from ..semantics.reference import floor_log2, floor_sqrt


def allowed(expr, q, k, n: int, tables: dict | None = None):
    """Bool tensor (broadcast of ``q`` and ``k``): which pairs the expression allows.

    ``tables`` maps a ``Random`` node's key (``random_table_key``) to its ``[rows, r]`` draw
    table; without it the draws are computed for the rows present in ``q``.
    """
    t = type(expr)
    if t is N.Dense:
        return (q >= 0) | (k >= 0) | True
    if t is N.Empty:
        return (q < 0) & (k < 0) & False
    if t is N.Causal:
        return k <= q
    if t is N.Window:
        return ((q - k) < expr.w) & ((k - q) < expr.w)
    if t is N.Band:
        return (k >= q - expr.before) & (k <= q + expr.after)
    if t is N.Dilated:
        d = q - k
        return (d < expr.w * expr.d) & (-d < expr.w * expr.d) & (torch.remainder(d, expr.d) == 0)
    if t is N.Stride:
        return torch.remainder(q - k, expr.s) == 0
    if t is N.Chunk:
        return torch.div(q, expr.l, rounding_mode="floor") == torch.div(k, expr.l, rounding_mode="floor")
    if t is N.Summary:
        return (torch.remainder(k, expr.l) >= expr.l - expr.c) | (q < -1)
    if t is N.Global:
        return (q < expr.first) | (k < expr.first)
    if t is N.GlobalTokens:
        hit_q = (q < -1)
        hit_k = (k < -1)
        for token in expr.tokens:
            hit_q = hit_q | (q == token)
            hit_k = hit_k | (k == token)
        return hit_q | hit_k
    if t is N.Sink:
        return (k < expr.g) | (q < -1)
    if t is N.Prefix:
        return (q < expr.p) & (k < expr.p)
    if t is N.Random:
        return _random(expr, q, k, n, tables)
    if t is N.Compare:
        return _COMPARE[expr.op](int_value(expr.left, q, k), int_value(expr.right, q, k))
    if t is N.Union:
        return allowed(expr.left, q, k, n, tables) | allowed(expr.right, q, k, n, tables)
    if t is N.Intersect:
        return allowed(expr.left, q, k, n, tables) & allowed(expr.right, q, k, n, tables)
    if t is N.Difference:
        return allowed(expr.left, q, k, n, tables) & ~allowed(expr.right, q, k, n, tables)
    if t is N.Complement:
        return ~allowed(expr.operand, q, k, n, tables)
    if t is N.Blocks:
        b = expr.size
        return allowed(expr.body, torch.div(q, b, rounding_mode="floor"),
                       torch.div(k, b, rounding_mode="floor"), -(-n // b), tables)
    raise TypeError(f"no pair predicate for {t.__name__} (select a head first)")


def random_table(expr, n: int) -> torch.Tensor:
    """int64 ``[n, r]``: the keys drawn for every row ``0..n-1`` of an ``n``-key grid, padded
    with -1 where ``r > n`` (or, for ``fresh = 1``, past a row's candidates)."""
    return torch.from_numpy(node_keys(expr, np.arange(n), n))  # (fresh: among its candidates)


def random_table_key(expr, n: int):
    """(r, seed, n), and for ``fresh = 1`` its candidates (the draws depend on them)."""
    return (expr.r, expr.seed, n) + ((expr.among,) if expr.fresh else ())


def _random(expr, q, k, n, tables):
    if expr.r == 0:
        return (q < 0) & (k < 0) & False
    key = random_table_key(expr, n)
    if tables is not None and key in tables:
        table = tables[key]
        hit = (q < -1) & (k < -1)
        rows = q.clamp(0, n - 1)
        for j in range(table.shape[1]):
            hit = hit | (table[rows, j] == k)
        return hit
    rows, inverse = torch.unique(q, return_inverse=True)
    keys = torch.from_numpy(node_keys(expr, rows.numpy(), n))[inverse]
    return (keys == k.unsqueeze(-1)).any(-1)


_COMPARE = {"<": torch.lt, "<=": torch.le, "==": torch.eq, "!=": torch.ne,
            ">=": torch.ge, ">": torch.gt}


def int_value(expr, q, k):
    """An integer expression over q and k with the language's floor division and modulo."""
    if isinstance(expr, N.Num):
        return expr.value
    if isinstance(expr, N.Var):
        return q if expr.name == "q" else k
    if isinstance(expr, N.Neg):
        return -int_value(expr.operand, q, k)
    if isinstance(expr, N.Call):
        args = [torch.as_tensor(int_value(a, q, k)) for a in expr.args]
        if expr.func in ("min", "max"):
            return (torch.minimum if expr.func == "min" else torch.maximum)(*args)
        x = args[0]
        return (floor_sqrt if expr.func == "isqrt" else floor_log2)(x)
    a, b = int_value(expr.left, q, k), int_value(expr.right, q, k)
    if expr.op == "+":
        return a + b
    if expr.op == "-":
        return a - b
    if expr.op == "*":
        return a * b
    if expr.op == "//":
        return torch.div(torch.as_tensor(a), b, rounding_mode="floor")
    if expr.op == "%":
        return torch.remainder(torch.as_tensor(a), b)
    raise ValueError(f"operator {expr.op!r} is not allowed on q or k")
