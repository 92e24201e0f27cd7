"""Name and parameter resolution, checks, and binding (declarations -> bound Patterns).

``check(decls)`` runs every static check of docs/language.md §2 and returns the declarations by
name, raising every error of the file at once; ``bind(name, args, decls)`` inlines pattern
references with their arguments, turning primitive calls into primitive nodes. Every error is
a located ``PatternError``.

Binding is linear in the distinct sub-patterns: a pattern called twice with the same
arguments is bound once and shared, and a result that would nest or expand past the limits
of ``ir.limits`` is refused where it first does. Passes over declarations run without
recursion; the rest recurse at most ``MAX_DEPTH`` deep.
"""
from __future__ import annotations

import dataclasses

from ..errors import PatternError
from . import nodes as N
from .evaluate import canonical_compare, eval_int, measure, mentions
from .limits import MAX_DEPTH, MAX_NODES, RANGE_TEXT, in_range

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
    "random": (N.Random, ("r", "seed", "fresh"), {"seed": 0, "fresh": 0}),
    "global": (None, (), {}),  # two forms, handled by _global
}
# dynamic term name -> (node class, argument names in order, defaults) (docs/language.md §5).
# ``by`` and ``shared`` take a name (NAME_ARGUMENTS), never an integer or a parameter; every
# other argument is an integer expression. Default ``by``: mean_key (MoBA's, and the cheapest);
# default ``shared``: head (each query head selects for itself); default ``probe``: 64 (the
# last 64 queries, as MInference's vertical-slash heads).
DYNAMIC_TERMS = {
    "topk": (N.TopK, ("k", "unit", "rows", "by", "shared"),
             {"unit": 1, "rows": 1, "by": "mean_key", "shared": "head"}),
    "vertical": (N.Vertical, ("k", "probe", "shared"), {"probe": 64, "shared": "head"}),
    "slash": (N.Slash, ("k", "probe", "shared"), {"probe": 64, "shared": "head"}),
}
NAME_ARGUMENTS = {"by": ("an estimator", N.ESTIMATORS), "shared": ("a sharing", N.SHARING)}
SYMBOLS = set(N.ESTIMATORS) | set(N.SHARING)  # names that mean something only after by/shared
FUNCTIONS = {"min": 2, "max": 2, "isqrt": 1, "log2": 1}
RESERVED = {"n", "q", "k"}


# ---------------------------------------------------------------- static checks
def check(decls: list) -> dict:
    """Check declarations; returns ``{name: decl}``.

    Every error of the file is collected (in source order) and raised together as one
    ``PatternError`` (``PatternError.combine``; its ``.errors`` lists them all).
    """
    errors, table = [], {}
    for decl in decls:
        if decl.name in table:
            errors.append(PatternError(f"'{decl.name}' is already declared at line "
                                       f"{table[decl.name].span.line}", decl.span))
        elif decl.name in PRIMITIVES or decl.name in DYNAMIC_TERMS or decl.name in FUNCTIONS \
                or decl.name in RESERVED:
            errors.append(PatternError(f"'{decl.name}' is a built-in name and cannot be redeclared",
                                       decl.span))
        else:
            table[decl.name] = decl
    for decl in decls:
        if isinstance(decl, N.PatternDecl):
            _check_pattern(decl, table, errors)
        else:
            _check_items(decl.items, table, errors)
    if not _check_recursion(table, errors):
        _check_inline_depth(table, errors)
    _raise_all(errors)
    return table


def check_body(expr, table: dict | None = None):
    """Check a pattern body given on its own (pattern text with no declaration around it)."""
    errors = []
    _check_mask(expr, set(), table or {}, errors, in_body=True)
    _raise_all(errors)


def _raise_all(errors):
    if errors:
        errors.sort(key=lambda e: (e.line, e.column))
        raise PatternError.combine(errors)


def _collect(errors, check, *args):
    """Run one check; a PatternError it raises is recorded instead of stopping the pass."""
    try:
        return check(*args)
    except PatternError as error:
        errors.append(error)
        return None


