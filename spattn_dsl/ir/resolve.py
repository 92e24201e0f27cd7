"""Name and parameter resolution, checks, and binding (declarations -> bound Patterns).

``check(decls)`` runs every static check of SPEC section 2 and returns the declarations by
name; ``bind(name, args, decls)`` inlines pattern references with their arguments, turning
primitive calls into primitive nodes. Every error is a located ``PatternError``.
"""
from __future__ import annotations

import dataclasses

from ..errors import PatternError
from . import nodes as N
from .evaluate import eval_int, mentions

# primitive name -> (node class, argument names in order, default values)
PRIMITIVES = {
    "dense": (N.Dense, (), {}),
    "none": (N.Empty, (), {}),
    "causal": (N.Causal, (), {}),
    "window": (N.Window, ("w",), {}),
    "band": (N.Band, ("before", "after"), {}),
    "dilated": (N.Dilated, ("w", "d"), {}),
    "stride": (N.Stride, ("s",), {}),
    "chunk": (N.Chunk, ("l",), {}),
    "summary": (N.Summary, ("l", "c"), {}),
    "sink": (N.Sink, ("g",), {}),
    "prefix": (N.Prefix, ("p",), {}),
    "random": (N.Random, ("r", "seed"), {"seed": 0}),
    "global": (None, (), {}),  # two forms, handled by _global
}
FUNCTIONS = {"min": 2, "max": 2, "isqrt": 1, "log2": 1}
RESERVED = {"n", "q", "k"}


# ---------------------------------------------------------------- static checks
def check(decls: list) -> dict:
    """Check declarations; returns ``{name: decl}``. Raises the first error found."""
    table = {}
    for decl in decls:
        if decl.name in table:
            raise PatternError(f"'{decl.name}' is already declared at line {table[decl.name].span.line}",
                               decl.span)
        if decl.name in PRIMITIVES or decl.name in FUNCTIONS or decl.name in RESERVED:
            raise PatternError(f"'{decl.name}' is a built-in name and cannot be redeclared", decl.span)
        table[decl.name] = decl
    for decl in decls:
        if isinstance(decl, N.PatternDecl):
            _check_pattern(decl, table)
        else:
            _check_items(decl.items, table)
    _check_recursion(table)
    return table


def check_body(expr, table: dict | None = None):
    """Check a pattern body given on its own (pattern text with no declaration around it)."""
    _check_mask(expr, set(), table or {}, in_body=True)


def _check_pattern(decl, table):
    seen = []
    for param in decl.params:
        if param.name in RESERVED or param.name in FUNCTIONS:
            raise PatternError(f"'{param.name}' is reserved and cannot be a parameter name", param.span)
        if param.name in seen:
            raise PatternError(f"duplicate parameter '{param.name}'", param.span)
        if param.default is not None:
            _check_int(param.default, set(seen), in_where=False)
        seen.append(param.name)
    _check_mask(decl.body, set(seen), table, in_body=True)


def _check_items(items, table):
    for item in items:
        _check_int(item.count, set(), in_where=False)
        if mentions(item.count, {"n"}):
            raise PatternError("a layer count cannot depend on n", item.count.span)
        if isinstance(item, N.RepeatItem):
            _check_items(item.items, table)
        else:
            _check_mask(item.body, set(), table, in_body=True)


def _check_mask(expr, params: set, table: dict, in_body: bool = False):
    if isinstance(expr, N.Heads) and not in_body:
        raise PatternError("'heads' must be a whole pattern body", expr.span)
    if isinstance(expr, N.Ref):
        _check_ref(expr, params, table)
    elif isinstance(expr, N.Compare):
        _check_int(expr.left, params, in_where=True)
        _check_int(expr.right, params, in_where=True)
    elif isinstance(expr, N.Blocks):
        _check_int(expr.size, params, in_where=False)
        _check_mask(expr.body, params, table)
    else:
        for child in N.children(expr):
            _check_mask(child, params, table)


def _check_ref(ref, params, table):
    for value in ref.args:
        _check_int(value, params, in_where=False)
    for _, value in ref.kwargs:
        _check_int(value, params, in_where=False)
    if ref.name == "global":
        return _global_args(ref)  # checks the form
    if ref.name in PRIMITIVES:
        _, names, defaults = PRIMITIVES[ref.name]
        _match_args(ref, names, defaults, f"{ref.name}")
        return None
    decl = table.get(ref.name)
    if decl is None:
        raise PatternError(f"unknown pattern or primitive '{ref.name}'", ref.span)
    if isinstance(decl, N.ModelDecl):
        raise PatternError(f"'{ref.name}' is a model, not a pattern", ref.span)
    names = tuple(p.name for p in decl.params)
    defaults = {p.name: p.default for p in decl.params if p.default is not None}
    _match_args(ref, names, defaults, f"pattern '{ref.name}'")
    return None


