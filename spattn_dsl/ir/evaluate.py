"""Integer arithmetic and instantiation: a bound expression at a sequence length -> concrete IR.

``instantiate(expr, n)`` evaluates every primitive argument with ``n`` = the key count of the
grid it lives on (inside ``blocks(b)``, ``ceil(n / b)``), checks each primitive's constraints
and returns the same tree with plain ``int`` fields, each clamped to the grid where that
changes nothing (``ir.limits``). ``Compare`` keeps ``q`` and ``k`` symbolic, with ``n`` and
constants folded, in its canonical form (``canonical_compare``: q or k on the left; a
comparison of constants is ``dense`` or ``none``), every sub-expression bounded within the
integer range for all q, k of the grid. Arithmetic is exact Python integer arithmetic within
``[-(2**63 - 1), 2**63 - 1]``; a value past it is a located ``PatternError``.
"""
from __future__ import annotations

import dataclasses
import math

from ..errors import PatternError
from . import nodes as N
from .limits import MAX_LENGTH, RANGE_TEXT, in_range

# primitive -> ((field, minimum), ...): docs/language.md §2's constraints
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
    N.TopK: (("k", 0), ("unit", 1), ("rows", 1)),
    N.Vertical: (("k", 0), ("probe", 1)),
    N.Slash: (("k", 0), ("probe", 1)),
}


def _floor_div(a: int, b: int, span) -> int:
    if b == 0:
        raise PatternError("division by zero", span)
    return a // b


def eval_int(expr, n: int | None = None, env: dict | None = None) -> int:
    """Evaluate an integer expression with ``n`` and parameters from ``env``, exactly; a
    result outside the documented range (``limits``) is refused where it arises."""
    value = _eval_int(expr, n, env)
    if not in_range(value):
        raise PatternError(f"integer out of range: values must lie in {RANGE_TEXT}",
                           getattr(expr, "span", None))
    return value


def _eval_int(expr, n, env) -> int:
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
    if isinstance(node, N.Random) and values.get("fresh", 0) not in (0, 1):
        raise PatternError(f"random: fresh must be 0 or 1, got {values['fresh']}", node.span)
    if isinstance(node, N.Summary) and values["c"] > values["l"]:
        raise PatternError(f"summary: c must be <= l, got c = {values['c']}, l = {values['l']}",
                           node.span)
    if isinstance(node, N.GlobalTokens):
        for t in values["tokens"]:
            if t < 0:
                raise PatternError(f"global: token positions must be >= 0, got {t}", node.span)


def _clamp(node, values: dict, n: int) -> dict:
    """The same mask on a grid of ``n`` keys with every parameter at most about ``n``.

    Positions and their differences lie in ``(-n, n)``, so a width of ``n`` already means
    "all", a period or chunk of ``n`` "only itself", and ``first = n`` "every token".
    This keeps every later stage in small integers whatever the user wrote.
    """
    m = max(n, 1)
    t = type(node)
    wide = {N.Window: ("w",), N.Band: ("before", "after"), N.Dilated: ("w", "d"),
            N.Stride: ("s",), N.Chunk: ("l",), N.Blocks: ("size",)}.get(t, ())
    counts = {N.Global: ("first",), N.Sink: ("g",), N.Prefix: ("p",), N.Random: ("r",)}.get(t, ())
    out = dict(values)
    for name in wide:
        out[name] = min(values[name], m)
    for name in counts:
        out[name] = min(values[name], n)
    if t is N.GlobalTokens:
        out["tokens"] = tuple(min(x, n) for x in values["tokens"])
    if t in N.DYNAMIC:
        out.update(_clamp_dynamic(t, values, n))
    if t is N.Summary and values["l"] > n:
        # k < n <= l: allowed iff k >= l - c; say the same with l = n (or nothing at all)
        rest = values["l"] - values["c"]
        out["l"], out["c"] = (n, n - rest) if rest < n else (n + 1, 1)
    return out


