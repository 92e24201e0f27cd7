"""Issue 25 items 3, 4, 6 and 10: analysis answers every small pattern, refuses what would not
fit up front with an AnalysisError, and never states what it has not proven.

Brute force over ``Pattern.mask`` (tests/analysis/oracle.py) is the oracle; no wall clock."""
import json
import math

import numpy as np
import pytest

from spattn_dsl import loads
from spattn_dsl.analysis import AnalysisError, analyze, render
from spattn_dsl.analysis.draws import random_keys
from spattn_dsl.errors import AnalysisError as ErrorsAnalysisError
from spattn_dsl.semantics.random import random_keys as reference_keys

from .oracle import Oracle, layer_mask

NATTEN = ("pattern natten(w = 5) { where(k >= min(max(q - w // 2, 0), n - w) & "
          "k < min(max(q - w // 2, 0), n - w) + w) }")
LAYER_FIELDS = ("rf_min", "rf_mean", "rf_max", "rf_last", "reach", "span", "coverage")


def pattern(body: str):
    return loads(f"pattern p {{ {body} }}").pattern("p")


def assert_exact(p, n, layers=4):
    """Every figure of an exact report equals brute force."""
    report = analyze(p, n, layers=layers)
    oracle = Oracle([p], n)
    assert report.exact and not report.bounds
    assert report.causal == oracle.causal
    for record, state in zip(report.layers, oracle.states(layers)):
        expected = oracle.figures(state)
        for name in LAYER_FIELDS:
            assert getattr(record, name) == pytest.approx(expected[name]), name
    assert report.diameter == oracle.diameter()
    assert report.reach_to_first == oracle.reach_to_first()
    assert report.density == pytest.approx(oracle.density(layer_mask(p, n)))
    return report


# ---------------------------------------------------------------- item 3
def test_unused_parameter_that_fails_at_this_length_breaks_neither_mask_nor_analyze():
    p = loads("pattern p(s = 4 // (n - 1)) { causal }").pattern("p")
    assert p.mask(1).tolist() == [[True]]
    report = analyze(p, 1)
    assert report.density == 1.0 and report.diameter == 0
    assert_exact(p, 5)  # the parameter is fine here: same pattern, same answers


# ---------------------------------------------------------------- item 4
@pytest.mark.parametrize("body", [
    "random(1) | random(2)",
    "random(1) | chunk(2) | chunk(3)",
    "!(global(first = 2) - (causal & global(0, 2)))",
])
def test_patterns_whose_pair_count_had_no_term_form_are_analysed_exactly(body):
    report = assert_exact(pattern(body), 64)
    assert report.method == "token sources"  # counted by bits, not the token graph


def test_small_n_falls_back_to_the_token_graph(monkeypatch):
    from spattn_dsl.analysis import terms
    from spattn_dsl.analysis.rows import NotRepresentable

    def refuse(*args):
        raise NotRepresentable("no count")
    monkeypatch.setattr(terms, "pairs_per_query", refuse)
    report = assert_exact(pattern("random(1) | chunk(2) | chunk(3)"), 48)
    assert report.method == "tokens"


def test_analysis_error_is_a_value_error_in_errors_py():
    assert AnalysisError is ErrorsAnalysisError and issubclass(AnalysisError, ValueError)


# ---------------------------------------------------------------- item 6
@pytest.mark.parametrize("body, n, match", [
    ("causal & random(n)", 131072, "keys"),
    ("random(1024)", 131072, "keys"),
    ("random(4096)", 131072, "keys"),
    ("causal & window(4096)", 2**40, "limit"),
])
def test_what_would_not_fit_is_refused_up_front(body, n, match):
    with pytest.raises(AnalysisError, match=match):
        analyze(pattern(body), n)


@pytest.mark.parametrize("r, seed, n", [(1, 0, 1), (5, 3, 2), (17, 1, 17), (10, 2, 64),
                                        (299, 7, 300), (40, 5, 1000), (3, 2**63 + 5, 50)])
def test_fast_random_keys_equal_the_reference_draws(r, seed, n):
    rows = np.arange(n)
    assert np.array_equal(random_keys(r, seed, rows, n), reference_keys(r, seed, rows, n))


# ---------------------------------------------------------------- item 10
def test_natten_is_exact_by_row_thresholds():
    p = loads(NATTEN).pattern("natten")
    report = assert_exact(p, 40, layers=6)
    assert report.method == "intervals"


def test_natten_at_long_length_is_exact_and_bidirectional():
    p = loads(NATTEN).pattern("natten")
    report = analyze(p, 8192)
    assert report.method == "intervals" and report.exact and not report.causal
    assert report.keys_per_query == 5 and report.density == pytest.approx(5 / 8192)
    assert report.layers[0].rf_min == 5
    data = json.loads(report.to_json())
    assert data["causal"] is False and data["bounds"] == {}
    assert "every layer is causal" not in render(report)


def test_uncovered_pair_says_never_only_when_never():
    p = pattern("causal & window(2)")
    short = analyze(p, 64, layers=3)
    assert short.coverage_depth == 63
    assert "within 3 layers" in render(short) and "never sees key" not in render(short)
    assert "never sees key" in render(analyze(pattern("causal & chunk(4)"), 16))


MIXED = "causal & window(4) | where(k * 2 == q + {c})"  # no exact method past 2048 tokens


def test_a_bound_claims_causal_only_when_proven():
    n = 4096
    proven = analyze(pattern(MIXED.format(c=1)), n)
    assert not proven.exact and proven.causal  # every drawn pair has k <= q: checked by rows
    wrong = analyze(pattern(MIXED.format(c=3)), n)  # query 1 sees key 2
    assert not wrong.exact and not wrong.causal
    assert wrong.uncovered_pair is None  # missing from the subset is not missing
    assert wrong.certificate.reach is None  # undecided, not "fails (causal)"
    text = render(wrong)
    assert "every layer is causal" not in text and "never sees key" not in text
    for label in ("density (lower bound)", "mean keys per query (lower bound)",
                  "coverage (lower bound)"):
        assert label in text
    assert "density (lower bound)" in render(wrong, fmt="html")
    assert "density" in json.loads(wrong.to_json())["bounds"]


def test_causality_too_long_to_check_is_not_claimed():
    report = analyze(pattern(MIXED.format(c=1)), 1 << 15)
    assert not report.causal and any("not proven causal" in note for note in report.notes)
    assert math.isinf(report.diameter) and "diameter" in report.bounds