def _check_pattern(decl, table, errors):
    seen = set()  # a set, not a list: 20,000 parameters must stay linear
    for param in decl.params:
        if param.name in RESERVED or param.name in FUNCTIONS:
            errors.append(PatternError(f"'{param.name}' is reserved and cannot be a parameter name",
                                       param.span))
        elif param.name in seen:
            errors.append(PatternError(f"duplicate parameter '{param.name}'", param.span))
        if param.default is not None:  # sees only earlier parameters: ``seen`` grows after
            _collect(errors, _check_int, param.default, seen, False)
        seen.add(param.name)
    _check_mask(decl.body, seen, table, errors, in_body=True)


def _check_items(items, table, errors):
    for item in items:
        if _collect(errors, _check_int, item.count, set(), False) is None and \
                mentions(item.count, {"n"}):
            errors.append(PatternError("a layer count cannot depend on n", item.count.span))
        if isinstance(item, N.RepeatItem):
            _check_items(item.items, table, errors)
        else:
            _check_mask(item.body, set(), table, errors, in_body=True)


def _check_mask(expr, params: set, table: dict, errors: list, in_body: bool = False):
    for node, top in _mask_nodes(expr, in_body):
        if isinstance(node, N.Heads) and not top:
            errors.append(PatternError("'heads' must be a whole pattern body", node.span))
        elif isinstance(node, N.Ref):
            _check_ref(node, params, table, errors)
        elif isinstance(node, N.Compare):
            _collect(errors, _check_int, node.left, params, True)
            _collect(errors, _check_int, node.right, params, True)
        elif isinstance(node, N.Blocks):
            _collect(errors, _check_int, node.size, params, False)


def _mask_nodes(expr, in_body):
    """(node, whether it is a whole body) for every mask node, parents first."""
    stack = [(expr, in_body)]
    while stack:
        node, top = stack.pop()
        yield node, top
        stack.extend((child, False) for child in reversed(N.children(node)))


def _check_ref(ref, params, table, errors):
    if ref.name in DYNAMIC_TERMS:
        _collect(errors, _dynamic_args, ref, params)
        return
    before = len(errors)
    for value in ref.args:
        _collect(errors, _check_int, value, params, False)
    for _, value in ref.kwargs:
        _collect(errors, _check_int, value, params, False)
    if len(errors) > before:
        return
    if ref.name == "global":
        _collect(errors, _global_args, ref)  # checks the form
        return
    if ref.name in PRIMITIVES:
        _, names, defaults = PRIMITIVES[ref.name]
        _collect(errors, _match_args, ref, names, defaults, f"{ref.name}")
        return
    decl = table.get(ref.name)
    if decl is None:
        errors.append(PatternError(f"unknown pattern or primitive '{ref.name}'", ref.span))
    elif isinstance(decl, N.ModelDecl):
        errors.append(PatternError(f"'{ref.name}' is a model, not a pattern", ref.span))
    else:
        names = tuple(p.name for p in decl.params)
        defaults = {p.name: p.default for p in decl.params if p.default is not None}
        _collect(errors, _match_args, ref, names, defaults, f"pattern '{ref.name}'")


def _match_args(ref, names, defaults, what) -> dict:
    """Map a call's arguments to parameter names; errors name the offending argument."""
    if len(ref.args) > len(names):
        extra = ref.args[len(names)]
        raise PatternError(f"{what} takes {_count(len(names), 'argument')}, got {len(ref.args) + len(ref.kwargs)}",
                           extra.span or ref.span)
    given = dict(zip(names, ref.args))
    known_names = set(names)  # a tuple lookup per argument would be quadratic
    for i, (key, value) in enumerate(ref.kwargs):
        span = ref.kwarg_spans[i] if ref.kwarg_spans else ref.span
        if key not in known_names:
            known = ", ".join(names) or "no parameters"
            raise PatternError(f"{what} has no parameter '{key}' (it has {known})", span)
        if key in given:
            raise PatternError(f"{what}: parameter '{key}' given twice", span)
        given[key] = value
    missing = [name for name in names if name not in given and name not in defaults]
    if missing:
        raise PatternError(f"{what} needs a value for '{missing[0]}'", ref.span)
    return given


