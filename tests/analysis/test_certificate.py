"""The Yun et al. (NeurIPS 2020, arXiv:2006.04862) certificate, against brute force."""
import math
import random
from pathlib import Path

import pytest
import torch

from spattn_dsl import load, loads
from spattn_dsl.analysis import analyze, render
from spattn_dsl.analysis.certificate import allowed

from .oracle import Oracle, layer_mask, random_pattern

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def pattern(text):
    return loads(f"pattern p {{ {text} }}").pattern("p")


def brute_conditions(schedule, n):
    """(self-loops, sequential path found, p or inf / None when causal) from dense masks."""
    masks = [layer_mask(p, n) for p in schedule]
    self_loops = all(bool(torch.diagonal(m).all()) for m in masks)
    union = torch.stack(masks).any(0)
    forward = bool(torch.diagonal(union, -1).all())  # token i+1 attends token i
    backward = bool(torch.diagonal(union, 1).all())
    oracle = Oracle(schedule, n)
    p = 0 if n == 1 else (math.inf if oracle.causal else oracle.diameter())
    return self_loops, forward or backward or n == 1, p


@pytest.mark.parametrize("seed", range(40))
def test_certificate_matches_brute_force_on_random_patterns(seed):
    rng = random.Random(seed)
    n = rng.choice([1, 2, 5, 23, 64])
    schedule = [random_pattern(rng, n) for _ in range(rng.choice([1, 1, 2]))]
    report = analyze(schedule[0] if len(schedule) == 1 else _model(schedule), n,
                     method="tokens")
    cert = report.certificate
    self_loops, path, p = brute_conditions(schedule, n)
    assert cert.self_loops == self_loops
    assert (cert.path is not None) == path
    assert cert.p == p and cert.reach == (p != math.inf)
    assert cert.certified == (self_loops and path and p != math.inf)


def _model(schedule):
    from spattn_dsl.ir.program import Model
    return Model("m", tuple(schedule))


@pytest.mark.parametrize("n", [1, 7, 64, 130])
def test_pair_semantics_equal_the_reference_mask(n):
    rng = random.Random(n)
    q = torch.randint(0, n, (500,))
    k = torch.randint(0, n, (500,))
    for _ in range(25):
        p = random_pattern(rng, n)
        expected = layer_mask(p, n)[q, k]
        assert torch.equal(allowed(p.at(n), q, k, n), expected), p.text


def test_longformer_is_certified_with_p_two():
    # Yun et al. 2020, section 4: patterns with a global token and a sliding window meet
    # Assumption 1; here any two tokens are 2 hops apart through the global token.
    report = analyze(load(EXAMPLES / "longformer.spattn").pattern("longformer"), 4096)
    cert = report.certificate
    assert cert.certified and cert.p == 2 and cert.path == "i -> i+1"
    assert "certified: conditions 1-3 hold with p = 2" in str(report)


def test_causal_stack_fails_condition_three_by_construction():
    report = analyze(load(EXAMPLES / "mistral.spattn").model("mistral_7b"), 8192)
    cert = report.certificate
    assert cert.self_loops and cert.path == "i -> i+1"
    assert cert.reach is False and "causal" in cert.reach_reason and not cert.certified


def test_missing_path_is_not_found_rather_than_false():
    cert = analyze(pattern("dilated(4, 2)"), 200).certificate
    assert cert.path is None and "not found among sequential paths" in cert.line()
    reverse = analyze(pattern("band(0, 1) | global(first = 1)"), 50).certificate
    assert reverse.path == "i+1 -> i"


def test_a_token_that_skips_itself_is_named():
    cert = analyze(pattern("window(3) & !where(q == k + 0) | where(q == 5 & k == 5)"),
                   20).certificate
    assert not cert.self_loops and cert.self_missing == "token 0 in pattern p"


def test_certificate_in_every_format():
    report = analyze(load(EXAMPLES / "longformer.spattn").pattern("longformer"), 512)
    data = report.to_dict()["certificate"]
    assert data["certified"] is True and data["p"] == 2 and "2006.04862" in data["source"]
    assert "## Universal-approximation certificate" in report.to_markdown()
    assert "Universal-approximation certificate</h2>" in render(report, fmt="html")