def _clamp_dynamic(t, values: dict, n: int) -> dict:
    """A unit, row group or probe of more than ``n`` means "all of them"; a budget past the
    number of units (columns, diagonals) selects every candidate, as that number does."""
    m = max(n, 1)
    out = {name: min(values[name], m) for name in ("unit", "rows", "probe") if name in values}
    units = {N.TopK: -(-n // out.get("unit", 1)), N.Vertical: n,
             N.Slash: max(2 * n - 1, 0)}[t]
    out["k"] = min(values["k"], units)
    return out


def _spelling(node) -> str:
    from .printer import PRIMITIVE_NAMES
    return PRIMITIVE_NAMES.get(type(node), type(node).__name__.lower())


def instantiate(expr, n: int):
    """The concrete expression at key length ``n`` (see module docstring).

    Not cached across calls: equal expressions from different files carry different spans,
    and errors must point into their own file (``Pattern.at`` caches per Pattern). Within a
    call, a shared sub-expression is instantiated once.
    """
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_LENGTH:
        raise PatternError(f"the sequence length must be an integer in [0, 2**48], got {n!r}",
                           getattr(expr, "span", None))
    result = _instantiate(expr, n, {})
    return bind_fresh(result) if has_fresh(result) else result


def _instantiate(expr, n: int, memo: dict):
    key = (id(expr), n)
    if key in memo:
        return memo[key][1]
    result = _instantiate_node(expr, n, memo)
    memo[key] = (expr, result)  # keep expr alive so its id is not reused
    return result


def _instantiate_node(expr, n, memo):
    if isinstance(expr, N.Compare):
        return _concrete_compare(expr, n)
    if isinstance(expr, N.Blocks):
        size = eval_int(expr.size, n)
        _check(expr, {"size": size})
        size = _clamp(expr, {"size": size}, n)["size"]
        return N.Blocks(size, _instantiate(expr.body, -(-n // size), memo), expr.span)
    if isinstance(expr, N.Heads):
        return N.Heads(tuple(_instantiate(b, n, memo) for b in expr.bodies), expr.span)
    kids = N.children(expr)
    if kids:
        names = [f.name for f in dataclasses.fields(expr) if f.name != "span"]
        return dataclasses.replace(expr, **dict(zip(names, (_instantiate(c, n, memo) for c in kids))))
    values = {}
    for f in dataclasses.fields(expr):
        if f.name in ("span", "among"):  # among: bound after instantiation (bind_fresh)
            continue
        value = getattr(expr, f.name)
        if isinstance(value, str):  # a dynamic term's estimator or sharing name
            values[f.name] = value
            continue
        values[f.name] = tuple(eval_int(v, n) for v in value) if isinstance(value, tuple) \
            else eval_int(value, n)
    _check(expr, values)
    return dataclasses.replace(expr, **_clamp(expr, values, n))


# ---------------------------------------------------------------- where(...)
_MIRROR = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}
_HOLDS = {"<": int.__lt__, "<=": int.__le__, "==": int.__eq__, "!=": int.__ne__,
          ">=": int.__ge__, ">": int.__gt__}


def canonical_compare(node, n: int | None = None):
    """The one canonical form of a comparison, which every later stage relies on: q or k
    appears on the left (``5 <= q - k`` becomes ``q - k >= 5``), and a comparison of
    constants becomes ``dense`` or ``none`` (once n is known, when it mentions n)."""
    left_varies = mentions(node.left, {"q", "k"})
    if not left_varies and mentions(node.right, {"q", "k"}):
        return N.Compare(_MIRROR[node.op], node.right, node.left, node.span)
    if left_varies:
        return node
    if n is None and (mentions(node.left, {"n"}) or mentions(node.right, {"n"})):
        return node
    holds = _HOLDS[node.op](eval_int(node.left, n), eval_int(node.right, n))
    return N.Dense(node.span) if holds else N.Empty(node.span)


def _concrete_compare(expr, n: int):
    node = canonical_compare(N.Compare(expr.op, fold(expr.left, n), fold(expr.right, n),
                                       expr.span), n)
    if isinstance(node, N.Compare) and n > 0:
        for side in (node.left, node.right):
            where_range(side, (0, n - 1), n)
    return node


_ROOT_LIMIT = 2**62  # isqrt/log2 in where: exact in 64-bit integer code below this


def where_range(expr, qk: tuple, n: int) -> tuple:
    """Exact bounds (lo, hi) of an integer expression over q, k in ``qk``; refuses (located)
    any sub-expression that can leave the integer range, a divisor that can be 0, and an
    argument of isqrt/log2 that can be invalid, so every stage evaluates it exactly."""
    if isinstance(expr, N.Num):
        return expr.value, expr.value
    if isinstance(expr, N.Var):
        return qk
    if isinstance(expr, N.Neg):
        lo, hi = where_range(expr.operand, qk, n)
        return -hi, -lo
    if isinstance(expr, N.Call):
        bounds = [where_range(a, qk, n) for a in expr.args]
        if expr.func in ("min", "max"):
            pick = min if expr.func == "min" else max
            return pick(bounds[0][0], bounds[1][0]), pick(bounds[0][1], bounds[1][1])
        lo, hi = bounds[0]
        smallest = 0 if expr.func == "isqrt" else 1
        if lo < smallest or hi > _ROOT_LIMIT:
            raise PatternError(f"{expr.func}() inside where(...) needs an argument in "
                               f"[{smallest}, 2**62] for every q, k in [0, {n}); it can be "
                               f"{lo if lo < smallest else hi}", expr.span)
        if expr.func == "isqrt":
            return math.isqrt(lo), math.isqrt(hi)
        return lo.bit_length() - 1, hi.bit_length() - 1
    (alo, ahi), (blo, bhi) = where_range(expr.left, qk, n), where_range(expr.right, qk, n)
    if expr.op == "+":
        lo, hi = alo + blo, ahi + bhi
    elif expr.op == "-":
        lo, hi = alo - bhi, ahi - blo
    elif expr.op == "*":
        corners = (alo * blo, alo * bhi, ahi * blo, ahi * bhi)
        lo, hi = min(corners), max(corners)
    else:
        if blo <= 0 <= bhi:
            raise PatternError(f"the divisor of '{expr.op}' inside where(...) can be 0 for some "
                               f"q, k in [0, {n})", expr.right.span or expr.span)
        if expr.op == "%":
            lo, hi = (0, bhi - 1) if blo > 0 else (blo + 1, 0)
        else:  # floor division is monotone in each argument on this box: corners bound it
            corners = (alo // blo, alo // bhi, ahi // blo, ahi // bhi)
            lo, hi = min(corners), max(corners)
    for value in (lo, hi):
        if not in_range(value):
            raise PatternError(f"where(...) arithmetic can reach {value} for q, k in [0, {n}), "
                               f"past the supported range {RANGE_TEXT}", expr.span)
    return lo, hi


# ---------------------------------------------------------------- size of an expression
def parts(node) -> list:
    """The IR nodes directly inside a node: mask children, integer arguments, list items."""
    out = []
    for f in dataclasses.fields(node):
        if f.name in ("span", "kwarg_spans"):
            continue
        value = getattr(node, f.name)
        items = value if isinstance(value, tuple) else (value,)
        for item in items:
            if isinstance(item, tuple):  # a keyword argument (name, value)
                item = item[1]
            if dataclasses.is_dataclass(item):
                out.append(item)
    return out


def measure(expr, memo: dict | None = None) -> tuple:
    """(depth, size) of an expression as a tree, shared sub-expressions counted at every
    use; computed without recursion in time linear in the distinct nodes (``memo`` maps
    ``id`` -> (node, depth, size) and may be shared between calls on related expressions)."""
    memo = {} if memo is None else memo
    if not dataclasses.is_dataclass(expr):
        return 0, 0
    stack = [(expr, False)]
    while stack:
        node, ready = stack.pop()
        if id(node) in memo:
            continue
        kids = parts(node)
        if not ready:
            stack.append((node, True))
            stack.extend((kid, False) for kid in kids if id(kid) not in memo)
            continue
        depth = 1 + max((memo[id(k)][1] for k in kids), default=0)
        size = 1 + sum(memo[id(k)][2] for k in kids)
        memo[id(node)] = (node, depth, size)
    return memo[id(expr)][1:]


def head_count(expr) -> int:
    """The period of the per-head patterns: lcm of every ``heads`` block's size (1 if none)."""
    m = 1
    for node in N.walk(expr):
        if isinstance(node, N.Heads):
            m = math.lcm(m, len(node.bodies))
    return m


def select_head(expr, head: int, memo: dict | None = None):
    """The expression head ``head`` sees: every ``heads`` block replaced by its chosen body.

    Shared sub-expressions stay shared, and a part without ``heads`` is returned as is."""
    memo = {} if memo is None else memo
    hit = memo.get(id(expr))
    if hit is not None:
        return hit[1]
    if isinstance(expr, N.Heads):
        result = select_head(expr.bodies[head % len(expr.bodies)], head, memo)
    else:
        kids = N.children(expr)
        chosen = tuple(select_head(c, head, memo) for c in kids)
        if all(a is b for a, b in zip(chosen, kids)):
            result = expr
        elif isinstance(expr, N.Blocks):
            result = N.Blocks(expr.size, chosen[0], expr.span)
        else:
            names = [f.name for f in dataclasses.fields(expr) if f.name != "span"]
            result = dataclasses.replace(expr, **dict(zip(names, chosen)))
    memo[id(expr)] = (expr, result)
    return result


# ---------------------------------------------------------------- random(..., fresh = 1)
def is_fresh(node) -> bool:
    return isinstance(node, N.Random) and node.fresh not in (0, N.Num(0))


def has_fresh(expr) -> bool:
    return any(is_fresh(node) for node in N.walk(expr))


def bind_fresh(expr):
    """A concrete expression whose every ``random(r, seed = s, fresh = 1)`` carries its
    candidates (``Random.among``), docs/language.md ``random``:

    - the term's *context* is the body of its innermost enclosing ``blocks`` or ``heads``
      block, or the whole expression: an expression on the term's own grid;
    - ``rest`` is the context with every ``fresh`` random term replaced by ``none`` (the
      pairs allowed without the term); the *envelope* is the context with this term (every
      term equal to it in this context: they are one term, with one draw per row) replaced by
      ``dense`` and the other fresh terms by ``none``;
    - ``among = envelope - rest``: the keys of a row where a draw adds a pair.

    A context holding a ``heads`` block (its rest would differ per head) is refused."""
    return _bind_scope(expr)


def _bind_scope(scope):
    own = []
    _own_fresh(scope, own)
    if own and any(isinstance(x, N.Heads) for x in N.walk(scope)):
        raise PatternError("random(..., fresh = 1) draws among the keys the rest of its "
                           "context leaves, which must be the same for every head: put it "
                           "inside the bodies of the heads block instead", own[0].span)
    amongs = {}
    if own:
        rest = _fold_mask(_replace_fresh(scope, lambda node, mine: N.Empty()))
        for term in own:
            key = _unbound(term)
            if key in amongs:
                continue
            envelope = _fold_mask(_replace_fresh(
                scope, lambda node, mine: N.Dense() if mine and _unbound(node) == key
                else N.Empty()))
            amongs[key] = _fold_mask(N.Difference(envelope, rest))
    return _rebuild(scope, amongs)


def _unbound(node):
    return dataclasses.replace(node, among=None)


def _own_fresh(expr, out: list):
    """The fresh random terms of this context (not those of nested blocks or heads bodies)."""
    if is_fresh(expr):
        out.append(expr)
    if isinstance(expr, (N.Blocks, N.Heads)):
        return
    for child in N.children(expr):
        _own_fresh(child, out)


def _replace_fresh(expr, replace, mine: bool = True):
    """``expr`` with every fresh random term replaced by ``replace(node, mine)`` (``mine``:
    the term belongs to this context, not to a nested blocks or heads body)."""
    if is_fresh(expr):
        return replace(expr, mine)
    kids = N.children(expr)
    if not kids:
        return expr
    inner = mine and not isinstance(expr, (N.Blocks, N.Heads))
    new = tuple(_replace_fresh(c, replace, inner) for c in kids)
    return _with_children(expr, new)


def _with_children(expr, new: tuple):
    if isinstance(expr, N.Blocks):
        return N.Blocks(expr.size, new[0], expr.span)
    if isinstance(expr, N.Heads):
        return N.Heads(new, expr.span)
    names = [f.name for f in dataclasses.fields(expr) if f.name != "span"]
    return dataclasses.replace(expr, **dict(zip(names, new)))


def _rebuild(expr, amongs: dict):
    if is_fresh(expr):
        return dataclasses.replace(expr, among=amongs[_unbound(expr)])
    if isinstance(expr, N.Blocks):
        return N.Blocks(expr.size, _bind_scope(expr.body), expr.span)
    if isinstance(expr, N.Heads):
        return N.Heads(tuple(_bind_scope(b) for b in expr.bodies), expr.span)
    kids = N.children(expr)
    if not kids:
        return expr
    return _with_children(expr, tuple(_rebuild(c, amongs) for c in kids))


def _fold_mask(expr):
    """Constants folded away (``x | none`` -> ``x``, ``x - none`` -> ``x``, ...), bottom up."""
    kids = N.children(expr)
    if not kids or isinstance(expr, N.Heads):
        return expr
    new = tuple(_fold_mask(c) for c in kids)
    dense = lambda e: isinstance(e, N.Dense)  # noqa: E731
    empty = lambda e: isinstance(e, N.Empty)  # noqa: E731
    if isinstance(expr, N.Blocks):
        return new[0] if dense(new[0]) or empty(new[0]) else N.Blocks(expr.size, new[0], expr.span)
    if isinstance(expr, N.Complement):
        x = new[0]
        return N.Empty() if dense(x) else N.Dense() if empty(x) else N.Complement(x, expr.span)
    a, b = new
    if isinstance(expr, N.Union):
        if dense(a) or dense(b):
            return N.Dense()
        return a if empty(b) else b if empty(a) else N.Union(a, b, expr.span)
    if isinstance(expr, N.Intersect):
        if empty(a) or empty(b):
            return N.Empty()
        return a if dense(b) else b if dense(a) else N.Intersect(a, b, expr.span)
    if empty(a) or dense(b):  # Difference
        return N.Empty()
    return a if empty(b) else N.Difference(a, b, expr.span)
