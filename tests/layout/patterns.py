"""Patterns shared by the layout, codegen and runtime tests: every primitive, and seeded
random expression trees."""
import random

from spattn_dsl.ir import nodes as N
from spattn_dsl.ir.program import Pattern


def num(v):
    return N.Num(v)


PRIMITIVES = {
    "dense": N.Dense(),
    "none": N.Empty(),
    "causal": N.Causal(),
    "window5": N.Window(num(5)),
    "window40": N.Window(num(40)),
    "band3-9": N.Band(num(3), num(9)),
    "dilated4-3": N.Dilated(num(4), num(3)),
    "stride7": N.Stride(num(7)),
    "chunk10": N.Chunk(num(10)),
    "summary9-2": N.Summary(num(9), num(2)),
    "global3": N.Global(num(3)),
    "tokens": N.GlobalTokens((num(0), num(17), num(50))),
    "sink4": N.Sink(num(4)),
    "prefix20": N.Prefix(num(20)),
    "random3": N.Random(num(3), num(1)),
    "where-diag": N.Compare("<", N.BinOp("-", N.Var("q"), N.Var("k")), num(6)),
    "where-mod": N.Compare("==", N.BinOp("%", N.BinOp("*", N.Var("q"), N.Var("k")), num(5)),
                           num(1)),
    "where-n": N.Compare(">=", N.Var("k"), N.BinOp("//", N.Var("n"), num(3))),
    "blocks8": N.Blocks(num(8), N.Union(N.Band(num(1), num(1)), N.Random(num(2), num(0)))),
    "blocks5-causal": N.Intersect(N.Causal(), N.Blocks(num(5), N.Window(num(2)))),
    "heads": N.Heads((N.Intersect(N.Causal(), N.Window(num(9))),
                      N.Intersect(N.Causal(), N.Stride(num(9))))),
    "bigbird": N.Blocks(num(16), N.Union(N.Union(N.Band(num(1), num(1)), N.Global(num(2))),
                                         N.Random(num(3), num(0)))),
    "longformer": N.Union(N.Band(num(12), num(12)), N.Global(num(1))),
    "fixed": N.Intersect(N.Causal(), N.Union(N.Chunk(num(16)), N.Summary(num(16), num(4)))),
}

_LEAVES = [v for k, v in PRIMITIVES.items() if k not in ("heads", "bigbird", "longformer",
                                                          "fixed")]


def random_tree(rng: random.Random, depth: int = 3):
    """A seeded random concrete-able expression over the primitives above."""
    if depth == 0 or rng.random() < 0.3:
        return rng.choice(_LEAVES)
    kind = rng.choice(["|", "&", "-", "!", "blocks"])
    if kind == "!":
        return N.Complement(random_tree(rng, depth - 1))
    if kind == "blocks":
        return N.Blocks(num(rng.choice([2, 3, 8])), random_tree(rng, depth - 1))
    left, right = random_tree(rng, depth - 1), random_tree(rng, depth - 1)
    return {"|": N.Union, "&": N.Intersect, "-": N.Difference}[kind](left, right)


def pattern(name_or_expr) -> Pattern:
    expr = PRIMITIVES[name_or_expr] if isinstance(name_or_expr, str) else name_or_expr
    return Pattern(expr)
