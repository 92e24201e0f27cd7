"""The periodic, residue-class and multi-source engines against brute force (oracle.py) on
random periodic patterns and models: strides, dilations, chunks, summaries, where residues,
with windows, bands, causal, sinks and global tokens; heads; ragged lengths; block grids."""
import random

import pytest

from spattn_dsl import loads
from spattn_dsl.analysis import AnalysisError, analyze
from spattn_dsl.analysis.rows import NotRepresentable
from spattn_dsl.ir import nodes as N
from spattn_dsl.ir.program import Model, Pattern

from .test_oracle import check_against_oracle

NEW_METHODS = ("residues", "periodic", "sources", "block sources")


def num(x):
    return N.Num(x)


def periodic_primitive(rng: random.Random, n: int):
    q, k = N.Var("q"), N.Var("k")
    kind = rng.choice(["window", "band", "causal", "stride", "stride", "dilated", "dilated",
                       "chunk", "summary", "summary", "sink", "global", "offset", "residue",
                       "key_residue", "query"])
    if kind == "window":
        return N.Window(num(rng.randint(1, 6)))
    if kind == "band":
        return N.Band(num(rng.randint(0, 4)), num(rng.randint(0, 4)))
    if kind == "causal":
        return N.Causal()
    if kind == "stride":
        return N.Stride(num(rng.randint(1, 9)))
    if kind == "dilated":
        return N.Dilated(num(rng.randint(1, 5)), num(rng.randint(1, 4)))
    if kind == "chunk":
        return N.Chunk(num(rng.randint(1, 12)))
    if kind == "summary":
        length = rng.randint(1, 10)
        return N.Summary(num(length), num(rng.randint(1, length)))
    if kind == "sink":
        return N.Sink(num(rng.randint(0, 3)))
    if kind == "global":
        return N.Global(num(rng.randint(0, 2)))
    if kind == "offset":  # linear in q - k
        return N.Compare(rng.choice(["<", "<=", "==", ">=", ">", "!="]),
                         N.BinOp("-", q, k), num(rng.randint(-5, 12)))
    if kind == "residue":
        return N.Compare("==", N.BinOp("%", N.BinOp("-", q, k), num(rng.randint(1, 7))),
                         num(0))
    if kind == "key_residue":
        c = rng.randint(1, 7)
        return N.Compare(rng.choice(["==", ">="]), N.BinOp("%", k, num(c)),
                         num(rng.randint(0, c - 1)))
    return N.Compare(rng.choice([">=", "<"]), q, num(rng.randint(0, n // 2 + 1)))


def periodic_expr(rng: random.Random, n: int, depth: int = 2):
    if depth == 0 or rng.random() < 0.3:
        return periodic_primitive(rng, n)
    kind = rng.choice(["union", "union", "intersect", "difference", "causal", "causal"])
    left, right = periodic_expr(rng, n, depth - 1), periodic_expr(rng, n, depth - 1)
    if kind == "union":
        return N.Union(left, right)
    if kind == "intersect":
        return N.Intersect(left, right)
    if kind == "difference":
        return N.Difference(left, right)
    return N.Intersect(N.Causal(), left)


def periodic_pattern(rng: random.Random, n: int) -> Pattern:
    if rng.random() < 0.25:
        bodies = tuple(periodic_expr(rng, n) for _ in range(rng.randint(2, 3)))
        return Pattern(N.Heads(bodies), name="heads")
    return Pattern(periodic_expr(rng, n), name="periodic")


def exact_new_methods(subject, n):
    out = []
    for method in NEW_METHODS:
        try:
            report = analyze(subject, n, layers=6, method=method)
        except (NotRepresentable, AnalysisError):
            continue
        if report.exact:
            out.append(method)
    return out


def pattern_for(seed):
    rng = random.Random(seed)
    n = rng.choice([1, 2, 7, 30, 63, 97, 130, 200])
    return periodic_pattern(rng, n), n


@pytest.mark.parametrize("seed", range(90))
def test_new_engines_match_oracle_on_random_periodic_patterns(seed):
    pattern, n = pattern_for(seed)
    for method in exact_new_methods(pattern, n):
        check_against_oracle(pattern, [pattern], n, method)


@pytest.mark.parametrize("seed", range(40))
def test_new_engines_match_oracle_on_random_periodic_models(seed):
    rng = random.Random(5000 + seed)
    n = rng.choice([5, 33, 64, 111, 150])
    distinct = [periodic_pattern(rng, n) for _ in range(rng.randint(1, 3))]
    model = Model("random", tuple(rng.choice(distinct) for _ in range(rng.randint(1, 4))))
    for method in exact_new_methods(model, n):
        check_against_oracle(model, list(model.layers), n, method)


def test_random_periodic_patterns_do_reach_the_new_engines():
    """The generator feeds each new engine (so the oracle tests above test something)."""
    used = {}
    for seed in range(90):
        for method in exact_new_methods(*pattern_for(seed)):
            used[method] = used.get(method, 0) + 1
    assert used.get("periodic", 0) >= 20 and used.get("sources", 0) >= 60, used
    assert used.get("residues", 0) >= 3, used


LARGER = """
pattern strided(l = 32) { heads { causal & window(l); causal & stride(l) } }
pattern fixed(l = 32, c = 4) { causal & (chunk(l) | summary(l, c)) }
pattern dilated_sink(w = 40, d = 3) { causal & (dilated(w, d) | sink(2) | window(3)) }
pattern residue_where { causal & (where((q - k) % 45 == 0) | where(q - k < 46)) }
pattern bidirectional { stride(40) | band(20, 21) | global(first = 1) }
pattern dilated_pair { dilated(60, 4) | (causal & stride(4)) }
pattern blocks_random(r = 2) { blocks(16) { band(1, 0) | random(r, seed = 3) | global(3) } }
"""


@pytest.mark.parametrize("name, n, method", [
    ("strided", 2048, "periodic"), ("fixed", 1031, "periodic"),
    ("dilated_sink", 1500, "periodic"), ("residue_where", 2048, "periodic"),
    ("bidirectional", 1203, "sources"), ("dilated_pair", 1024, "residues"),
    ("blocks_random", 2000, "block sources")])
def test_new_engines_match_oracle_at_larger_n(name, n, method):
    pattern = loads(LARGER).pattern(name)
    report = check_against_oracle(pattern, [pattern], n, method)
    assert report.exact and method.split()[0] in report.method


def test_auto_picks_the_periodic_engine_with_its_sources():
    pattern = loads(LARGER).pattern("fixed")
    report = analyze(pattern, 100_000)
    assert report.exact and report.method.startswith("periodic (32 sources")


def test_block_sources_and_dense_grid_agree():
    pattern = loads(LARGER).pattern("blocks_random")
    for n in (1000, 1601):
        dense = analyze(pattern, n, method="blocks").to_dict()
        sparse = analyze(pattern, n, method="block sources").to_dict()
        assert dense | {"method": ""} == sparse | {"method": ""}
