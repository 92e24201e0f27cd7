"""Closed forms (sympy) for patterns built from closed-form primitives.

A formula is given only where it is proven for every parameter value in the region the
pattern's values lie in (0, 1, a window wider than n, n = 1 included); where none is known,
none is given. The families, after heads are unioned and ``causal & (a | b)`` distributed:

- *bands*: unions / intersections of ``causal``, ``dense``, ``window``, ``band`` (each row a
  contiguous range, ``before`` keys back and ``after`` keys ahead), with at most one kind of
  hub: ``sink(g)`` or ``causal & global(first = g)`` in a causal stack, ``global(first = g)``
  in a bidirectional one;
- a lone ``stride(s)``, ``dilated(w, d)`` or ``chunk(l)`` (under ``causal`` or not): residue
  classes or chunks that never meet (diameter inf unless s = 1, d = 1, l >= n);
- Sparse Transformer *fixed*: ``causal & (chunk(l) | summary(l, c))`` (diameter 2);
- Sparse Transformer *strided*: ``causal & (window(w) | stride(s))`` with s <= w (diameter 2),
  e.g. as two heads.

Figures (the names match the Report): ``diameter``, ``reach_to_first``, and at L layers
``reach`` (largest reach), ``receptive_field_last`` (RF of the last token), ``span_middle``
(span of the middle token). Formulas are in ``n``, ``L`` and the pattern's parameters: a
primitive argument equal to exactly one parameter's value is written as that parameter.
Values are computed by an exact evaluator (``evaluate``), not by sympy substitution, so a
parameter of 0 or an infinite side never turns into sympy's complex infinity.
"""
from __future__ import annotations

import math
from fractions import Fraction
from functools import lru_cache

import sympy as sp

from ..errors import PatternError
from ..ir import nodes as N
from ..ir.evaluate import eval_int

n = sp.Symbol("n", integer=True, positive=True)
L = sp.Symbol("L", integer=True, positive=True)
oo = sp.oo


def closed_forms(pattern, n_value: int, depth: int, causal: bool):
    """(name -> sympy expression, name -> value at this n and L = depth); empty if none."""
    forms, _ = derive(pattern, n_value, causal)
    values = {name: evaluate(expr, pattern.params, n_value, depth)
              for name, expr in forms.items()}
    return forms, values


def derive(pattern, n_value: int, causal: bool):
    """(formulas, conditions): the formulas for this pattern and the parameter conditions,
    met by its values, under which they were derived (human-readable strings)."""
    forms, requirements = _candidates(pattern.expr, pattern.params, causal)
    env = _environment(pattern.params, n_value)
    if not all(_truth(condition, env) for condition in requirements):
        return {}, []
    return dict(forms), [str(c) for c in requirements if c is not sp.true]


@lru_cache(maxsize=256)
def _candidates(expr, params, causal: bool):
    """(formulas, requirements): formulas true wherever every requirement (a sympy
    relation over the parameters) holds. Cached: building sympy expressions is slow."""
    try:
        return _forms(expr, _parameter_symbols(params), causal)
    except _NoForm:
        return {}, ()


def curves(pattern, forms: dict, n_value: int, depth: int) -> dict:
    """Each formula that depends on L, at L = 1 .. depth (for the growth plot)."""
    return {name: [evaluate(expr, pattern.params, n_value, layer)
                   for layer in range(1, depth + 1)]
            for name, expr in forms.items() if L in expr.free_symbols}


def evaluate(expr, params, n_value: int, layers: int):
    """A formula's value at ``n``, ``L`` and the pattern's parameter values (int or inf)."""
    env = _environment(params, n_value)
    env[L] = Fraction(layers)
    value = _eval(expr, env)
    if value == math.inf:
        return math.inf
    if value != int(value):
        raise ValueError(f"formula {expr} is not an integer at n = {n_value}: {value}")
    return int(value)


