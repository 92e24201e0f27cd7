"""Concrete mask expression -> a Triton expression over absolute positions.

``emit(expr)`` renders the pair predicate over ``q_pos`` (``[BLOCK_M, 1]``, int32) and
``k_pos`` (``[1, BLOCK_N]``, int32). Positions inside a tile are never negative (padded rows
and columns lie past the end, not before the start), so ``//`` and ``%`` of positions by
positive constants may use Triton's truncating operators; ``where(...)`` arithmetic, which may
go negative, is emitted in int64 with floor helpers. ``random`` becomes a membership test
against a small ``[rows, r]`` table of drawn keys passed to the kernel (``TableSpec``).

A bound expression whose parameters mention ``n`` (documents: ``n`` is each document's length,
known only at run time) renders too: ``n`` is the kernel's ``n_pos`` tensor (``[BLOCK_M, 1]``
or ``[BLOCK_N, 1]``), parameters become int64 expressions of it, divisors derived from it are
kept >= 1 and dilations clamped to it as ``instantiate`` does (values only positions of other
documents, masked anyway, could make invalid), and a ``blocks`` body sees ``ceil(n / size)``.
The caller checks every length that occurs against ``instantiate`` first, so the values real
documents see are valid.
"""
from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass

from ..ir import nodes as N
from ..ir.evaluate import eval_int, is_fresh, mentions


