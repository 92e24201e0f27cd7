"""``spattn show --plan``'s ownership picture: the same votes as every allowed pair of the
cell's rows against all keys, with only the key tiles a term's layout lists looked at."""
import pytest
import torch

from spattn_dsl import loads
from spattn_dsl.layout import pairs
from spattn_dsl.runtime import plan_picture
from spattn_dsl.runtime.artifacts import default_config
from spattn_dsl.runtime.lowering import case_plans
from spattn_dsl.semantics.reference import evaluate


def plans(text, n):
    p = loads(f"pattern p {{ {text} }}").pattern("p")
    config = default_config(p, 128, n)
    return case_plans(p, n, n, config.block_m, config.block_n)


def brute_ownership(terms, n, cells):
    """Every row of every cell against all n keys (what ownership did before)."""
    tile = -(-n // cells)
    count = -(-n // tile)
    key_tile = torch.arange(n) // tile
    votes = torch.zeros(len(terms), count, count, dtype=torch.float64)
    for r in range(count):
        rows = torch.arange(r * tile, min(n, (r + 1) * tile))
        for t, term in enumerate(terms):
            allowed = evaluate(term.expr, rows, n).expand(len(rows), n)
            votes[t, r].index_add_(0, key_tile, allowed.sum(0, dtype=torch.float64))
    return torch.where(votes.sum(0) > 0, votes.argmax(0), -1)


@pytest.mark.parametrize("text, n", [
    ("causal & window(8)", 100), ("band(40, 40) | global(first = 2)", 300),
    ("causal & (stride(4) | window(3))", 257), ("global(2, 5)", 97),
    ("dense - global(1, 4)", 64), ("causal & (sink(2) | window(5)) | random(2)", 130)])
def test_ownership_equals_every_pair(text, n):
    for plan in plans(text, n):
        got, _ = plan_picture.ownership(plan.terms, n, 16)
        assert torch.equal(got, brute_ownership(plan.terms, n, 16)), text


def test_ownership_evaluates_only_listed_tiles(monkeypatch):
    """A window at 65,536 tokens: 64 cells of 16 sampled rows against the few key tiles the
    layout lists, not 64 * 16 * 65,536 = 2**26 pairs (25 s at 1M tokens before)."""
    n, evaluated = 1 << 16, []
    real = pairs.allowed

    def counting(expr, q, k, n, *rest):
        evaluated.append(torch.broadcast_shapes(q.shape, k.shape).numel())
        return real(expr, q, k, n, *rest)

    (plan,) = plans("causal & window(16)", n)
    monkeypatch.setattr(pairs, "allowed", counting)
    owner, tile = plan_picture.ownership(plan.terms, n, 64)
    assert 0 < sum(evaluated) <= 64 * 16 * 512  # a few PARTIAL tiles per row, not 65,536 keys
    ones = torch.ones(64, 64, dtype=torch.bool)
    near = ones.tril() & ~ones.tril(-2)  # each cell row: its diagonal cell and the one before
    assert tile == 1024 and torch.equal(owner, torch.where(near, 0, -1))