def _environment(params, n_value: int) -> dict:
    """Symbol -> value. A parameter whose value is an error at this n (``4 // (n - 1)`` at
    n = 1) is left out: the mask never evaluates an unused parameter, so neither do we (a
    used one would have failed when the pattern was bound)."""
    env = {n: Fraction(n_value)}
    for name, value in params:
        try:
            env[_symbol(name)] = Fraction(value if isinstance(value, int)
                                          else eval_int(value, n_value))
        except PatternError:
            continue
    return env


def _symbol(name: str):
    return sp.Symbol(name, integer=True, nonnegative=True)


def _parameter_symbols(params) -> dict:
    """A parameter's bound value (an IR integer expression) -> its Symbol, where no other
    parameter has the same value."""
    counts: dict = {}
    for _, value in params:
        counts[value] = counts.get(value, 0) + 1
    return {value: _symbol(name) for name, value in params if counts[value] == 1}


# ---------------------------------------------------------------- exact evaluation
def _eval(expr, env):
    """A sympy expression's exact value (Fraction or math.inf); Piecewise picks lazily."""
    if expr is sp.oo or expr == sp.oo:
        return math.inf
    if isinstance(expr, sp.Symbol):
        return env[expr]
    if isinstance(expr, sp.Rational):
        return Fraction(int(expr.p), int(expr.q))
    if isinstance(expr, sp.Piecewise):
        for value, condition in expr.args:
            if _truth(condition, env):
                return _eval(value, env)
        raise ValueError(f"no branch of {expr} holds")
    args = [_eval(a, env) for a in expr.args]
    if isinstance(expr, sp.Add):
        return sum(args, Fraction(0))
    if isinstance(expr, sp.Mul):
        if math.inf in args and 0 in args:
            raise ValueError(f"0 * inf in {expr}")
        return math.prod(args)
    if isinstance(expr, sp.Pow):
        base, exponent = args
        return Fraction(0) if base == math.inf and exponent < 0 else base ** int(exponent)
    if isinstance(expr, sp.Min):
        return min(args)
    if isinstance(expr, sp.Max):
        return max(args)
    if isinstance(expr, sp.floor):
        return args[0] if args[0] == math.inf else Fraction(math.floor(args[0]))
    if isinstance(expr, sp.ceiling):
        return args[0] if args[0] == math.inf else Fraction(math.ceil(args[0]))
    if isinstance(expr, sp.Mod):
        return args[0] % args[1]
    if isinstance(expr, isqrt):
        return Fraction(math.isqrt(int(args[0])))
    if isinstance(expr, log2):
        return Fraction(int(args[0]).bit_length() - 1)
    raise ValueError(f"cannot evaluate {expr!r}")


_RELATIONS = {sp.Le: lambda a, b: a <= b, sp.Lt: lambda a, b: a < b,
              sp.Ge: lambda a, b: a >= b, sp.Gt: lambda a, b: a > b,
              sp.Eq: lambda a, b: a == b, sp.Ne: lambda a, b: a != b}


def _truth(condition, env) -> bool:
    if condition is sp.true or condition == True:  # noqa: E712  (sympy's true)
        return True
    if condition is sp.false or condition == False:  # noqa: E712
        return False
    if isinstance(condition, sp.And):
        return all(_truth(c, env) for c in condition.args)
    if isinstance(condition, sp.Or):
        return any(_truth(c, env) for c in condition.args)
    if isinstance(condition, sp.Not):
        return not _truth(condition.args[0], env)
    for kind, test in _RELATIONS.items():
        if isinstance(condition, kind):
            return test(_eval(condition.lhs, env), _eval(condition.rhs, env))
    raise ValueError(f"cannot decide {condition!r}")


# ---------------------------------------------------------------- integer expressions
class isqrt(sp.Function):  # noqa: N801  (the DSL's spelling)
    """floor(sqrt(x)), exact on integers."""

    @classmethod
    def eval(cls, x):
        if x.is_Integer and x >= 0:
            return sp.Integer(math.isqrt(int(x)))


