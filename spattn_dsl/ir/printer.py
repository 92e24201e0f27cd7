"""IR -> canonical pattern text (a cache key, and the header of generated kernels).

Parses back to an equal expression: ``parse(print(e)) == e``.
"""
from __future__ import annotations

from . import nodes as N

PRIMITIVE_NAMES = {
    N.Dense: "dense", N.Empty: "none", N.Causal: "causal", N.Window: "window", N.Band: "band",
    N.Dilated: "dilated", N.Stride: "stride", N.Chunk: "chunk", N.Summary: "summary",
    N.Global: "global", N.GlobalTokens: "global", N.Sink: "sink", N.Prefix: "prefix",
    N.Random: "random", N.TopK: "topk", N.Vertical: "vertical", N.Slash: "slash",
}


# binding strength of integer operators, loosest first
_INT_LEVEL = {"+": 1, "-": 1, "*": 2, "/": 2, "//": 2, "%": 2}


def int_text(expr, level: int = 0) -> str:
    if isinstance(expr, int):
        return str(expr) if expr >= 0 or level == 0 else f"({expr})"
    if isinstance(expr, N.Num):
        return int_text(expr.value, level)
    if isinstance(expr, (N.Var, N.Param)):
        return expr.name
    if isinstance(expr, N.Neg):
        return _wrap(f"-{int_text(expr.operand, 3)}", level > 2)
    if isinstance(expr, N.Call):
        return f"{expr.func}({', '.join(int_text(a) for a in expr.args)})"
    mine = _INT_LEVEL[expr.op]
    text = f"{int_text(expr.left, mine)} {expr.op} {int_text(expr.right, mine + 1)}"
    return _wrap(text, mine < level)


def _dynamic_text(expr) -> str:
    """``topk(8, unit = 64)``: the budget, then every argument that differs from its default."""
    from .resolve import DYNAMIC_TERMS

    term = PRIMITIVE_NAMES[type(expr)]
    _, names, defaults = DYNAMIC_TERMS[term]
    args = [int_text(expr.k)]
    for name in names[1:]:
        value, default = getattr(expr, name), defaults[name]
        if isinstance(value, str):
            if value != default:
                args.append(f"{name} = {value}")
        elif value not in (default, N.Num(default)):
            args.append(f"{name} = {int_text(value)}")
    return f"{term}({', '.join(args)})"


def _wrap(text: str, parens: bool) -> str:
    return f"({text})" if parens else text


# mask operator levels: | and - are 1, & is 2, ! and atoms are 3
def text(expr, level: int = 0) -> str:
    """Canonical text of a mask expression (or a heads block)."""
    t = type(expr)
    if t in (N.Dense, N.Empty, N.Causal):
        return PRIMITIVE_NAMES[t]
    if t is N.Global:
        return f"global(first = {int_text(expr.first)})"
    if t is N.Random:  # fresh = 0 prints as before (pattern hashes and cache keys unchanged)
        fresh = "" if expr.fresh in (0, N.Num(0)) else f", fresh = {int_text(expr.fresh)}"
        return f"random({int_text(expr.r)}, seed = {int_text(expr.seed)}{fresh})"
    if t in N.DYNAMIC:
        return _dynamic_text(expr)
    if t is N.GlobalTokens:
        return f"global({', '.join(int_text(x) for x in expr.tokens)})"
    if t in PRIMITIVE_NAMES:
        args = [getattr(expr, f) for f in t.__dataclass_fields__ if f != "span"]
        return f"{PRIMITIVE_NAMES[t]}({', '.join(int_text(a) for a in args)})"
    if t is N.Compare:
        return f"where({int_text(expr.left)} {expr.op} {int_text(expr.right)})"
    if t is N.Union:
        return _wrap(f"{text(expr.left, 1)} | {text(expr.right, 2)}", level > 1)
    if t is N.Difference:
        return _wrap(f"{text(expr.left, 1)} - {text(expr.right, 2)}", level > 1)
    if t is N.Intersect:
        return _wrap(f"{text(expr.left, 2)} & {text(expr.right, 3)}", level > 2)
    if t is N.Complement:
        return f"!{text(expr.operand, 3)}"
    if t is N.Blocks:
        return f"blocks({int_text(expr.size)}) {{ {text(expr.body)} }}"
    if t is N.Heads:
        return "heads { " + "; ".join(text(b) for b in expr.bodies) + " }"
    if t is N.Ref:
        args = [int_text(a) for a in expr.args] + [f"{k} = {int_text(v)}" for k, v in expr.kwargs]
        return f"{expr.name}({', '.join(args)})" if args else expr.name
    raise TypeError(f"cannot print {t.__name__}")
