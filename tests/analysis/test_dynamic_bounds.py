"""analyze() on dynamic patterns and models (docs/language.md §5, issue 27 item 4): every figure
that a selection can change is a bound that holds for every selection, checked by brute force
over Pattern.mask(..., selection=) for random selections (select() on random inputs: batch row
l is layer l's selection) and for the worst-case selection, which must attain the reported
max_keys_per_query."""
import dataclasses
import json
import math

import pytest
import torch

import spattn_dsl as s
from spattn_dsl.analysis import dynamic as D
from spattn_dsl.ir.evaluate import select_head
from spattn_dsl.semantics.select import concrete_terms, term_nodes

N = 40
LAYERS = 3
CASES = {
    "window_topk": "causal & (window(4) | topk(3, unit = 4))",
    "moba": "causal & (chunk(8) | topk(2, unit = 8, by = mean_key))",
    "vertical_slash": "causal & (sink(2) | window(3) | vertical(4, probe = 8)"
                      " | slash(3, probe = 8))",
    "indexer": "causal & (window(3) | topk(5, by = scores, shared = all))",
    "heads": "heads { causal & window(4); causal & (window(2) | topk(3, unit = 2, by = minmax)) }",
    "quest_rows": "causal & (chunk(4) | topk(2, unit = 4, rows = 4))",
    "bidirectional": "window(3) | topk(2, unit = 4)",
    "interacting": "causal & (window(2) | topk(4, by = minmax) & topk(6))",
}


def pattern(text):
    return s.loads(f"pattern p {{ {text} }}").pattern("p")


