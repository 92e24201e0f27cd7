"""Dynamic terms in the analysis (docs/language.md §5): the static part, the envelope and the
exact worst case of keys per query.

A selection only adds pairs to the static part (every dynamic term replaced by ``none``) and
never goes beyond the envelope (replaced by ``dense``). Where a term stands under ``!`` or on
the right of ``-`` the roles swap, so ``lower`` / ``upper`` replace each occurrence by the
value that gives a subset / superset of the mask under every selection: for the usual
patterns (terms only in positive places) they are exactly the static part and the envelope.

``worst_case(pattern, n)``: the largest number of keys one query attends in one head, over
every selection. Per query row ``q`` of head ``h``, with ``S`` its static keys and ``C_i`` the
candidate keys of term ``i`` (allowed with term ``i`` dense and the others none, not in ``S``):

- one term: ``|S| + gain``, ``gain`` the sum of the ``k`` largest per-unit counts of ``C_i``
  (units of ``u`` keys for topk; a column or a diagonal is one key of the row). Attained: the
  group of ``q`` may select any ``k`` of its candidate units, and these are candidates.
- several terms that act as a union on every pair (``linear``), all of unit 1: a
  transversal problem, ``|S| + min over term sets I of
  (sum of k_i outside I + |union of C_i in I|)`` (max-flow = min-cut).
- anything else (units > 1 with several terms, terms that interact, lengths past
  EXACT_PAIRS_MAX): ``min(|S| + sum of k_i * u_i, |upper row|)``, an upper bound, labelled so.
"""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import torch

from ..ir import nodes as N
from ..ir.evaluate import select_head
from ..ir.program import Pattern
from ..semantics.reference import evaluate
from ..semantics.select import _FALSE, _TRUE, _context, concrete_terms, term_nodes

EXACT_PAIRS_MAX = 1 << 26  # rows evaluated block by block for the exact worst case
ROW_BLOCK_PAIRS = 1 << 22


# ---------------------------------------------------------------- IR transformations
def replace_dynamic(expr, upper: bool):
    """``expr`` with every dynamic term replaced so that the result holds every selection's
    mask (``upper``) or is held by it (not ``upper``); constants folded away."""
    if isinstance(expr, N.DYNAMIC):
        return N.Dense() if upper else N.Empty()
    if isinstance(expr, N.Complement):
        return _fold(N.Complement(replace_dynamic(expr.operand, not upper), expr.span))
    if isinstance(expr, N.Difference):
        return _fold(N.Difference(replace_dynamic(expr.left, upper),
                                  replace_dynamic(expr.right, not upper), expr.span))
    if isinstance(expr, (N.Union, N.Intersect)):
        return _fold(type(expr)(replace_dynamic(expr.left, upper),
                                replace_dynamic(expr.right, upper), expr.span))
    if isinstance(expr, N.Heads):
        return N.Heads(tuple(replace_dynamic(b, upper) for b in expr.bodies), expr.span)
    return expr  # primitives, and blocks(b) (no dynamic term inside one)


def _fold(expr):
    """``x | none`` -> ``x``, ``x & dense`` -> ``x``, ... so that the static part of
    ``causal & (window(w) | topk(...))`` is ``causal & window(w)`` (formulas, fast methods)."""
    dense, empty = (lambda e: isinstance(e, N.Dense)), (lambda e: isinstance(e, N.Empty))
    if isinstance(expr, N.Complement):
        x = expr.operand
        return N.Empty() if dense(x) else N.Dense() if empty(x) else expr
    a, b = expr.left, expr.right
    if isinstance(expr, N.Union):
        return a if empty(b) else b if empty(a) else N.Dense() if dense(a) or dense(b) else expr
    if isinstance(expr, N.Intersect):
        return a if dense(b) else b if dense(a) else N.Empty() if empty(a) or empty(b) else expr
    if empty(b):
        return a
    return N.Empty() if empty(a) or dense(b) else expr


def monotone(expr, positive: bool = True) -> bool:
    """Whether every dynamic term stands in a positive place (more keys, more pairs)."""
    if isinstance(expr, N.DYNAMIC):
        return positive
    if isinstance(expr, N.Complement):
        return monotone(expr.operand, not positive)
    if isinstance(expr, N.Difference):
        return monotone(expr.left, positive) and monotone(expr.right, not positive)
    return all(monotone(c, positive) for c in N.children(expr))


def _as_pattern(pattern: Pattern, expr) -> Pattern:
    return Pattern(expr, name=pattern.name, params=pattern.params, span=pattern.span)


def static_part(pattern: Pattern) -> Pattern:
    """The pairs every selection keeps (the static part for terms in positive places)."""
    return _as_pattern(pattern, replace_dynamic(pattern.expr, upper=False)) \
        if pattern.dynamic else pattern


def envelope(pattern: Pattern) -> Pattern:
    """The pairs some selection may allow (the envelope for terms in positive places)."""
    return _as_pattern(pattern, replace_dynamic(pattern.expr, upper=True)) \
        if pattern.dynamic else pattern


# ---------------------------------------------------------------- worst case of keys
@dataclass(frozen=True)
class WorstCase:
    """The largest number of keys one query attends in one head (over every selection)."""

    keys: int | None  # None where no method counts the rows at this length
    exact: bool  # False: an upper bound
    head: int = 0  # a head case and query row that attain it (when exact)
    row: int = 0