def _match_args(ref, names, defaults, what) -> dict:
    """Map a call's arguments to parameter names; errors name the offending argument."""
    if len(ref.args) > len(names):
        extra = ref.args[len(names)]
        raise PatternError(f"{what} takes {_count(len(names), 'argument')}, got {len(ref.args) + len(ref.kwargs)}",
                           extra.span or ref.span)
    given = dict(zip(names, ref.args))
    for i, (key, value) in enumerate(ref.kwargs):
        span = ref.kwarg_spans[i] if ref.kwarg_spans else ref.span
        if key not in names:
            known = ", ".join(names) or "no parameters"
            raise PatternError(f"{what} has no parameter '{key}' (it has {known})", span)
        if key in given:
            raise PatternError(f"{what}: parameter '{key}' given twice", span)
        given[key] = value
    missing = [name for name in names if name not in given and name not in defaults]
    if missing:
        raise PatternError(f"{what} needs a value for '{missing[0]}'", ref.span)
    return given


def _count(k: int, word: str) -> str:
    return f"{k} {word}" + ("" if k == 1 else "s")


def _global_args(ref):
    """``global(first = g)`` or ``global(t1, t2, ...)``."""
    if ref.kwargs and (ref.args or len(ref.kwargs) > 1 or ref.kwargs[0][0] != "first"):
        raise PatternError("global takes either 'first = g' or a list of token positions", ref.span)
    if not ref.kwargs and not ref.args:
        raise PatternError("global needs 'first = g' or at least one token position", ref.span)
    return ref.kwargs[0][1] if ref.kwargs else None


def _check_int(expr, params: set, in_where: bool):
    if isinstance(expr, N.Param) and expr.name not in params:
        raise PatternError(f"unknown parameter '{expr.name}'", expr.span)
    if isinstance(expr, N.Var) and expr.name in ("q", "k") and not in_where:
        raise PatternError(f"'{expr.name}' is only defined inside where(...)", expr.span)
    if isinstance(expr, N.Call):
        arity = FUNCTIONS.get(expr.func)
        if arity is None:
            raise PatternError(f"unknown function '{expr.func}' (have min, max, isqrt, log2)", expr.span)
        if len(expr.args) != arity:
            raise PatternError(f"{expr.func}() takes {_count(arity, 'argument')}, got {len(expr.args)}",
                               expr.span)
    if isinstance(expr, N.BinOp) and expr.op == "/" and in_where and mentions(expr, {"q", "k"}):
        raise PatternError("'/' is exact and not defined on q or k: use '//'", expr.span)
    for child in _int_children(expr):
        _check_int(child, params, in_where)


def _int_children(expr) -> tuple:
    if isinstance(expr, N.BinOp):
        return (expr.left, expr.right)
    if isinstance(expr, N.Neg):
        return (expr.operand,)
    if isinstance(expr, N.Call):
        return expr.args
    return ()


def _refs(expr):
    """Every pattern reference in a mask expression (or a default/argument is irrelevant)."""
    for node in N.walk(expr):
        if isinstance(node, N.Ref):
            yield node


def _check_recursion(table):
    done, active = set(), []

    def visit(name):
        if name in done:
            return
        active.append(name)
        for ref in _refs(table[name].body):
            if ref.name in active:
                cycle = " -> ".join(active[active.index(ref.name):] + [ref.name])
                raise PatternError(f"recursive pattern: {cycle}", ref.span)
            if isinstance(table.get(ref.name), N.PatternDecl):
                visit(ref.name)
        active.pop()
        done.add(name)

    for name, decl in table.items():
        if isinstance(decl, N.PatternDecl):
            visit(name)


# ---------------------------------------------------------------- binding
def bind_params(decl, given: dict, env: dict) -> dict:
    """Parameter values of ``decl`` as integer expressions (constants folded where n is absent).

    ``given`` maps names to caller expressions, already substituted in the caller's scope.
    Defaults are evaluated in order and may use earlier parameters and n.
    """
    values = {}
    for param in decl.params:
        expr = given.get(param.name)
        if expr is None:
            expr = substitute(param.default, values)
        values[param.name] = _fold(expr)
    return values


def _fold(expr):
    if isinstance(expr, int):
        return N.Num(expr)
    if mentions(expr, {"n"}) or isinstance(expr, N.Num):
        return expr
    return N.Num(eval_int(expr), expr.span)