class log2(sp.Function):  # noqa: N801
    """floor(log2(x)), exact on integers."""

    @classmethod
    def eval(cls, x):
        if x.is_Integer and x > 0:
            return sp.Integer(int(x).bit_length() - 1)


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
                "isqrt": lambda: isqrt(args[0]), "log2": lambda: log2(args[0])}[expr.func]()
    if isinstance(expr, N.BinOp):
        a, b = _int(expr.left, names), _int(expr.right, names)
        ops = {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b,  # only the one used:
               "/": lambda: a / b, "//": lambda: sp.floor(a / b),          # x + 0 must not
               "%": lambda: sp.Mod(a, b)}                                  # build Mod(x, 0)
        return ops[expr.op]()
    raise _NoForm


class _NoForm(Exception):
    pass


# ---------------------------------------------------------------- terms of the union
def _terms(expr):
    """The union's terms, each (term, under_causal)."""
    if isinstance(expr, N.Heads):
        return [t for body in expr.bodies for t in _terms(body)]
    if isinstance(expr, N.Union):
        return _terms(expr.left) + _terms(expr.right)
    if isinstance(expr, N.Intersect) and N.Causal() in (expr.left, expr.right):
        other = expr.right if expr.left == N.Causal() else expr.left
        if isinstance(other, (N.Union, N.Heads)):  # causal & (a | b) = causal & a | causal & b
            return [(N.Intersect(N.Causal(), t) if not under else t, True)
                    for t, under in _terms(other)]
        return [(expr, True)]
    return [(expr, isinstance(expr, N.Causal))]


def _strip_causal(term):
    if isinstance(term, N.Intersect) and N.Causal() in (term.left, term.right):
        return term.right if term.left == N.Causal() else term.left
    return term


def _band(expr, names):
    """(before, after) of a band-like expression (sp.oo for an unbounded side)."""
    if isinstance(expr, N.Causal):
        return oo, sp.Integer(0)
    if isinstance(expr, N.Dense):
        return oo, oo
    if isinstance(expr, N.Window):
        w = _int(expr.w, names) - 1
        return w, w
    if isinstance(expr, N.Band):
        return _int(expr.before, names), _int(expr.after, names)
    if isinstance(expr, N.Intersect) and N.Causal() in (expr.left, expr.right):
        return _band(_strip_causal(expr), names)[0], sp.Integer(0)
    if isinstance(expr, (N.Intersect, N.Union)):
        (b1, a1), (b2, a2) = _band(expr.left, names), _band(expr.right, names)
        pick = sp.Min if isinstance(expr, N.Intersect) else sp.Max
        return pick(b1, b2), pick(a1, a2)
    raise _NoForm


def _band_or_none(term, names):
    try:
        return _band(term, names)
    except _NoForm:
        return None


def _hub(term, under_causal, names):
    """('sink' | 'global', g) for a hub term, or raise _NoForm."""
    inner = _strip_causal(term) if under_causal else term
    if isinstance(inner, N.Sink):
        return "sink", _int(inner.g, names)
    if isinstance(inner, N.Global):
        # causal & global(first = g): rows below g see keys <= q, all of them sinks
        return ("sink" if under_causal else "global"), _int(inner.first, names)
    raise _NoForm


def _classify(terms, names):
    """{kind: [args, ...]}: 'band' (before, after), 'hub' (kind, g), 'stride' (s,),
    'dilated' (w, d), 'chunk' (l,), 'summary' (l, c); raise _NoForm for anything else."""
    kinds: dict = {}
    for term, under_causal in terms:
        inner = _strip_causal(term) if under_causal else term
        band = _band_or_none(term, names)
        if band is not None:
            kinds.setdefault("band", []).append(band)
        elif isinstance(inner, N.Stride):
            kinds.setdefault("stride", []).append((_int(inner.s, names),))
        elif isinstance(inner, N.Dilated):
            kinds.setdefault("dilated", []).append((_int(inner.w, names), _int(inner.d, names)))
        elif isinstance(inner, N.Chunk):
            kinds.setdefault("chunk", []).append((_int(inner.l, names),))
        elif isinstance(inner, N.Summary):
            kinds.setdefault("summary", []).append((_int(inner.l, names),
                                                    _int(inner.c, names)))
        else:
            kinds.setdefault("hub", []).append(_hub(term, under_causal, names))
    return kinds


