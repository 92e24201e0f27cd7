"""Closed forms (sympy) for patterns built from closed-form primitives.

A pattern qualifies when its heads, unioned, are a union of *band-like* terms (``causal``,
``dense``, ``window``, ``band`` and their intersections and unions: each row a contiguous
range around the query, ``before`` keys back and ``after`` keys ahead) and at most one kind
of hub (``sink(g)``, ``global(first = g)``, alone or under ``causal``). Alone, ``chunk``,
``stride`` and ``dilated`` give the closed form "never covers".

Formulas are in ``n`` (sequence length), ``L`` (layers) and the pattern's parameters: a
primitive argument equal to exactly one parameter's value is written as that parameter.
"""
from __future__ import annotations

import math

import sympy as sp

from ..ir import nodes as N

n, L = sp.symbols("n L", integer=True, positive=True)


def closed_forms(pattern, n_value: int, depth: int, causal: bool):
    """(name -> sympy expression, name -> value at this n and L = depth); empty if none."""
    names = _parameter_symbols(pattern.params)
    forms = _forms(pattern.expr, names, causal)
    if not forms:
        return {}, {}
    values = {name: _value(expr, names, pattern.params, n_value, depth)
              for name, expr in forms.items()}
    return forms, values


def curves(pattern, forms: dict, n_value: int, depth: int) -> dict:
    """Each formula that depends on L, at L = 1 .. depth (for the growth plot)."""
    names = _parameter_symbols(pattern.params)
    return {name: [_value(expr, names, pattern.params, n_value, layer)
                   for layer in range(1, depth + 1)]
            for name, expr in forms.items() if L in expr.free_symbols}


def evaluate(expr, params, n_value: int, layers: int):
    """A formula's value at ``n``, ``L`` and the pattern's parameter values (int or inf)."""
    return _value(expr, _parameter_symbols(params), params, n_value, layers)


def _value(expr, names, params, n_value, layers):
    subs = {sp.Symbol(name, integer=True, positive=True): _int(value, {})
            for name, value in params}
    result = expr.subs(subs).subs({n: n_value, L: layers})
    result = sp.simplify(result)
    return math.inf if result == sp.oo else int(result)


def _parameter_symbols(params) -> dict:
    """A parameter's bound value (an IR integer expression) -> its Symbol, where no other
    parameter has the same value."""
    counts: dict = {}
    for _, value in params:
        counts[value] = counts.get(value, 0) + 1
    return {value: sp.Symbol(name, integer=True, positive=True)
            for name, value in params if counts[value] == 1}


# ---------------------------------------------------------------- integer expressions
def _int(expr, names):
    """An IR integer expression as sympy; subexpressions in ``names`` become their symbols."""
    if not isinstance(expr, int) and expr in names:
        return names[expr]
    if isinstance(expr, int):
        return sp.Integer(expr)
    if isinstance(expr, N.Num):
        return sp.Integer(expr.value)
    if isinstance(expr, N.Var) and expr.name == "n":
        return n
    if isinstance(expr, N.Neg):
        return -_int(expr.operand, names)
    if isinstance(expr, N.Call):
        args = [_int(a, names) for a in expr.args]
        return {"min": lambda: sp.Min(*args), "max": lambda: sp.Max(*args),
                "isqrt": lambda: sp.floor(sp.sqrt(args[0])),
                "log2": lambda: sp.floor(sp.log(args[0], 2))}[expr.func]()
    if isinstance(expr, N.BinOp):
        a, b = _int(expr.left, names), _int(expr.right, names)
        return {"+": a + b, "-": a - b, "*": a * b, "/": a / b, "//": sp.floor(a / b),
                "%": sp.Mod(a, b)}[expr.op]
    raise _NoForm


class _NoForm(Exception):
    pass


# ---------------------------------------------------------------- shapes
def _band(expr, names):
    """(before, after) of a band-like expression, or raise _NoForm."""
    if isinstance(expr, N.Causal):
        return sp.oo, sp.Integer(0)
    if isinstance(expr, N.Dense):
        return sp.oo, sp.oo
    if isinstance(expr, N.Window):
        w = _int(expr.w, names) - 1
        return w, w
    if isinstance(expr, N.Band):
        return _int(expr.before, names), _int(expr.after, names)
    if isinstance(expr, (N.Intersect, N.Union)):
        (b1, a1), (b2, a2) = _band(expr.left, names), _band(expr.right, names)
        pick = sp.Min if isinstance(expr, N.Intersect) else sp.Max
        return pick(b1, b2), pick(a1, a2)
    raise _NoForm