def _dynamic_args(ref, params: set) -> dict:
    """A dynamic term's arguments checked: names where a name belongs (``by``, ``shared``),
    integer expressions everywhere else. Returns them by argument name, defaults not filled."""
    _, names, defaults = DYNAMIC_TERMS[ref.name]
    given = _match_args(ref, names, defaults, ref.name)
    for name, value in given.items():
        if name in NAME_ARGUMENTS:
            _symbol(ref.name, name, value)
            continue
        if isinstance(value, N.Param) and value.name in SYMBOLS and value.name not in params:
            raise PatternError(f"{ref.name}: {name} must be an integer, but '{value.name}' is "
                               f"{_symbol_kind(value.name)} name", value.span)
        _check_int(value, params, False)
    return given


def _symbol(term: str, name: str, value) -> str:
    """The name given to ``by`` or ``shared``, checked against the names it may take."""
    kind, allowed = NAME_ARGUMENTS[name]
    choices = ", ".join(allowed)
    if not isinstance(value, N.Param):
        raise PatternError(f"{term}: {name} takes {kind} name ({choices}), not an integer "
                           "expression", value.span)
    if value.name not in allowed:
        raise PatternError(f"{term}: unknown {kind.split()[-1]} '{value.name}' for {name} "
                           f"(have {choices})", value.span)
    return value.name


def _symbol_hint(name: str) -> str:
    """Why an estimator or sharing name is not a parameter, for an error message."""
    if name not in SYMBOLS:
        return ""
    where = "by" if name in N.ESTIMATORS else "shared"
    return f" ('{name}' is {_symbol_kind(name)} name, for a dynamic term's {where} = ...)"


def _symbol_kind(name: str) -> str:
    return "an estimator" if name in N.ESTIMATORS else "a sharing"


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
        raise PatternError(f"unknown parameter '{expr.name}'{_symbol_hint(expr.name)}", expr.span)
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
    """Every pattern reference in a mask expression, with its nesting depth (1 = the body)."""
    return ((node, depth) for node, depth in _refs_all(expr) if isinstance(node, N.Ref))


def _pattern_refs(table, name):
    """(ref, depth) for each reference of pattern ``name`` to a declared pattern."""
    return [(ref, depth) for ref, depth in _refs(table[name].body)
            if isinstance(table.get(ref.name), N.PatternDecl)]


def _check_recursion(table, errors) -> bool:
    """Record each recursive cycle (an iterative depth-first search); True if any."""
    state = {}  # name -> "active" | "done"
    found = False
    for root, decl in table.items():
        if not isinstance(decl, N.PatternDecl) or root in state:
            continue
        path, stack = [], [(root, iter(_pattern_refs(table, root)))]
        state[root] = "active"
        path.append(root)
        while stack:
            name, refs = stack[-1]
            ref = next(refs, None)
            if ref is None:
                stack.pop()
                path.pop()
                state[name] = "done"
                continue
            target = ref[0].name
            if state.get(target) == "active":
                cycle = " -> ".join(path[path.index(target):] + [target])
                errors.append(PatternError(f"recursive pattern: {cycle}", ref[0].span))
                found = True
            elif target not in state:
                state[target] = "active"
                path.append(target)
                stack.append((target, iter(_pattern_refs(table, target))))
    return found


def _check_inline_depth(table, errors):
    """Refuse patterns that nest deeper than MAX_DEPTH once references are inlined.

    A pattern's depth is its own nesting plus, at each reference, the referenced pattern's
    depth. Only the innermost pattern that passes the limit is reported: those that use it
    are too deep because of it. Computed bottom-up without recursion (the graph is acyclic).
    """
    depth, too_deep = {}, set()
    for root, decl in table.items():
        if not isinstance(decl, N.PatternDecl):
            continue
        stack = [root]
        while stack:
            name = stack[-1]
            if name in depth:
                stack.pop()
                continue
            refs = _pattern_refs(table, name)
            pending = [r.name for r, _ in refs if r.name not in depth]
            if pending:
                stack.extend(pending)
                continue
            stack.pop()
            own = max((d for _, d in _refs_all(table[name].body)), default=1)
            worst, culprit = own, None
            for ref, at in refs:
                if at + depth[ref.name] > worst:  # a reference counts as one level
                    worst, culprit = at + depth[ref.name], ref
            depth[name] = worst
            inherited = any(r.name in too_deep for r, _ in refs)
            if worst > MAX_DEPTH:
                too_deep.add(name)
                if not inherited:
                    errors.append(PatternError(
                        f"pattern '{name}' nests more than {MAX_DEPTH} levels deep once its "
                        "references are inlined (the documented limit)",
                        culprit.span if culprit else table[name].span))


