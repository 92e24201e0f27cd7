"""The building blocks: interval rows against the reference mask, range reductions against
numpy slices, closed forms against computed figures, method choice and its errors."""
import math
import random

import numpy as np
import pytest

from spattn_dsl import loads
from spattn_dsl.analysis import analyze
from spattn_dsl.analysis.formulas import evaluate
from spattn_dsl.analysis.ranges import range_max, range_min
from spattn_dsl.analysis.rows import NotRepresentable, rows_of

from .oracle import random_expr


def rows_as_mask(rows, n):
    k = np.arange(n)[None, :]
    mask = (k < rows.pre[:, None]) | ((k >= rows.lo[:, None]) & (k <= rows.hi[:, None]))
    if rows.extra is not None:
        for q, keys in enumerate(rows.extra):
            mask[q, keys[keys >= 0]] = True
    return mask


@pytest.mark.parametrize("seed", range(300))
def test_rows_of_equals_reference_mask(seed):
    from spattn_dsl.ir.program import Pattern

    rng = random.Random(seed)
    n = rng.choice([1, 3, 10, 31])
    pattern = Pattern(random_expr(rng, n, depth=3))
    try:
        rows = rows_of(pattern.at(n), n)
    except NotRepresentable:
        return
    assert (rows_as_mask(rows, n) == pattern.mask(n).numpy()).all()


