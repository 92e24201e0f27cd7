"""Every figure of analyze() against brute-force boolean composition (tests/analysis/oracle.py)
and hop distances against networkx shortest paths, on random small patterns and models."""
import math
import random

import networkx as nx
import pytest

from spattn_dsl.analysis import analyze
from spattn_dsl.analysis.rows import NotRepresentable
from spattn_dsl.ir.program import Model

from .oracle import Oracle, random_pattern

LAYER_FIELDS = ("rf_min", "rf_mean", "rf_max", "rf_last", "reach", "span", "span_middle",
                "coverage")


def methods_for(subject, n):
    """Every method that accepts the subject (the token graph always does at small n)."""
    out = []
    for method in ("intervals", "blocks", "tokens"):
        try:
            report = analyze(subject, n, layers=6, method=method)
        except (NotRepresentable, ValueError):
            continue
        if report.exact:
            out.append(method)
    return out


def check_against_oracle(subject, schedule, n, method):
    report = analyze(subject, n, layers=6, method=method)
    oracle = Oracle(schedule, n)
    assert report.causal == oracle.causal
    for record, state in zip(report.layers, oracle.states(6)):
        expected = oracle.figures(state)
        for name in LAYER_FIELDS:
            assert getattr(record, name) == pytest.approx(expected[name]), (name, record.layer)
    assert report.diameter == oracle.diameter()
    assert report.coverage_depth == report.diameter
    assert report.reach_to_first == oracle.reach_to_first()
    densities = [oracle.density(m) for m in oracle.masks]
    assert report.density == pytest.approx(sum(densities) / len(densities))
    if report.uncovered_pair is not None:
        q, k = report.uncovered_pair
        final = oracle.states(6)[-1]
        assert bool(oracle.admissible[q, k]) and not bool(final[q, k])
    return report


@pytest.mark.parametrize("seed", range(120))
def test_analyze_random_pattern_matches_oracle(seed):
    rng = random.Random(seed)
    n = rng.choice([1, 2, 5, 17, 40, 63])
    pattern = random_pattern(rng, n)
    for method in methods_for(pattern, n):
        check_against_oracle(pattern, [pattern], n, method)


@pytest.mark.parametrize("seed", range(40))
def test_analyze_random_model_matches_oracle(seed):
    rng = random.Random(1000 + seed)
    n = rng.choice([3, 16, 33, 50])
    distinct = [random_pattern(rng, n) for _ in range(rng.randint(1, 3))]
    layers = tuple(rng.choice(distinct) for _ in range(rng.randint(1, 4)))
    model = Model("random", layers)
    for method in methods_for(model, n):
        report = check_against_oracle(model, list(layers), n, method)
        assert report.kind == "model"


def test_analyze_larger_n_matches_oracle():
    rng = random.Random(7)
    for _ in range(4):
        n = 512
        pattern = random_pattern(rng, n)
        for method in methods_for(pattern, n):
            check_against_oracle(pattern, [pattern], n, method)


def hop_distances_networkx(oracle):
    """dist(k -> q) in the layered graph: copies of the tokens per layer, edges k -> q."""
    graph = nx.DiGraph()
    n, period = oracle.n, len(oracle.relations)
    depth = n * period + 1
    for layer in range(depth):
        relation = oracle.relations[layer % period]
        q, k = relation.nonzero(as_tuple=True)
        graph.add_edges_from(((layer, int(b)), (layer + 1, int(a))) for a, b in zip(q, k))
    lengths = nx.single_source_shortest_path_length(graph, (0, 0))
    return min((layer for (layer, token) in lengths if token == n - 1), default=math.inf)


@pytest.mark.parametrize("seed", range(15))
def test_reach_to_first_matches_networkx(seed):
    rng = random.Random(5000 + seed)
    n = rng.choice([4, 9, 16])
    pattern = random_pattern(rng, n)
    oracle = Oracle([pattern], n)
    expected = hop_distances_networkx(oracle)
    assert analyze(pattern, n, method="tokens").reach_to_first == expected


@pytest.mark.parametrize("seed", range(10))
def test_diameter_matches_networkx_all_pairs(seed):
    """With the self loops, hop distance = shortest path length in the graph of one layer."""
    rng = random.Random(9000 + seed)
    n = rng.choice([5, 12, 20])
    pattern = random_pattern(rng, n)
    oracle = Oracle([pattern], n)
    graph = nx.DiGraph()
    graph.add_nodes_from(range(n))
    q, k = oracle.masks[0].nonzero(as_tuple=True)
    graph.add_edges_from(zip(k.tolist(), q.tolist()))
    lengths = dict(nx.all_pairs_shortest_path_length(graph))
    worst = 0
    for query in range(n):
        for key in range(query + 1 if oracle.causal else n):
            worst = max(worst, lengths[key].get(query, math.inf))
    assert analyze(pattern, n).diameter == worst
