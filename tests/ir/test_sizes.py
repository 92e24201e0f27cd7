"""Deep, long, huge and exponential inputs: a result or a located error, in bounded work.

Costs are checked as operation counts and sizes (nodes built, schedule items), never time.
"""
import pytest
import torch

from spattn_dsl import PatternError, loads
from spattn_dsl.ir import nodes as N
from spattn_dsl.ir.evaluate import measure
from spattn_dsl.ir.limits import MAX_DEPTH, MAX_NODES
from spattn_dsl.ir.program import Model
from spattn_dsl.semantics import reference

NESTINGS = {
    "not": lambda k: "!" * k + "causal",
    "union": lambda k: " | ".join(["window(2)"] * (k + 1)),
    "intersect": lambda k: " & ".join(["window(9)"] * (k + 1)),
    "min": lambda k: "window(" + "min(" * k + "3" + ", 4)" * k + ")",
    "blocks": lambda k: "blocks(1) { " * k + "causal" + " }" * k,
    "plus": lambda k: "window(" + " + ".join(["1"] * (k + 1)) + ")",
}


@pytest.mark.parametrize("kind", sorted(NESTINGS))
@pytest.mark.parametrize("depth", [330, 487, 5000])
def test_deep_nesting_is_a_located_error(kind, depth):
    source = "pattern p {\n  " + NESTINGS[kind](depth) + " }"
    with pytest.raises(PatternError, match="nested too deeply") as info:
        loads(source, "deep.spattn").pattern("p")
    assert info.value.filename == "deep.spattn" and info.value.line == 2


@pytest.mark.parametrize("kind", sorted(NESTINGS))
def test_nesting_below_the_limit_works_in_every_stage(kind):
    from spattn_dsl.analysis import analyze
    from spattn_dsl.codegen.render import render
    from spattn_dsl.layout import lower

    pattern = loads("pattern p { " + NESTINGS[kind](MAX_DEPTH - 8) + " }").pattern("p")
    assert pattern.mask(11).shape == (11, 11)
    lower(pattern.at(40), 40, 40, 16, 16)
    render(pattern, 40)
    analyze(pattern, 24)
    assert loads(f"pattern r {{ {pattern.text} }}").pattern("r") == pattern


def test_parentheses_do_not_nest_the_expression():
    pattern = loads("pattern p { " + "(" * 5000 + "causal" + ")" * 5000 + " }").pattern("p")
    assert pattern.text == "causal"


def test_reference_chains_are_limited_without_recursion():
    chain = "\n".join(f"pattern p{i} {{ p{i + 1} }}" for i in range(1000)) + "\npattern p1000 { causal }"
    with pytest.raises(PatternError, match="nests more than") as info:
        loads(chain, "chain.spattn")
    assert len(info.value.errors) == 1  # reported once, at the innermost pattern past the limit
    short = "\n".join(f"pattern p{i} {{ p{i + 1} }}" for i in range(40)) + "\npattern p40 { causal }"
    assert loads(short).pattern("p0").text == "causal"


def doubling(levels: int) -> str:
    lines = [f"pattern p{i} {{ p{i + 1} | p{i + 1} & causal }}" for i in range(levels)]
    return "\n".join(lines + [f"pattern p{levels} {{ window(3) }}"])


def distinct_nodes(expr) -> int:
    seen, stack = {}, [expr]
    while stack:
        node = stack.pop()
        if id(node) not in seen:
            seen[id(node)] = node
            stack.extend(N.children(node))
    return len(seen)


def test_shared_sub_patterns_are_bound_once_and_evaluated_once(monkeypatch):
    pattern = loads(doubling(9)).pattern("p0")
    depth, size = measure(pattern.expr)
    assert size == 5 * 2**9 - 3 and distinct_nodes(pattern.expr) <= 3 * 9 + 2
    calls = []
    evaluate = reference._evaluate
    monkeypatch.setattr(reference, "_evaluate", lambda e, *a: calls.append(e) or evaluate(e, *a))
    mask = pattern.mask(13)
    assert len(calls) <= 3 * 9 + 2  # once per distinct node, not once per use
    assert torch.equal(mask, loads("pattern w { window(3) }").pattern("w").mask(13))


@pytest.mark.parametrize("levels", [18, 30])
def test_exponential_inlining_is_refused_in_linear_work(levels, monkeypatch):
    from spattn_dsl.ir import resolve

    built = []
    bind_call = resolve._bind_call
    monkeypatch.setattr(resolve, "_bind_call", lambda c, *a: built.append(c) or bind_call(c, *a))
    with pytest.raises(PatternError, match=f"expands to .* limit of {MAX_NODES}") as info:
        loads(doubling(levels), "exp.spattn").pattern("p0")
    assert info.value.filename == "exp.spattn"
    assert len(built) <= 4 * levels  # each pattern bound once, not 2**levels times


def test_parameter_doubling_is_refused_where_it_passes_the_limit():
    params = ["a0 = n"] + [f"a{i} = a{i - 1} + a{i - 1}" for i in range(1, 60)]
    source = f"pattern p({', '.join(params)}) {{ window(a59) }}"
    with pytest.raises(PatternError, match="expands to") as info:
        loads(source, "f.spattn").pattern("p")
    # a12 has 2**13 - 1 nodes, past MAX_NODES = 4096: the error is at a12's default
    assert source[:info.value.column - 1].endswith("a12 = a11 ")


def test_huge_layer_counts_stay_run_length_encoded():
    program = loads("model big { layers 1000000000: causal }\n"
                    "model nested { repeat 1000000000 { layers 3: window(2); layers 1: causal } }\n"
                    "model empty_repeat { repeat 1000000000 { }; layers 2: causal }")
    big = program.model("big")
    assert len(big) == 10**9 and len(big.schedule) == 1 and big.layer(-1).text == "causal"
    nested = program.model("nested")
    assert len(nested) == 4 * 10**9 and [p.text for p in nested.distinct] == ["window(2)", "causal"]
    assert nested.layer(4 * 10**9 - 1).text == "causal" and nested.layer(4 * 10**9 - 2).text == "window(2)"
    assert [p.text for p in nested.layers[:5]] == ["window(2)"] * 3 + ["causal", "window(2)"]
    runs = nested.runs()
    assert [(p.text, c) for p, c in (next(runs), next(runs))] == [("window(2)", 3), ("causal", 1)]
    empty = program.model("empty_repeat")
    assert len(empty) == 2 and len(empty.schedule) == 1


def test_layer_counts_past_the_range_are_located():
    with pytest.raises(PatternError, match="integer literal too large") as info:
        loads("model m { layers 1000000000000000000000000000000: causal }", "f.spattn")
    assert info.value.column == 18
    with pytest.raises(PatternError, match="at most") as info:
        loads("model m { repeat 4611686018427387904 { layers 2: causal } }", "f.spattn").model("m")
    assert info.value.column == 18


def test_model_built_from_a_layer_list_keeps_the_old_api():
    program = loads("pattern a { causal }\npattern b { window(3) }")
    a, b = program.pattern("a"), program.pattern("b")
    model = Model("m", (a, a, b, a))
    assert len(model) == 4 and list(model.layers) == [a, a, b, a] and model[2] == b
    assert set(model.layers) == {a, b} and model.layers[1:3] == (a, b)
    assert [count for _, count in model.runs()] == [2, 1, 1]
    assert model == Model("m", (a, a, b, a)) and model != Model("m", (a, b))