def _refs_all(expr):
    """(node, depth) for every mask node."""
    stack = [(expr, 1)]
    while stack:
        node, depth = stack.pop()
        yield node, depth
        stack.extend((child, depth + 1) for child in N.children(node))


# ---------------------------------------------------------------- binding
class _Session:
    """State of one binding: calls already bound (a pattern used twice with the same
    arguments is bound once and shared) and the measured size of every node built."""

    def __init__(self):
        self.calls = {}
        self.sizes = {}

    def measure(self, expr, span, what: str):
        """Refuse an expression nested deeper than MAX_DEPTH or larger than MAX_NODES."""
        depth, size = measure(expr, self.sizes)
        if depth > MAX_DEPTH:
            raise PatternError(f"{what} nests more than {MAX_DEPTH} levels deep once references "
                               "and parameters are inlined (the documented limit)", span)
        if size > MAX_NODES:
            raise PatternError(f"{what} expands to {size} nodes once references and parameters "
                               f"are inlined, more than the documented limit of {MAX_NODES}", span)


def bind_params(decl, given: dict, env: dict, session: _Session | None = None) -> dict:
    """Parameter values of ``decl`` as integer expressions (constants folded where n is absent).

    ``given`` maps names to caller expressions, already substituted in the caller's scope.
    Defaults are evaluated in order and may use earlier parameters and n.
    """
    session = session or _Session()
    values = {}
    for param in decl.params:
        expr = given.get(param.name)
        if expr is None:
            expr = substitute(param.default, values)
        values[param.name] = _fold(expr, session)
    return values


def _fold(expr, session: _Session, where: bool = False):
    """Fold an integer expression to a number unless it mentions n (or, in where, q or k)."""
    if isinstance(expr, int):
        return N.Num(expr)
    session.measure(expr, expr.span, "this value")
    if isinstance(expr, N.Num) or mentions(expr, {"n", "q", "k"} if where else {"n"}):
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


def bind_expr(expr, table: dict, what: str = "this pattern", span=None, env: dict | None = None,
              session: _Session | None = None):
    """A whole mask expression bound (parameters substituted, references inlined), refused
    when it nests or expands past the documented limits."""
    session = session or _Session()
    bound = bind_body(expr, env or {}, table, session)
    session.measure(bound, span or getattr(expr, "span", None), what)
    return bound


def bind_body(expr, env: dict, table: dict, session: _Session | None = None):
    """A mask expression with parameters substituted and references inlined."""
    session = session or _Session()
    if isinstance(expr, N.Ref):
        return _bind_ref(expr, env, table, session)
    if isinstance(expr, N.Compare):
        return canonical_compare(N.Compare(
            expr.op, _fold(substitute(expr.left, env), session, where=True),
            _fold(substitute(expr.right, env), session, where=True), expr.span))
    if isinstance(expr, N.Blocks):
        body = bind_body(expr.body, env, table, session)
        _refuse_dynamic_in_blocks(body)
        return N.Blocks(_fold(substitute(expr.size, env), session), body, expr.span)
    if isinstance(expr, N.Heads):
        heads = N.Heads(tuple(bind_body(b, env, table, session) for b in expr.bodies), expr.span)
        _check_shared_in_heads(heads)
        return heads
    kids = N.children(expr)
    names = [f.name for f in dataclasses.fields(expr) if f.name != "span"]
    return dataclasses.replace(
        expr, **dict(zip(names, (bind_body(c, env, table, session) for c in kids))))


def _bind_ref(ref, env, table, session):
    if ref.name in DYNAMIC_TERMS:
        return _bind_dynamic(ref, env, session)
    args = tuple(_fold(substitute(a, env), session) for a in ref.args)
    kwargs = tuple((key, _fold(substitute(v, env), session)) for key, v in ref.kwargs)
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
    expr = _bind_call(call, table, session)[0]
    session.measure(expr, ref.span, f"pattern '{ref.name}'")
    return expr


