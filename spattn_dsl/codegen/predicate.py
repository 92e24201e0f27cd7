"""Concrete mask expression -> a Triton expression over absolute positions.

``emit(expr)`` renders the pair predicate over ``q_pos`` (``[BLOCK_M, 1]``, int32) and
``k_pos`` (``[1, BLOCK_N]``, int32). Positions inside a tile are never negative (padded rows
and columns lie past the end, not before the start), so ``//`` and ``%`` of positions by
positive constants may use Triton's truncating operators; ``where(...)`` arithmetic, which may
go negative, is emitted in int64 with floor helpers. ``random`` becomes a membership test
against a small ``[rows, r]`` table of drawn keys passed to the kernel (``TableSpec``).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..ir import nodes as N


@dataclass(frozen=True)
class TableSpec:
    """The draws of one ``random`` node: on the grid reached by dividing by ``divisors``."""

    r: int
    seed: int
    divisors: tuple

    def rows(self, n_k: int) -> int:
        n = n_k
        for b in self.divisors:
            n = -(-n // b)
        return n


class Emitter:
    def __init__(self):
        self.tables: list[TableSpec] = []

    def emit(self, expr, q: str = "q_pos", k: str = "k_pos", divisors: tuple = ()) -> str:
        t = type(expr)
        if t is N.Dense:
            return f"({q} >= 0)"
        if t is N.Empty:
            return f"({q} < 0)"
        if t is N.Causal:
            return f"({k} <= {q})"
        if t is N.Window:
            return f"(({q} - {k} < {expr.w}) & ({k} - {q} < {expr.w}))"
        if t is N.Band:
            return f"(({k} >= {q} - {expr.before}) & ({k} <= {q} + {expr.after}))"
        if t is N.Dilated:
            span = expr.w * expr.d
            return (f"(({q} - {k} < {span}) & ({k} - {q} < {span}) & "
                    f"((({q} - {k}) % {expr.d}) == 0))")
        if t is N.Stride:
            return f"((({q} - {k}) % {expr.s}) == 0)"
        if t is N.Chunk:
            return f"(({q} // {expr.l}) == ({k} // {expr.l}))"
        if t is N.Summary:
            return f"(({k} % {expr.l}) >= {expr.l - expr.c})"
        if t is N.Global:
            return f"(({q} < {expr.first}) | ({k} < {expr.first}))"
        if t is N.GlobalTokens:
            if not expr.tokens:
                return f"({q} < 0)"
            hits = [f"({q} == {tok}) | ({k} == {tok})" for tok in expr.tokens]
            return "(" + " | ".join(hits) + ")"
        if t is N.Sink:
            return f"({k} < {expr.g})"
        if t is N.Prefix:
            return f"(({q} < {expr.p}) & ({k} < {expr.p}))"
        if t is N.Random:
            if expr.r == 0:
                return f"({q} < 0)"
            index = len(self.tables)
            self.tables.append(TableSpec(expr.r, expr.seed, divisors))
            return f"_drawn(RT{index}, {q}, {k}, rt{index}_rows, {expr.r})"
        if t is N.Compare:
            left, right = int_code(expr.left, q, k), int_code(expr.right, q, k)
            return f"(({left}) {expr.op} ({right}))"
        if t is N.Union:
            return f"({self.emit(expr.left, q, k, divisors)} | {self.emit(expr.right, q, k, divisors)})"
        if t is N.Intersect:
            return self.emit_intersect(expr, q, k, divisors)
        if t is N.Difference:
            return (f"({self.emit(expr.left, q, k, divisors)} & "
                    f"~{self.emit(expr.right, q, k, divisors)})")
        if t is N.Complement:
            return f"(~{self.emit(expr.operand, q, k, divisors)})"
        if t is N.Blocks:
            b = expr.size
            return self.emit(expr.body, f"({q} // {b})", f"({k} // {b})", divisors + (b,))
        raise TypeError(f"no Triton predicate for {t.__name__} (select a head first)")


    def emit_intersect(self, expr, q, k, divisors) -> str:
        """A conjunction; its causal/window/band terms fold into one interval on ``q - k``,
        tested with a single unsigned comparison."""
        terms = list(_conjuncts(expr))
        bands = [t for t in terms if type(t) in _DIFF_INTERVAL]
        rest = [self.emit(t, q, k, divisors) for t in terms if type(t) not in _DIFF_INTERVAL]
        if bands:
            lo = max(_DIFF_INTERVAL[type(t)](t)[0] for t in bands)
            hi = min(_DIFF_INTERVAL[type(t)](t)[1] for t in bands)
            if lo > hi:
                rest.append(f"({q} < 0)")
            else:
                rest.append(f"(({q} - {k} - ({lo})).to(tl.uint32) <= {hi - lo})")
        return "(" + " & ".join(rest) + ")"


_BIG = 1 << 30
# primitives that allow exactly an interval [lo, hi] of q - k
_DIFF_INTERVAL = {
    N.Causal: lambda e: (0, _BIG),
    N.Window: lambda e: (-min(e.w - 1, _BIG), min(e.w - 1, _BIG)),
    N.Band: lambda e: (-min(e.after, _BIG), min(e.before, _BIG)),
}


def _conjuncts(expr):
    if isinstance(expr, N.Intersect):
        yield from _conjuncts(expr.left)
        yield from _conjuncts(expr.right)
    else:
        yield expr


def int_code(expr, q: str, k: str) -> str:
    """An integer expression of ``where(...)`` in int64 with SPEC's floor semantics."""
    if isinstance(expr, N.Num):
        return f"{expr.value}"
    if isinstance(expr, N.Var):
        return f"{q if expr.name == 'q' else k}.to(tl.int64)"
    if isinstance(expr, N.Neg):
        return f"(-{int_code(expr.operand, q, k)})"
    if isinstance(expr, N.Call):
        args = [int_code(a, q, k) for a in expr.args]
        if expr.func in ("min", "max"):
            return f"tl.{expr.func}imum(({args[0]}) + 0 * {q}.to(tl.int64), {args[1]})"
        return f"_{expr.func}({args[0]})"
    a, b = int_code(expr.left, q, k), int_code(expr.right, q, k)
    if expr.op in ("+", "-", "*"):
        return f"({a} {expr.op} {b})"
    if expr.op == "//":
        return f"_floordiv({a}, {b})"
    if expr.op == "%":
        return f"_floormod({a}, {b})"
    raise ValueError(f"operator {expr.op!r} is not allowed on q or k")


def emit(expr) -> tuple[str, list[TableSpec]]:
    """(Triton expression, random tables it reads) for a head-selected concrete expression."""
    emitter = Emitter()
    return emitter.emit(expr), emitter.tables