def worst_case(pattern: Pattern, n: int, counts=None) -> WorstCase:
    """See the module docstring. ``counts(expr) -> int64 [n] or None``: keys per row of a
    static bound expression by the analysis' fast masks (used past EXACT_PAIRS_MAX)."""
    best = None
    for head in range(pattern.heads):
        found = _head_worst(pattern, head, n, counts)
        if found.keys is None:
            return found
        if best is None or found.keys > best.keys:
            best = found
        elif found.keys == best.keys and not found.exact:
            best = dataclasses.replace(best, exact=False)
    return best


def _head_worst(pattern, head, n, counts) -> WorstCase:
    static = not N.dynamic_terms(select_head(pattern.expr, head))
    if static or n * n > EXACT_PAIRS_MAX:  # the fast masks count a static head exactly
        found = _fast_worst(pattern, head, n, counts)
        if found.keys is not None or n * n > EXACT_PAIRS_MAX:
            return found
    return _rows_worst(pattern, head, n)


def _rows_worst(pattern, head, n) -> WorstCase:
    """Exact (or labelled a bound) from the row masks, one block of rows at a time."""
    concrete, index = concrete_terms(pattern, n)
    expr = select_head(concrete, head)
    terms = term_nodes(pattern, n)
    step = max(1, ROW_BLOCK_PAIRS // n)
    keys, row, exact = -1, 0, True
    for start in range(0, n, step):
        rows = torch.arange(start, min(start + step, n), dtype=torch.int64)
        value, block_exact = _block_worst(expr, index, terms, rows, n)
        exact &= block_exact
        top = int(value.max())
        if top > keys:
            keys, row = top, start + int(value.argmax())
    return WorstCase(keys, exact, head, row)


def _evaluate(expr, index, rows, n, dense=()) -> torch.Tensor:
    """The rows with the terms in ``dense`` replaced by dense, every other one by none."""
    value = _context(index, lambda i, q, size: _TRUE if i in dense else _FALSE)
    return evaluate(expr, rows, n, dynamic=value).expand(len(rows), n)


def _block_worst(expr, index, terms, rows, n):
    """(worst keys per row, exact) for one block of rows of one head case."""
    static = _evaluate(expr, index, rows, n)
    base = static.sum(1)
    if not terms:
        return base, True
    if linear(expr):
        candidates = [_evaluate(expr, index, rows, n, {i}) & ~static for i in range(len(terms))]
        gains = [_gain(c, t) for c, t in zip(candidates, terms)]
        if len(terms) == 1:
            return base + gains[0], True
        return base + _min_cut(candidates, gains), all(_unit(t) == 1 for t in terms)
    # added keys lie in selected units (at most the budget), and within the upper set
    upper = evaluate(replace_dynamic(expr, upper=True), rows, n).expand(len(rows), n)
    budget = sum(t.k * _unit(t) for t in terms)
    return torch.minimum(base + budget, upper.sum(1)), False


def _unit(term) -> int:
    return term.unit if isinstance(term, N.TopK) else 1


def _gain(candidates: torch.Tensor, term) -> torch.Tensor:
    """Per row: the most candidate keys that ``term.k`` units can hold (a column or a
    diagonal is one key of a row)."""
    u = _unit(term)
    if u == 1:
        return candidates.sum(1).clamp(max=term.k)
    rows, n = candidates.shape
    units = -(-n // u)
    padded = torch.nn.functional.pad(candidates, (0, units * u - n))
    per_unit = padded.view(rows, units, u).sum(-1)
    return per_unit.topk(min(term.k, units), dim=1).values.sum(1)


def linear(expr) -> bool:
    """Whether the mask is the static part plus each dynamic term's own candidates, pair by
    pair, for every selection: terms only in positive places and no ``&`` with terms on both
    sides (``S & (A | T1 | T2)`` distributes into a union of ``S & Ti``)."""
    if not monotone(expr):
        return False
    for node in N.walk(expr):
        if isinstance(node, N.Intersect) and N.dynamic_terms(node.left) \
                and N.dynamic_terms(node.right):
            return False
    return True


def _min_cut(candidates, gains) -> torch.Tensor:
    """Per row: the most keys the terms add together (token units: exact, a transversal;
    else an upper bound): min over term sets I of gains outside I + |union of C_i in I|."""
    m = len(candidates)
    best = None
    for inside in itertools.product((False, True), repeat=m):
        union = torch.zeros_like(candidates[0])
        total = 0
        for i in range(m):
            if inside[i]:
                union = union | candidates[i]
            else:
                total = total + gains[i]
        value = union.sum(1) + total
        best = value if best is None else torch.minimum(best, value)
    return best


def _fast_worst(pattern, head, n, counts) -> WorstCase:
    """Past EXACT_PAIRS_MAX: row counts of static bound expressions by the fast masks.
    Exact for a static head and for one positive term of token units; else an upper bound."""
    expr = select_head(pattern.expr, head)
    terms = N.dynamic_terms(expr)
    static = counts(replace_dynamic(expr, upper=False)) if counts else None
    if static is None:
        return WorstCase(None, False, head)
    if not terms:
        return WorstCase(int(static.max()), True, head, int(static.argmax()))
    upper = counts(replace_dynamic(expr, upper=True))
    if upper is None:
        return WorstCase(None, False, head)
    nodes = {t: node for t, node in zip(pattern.dynamic_terms, term_nodes(pattern, n))}
    if not monotone(expr):  # the lower set is not the static part: only the upper set
        return WorstCase(int(upper.max()), False, head, int(upper.argmax()))
    budget = sum(nodes[t].k * _unit(nodes[t]) for t in terms)
    value = static + (upper - static).clip(min=0, max=budget)
    exact = len(terms) == 1 and _unit(nodes[terms[0]]) == 1
    return WorstCase(int(value.max()), exact, head, int(value.argmax()))