def _forms(expr, names, causal: bool):
    terms = _terms(expr)
    kinds = _classify(terms, names)
    shape = sorted(kinds)
    all_causal = all(under for _, under in terms)
    if shape in (["band"], ["band", "hub"], ["hub"]):
        return _band_forms(kinds.get("band", []), kinds.get("hub", []), causal), ()
    if len(terms) == 1 and shape in (["stride"], ["dilated"], ["chunk"]):
        family = {"stride": _stride_forms, "dilated": _dilated_forms, "chunk": _chunk_forms}
        return family[shape[0]](*kinds[shape[0]][0]), ()
    if shape == ["chunk", "summary"] and all_causal and causal and len(terms) == 2:
        (l1,), (l2, c) = kinds["chunk"][0], kinds["summary"][0]
        if l1 == l2:
            return _fixed_forms(l1, c), ()
    if shape == ["band", "stride"] and all_causal and causal and len(kinds["stride"]) == 1:
        before = sp.Max(*[b for b, _ in kinds["band"]])
        (s,) = kinds["stride"][0]
        if before != oo:
            return _strided_forms(before, s), (sp.Le(s, before + 1),)
    return {}, ()


# ---------------------------------------------------------------- the families
def _hops(distance, step):
    """Least hop count covering ``distance`` with ``step`` per hop (0 when distance <= 0)."""
    if step == oo:
        return sp.Piecewise((0, distance <= 0), (1, True))
    return sp.Piecewise((0, distance <= 0), (oo, sp.Eq(step, 0)),
                        (sp.ceiling(distance / step), True))


def _band_forms(bands, hubs, causal: bool) -> dict:
    before = sp.Max(*[b for b, _ in bands]) if bands else sp.Integer(0)
    after = sp.Max(*[a for _, a in bands]) if bands else sp.Integer(0)
    kinds = {kind for kind, _ in hubs}
    if len(kinds) > 1:
        return {}
    g = sp.Max(*[g for _, g in hubs]) if hubs else None
    if causal and kinds != {"sink"}:
        # a bidirectional hub in a causal stack has g = 0 (or n = 1): the band alone
        return _causal_band(before)
    if causal:
        return _causal_sinks(before, g)
    if not hubs:
        return _bidirectional_band(before, after)
    if kinds == {"global"}:
        return _bidirectional_globals(before, after, g)
    return {}  # sinks in a bidirectional stack: paths mix both directions, no form known


def _causal_band(before) -> dict:
    reach = sp.Min(L * before, n - 1)
    return {"reach": reach, "receptive_field_last": reach + 1,
            "diameter": _hops(n - 1, before), "reach_to_first": _hops(n - 1, before)}


def _causal_sinks(before, g) -> dict:
    # Sinks are sources only: from a key k >= g the window steps are the only way forward.
    one = sp.Piecewise((0, n <= 1), (1, True))
    return {"reach": sp.Piecewise((n - 1, g >= 1), (sp.Min(L * before, n - 1), True)),
            "receptive_field_last": sp.Min(n, sp.Min(L * before, n - 1) + 1 + g),
            "diameter": sp.Max(one, _hops(n - 1 - g, before)),
            "reach_to_first": sp.Piecewise((one, g >= 1), (_hops(n - 1, before), True))}


def _bidirectional_band(before, after) -> dict:
    middle = sp.floor(n / 2)
    return {"reach": sp.Min(L * sp.Max(before, after), n - 1),
            "receptive_field_last": sp.Min(L * before, n - 1) + 1,
            "span_middle": sp.Min(L * before, middle) + sp.Min(L * after, n - 1 - middle) + 1,
            "diameter": sp.Max(_hops(n - 1, before), _hops(n - 1, after)),
            "reach_to_first": _hops(n - 1, before)}


