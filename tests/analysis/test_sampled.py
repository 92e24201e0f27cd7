"""The sampled-sources fallback (analyze.py method 7) against brute force.

Forced with ``method="sampled"`` at sizes the oracle handles: reach to first must be exact,
every other hop figure a lower bound, receptive fields and coverage lower bounds, densities
exact, and a named uncovered pair truly uncovered."""
import math
import random

import pytest

from spattn_dsl import loads
from spattn_dsl.analysis import analyze
from spattn_dsl.analysis.analyze import AnalysisError
from spattn_dsl.analysis.rows import NotRepresentable

from .oracle import Oracle, random_pattern


def _check_against_oracle(obj, schedule, n, layers=None):
    """The sampled report checked against brute force; None where there is no term form."""
    try:
        report = analyze(obj, n, layers, method="sampled")
    except (AnalysisError, NotRepresentable):
        return None
    oracle = Oracle(schedule, n)
    assert report.method == f"sampled sources ({min(64, n)} of {n})" and not report.exact
    assert report.reach_to_first == oracle.reach_to_first()
    assert "reach_to_first" not in report.bounds
    diameter = oracle.diameter()
    assert report.diameter <= diameter
    assert "diameter" in report.bounds or report.diameter == diameter
    assert report.coverage_depth == report.diameter
    for record, state in zip(report.layers, oracle.states(report.depth)):
        truth = oracle.figures(state)
        for name in ("rf_min", "rf_mean", "rf_max", "rf_last", "reach", "span", "coverage"):
            assert getattr(record, name) <= truth[name] + 1e-12, name
    if report.uncovered_pair is not None:
        q, k = report.uncovered_pair
        assert not oracle.states(report.depth)[-1][q, k]
    exact = analyze(obj, n, layers)
    assert exact.exact and report.density == pytest.approx(exact.density)
    if report.certificate.reach:  # certified reach needs an upper bound on the depth
        assert report.certificate.p == diameter
    return report


@pytest.mark.parametrize("text, n", [
    ("pattern p { stride(8) | window(3) }", 300),
    ("pattern p { causal & (dilated(3, 2) | window(2)) }", 257),
    ("pattern p { heads { stride(5); chunk(7) } }", 200),
    ("pattern p { window(3) | random(1, seed = 5) }", 257),
    ("pattern p { dilated(2, 1) }", 130)])  # never covers: the diameter inf is exact
def test_sampled_figures_are_bounds_of_brute_force(text, n):
    pattern = loads(text).pattern("p")
    assert _check_against_oracle(pattern, [pattern], n) is not None


def test_sampled_on_random_patterns():
    rng = random.Random(10)
    checked = 0
    for _ in range(30):
        n = rng.randint(65, 160)  # more tokens than sampled sources
        pattern = random_pattern(rng, n)
        checked += _check_against_oracle(pattern, [pattern], n) is not None
    assert checked >= 10  # most random patterns have a term form


def test_sampled_on_a_model():
    program = loads("pattern a { causal & window(3) }\npattern b { causal & stride(16) }\n"
                    "model m { repeat 2 { layers 2: a; layers 1: b } }")
    model = program.model("m")
    n = 211
    report = _check_against_oracle(model, list(model.layers), n)
    assert report.depth == 6


def test_fallback_at_65536_is_a_labelled_bound():
    pattern = loads("pattern sw { stride(64) | window(3) }").pattern("sw")
    report = analyze(pattern, 65536)
    assert report.method == "sampled sources (64 of 65536)" and not report.exact
    assert {"diameter", "coverage_depth", "coverage", "rf_max"} <= set(report.bounds)
    assert "reach_to_first" not in report.bounds and report.reach_to_first != math.inf
    assert report.sampled == {"sources": 64, "diameter_at_least": report.diameter,
                              "reach_to_first": report.reach_to_first}
    assert any(note.startswith("sampled sources: no exact method fits") for note in report.notes)
    assert report.certificate.reach is None  # a lower bound certifies nothing


def test_beyond_the_sampled_limit_is_still_an_error():
    from spattn_dsl.analysis.sources import SAMPLED_MAX
    pattern = loads("pattern sw { stride(64) | window(3) }").pattern("sw")
    with pytest.raises(AnalysisError, match="sampled sources only for n <="):
        analyze(pattern, SAMPLED_MAX + 1)
