"""The static facts of a dynamic pattern that the runtime needs: its static part (every dynamic
term replaced by ``none``) as a Pattern of its own, and whether the kernels' split
"static part + selected pairs" is exact for it."""
from __future__ import annotations

import dataclasses

from ..ir import nodes as N


def replace_terms(expr, value):
    """``expr`` with every dynamic node ``t`` replaced by ``value(t)``."""
    if isinstance(expr, N.DYNAMIC):
        return value(expr)
    kids = N.children(expr)
    if not kids:
        return expr
    if isinstance(expr, N.Heads):
        return dataclasses.replace(expr, bodies=tuple(replace_terms(b, value) for b in kids))
    names = [f.name for f in dataclasses.fields(expr) if f.name in ("left", "right", "operand",
                                                                   "body")]
    return dataclasses.replace(expr, **{name: replace_terms(getattr(expr, name), value)
                                        for name in names})


def static_part(pattern):
    """The pattern with every dynamic term replaced by ``none``: the pairs any selection keeps."""
    from ..ir.program import Pattern

    expr = replace_terms(pattern.expr, lambda term: N.Empty())
    return Pattern(expr, name=f"{pattern.name}/static", params=pattern.params)


def splits_exactly(expr) -> bool:
    """Whether the mask under any selection is the static part plus pairs inside selected units:
    every dynamic term stands under an even number of negations (so a selection only adds
    pairs) and outside ``blocks`` (whose grid would map units onto blocks)."""
    return _monotone(expr, negated=False)


def _monotone(expr, negated: bool) -> bool:
    if isinstance(expr, N.DYNAMIC):
        return not negated
    if isinstance(expr, N.Blocks):
        return not N.dynamic_terms(expr.body)
    if isinstance(expr, N.Complement):
        return _monotone(expr.operand, not negated)
    if isinstance(expr, N.Difference):
        return _monotone(expr.left, negated) and _monotone(expr.right, not negated)
    return all(_monotone(child, negated) for child in N.children(expr))
