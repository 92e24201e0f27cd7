"""The analysis work limit: a stack whose layer costs too many word operations with every token
a source goes to the bound (labelled), and the sampled search stops at its own budget without
claiming an exact diameter. Counts, not timings."""
import importlib

from spattn_dsl import loads
from spattn_dsl.analysis import sources as S
from spattn_dsl.analysis.terms import layer_terms

A = importlib.import_module("spattn_dsl.analysis.analyze")  # the module, not the function


def pattern(text):
    return loads(f"pattern p {{ {text} }}").pattern("p")


def test_layer_work_counts_a_gather_per_random_key():
    terms = layer_terms(pattern("random(4096)").at(4096), 4096)
    assert A.layer_work(terms, 4096, 64) == 4096 * 4096 * 64 > A.SOURCES_LAYER_WORK
    assert A.layer_work(layer_terms(pattern("random(8)").at(4096), 4096), 4096, 64) \
        <= A.SOURCES_LAYER_WORK


def test_past_the_work_limit_the_bound_takes_it(monkeypatch):
    p, n = pattern("window(2) | random(1)"), 2100  # past the token graph's 2048
    assert A.analyze(p, n).method == "token sources"
    monkeypatch.setattr(A, "SOURCES_LAYER_WORK", 1000)
    layers = []
    real = S.sampled_search

    def counting(schedule_terms, n, causal, limit):
        layers.append(limit)
        return real(schedule_terms, n, causal, limit)

    monkeypatch.setattr(S, "sampled_search", counting)
    per_layer = A.layer_work(layer_terms(p.at(n), n), n, 1)
    monkeypatch.setattr(A, "SAMPLED_WORK", 5 * per_layer)
    report = A.analyze(p, n)
    assert report.method.startswith("bound") and not report.exact
    assert layers == [5]  # the sampled search's budget: 5 layers, not the upper bound's
    assert report.bounds["diameter"] == "upper" and report.sampled["diameter_at_least"] == 6