@pytest.mark.parametrize("seed", range(40))
def test_range_min_max_equal_slices(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    values = rng.integers(-1000, 1000, n)
    if seed % 2:  # sliding windows with ragged ends, the fast path
        w = int(rng.integers(1, n + 1))
        q = np.arange(n)
        a, b = np.maximum(q - w + 1, 0), np.minimum(q + int(rng.integers(0, 3)), n - 1)
    else:
        a = rng.integers(0, n, n)
        b = np.minimum(a + rng.integers(0, n, n), n - 1)
    assert list(range_min(values, a, b)) == [values[x:y + 1].min() for x, y in zip(a, b)]
    assert list(range_max(values, a, b)) == [values[x:y + 1].max() for x, y in zip(a, b)]


FORMULA_PATTERNS = """
pattern swa(w = 5) { causal & window(w) }
pattern back(b = 3) { causal & band(b, 7) }
pattern bi(b = 2, a = 3) { band(b, a) }
pattern win(w = 4) { window(w) }
pattern longformer(h = 2, g = 1) { band(h, h) | global(first = g) }
pattern sinks(w = 4, g = 2) { causal & (window(w) | sink(g)) }
pattern causal_global(w = 4, g = 3) { causal & (window(w) | global(first = g)) }
pattern chunked(l = 4) { chunk(l) }
pattern strided(s = 3) { causal & stride(s) }
pattern dilated_only(w = 3, d = 2) { dilated(w, d) }
pattern heads_merged(w = 3) { heads { causal & window(w); causal & band(5, 0) } }
"""
FIGURE = {"diameter": lambda r: r.diameter, "reach_to_first": lambda r: r.reach_to_first,
          "reach": lambda r: r.layers[-1].reach,
          "receptive_field_last": lambda r: r.layers[-1].rf_last,
          "span_middle": lambda r: r.layers[-1].span_middle}


@pytest.mark.parametrize("name", ["swa", "back", "bi", "win", "longformer", "sinks",
                                  "causal_global", "chunked", "strided", "dilated_only",
                                  "heads_merged"])
def test_closed_forms_equal_computed_figures(name):
    program = loads(FORMULA_PATTERNS)
    pattern = program.pattern(name)
    for n in (2, 7, 30, 61):
        for layers in (1, 2, 5):
            report = analyze(pattern, n, layers=layers, method="tokens")
            assert report.formulas, name
            for figure, expr in report.formulas.items():
                expected = FIGURE[figure](report)
                assert evaluate(expr, pattern.params, n, layers) == expected, (figure, n)


def test_closed_form_names_the_parameters():
    report = analyze(loads(FORMULA_PATTERNS).pattern("swa"), 100)
    assert str(report.formulas["reach"]) == "Min(L*(w - 1), n - 1)"
    assert report.formula_values["diameter"] == math.ceil(99 / 4)


def test_no_closed_form_for_random():
    report = analyze(loads("pattern p { causal & (window(4) | random(2)) }").pattern("p"), 64)
    assert report.formulas == {}


def test_random_at_large_n_is_reported_as_a_bound():
    pattern = loads("pattern p { causal & (window(64) | random(2, seed = 1)) }").pattern("p")
    n = 32768  # beyond sources.ALL_SOURCES_MAX: random keys are left out
    report = analyze(pattern, n)
    assert not report.exact and "diameter" in report.bounds
    assert report.method.startswith("bound")
    window_only = analyze(loads("pattern p { causal & window(64) }").pattern("p"), n)
    assert report.diameter == window_only.diameter  # the bound: random edges left out
    assert report.density > window_only.density  # densities stay exact


def test_random_at_small_n_is_exact():
    pattern = loads("pattern p { causal & (window(8) | random(2, seed = 1)) }").pattern("p")
    for n in (256, 4096):  # every token a source, as bits
        report = analyze(pattern, n)
        assert report.exact and report.method == "token sources"


def test_where_mixing_q_and_k_is_a_labelled_bound():
    pattern = loads("pattern p { causal & (window(16) | where(q % 7 == k % 5)) }").pattern("p")
    report = analyze(pattern, 40000)
    assert not report.exact and report.method.startswith("bound")
    assert {"diameter", "density"} <= set(report.bounds)
    window_only = analyze(loads("pattern p { causal & window(16) }").pattern("p"), 40000)
    assert report.diameter == window_only.diameter


def test_methods_agree_on_a_block_pattern():
    pattern = loads("pattern p { blocks(8) { band(1, 0) | global(first = 1) } }").pattern("p")
    by_blocks = analyze(pattern, 200, method="blocks")
    by_tokens = analyze(pattern, 200, method="tokens")
    assert by_blocks.to_dict() | {"method": ""} == by_tokens.to_dict() | {"method": ""}


def test_analyze_rejects_bad_input():
    with pytest.raises(TypeError):
        analyze("causal", 10)
    with pytest.raises(ValueError):
        analyze(loads("pattern p { causal }").pattern("p"), 0)


@pytest.mark.parametrize("text, n", [
    ("pattern p { causal & (window(4) | random(2, seed = 1)) }", 300),
    ("pattern p { window(3) | random(1, seed = 5) }", 257)])
def test_sampled_search_equals_breadth_first_search(text, n):
    import networkx as nx

    from spattn_dsl.analysis.sources import sampled_search
    from spattn_dsl.analysis.terms import layer_terms

    from .oracle import layer_mask
    pattern = loads(text).pattern("p")
    causal = "causal" in text
    sources, ecc, first = sampled_search([layer_terms(pattern.at(n), n)], n, causal, n + 1)
    mask = layer_mask(pattern, n).numpy()
    graph = nx.DiGraph([(int(k), int(q)) for q, k in zip(*np.nonzero(mask)) if q != k])
    graph.add_nodes_from(range(n))
    for source, found in zip(sources, ecc):
        dist = nx.single_source_shortest_path_length(graph, int(source))
        targets = range(int(source), n) if causal else range(n)
        expected = max(dist.get(t, math.inf) for t in targets)
        assert found == expected
    assert first == nx.single_source_shortest_path_length(graph, 0).get(n - 1, math.inf)


def test_random_bound_states_its_sample_and_an_exact_reach_to_first():
    pattern = loads("pattern p { causal & (window(64) | random(2, seed = 1)) }").pattern("p")
    report = analyze(pattern, 32768)
    assert report.sampled["sources"] == 64
    assert "reach_to_first" not in report.bounds and report.reach_to_first < report.diameter
    assert 1 <= report.sampled["diameter_at_least"] <= report.diameter
    assert any(note.startswith("sampled: exact search") for note in report.notes)


def test_bidirectional_where_mixing_q_and_k_is_a_bound_not_an_error():
    pattern = loads("pattern p { window(16) | where(q % 7 == k % 5) }").pattern("p")
    report = analyze(pattern, 65536)
    assert report.method == "bound (intervals)" and not report.exact
    assert any("comparisons mixing q and k" in note for note in report.notes)
    window_only = analyze(loads("pattern p { window(16) }").pattern("p"), 65536)
    assert report.diameter == window_only.diameter