def substitute(expr, env: dict):
    """Replace parameters in an integer expression by their bound expressions."""
    if isinstance(expr, N.Param):
        return env[expr.name]
    if isinstance(expr, N.BinOp):
        return N.BinOp(expr.op, substitute(expr.left, env), substitute(expr.right, env), expr.span)
    if isinstance(expr, N.Neg):
        return N.Neg(substitute(expr.operand, env), expr.span)
    if isinstance(expr, N.Call):
        return N.Call(expr.func, tuple(substitute(a, env) for a in expr.args), expr.span)
    return expr


def bind_body(expr, env: dict, table: dict):
    """A mask expression with parameters substituted and references inlined."""
    if isinstance(expr, N.Ref):
        return _bind_ref(expr, env, table)
    if isinstance(expr, N.Compare):
        return N.Compare(expr.op, _fold_where(substitute(expr.left, env)),
                         _fold_where(substitute(expr.right, env)), expr.span)
    if isinstance(expr, N.Blocks):
        return N.Blocks(_fold(substitute(expr.size, env)), bind_body(expr.body, env, table), expr.span)
    if isinstance(expr, N.Heads):
        return N.Heads(tuple(bind_body(b, env, table) for b in expr.bodies), expr.span)
    kids = N.children(expr)
    names = [f.name for f in dataclasses.fields(expr) if f.name != "span"]
    return dataclasses.replace(expr, **dict(zip(names, (bind_body(c, env, table) for c in kids))))


def _fold_where(expr):
    return expr if mentions(expr, {"n", "q", "k"}) else _fold(expr)


def _bind_ref(ref, env, table):
    args = tuple(_fold(substitute(a, env)) for a in ref.args)
    kwargs = tuple((key, _fold(substitute(v, env))) for key, v in ref.kwargs)
    call = N.Ref(ref.name, args, kwargs, ref.span, ref.kwarg_spans)
    if ref.name == "global":
        first = _global_args(call)
        return N.Global(first, ref.span) if first is not None else N.GlobalTokens(args, ref.span)
    if ref.name in PRIMITIVES:
        cls, names, defaults = PRIMITIVES[ref.name]
        given = _match_args(call, names, defaults, ref.name)
        values = {name: given.get(name, N.Num(defaults.get(name, 0))) for name in names}
        node = cls(**values, span=ref.span)
        _check_now(node)
        return node
    return _bind_call(call, table)[0]


def _bind_call(call, table):
    """A call of a declared pattern (arguments already substituted): (expression, values)."""
    decl = table[call.name]
    names = tuple(p.name for p in decl.params)
    defaults = {p.name: p.default for p in decl.params if p.default is not None}
    given = _match_args(call, names, defaults, f"pattern '{call.name}'")
    values = bind_params(decl, given, {})
    return bind_body(decl.body, values, table), values


def bind_layer(body, table):
    """A model layer's body -> (expression, parameter values); values are kept when the layer
    calls a declared pattern, so analysis formulas can speak of its parameters by name."""
    if isinstance(body, N.Ref) and isinstance(table.get(body.name), N.PatternDecl):
        call = N.Ref(body.name, tuple(_fold(a) for a in body.args),
                     tuple((key, _fold(v)) for key, v in body.kwargs), body.span, body.kwarg_spans)
        return _bind_call(call, table)
    return bind_body(body, {}, table), {}


def _check_now(node):
    """Check a primitive's constraints now when its arguments do not depend on n."""
    from .evaluate import instantiate

    fields = [getattr(node, f.name) for f in dataclasses.fields(node) if f.name != "span"]
    if not any(mentions(f, {"n"}) for f in fields if not isinstance(f, (int, tuple))):
        instantiate(node, 1)


def bind(name: str, params: dict, table: dict, span=None):
    """Bind the pattern ``name`` with keyword arguments (Python ints) -> bound expression."""
    decl = table[name]
    given = {}
    for key, value in params.items():
        if key not in {p.name for p in decl.params}:
            known = ", ".join(p.name for p in decl.params) or "no parameters"
            raise PatternError(f"pattern '{name}' has no parameter '{key}' (it has {known})", decl.span)
        if isinstance(value, bool) or not isinstance(value, int):
            raise PatternError(f"pattern '{name}': parameter '{key}' must be an integer, got {value!r}",
                               decl.span)
        given[key] = N.Num(value)
    missing = [p.name for p in decl.params if p.default is None and p.name not in given]
    if missing:
        raise PatternError(f"pattern '{name}' needs a value for '{missing[0]}'", decl.span)
    values = bind_params(decl, given, {})
    return bind_body(decl.body, values, table), values