def selections(p, n, seeds=range(3)):
    """Random selections, LAYERS batch rows each (one per layer), two query heads."""
    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        heads = 2 * p.heads
        q = torch.randn(LAYERS, heads, n, 8, generator=g, dtype=torch.float64)
        k = torch.randn(LAYERS, heads, n, 8, generator=g, dtype=torch.float64)
        units = [t.unit for t in term_nodes(p, n) if getattr(t, "by", None) == "scores"]
        scores = torch.randn(LAYERS, 1, n, -(-n // units[0]), generator=g,
                             dtype=torch.float64) if units else None
        yield s.select(p, q, k, scores)


def layer_masks(p, n, selection):
    """One [n, n] mask per layer: batch row l, heads unioned (docs/analysis.md)."""
    full = p.mask(n, selection=selection)
    return [full[b].any(0) for b in range(full.shape[0])]


def measured(masks, n, causal):
    """Receptive-field figures per layer and the hop diameter, cycling through the masks."""
    eye = torch.eye(n, dtype=torch.bool)
    admissible = torch.tril(torch.ones(n, n, dtype=torch.bool)) if causal else ~torch.zeros(
        n, n, dtype=torch.bool)
    state, records, diameter = eye.clone(), [], math.inf
    for layer in range(1, 4 * n):
        relation = masks[(layer - 1) % len(masks)] | eye
        state = (relation.double() @ state.double()) > 0
        size = state.sum(1)
        low = torch.where(state, torch.arange(n), n).min(1).values
        records.append({"rf_min": int(size.min()), "rf_mean": float(size.double().mean()),
                        "rf_max": int(size.max()), "rf_last": int(size[-1]),
                        "reach": int((torch.arange(n) - low).max()),
                        "coverage": float((state & admissible).sum()) / int(admissible.sum())})
        if bool((state | ~admissible).all()):
            diameter = layer
            break
    return records, diameter


def check_bounds(report, masks, n, densities=None):
    """Every measured figure within the report's bounds; ``densities``: each layer's bound
    (default the report's density)."""
    assert all(m.tril().equal(m) for m in masks) or not report.causal
    records, diameter = measured(masks, n, report.causal)
    assert diameter <= report.diameter
    for mine, theirs in zip(report.layers, records):
        for name in ("rf_min", "rf_mean", "rf_max", "rf_last", "reach", "coverage"):
            assert getattr(mine, name) <= theirs[name] + 1e-9, (name, mine.layer)
    for m, bound in zip(masks, densities or [report.density] * len(masks)):
        assert float(m.double().mean()) <= bound + 1e-12


@pytest.mark.parametrize("case", sorted(CASES))
def test_bounds_hold_for_random_selections(case):
    p = pattern(CASES[case])
    report = s.analyze(p, N, layers=LAYERS)
    assert report.bounds["diameter"] == "upper" and report.bounds["reach"] == "lower"
    assert report.bounds["density"] == "upper" and not report.exact
    for selection in selections(p, N):
        full = p.mask(N, selection=selection)
        assert int(full.sum(-1).max()) <= report.max_keys_per_query  # per head
        check_bounds(report, layer_masks(p, N, selection), N)


def worst_selection(p, n, worst):
    """A selection under which query ``worst.row`` of head case ``worst.head`` attends
    ``worst.keys`` keys: per term, the units holding the most of that row's candidates (two
    token-unit terms: each takes the keys only it can add first)."""
    base = next(iter(selections(p, n, seeds=[0])))
    nodes = term_nodes(p, n)
    row = torch.tensor([worst.row])
    taken = torch.zeros(n, dtype=torch.bool)
    alone = [_candidates(p, n, worst.head, row, i) for i in range(len(nodes))]
    terms = list(base.terms)
    for i, (t, node) in enumerate(zip(base.terms, nodes)):
        others = torch.zeros(n, dtype=torch.bool)
        for j, c in enumerate(alone):
            if j != i:
                others |= c
        per_unit = _per_unit(alone[i] & ~taken, t.unit, n) * 2 + \
            _per_unit(alone[i] & ~taken & ~others, t.unit, n)  # private keys first
        count = int((_per_unit(alone[i], t.unit, n) > 0).sum())
        chosen = per_unit.argsort(descending=True, stable=True)[:min(node.k, count)]
        keys = _unit_keys(t, chosen, n)
        taken |= keys & alone[i]
        indices = torch.full_like(t.indices, -1)
        group = int(t.groups[0, worst.row])
        indices[0, :, group, :len(chosen)] = _indices(t, chosen, worst.row, n).sort().values
        terms[i] = dataclasses.replace(t, indices=indices)
    return dataclasses.replace(base, terms=tuple(terms))


def _candidates(p, n, head, row, term):
    """Row ``row``'s candidate keys of term ``term`` alone (the others none)."""
    concrete, index = concrete_terms(p, n)
    expr = select_head(concrete, head)
    static = D._evaluate(expr, index, row, n)
    return (D._evaluate(expr, index, row, n, {term}) & ~static)[0]


def _per_unit(keys, unit, n):
    units = -(-n // unit)
    return torch.nn.functional.pad(keys, (0, units * unit - n)).view(units, unit).sum(-1)


def _unit_keys(t, chosen, n):
    keys = torch.zeros(n, dtype=torch.bool)
    for j in chosen.tolist():
        if t.kind == "topk":
            keys[j * t.unit:(j + 1) * t.unit] = True
        else:
            keys[j] = True  # a column; for slash, the key of this row on that diagonal
    return keys


def _indices(t, chosen, q, n):
    """Keys (topk units, columns) are their own indices; a diagonal through key j of row q
    is index q - j + n - 1."""
    return q - chosen + n - 1 if t.kind == "slash" else chosen


@pytest.mark.parametrize("case", sorted(set(CASES) - {"interacting"}))
def test_max_keys_per_query_is_attained(case):
    p = pattern(CASES[case])
    worst = D.worst_case(p, N)
    assert worst.exact
    selection = worst_selection(p, N, worst)
    heads = selection.heads
    rows = p.mask(N, selection=selection)[0, :, worst.row].sum(-1)
    attained = max(int(rows[h]) for h in range(heads) if h % p.heads == worst.head)
    assert attained == worst.keys
    assert s.analyze(p, N, layers=1).max_keys_per_query == worst.keys


def test_interacting_terms_give_a_labelled_upper_bound():
    p = pattern(CASES["interacting"])
    report = s.analyze(p, N, layers=1)
    assert report.bounds["max_keys_per_query"] == "upper"
    assert "max keys per query (one head, worst case) (upper bound)" in str(report)


def test_static_pattern_max_keys_is_the_largest_row_and_no_bounds():
    p = pattern("causal & (sink(2) | window(5))")
    report = s.analyze(p, N)
    assert report.bounds == {} and report.exact
    assert report.max_keys_per_query == int(p.mask(N).sum(1).max()) == 7


def test_static_part_and_envelope_are_ir_transformations():
    p = pattern("causal & (window(4) | topk(3, unit = 4))")
    assert D.static_part(p).text == "causal & window(4)"
    assert D.envelope(p).text == "causal"
    negated = pattern("causal - topk(3)")  # a term in a negative place swaps the roles
    assert D.static_part(negated).text == "none" and D.envelope(negated).text == "causal"


def test_moba_static_part_is_disconnected_with_a_warning():
    p = s.load("examples/moba.spattn").pattern("moba", b=8, top=2)
    report = s.analyze(p, N)
    assert report.diameter == math.inf and report.bounds["diameter"] == "upper"
    assert any(note.startswith("warning: the static part alone") for note in report.notes)
    assert report.uncovered_pair is None  # a selection may cover it


def test_model_mixing_static_and_dynamic_layers():
    program = s.loads("""
        pattern local { causal & window(3) }
        pattern picked { causal & (window(2) | topk(2, unit = 4)) }
        model m { layers 2: local; layers 2: picked }
    """)
    model = program.model("m")
    report = s.analyze(model, N)
    static = s.analyze(s.loads("""pattern local { causal & window(3) }
        pattern picked { causal & window(2) }
        model m { layers 2: local; layers 2: picked }""").model("m"), N)
    assert [r.exact for r in report.layers] == [True, True, False, False]
    assert [r.rf_mean for r in report.layers] == [r.rf_mean for r in static.layers]
    assert report.bounds["rf_min"] == "lower" and report.bounds["coverage_depth"] == "upper"
    local, picked = report.patterns
    assert not local.dynamic and picked.dynamic and local.max_keys_per_query == 3
    assert picked.max_keys_per_query == 2 + 8
    assert report.max_keys_per_query == 10
    masks = [program.pattern("local").mask(N)] * 2
    for selection in selections(program.pattern("picked"), N, seeds=[1]):
        dynamic = layer_masks(program.pattern("picked"), N, selection)[:2]
        check_bounds(report, masks + dynamic, N, [local.density] * 2 + [picked.density] * 2)


def test_bounds_are_labelled_in_every_format():
    p = pattern(CASES["window_topk"])
    report = s.analyze(p, N)
    data = json.loads(report.to_json())
    assert data["bounds"]["density"] == "upper" and data["bounds"]["rf_max"] == "lower"
    assert data["max_keys_per_query"] == report.max_keys_per_query
    from spattn_dsl.analysis.render import render
    for fmt in ("text", "markdown", "html"):
        out = render(report, fmt=fmt)
        assert "density (upper bound)" in out and "rf_max (lower bound)" in out
        assert "causal diameter (upper bound)" in out and "max keys per query" in out
