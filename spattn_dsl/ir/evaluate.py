"""Integer arithmetic and instantiation: a bound expression at a sequence length -> concrete IR.

``instantiate(expr, n)`` evaluates every primitive argument with ``n`` = the key count of the
grid it lives on (inside ``blocks(b)``, ``ceil(n / b)``), checks each primitive's constraints
and returns the same tree with plain ``int`` fields. ``Compare`` keeps ``q`` and ``k``
symbolic, with ``n`` and constants folded.
"""
from __future__ import annotations

import dataclasses
import math
from functools import lru_cache

from ..errors import PatternError
from . import nodes as N

# primitive -> ((field, minimum), ...): SPEC section 2's constraints
CONSTRAINTS = {
    N.Window: (("w", 1),),
    N.Band: (("before", 0), ("after", 0)),
    N.Dilated: (("w", 1), ("d", 1)),
    N.Stride: (("s", 1),),
    N.Chunk: (("l", 1),),
    N.Summary: (("l", 1), ("c", 1)),
    N.Global: (("first", 0),),
    N.Sink: (("g", 0),),
    N.Prefix: (("p", 0),),
    N.Random: (("r", 0),),
    N.Blocks: (("size", 1),),
}


def _floor_div(a: int, b: int, span) -> int:
    if b == 0:
        raise PatternError("division by zero", span)
    return a // b


def eval_int(expr, n: int | None = None, env: dict | None = None) -> int:
    """Evaluate an integer expression with ``n`` and parameters from ``env``."""
    if isinstance(expr, int):
        return expr
    if isinstance(expr, N.Num):
        return expr.value
    if isinstance(expr, N.Var):
        if expr.name == "n" and n is not None:
            return n
        what = "'n' (the sequence length) is not known here" if expr.name == "n" else \
            f"'{expr.name}' is only defined inside where(...)"
        raise PatternError(what, expr.span)
    if isinstance(expr, N.Param):
        if env is None or expr.name not in env:
            raise PatternError(f"unknown parameter '{expr.name}'", expr.span)
        return env[expr.name]
    if isinstance(expr, N.Neg):
        return -eval_int(expr.operand, n, env)
    if isinstance(expr, N.Call):
        args = [eval_int(a, n, env) for a in expr.args]
        if expr.func == "min":
            return min(args)
        if expr.func == "max":
            return max(args)
        if args[0] < 0 if expr.func == "isqrt" else args[0] <= 0:
            need = ">= 0" if expr.func == "isqrt" else "> 0"
            raise PatternError(f"{expr.func}() needs an argument {need}, got {args[0]}", expr.span)
        return math.isqrt(args[0]) if expr.func == "isqrt" else args[0].bit_length() - 1
    if isinstance(expr, N.BinOp):
        a, b = eval_int(expr.left, n, env), eval_int(expr.right, n, env)
        op = expr.op
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        if op == "//":
            return _floor_div(a, b, expr.span)
        if op == "%":
            if b == 0:
                raise PatternError("modulo by zero", expr.span)
            return a % b
        if op == "/":
            if b == 0:
                raise PatternError("division by zero", expr.span)
            if a % b:
                raise PatternError(f"'/' is exact: {a} / {b} is not an integer (use '//' to floor)",
                                   expr.span)
            return a // b
    raise TypeError(f"not an integer expression: {expr!r}")


def mentions(expr, names: set) -> bool:
    """Whether an integer expression mentions any of the variables ``names``."""
    if isinstance(expr, N.Var):
        return expr.name in names
    if isinstance(expr, N.BinOp):
        return mentions(expr.left, names) or mentions(expr.right, names)
    if isinstance(expr, N.Neg):
        return mentions(expr.operand, names)
    if isinstance(expr, N.Call):
        return any(mentions(a, names) for a in expr.args)
    return False


def fold(expr, n: int):
    """Fold constants and ``n`` in an expression over q and k (the sides of a Compare)."""
    if not mentions(expr, {"q", "k"}):
        return N.Num(eval_int(expr, n), expr.span)
    if isinstance(expr, N.BinOp):
        return N.BinOp(expr.op, fold(expr.left, n), fold(expr.right, n), expr.span)
    if isinstance(expr, N.Neg):
        return N.Neg(fold(expr.operand, n), expr.span)
    if isinstance(expr, N.Call):
        return N.Call(expr.func, tuple(fold(a, n) for a in expr.args), expr.span)
    return expr


def _check(node, values: dict):
    for name, minimum in CONSTRAINTS.get(type(node), ()):
        if values[name] < minimum:
            raise PatternError(
                f"{_spelling(node)}: {name} must be >= {minimum}, got {values[name]}", node.span)
    if isinstance(node, N.Summary) and values["c"] > values["l"]:
        raise PatternError(f"summary: c must be <= l, got c = {values['c']}, l = {values['l']}",
                           node.span)
    if isinstance(node, N.GlobalTokens):
        for t in values["tokens"]:
            if t < 0:
                raise PatternError(f"global: token positions must be >= 0, got {t}", node.span)


def _spelling(node) -> str:
    from .printer import PRIMITIVE_NAMES
    return PRIMITIVE_NAMES.get(type(node), type(node).__name__.lower())


@lru_cache(maxsize=4096)
def instantiate(expr, n: int):
    """The concrete expression at key length ``n`` (see module docstring)."""
    if isinstance(expr, N.Compare):
        return N.Compare(expr.op, fold(expr.left, n), fold(expr.right, n), expr.span)
    if isinstance(expr, N.Blocks):
        size = eval_int(expr.size, n)
        _check(expr, {"size": size})
        return N.Blocks(size, instantiate(expr.body, -(-n // size)), expr.span)
    if isinstance(expr, N.Heads):
        return N.Heads(tuple(instantiate(b, n) for b in expr.bodies), expr.span)
    kids = N.children(expr)
    if kids:
        names = [f.name for f in dataclasses.fields(expr) if f.name != "span"]
        return dataclasses.replace(expr, **dict(zip(names, (instantiate(c, n) for c in kids))))
    values = {}
    for f in dataclasses.fields(expr):
        if f.name == "span":
            continue
        value = getattr(expr, f.name)
        values[f.name] = tuple(eval_int(v, n) for v in value) if isinstance(value, tuple) \
            else eval_int(value, n)
    _check(expr, values)
    return dataclasses.replace(expr, **values)


def head_count(expr) -> int:
    """The period of the per-head patterns: lcm of every ``heads`` block's size (1 if none)."""
    m = 1
    for node in N.walk(expr):
        if isinstance(node, N.Heads):
            m = math.lcm(m, len(node.bodies))
    return m


def select_head(expr, head: int):
    """The expression head ``head`` sees: every ``heads`` block replaced by its chosen body."""
    if isinstance(expr, N.Heads):
        return select_head(expr.bodies[head % len(expr.bodies)], head)
    kids = N.children(expr)
    if not kids:
        return expr
    names = [f.name for f in dataclasses.fields(expr) if f.name != "span"]
    if isinstance(expr, N.Blocks):
        return N.Blocks(expr.size, select_head(expr.body, head), expr.span)
    return dataclasses.replace(expr, **dict(zip(names, (select_head(c, head) for c in kids))))