@dataclass(frozen=True)
class TableSpec:
    """The draws of one ``random`` node: on the grid reached by dividing by ``divisors``."""

    r: int
    seed: int
    divisors: tuple
    among: object = None  # random(..., fresh = 1): its candidates (``Random.among``)

    def rows(self, n_k: int) -> int:
        n = n_k
        for b in self.divisors:
            n = -(-n // b)
        return n


class Emitter:
    """``documents``: random links read this call's draws through ``RR{i}`` (each query
    position's row of the table, at ``draw_pos``) instead of a table over the whole row."""

    def __init__(self, documents: bool = False):
        self.documents = documents
        self.tables: list[TableSpec] = []

    def emit(self, expr, q: str = "q_pos", k: str = "k_pos", divisors: tuple = (),
             n: str = "n_pos") -> str:
        t = type(expr)

        def v(x):  # a parameter
            return _int(x, n)

        def divisor(x):  # a parameter that divides (>= 1 when real documents see it)
            return v(x) if _plain(x) else f"tl.maximum({v(x)}, 1)"

        if t is N.Dense:
            return f"({q} >= 0)"
        if t is N.Empty:
            return f"({q} < 0)"
        if t is N.Causal:
            return f"({k} <= {q})"
        if t is N.Window:
            return f"(({q} - {k} < {v(expr.w)}) & ({k} - {q} < {v(expr.w)}))"
        if t is N.Band:
            return f"(({k} >= {q} - {v(expr.before)}) & ({k} <= {q} + {v(expr.after)}))"
        if t is N.Dilated:
            if _plain(expr.w) and _plain(expr.d):
                span, d = str(_const(expr.w) * _const(expr.d)), str(_const(expr.d))
            else:  # clamped to the document as instantiate does: no int64 overflow
                w, d = (f"tl.minimum({v(x)}, tl.maximum({n}, 1))" for x in (expr.w, expr.d))
                span, d = f"({w} * {d})", f"tl.maximum({d}, 1)"
            return f"(({q} - {k} < {span}) & ({k} - {q} < {span}) & ((({q} - {k}) % {d}) == 0))"
        if t is N.Stride:
            return f"((({q} - {k}) % {divisor(expr.s)}) == 0)"
        if t is N.Chunk:
            return f"(({q} // {divisor(expr.l)}) == ({k} // {divisor(expr.l)}))"
        if t is N.Summary:
            rest = _const(expr.l) - _const(expr.c) if _plain(expr.l) and _plain(expr.c) else \
                f"({v(expr.l)} - {v(expr.c)})"
            return f"(({k} % {divisor(expr.l)}) >= {rest})"
        if t is N.Global:
            return f"(({q} < {v(expr.first)}) | ({k} < {v(expr.first)}))"
        if t is N.GlobalTokens:
            if not expr.tokens:
                return f"({q} < 0)"
            hits = [f"({q} == {v(tok)}) | ({k} == {v(tok)})" for tok in expr.tokens]
            return "(" + " | ".join(hits) + ")"
        if t is N.Sink:
            return f"({k} < {v(expr.g)})"
        if t is N.Prefix:
            return f"(({q} < {v(expr.p)}) & ({k} < {v(expr.p)}))"
        if t is N.Random:
            if not (_plain(expr.r) and _plain(expr.seed)):
                raise TypeError("no Triton predicate for random(...) of n")
            r = _const(expr.r)
            if r == 0:
                return f"({q} < 0)"
            fresh = is_fresh(expr)  # (a bound node's fresh is Num(0) or Num(1))
            if fresh and (self.documents or expr.among is None):
                raise TypeError("no Triton predicate for random(..., fresh = 1) drawn per call")
            index = len(self.tables)
            self.tables.append(TableSpec(r, _const(expr.seed), divisors,
                                         expr.among if fresh else None))
            if self.documents:  # this call's draws: the table row of each query position
                return f"_drawn(RT{index}, tl.load(RR{index} + draw_pos), {k}, rt{index}_rows, {r})"
            return f"_drawn(RT{index}, {q}, {k}, rt{index}_rows, {r})"
        if t is N.Compare:
            if not any(mentions(side, {"q", "k", "n"}) for side in (expr.left, expr.right)):
                holds = _COMPARE[expr.op](eval_int(expr.left), eval_int(expr.right))
                return f"({q} >= 0)" if holds else f"({q} < 0)"
            left, right = int_code(expr.left, q, k, n), int_code(expr.right, q, k, n)
            return f"(({left}) {expr.op} ({right}))"
        if t is N.Union:
            return (f"({self.emit(expr.left, q, k, divisors, n)} | "
                    f"{self.emit(expr.right, q, k, divisors, n)})")
        if t is N.Intersect:
            return self.emit_intersect(expr, q, k, divisors, n)
        if t is N.Difference:
            return (f"({self.emit(expr.left, q, k, divisors, n)} & "
                    f"~{self.emit(expr.right, q, k, divisors, n)})")
        if t is N.Complement:
            return f"(~{self.emit(expr.operand, q, k, divisors, n)})"
        if t is N.Blocks:
            if not _plain(expr.size) and any(isinstance(x, N.Random) for x in N.walk(expr.body)):
                raise TypeError("no Triton predicate for random inside blocks(size of n)")
            b = divisor(expr.size)
            inner = divisors + (_const(expr.size),) if _plain(expr.size) else divisors
            return self.emit(expr.body, f"({q} // {b})", f"({k} // {b})", inner,
                             f"(({n} + {b} - 1) // {b})")
        raise TypeError(f"no Triton predicate for {t.__name__} (select a head first)")


    def emit_intersect(self, expr, q, k, divisors, n="n_pos") -> str:
        """A conjunction; its causal/window/band terms with constant parameters fold into one
        interval on ``q - k``, tested with a single unsigned comparison."""
        terms = list(_conjuncts(expr))
        bands = [_with_ints(t) for t in terms if type(t) in _DIFF_INTERVAL and _constant(t)]
        rest = [self.emit(t, q, k, divisors, n) for t in terms
                if not (type(t) in _DIFF_INTERVAL and _constant(t))]
        if bands:
            lo = max(_DIFF_INTERVAL[type(t)](t)[0] for t in bands)
            hi = min(_DIFF_INTERVAL[type(t)](t)[1] for t in bands)
            if lo > hi:
                rest.append(f"({q} < 0)")
            else:
                rest.append(f"(({q} - {k} - ({lo})).to(tl.uint32) <= {hi - lo})")
        return "(" + " & ".join(rest) + ")"


_COMPARE = {"<": operator.lt, "<=": operator.le, "==": operator.eq, "!=": operator.ne,
            ">=": operator.ge, ">": operator.gt}
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


def _const(x) -> int | None:
    """A parameter's value when it is a constant (a concrete expression's int, or a bound
    expression's number), else None."""
    if isinstance(x, N.Num):
        return x.value
    return x if isinstance(x, int) else None


def _plain(x) -> bool:
    return _const(x) is not None


def _fields(node) -> list:
    return [f.name for f in dataclasses.fields(node) if f.name != "span"]


def _constant(node) -> bool:
    """Every parameter of a primitive is a constant."""
    return all(_plain(getattr(node, name)) for name in _fields(node))


def _with_ints(node):
    """A primitive with constant parameters, as Python ints."""
    return dataclasses.replace(node, **{name: _const(getattr(node, name)) for name in _fields(node)})


def _int(x, n: str) -> str:
    """A primitive's parameter as Triton code: the constant, or an int64 expression of ``n``."""
    if _plain(x):
        return str(_const(x))
    return f"({int_code(x, 'q_pos', 'k_pos', n)})"


def int_code(expr, q: str, k: str, n: str = "n_pos") -> str:
    """An integer expression of ``where(...)`` (or of a parameter) in int64 with its floor
    semantics; ``n`` only in bound expressions (documents), ``/`` only on sides the caller has
    checked to be exact."""
    if isinstance(expr, N.Num):
        return f"{expr.value}"
    if isinstance(expr, N.Var):
        return f"{ {'q': q, 'k': k, 'n': n}[expr.name] }.to(tl.int64)"
    if isinstance(expr, N.Neg):
        return f"(-{int_code(expr.operand, q, k, n)})"
    if isinstance(expr, N.Call):
        args = [int_code(a, q, k, n) for a in expr.args]
        if expr.func in ("min", "max"):
            return f"tl.{expr.func}imum(({args[0]}) + 0 * {q}.to(tl.int64), {args[1]})"
        return f"_{expr.func}({args[0]})"
    a, b = int_code(expr.left, q, k, n), int_code(expr.right, q, k, n)
    if expr.op in ("+", "-", "*"):
        return f"({a} {expr.op} {b})"
    if expr.op == "//" or (expr.op == "/" and not mentions(expr, {"q", "k"})):
        return f"_floordiv({a}, {b})"
    if expr.op == "%":
        return f"_floormod({a}, {b})"
    raise ValueError(f"operator {expr.op!r} is not allowed on q or k")


def emit(expr) -> tuple[str, list[TableSpec]]:
    """(Triton expression, random tables it reads) for a head-selected concrete expression."""
    emitter = Emitter()
    return emitter.emit(expr), emitter.tables