def _hub(expr, names):
    """('sink' | 'global', g) for a hub term, or raise _NoForm."""
    if isinstance(expr, N.Intersect):
        sides = (expr.left, expr.right)
        if isinstance(sides[0], N.Causal) or isinstance(sides[1], N.Causal):
            other = sides[1] if isinstance(sides[0], N.Causal) else sides[0]
            kind, g = _hub(other, names)
            return "sink", g  # causal & global(first = g): the keys below g, and rows below g
    if isinstance(expr, N.Sink):
        return "sink", _int(expr.g, names)
    if isinstance(expr, N.Global):
        return "global", _int(expr.first, names)
    raise _NoForm


def _terms(expr):
    if isinstance(expr, N.Heads):
        return [t for body in expr.bodies for t in _terms(body)]
    if isinstance(expr, N.Union):
        return _terms(expr.left) + _terms(expr.right)
    if isinstance(expr, N.Intersect) and N.Causal() in (expr.left, expr.right):
        other = expr.right if expr.left == N.Causal() else expr.left
        if isinstance(other, N.Union):  # causal & (a | b) = causal & a | causal & b
            return [N.Intersect(N.Causal(), t) for t in _terms(other)]
    return [expr]


def _never_covers(expr, names):
    """Closed form of a lone chunk / stride / dilated (under causal or not), else None."""
    if isinstance(expr, N.Intersect) and isinstance(expr.left, N.Causal):
        expr = expr.right
    if isinstance(expr, N.Chunk):  # covers only when one chunk holds every token
        return sp.Piecewise((sp.Integer(1), _int(expr.l, names) >= n), (sp.oo, True))
    if isinstance(expr, N.Stride):  # residues mod s never meet
        return sp.Piecewise((sp.Integer(1), sp.Eq(_int(expr.s, names), 1)), (sp.oo, True))
    if isinstance(expr, N.Dilated) and isinstance(expr.d, N.Num) and expr.d.value > 1:
        return sp.oo  # d residue classes that never meet
    return None


def _forms(expr, names, causal: bool) -> dict:
    try:
        split = _never_covers(expr, names)
        if split is not None:
            return {"diameter": split}
        bands, hubs = [], []
        for term in _terms(expr):
            try:
                bands.append(_band(term, names))
            except _NoForm:
                hubs.append(_hub(term, names))
    except _NoForm:
        return {}
    before = sp.Max(*[b for b, _ in bands]) if bands else sp.Integer(0)
    after = sp.Max(*[a for _, a in bands]) if bands else sp.Integer(0)
    kinds = {kind for kind, _ in hubs}
    if len(kinds) > 1:
        return {}
    g = sp.Max(*[g for _, g in hubs]) if hubs else None
    if causal:
        return _causal_forms(before, g)
    return _bidirectional_forms(before, after, g, kinds)


def _ceil_hops(distance, step):
    return sp.Piecewise((sp.Integer(1), distance <= 0), (sp.oo, sp.Eq(step, 0)),
                        (sp.ceiling(distance / step), True))


def _causal_forms(before, g) -> dict:
    if before == sp.oo:
        return {"receptive_field_last": n, "reach": n - 1,
                "diameter": sp.Integer(1), "reach_to_first": sp.Integer(1)}
    if g is None:
        return {"reach": sp.Min(L * before, n - 1),
                "receptive_field_last": sp.Min(L * before, n - 1) + 1,
                "diameter": _ceil_hops(n - 1, before),
                "reach_to_first": _ceil_hops(n - 1, before)}
    return {"receptive_field_last": sp.Min(n, L * before + 1 + g),
            "diameter": _ceil_hops(n - 1 - g, before),
            "reach_to_first": sp.Piecewise((sp.Integer(1), g >= 1),
                                           (_ceil_hops(n - 1, before), True))}


def _bidirectional_forms(before, after, g, kinds) -> dict:
    middle = sp.floor(n / 2)
    band_diameter = sp.Max(_ceil_hops(n - 1, before), _ceil_hops(n - 1, after))
    if g is None:
        return {"span_middle": sp.Min(L * before, middle) + sp.Min(L * after, n - 1 - middle) + 1,
                "diameter": band_diameter, "reach_to_first": _ceil_hops(n - 1, before)}
    if kinds == {"global"}:
        return {"diameter": sp.Piecewise((sp.Min(2, band_diameter), g >= 1),
                                         (band_diameter, True)),
                "reach_to_first": sp.Piecewise((sp.Integer(1), g >= 1),
                                               (_ceil_hops(n - 1, before), True))}
    return {}