def _bidirectional_globals(before, after, g) -> dict:
    # Any two tokens meet through a global token in 2 hops; tokens >= g that are one band
    # step apart in both directions need only 1.
    band = sp.Max(_hops(n - 1, before), _hops(n - 1, after))
    one = sp.Piecewise((0, n <= 1), (1, True))
    return {"reach": sp.Piecewise((n - 1, g >= 1),
                                  (sp.Min(L * sp.Max(before, after), n - 1), True)),
            "receptive_field_last": sp.Piecewise(
                (n, (g >= 1) & (L >= 2)), (sp.Min(n, sp.Min(L * before, n - 1) + 1 + g), True)),
            "diameter": sp.Piecewise((band, sp.Eq(g, 0)), (2, n - 1 - g > sp.Min(before, after)),
                                     (one, True)),
            "reach_to_first": sp.Piecewise((one, g >= 1), (_hops(n - 1, before), True))}


def _stride_forms(s) -> dict:
    # residues mod s never meet; within one, every member is one hop away
    last = sp.floor((n - 1) / s)
    return {"reach": s * last, "receptive_field_last": last + 1,
            "diameter": sp.Piecewise((0, n <= 1), (1, sp.Eq(s, 1)), (oo, True)),
            "reach_to_first": sp.Piecewise((0, n <= 1), (1, sp.Eq(sp.Mod(n - 1, s), 0)),
                                           (oo, True))}


def _dilated_forms(w, d) -> dict:
    # d residue classes that never meet; within one, a window of w members
    last = sp.floor((n - 1) / d)
    steps = sp.Min(L * (w - 1), last)
    return {"reach": d * steps, "receptive_field_last": steps + 1,
            "diameter": sp.Piecewise((0, n <= 1), (oo, d >= 2), (_hops(n - 1, w - 1), True)),
            "reach_to_first": sp.Piecewise((0, n <= 1),
                                           (_hops(last, w - 1), sp.Eq(sp.Mod(n - 1, d), 0)),
                                           (oo, True))}


def _chunk_forms(length) -> dict:
    # covers only when one chunk holds every token
    hops = sp.Piecewise((0, n <= 1), (1, length >= n), (oo, True))
    return {"reach": sp.Min(length - 1, n - 1),
            "receptive_field_last": n - length * sp.floor((n - 1) / length),
            "diameter": hops, "reach_to_first": hops}


def _fixed_forms(length, c) -> dict:
    # A key reaches the last (summary) token of its chunk, which every later query sees.
    earlier = sp.floor((n - 1) / length)
    hops = sp.Piecewise((0, n <= 1), (1, (n <= length) | (c >= length)), (2, True))
    return {"reach": sp.Piecewise((n - 1, L >= 2),
                                  (sp.Max(sp.Min(length - 1, n - 1), n - 1 - length + c), True)),
            "receptive_field_last": sp.Piecewise(
                (n, L >= 2), (n - length * earlier + c * earlier, True)),
            "diameter": hops, "reach_to_first": hops}


def _strided_forms(before, s) -> dict:
    # q - k = s*m + r with r < s <= before + 1: one stride hop, then one window hop.
    one_hop_all = (n - 1 <= before) | sp.Eq(s, 1) | \
        (sp.Eq(n - 1, before + 1) & sp.Eq(sp.Mod(before + 1, s), 0))
    first = (n - 1 <= before) | sp.Eq(sp.Mod(n - 1, s), 0)
    return {"reach": sp.Piecewise((n - 1, L >= 2),
                                  (sp.Max(s * sp.floor((n - 1) / s), sp.Min(n - 1, before)),
                                   True)),
            "receptive_field_last": sp.Piecewise(
                (n, L >= 2), (sp.Min(before + 1, n) + sp.Max(
                    0, sp.floor((n - 1) / s) - sp.floor(before / s)), True)),
            "diameter": sp.Piecewise((0, n <= 1), (1, one_hop_all), (2, True)),
            "reach_to_first": sp.Piecewise((0, n <= 1), (1, first), (2, True))}