def _bind_dynamic(ref, env, session):
    """A dynamic term's node: names kept as strings, integer arguments bound and folded."""
    cls, names, defaults = DYNAMIC_TERMS[ref.name]
    given = _match_args(ref, names, defaults, ref.name)
    values = {}
    for name in names:
        value = given.get(name)
        if name in NAME_ARGUMENTS:
            values[name] = defaults[name] if value is None else _symbol(ref.name, name, value)
        else:
            values[name] = _fold(substitute(value, env), session) if value is not None \
                else N.Num(defaults[name])
    node = cls(**values, span=ref.span)
    _check_now(node)
    return node


def _refuse_dynamic_in_blocks(body):
    terms = N.dynamic_terms(body)
    if terms:
        raise PatternError("a dynamic term cannot stand inside blocks(...): its units are key "
                           "positions (use unit = b for blocks of b keys)", terms[0].span)


def _check_shared_in_heads(heads):
    """A selection shared across heads is one choice for all of them: the term must stand in
    every case of the heads block."""
    cases = [set(N.dynamic_terms(body)) for body in heads.bodies]
    for term in set().union(*cases):
        if term.shared != "head" and not all(term in case for case in cases):
            raise PatternError(f"a term with shared = {term.shared} must stand in every case of "
                               "heads {...} (the heads that share a selection need it)",
                               term.span)


def _bind_call(call, table, session):
    """A call of a declared pattern (arguments already substituted): (expression, values)."""
    key = (call.name, call.args, call.kwargs)
    if key not in session.calls:
        decl = table[call.name]
        names = tuple(p.name for p in decl.params)
        defaults = {p.name: p.default for p in decl.params if p.default is not None}
        given = _match_args(call, names, defaults, f"pattern '{call.name}'")
        values = bind_params(decl, given, {}, session)
        session.calls[key] = (bind_body(decl.body, values, table, session), values)
    return session.calls[key]


def bind_layer(body, table, session: _Session | None = None):
    """A model layer's body -> (expression, parameter values); values are kept when the layer
    calls a declared pattern, so analysis formulas can speak of its parameters by name."""
    session = session or _Session()
    if isinstance(body, N.Ref) and isinstance(table.get(body.name), N.PatternDecl):
        call = N.Ref(body.name, tuple(_fold(a, session) for a in body.args),
                     tuple((key, _fold(v, session)) for key, v in body.kwargs), body.span,
                     body.kwarg_spans)
        expr, values = _bind_call(call, table, session)
        session.measure(expr, body.span, f"pattern '{body.name}'")
        return expr, values
    return bind_expr(body, table, "this layer", session=session), {}


def _check_now(node):
    """Check a primitive's constraints now when its arguments do not depend on n."""
    from .evaluate import instantiate

    fields = [getattr(node, f.name) for f in dataclasses.fields(node) if f.name != "span"]
    if not any(mentions(f, {"n"}) for f in fields if not isinstance(f, (int, tuple, str))):
        instantiate(node, 1)


def bind(name: str, params: dict, table: dict, span=None):
    """Bind the pattern ``name`` with keyword arguments (Python ints) -> bound expression."""
    decl = table[name]
    names = {p.name for p in decl.params}
    given = {}
    for key, value in params.items():
        if key not in names:
            known = ", ".join(p.name for p in decl.params) or "no parameters"
            raise PatternError(f"pattern '{name}' has no parameter '{key}' (it has {known})", decl.span)
        if isinstance(value, bool) or not isinstance(value, int):
            raise PatternError(f"pattern '{name}': parameter '{key}' must be an integer, got {value!r}",
                               decl.span)
        if not in_range(value):
            raise PatternError(f"pattern '{name}': parameter '{key}' must lie in {RANGE_TEXT}",
                               decl.span)
        given[key] = N.Num(value)
    missing = [p.name for p in decl.params if p.default is None and p.name not in given]
    if missing:
        raise PatternError(f"pattern '{name}' needs a value for '{missing[0]}'", decl.span)
    session = _Session()
    values = bind_params(decl, given, {}, session)
    return bind_expr(decl.body, table, f"pattern '{name}'", decl.span, values, session), values
