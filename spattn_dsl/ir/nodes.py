"""The IR: frozen, hashable nodes. Spans are carried for errors but excluded from equality.

Three families:
- integer expressions (``Num``, ``Var``, ``Param``, ``BinOp``, ``Neg``, ``Call``) used as
  primitive arguments and inside ``where``;
- mask expressions: primitives (``Window``, ``Causal``, ...), the comparison leaf ``Compare``
  (what ``where(...)`` holds), dynamic terms (``TopK``, ``Vertical``, ``Slash``: chosen from the
  inputs at run time, docs/language.md §5; kept out of ``PRIMITIVES`` so that static passes never
  mistake them for a primitive they know), and combinators (``Union``, ``Intersect``, ``Difference``,
  ``Complement``, ``Blocks``, ``Heads``); ``Ref`` exists only before resolution;
- declarations (``PatternDecl``, ``ModelDecl`` and their parts).

A *bound* mask expression has no ``Ref``/``Param``; its integer fields may still mention
``n``. A *concrete* one (``ir.instantiate``) has plain ``int`` fields everywhere except
inside ``Compare``, whose sides mention only ``q`` and ``k`` (and whose left side always
mentions one of them). A bound or concrete expression may share sub-expressions (a pattern
used twice is one object): passes that could revisit them memoise by ``id``. Every later pass (reference
mask, layout, codegen, analysis) works on concrete expressions.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union as _U

from ..errors import SourceSpan


def _span():
    return field(default=None, compare=False, hash=False, repr=False)


# ---------------------------------------------------------------- integer expressions
@dataclass(frozen=True)
class Num:
    value: int
    span: SourceSpan | None = _span()


@dataclass(frozen=True)
class Var:
    """``n`` (key length on the current grid), ``q`` or ``k`` (positions, only in where)."""

    name: str
    span: SourceSpan | None = _span()


@dataclass(frozen=True)
class Param:
    """A reference to a pattern parameter (before binding)."""

    name: str
    span: SourceSpan | None = _span()


@dataclass(frozen=True)
class BinOp:
    op: str  # one of + - * / // %
    left: "IntExpr"
    right: "IntExpr"
    span: SourceSpan | None = _span()


@dataclass(frozen=True)
class Neg:
    operand: "IntExpr"
    span: SourceSpan | None = _span()


@dataclass(frozen=True)
class Call:
    func: str  # one of min max isqrt log2
    args: tuple
    span: SourceSpan | None = _span()


IntExpr = _U[Num, Var, Param, BinOp, Neg, Call]
Int = _U[int, IntExpr]  # a primitive argument: IntExpr when bound, int when concrete


# ---------------------------------------------------------------- mask primitives
@dataclass(frozen=True)
class Dense:
    span: SourceSpan | None = _span()


@dataclass(frozen=True)
class Empty:
    """The ``none`` primitive."""

    span: SourceSpan | None = _span()


@dataclass(frozen=True)
class Causal:
    span: SourceSpan | None = _span()


@dataclass(frozen=True)
class Window:
    w: Int
    span: SourceSpan | None = _span()


@dataclass(frozen=True)
class Band:
    before: Int
    after: Int
    span: SourceSpan | None = _span()


@dataclass(frozen=True)
class Dilated:
    w: Int
    d: Int
    span: SourceSpan | None = _span()


@dataclass(frozen=True)
class Stride:
    s: Int
    span: SourceSpan | None = _span()


@dataclass(frozen=True)
class Chunk:
    l: Int  # noqa: E741  (the documented name)
    span: SourceSpan | None = _span()


@dataclass(frozen=True)
class Summary:
    l: Int  # noqa: E741
    c: Int
    span: SourceSpan | None = _span()


@dataclass(frozen=True)
class Global:
    """``global(first = g)``: the first g tokens attend and are attended everywhere."""

    first: Int
    span: SourceSpan | None = _span()


@dataclass(frozen=True)
class GlobalTokens:
    """``global(t1, t2, ...)``: the listed tokens attend and are attended everywhere."""

    tokens: tuple
    span: SourceSpan | None = _span()


@dataclass(frozen=True)
class Sink:
    g: Int
    span: SourceSpan | None = _span()


@dataclass(frozen=True)
class Prefix:
    p: Int
    span: SourceSpan | None = _span()


@dataclass(frozen=True)
class Random:
    """``random(r, seed = s, fresh = f)``. With ``fresh = 1`` the draws are made among the
    keys its context leaves (docs/language.md, ``random``): ``among``, set by ``instantiate``
    (``ir.evaluate.bind_fresh``) and part of the node's identity, is the concrete expression
    of those candidates on the node's own grid (``envelope - rest``); None before that and
    whenever ``fresh = 0``."""

    r: Int
    seed: Int
    span: SourceSpan | None = _span()
    fresh: Int = 0
    among: object = None


@dataclass(frozen=True)
class Compare:
    """A comparison over q, k, n inside ``where(...)``; a mask leaf like any primitive."""

    op: str  # one of < <= == != >= >
    left: IntExpr
    right: IntExpr
    span: SourceSpan | None = _span()


# -------------------------------------------------------- dynamic terms (docs/language.md §5)
ESTIMATORS = ("mean_key", "minmax", "scores")  # values of topk's ``by``
SHARING = ("head", "group", "all")  # values of ``shared``; "head": each query head for itself


@dataclass(frozen=True)
class TopK:
    """``topk(k, unit = u, rows = r, by = E, shared = S)``: for each aligned run of ``rows``
    queries, the ``k`` units of ``unit`` keys with the highest estimate ``by``."""

    k: Int
    unit: Int
    rows: Int
    by: str  # one of ESTIMATORS
    shared: str  # one of SHARING
    span: SourceSpan | None = _span()


@dataclass(frozen=True)
class Vertical:
    """``vertical(k, probe = m)``: ``k`` key columns per head, estimated by the attention of
    the last ``probe`` queries."""

    k: Int
    probe: Int
    shared: str
    span: SourceSpan | None = _span()


@dataclass(frozen=True)
class Slash:
    """``slash(k, probe = m)``: ``k`` diagonals (values of ``q - k``) per head, estimated by the
    attention of the last ``probe`` queries."""

    k: Int
    probe: Int
    shared: str
    span: SourceSpan | None = _span()


DYNAMIC = (TopK, Vertical, Slash)


# ---------------------------------------------------------------- combinators
@dataclass(frozen=True)
class Union:
    left: "MaskExpr"
    right: "MaskExpr"
    span: SourceSpan | None = _span()


@dataclass(frozen=True)
class Intersect:
    left: "MaskExpr"
    right: "MaskExpr"
    span: SourceSpan | None = _span()


@dataclass(frozen=True)
class Difference:
    left: "MaskExpr"
    right: "MaskExpr"
    span: SourceSpan | None = _span()


@dataclass(frozen=True)
class Complement:
    operand: "MaskExpr"
    span: SourceSpan | None = _span()


@dataclass(frozen=True)
class Blocks:
    """``blocks(b) { body }``: body evaluated on the block grid of size b."""

    size: Int
    body: "MaskExpr"
    span: SourceSpan | None = _span()


@dataclass(frozen=True)
class Heads:
    """``heads { E0; ...; E(m-1) }``: head h gets ``bodies[h % m]``."""

    bodies: tuple
    span: SourceSpan | None = _span()


@dataclass(frozen=True)
class Ref:
    """A use of a declared pattern (before resolution)."""

    name: str
    args: tuple  # positional IntExpr
    kwargs: tuple  # ((name, IntExpr), ...)
    span: SourceSpan | None = _span()
    kwarg_spans: tuple | None = _span()  # where each keyword's name is written


PRIMITIVES = (Dense, Empty, Causal, Window, Band, Dilated, Stride, Chunk, Summary, Global,
              GlobalTokens, Sink, Prefix, Random, Compare)
COMBINATORS = (Union, Intersect, Difference, Complement, Blocks, Heads)
MaskExpr = _U[PRIMITIVES + DYNAMIC + COMBINATORS + (Ref,)]


# ---------------------------------------------------------------- declarations
@dataclass(frozen=True)
class ParamDecl:
    name: str
    default: IntExpr | None
    span: SourceSpan | None = _span()


@dataclass(frozen=True)
class PatternDecl:
    name: str
    params: tuple  # of ParamDecl
    body: MaskExpr
    span: SourceSpan | None = _span()


@dataclass(frozen=True)
class LayersItem:
    count: IntExpr
    body: MaskExpr
    span: SourceSpan | None = _span()


@dataclass(frozen=True)
class RepeatItem:
    count: IntExpr
    items: tuple
    span: SourceSpan | None = _span()


@dataclass(frozen=True)
class ModelDecl:
    name: str
    items: tuple  # of LayersItem | RepeatItem
    span: SourceSpan | None = _span()


def children(expr) -> tuple:
    """The mask sub-expressions of a combinator (empty for primitives)."""
    if isinstance(expr, (Union, Intersect, Difference)):
        return (expr.left, expr.right)
    if isinstance(expr, Complement):
        return (expr.operand,)
    if isinstance(expr, Blocks):
        return (expr.body,)
    if isinstance(expr, Heads):
        return expr.bodies
    return ()


def walk(expr):
    """Every mask node of an expression, parents first."""
    yield expr
    for child in children(expr):
        yield from walk(child)


def dynamic_terms(expr) -> tuple:
    """The distinct dynamic terms of an expression, in walk order. Equal terms (the same
    arguments, wherever they stand) are one term: they make one selection."""
    found = {}
    stack = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, DYNAMIC):
            found.setdefault(node, None)
        stack.extend(reversed(children(node)))
    return tuple(found)
