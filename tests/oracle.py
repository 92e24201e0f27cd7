"""An independent brute-force definition of docs/language.md §2, pair by pair, for small sizes.

Written straight from the table of docs/language.md with Python integers; shares nothing with
``spattn_dsl.semantics`` except the random generator's key table (``random_keys``), which the
reference reaches by a different path (``random_mask``).
"""
import math
from functools import lru_cache

import torch

from spattn_dsl.ir import nodes as N
from spattn_dsl.semantics.random import random_keys


def allowed(e, q: int, k: int, n: int, head: int) -> bool:
    t = type(e)
    if t is N.Dense:
        return True
    if t is N.Empty:
        return False
    if t is N.Causal:
        return k <= q
    if t is N.Window:
        return abs(q - k) < e.w
    if t is N.Band:
        return q - e.before <= k <= q + e.after
    if t is N.Dilated:
        return abs(q - k) < e.w * e.d and (q - k) % e.d == 0
    if t is N.Stride:
        return (q - k) % e.s == 0
    if t is N.Chunk:
        return q // e.l == k // e.l
    if t is N.Summary:
        return k % e.l >= e.l - e.c
    if t is N.Global:
        return q < e.first or k < e.first
    if t is N.GlobalTokens:
        return q in e.tokens or k in e.tokens
    if t is N.Sink:
        return k < e.g
    if t is N.Prefix:
        return q < e.p and k < e.p
    if t is N.Random:
        if e.fresh:  # among its candidates (docs/language.md 2.2.1): Floyd over their count
            return k in _drawn_fresh(e, q, n, head)
        return k in _drawn(e.r, e.seed, q, n)
    if t is N.Compare:
        a, b = value(e.left, q, k), value(e.right, q, k)
        return {"<": a < b, "<=": a <= b, "==": a == b, "!=": a != b, ">=": a >= b,
                ">": a > b}[e.op]
    if t is N.Union:
        return allowed(e.left, q, k, n, head) or allowed(e.right, q, k, n, head)
    if t is N.Intersect:
        return allowed(e.left, q, k, n, head) and allowed(e.right, q, k, n, head)
    if t is N.Difference:
        return allowed(e.left, q, k, n, head) and not allowed(e.right, q, k, n, head)
    if t is N.Complement:
        return not allowed(e.operand, q, k, n, head)
    if t is N.Blocks:
        return allowed(e.body, q // e.size, k // e.size, -(-n // e.size), head)
    if t is N.Heads:
        return allowed(e.bodies[head % len(e.bodies)], q, k, n, head)
    raise TypeError(t)


@lru_cache(maxsize=65536)
def _drawn_fresh(e, q: int, n: int, head: int) -> frozenset:
    candidates = [c for c in range(n) if allowed(e.among, q, c, n, head)]
    return frozenset(candidates[i] for i in random_keys(e.r, e.seed, [q], len(candidates))[0])


@lru_cache(maxsize=65536)
def _drawn(r: int, seed: int, q: int, n: int) -> frozenset:
    return frozenset(random_keys(r, seed, [q], n)[0].tolist())


def value(e, q, k) -> int:
    if isinstance(e, N.Num):
        return e.value
    if isinstance(e, N.Var):
        return {"q": q, "k": k}[e.name]
    if isinstance(e, N.Neg):
        return -value(e.operand, q, k)
    if isinstance(e, N.Call):
        args = [value(a, q, k) for a in e.args]
        return {"min": min, "max": max, "isqrt": math.isqrt,
                "log2": lambda x: x.bit_length() - 1}[e.func](*args)
    a, b = value(e.left, q, k), value(e.right, q, k)
    ops = {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b,
           "//": lambda: a // b, "%": lambda: a % b}
    return ops[e.op]()


def brute_mask(pattern, n_q: int, n_k: int | None = None, head: int = 0) -> torch.Tensor:
    n_k = n_q if n_k is None else n_k
    e = pattern.at(n_k)
    offset = n_k - n_q
    return torch.tensor([[allowed(e, i + offset, k, n_k, head) for k in range(n_k)]
                         for i in range(n_q)], dtype=torch.bool).reshape(n_q, n_k)
