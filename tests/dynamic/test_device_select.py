"""The device selection pass equals select() (float64) on inputs whose estimates are apart
(random normal inputs at fixed seeds), and never picks a non-candidate."""
import pytest
import torch

from spattn_dsl.dynamic.select import device_select
from spattn_dsl.semantics.select import select

from .oracle import inputs, pattern, scores_for

CASES = [("moba", 2, 1, 63, 63), ("tokens", 1, 1, 5, 5), ("quest", 4, 2, 30, 47),
         ("indexer", 2, 2, 17, 17), ("free", 2, 1, 20, 33), ("vs", 2, 2, 40, 40),
         ("open_slash", 1, 1, 9, 20), ("per_head", 2, 1, 21, 21), ("minus", 1, 1, 12, 12),
         ("both", 2, 2, 30, 30), ("blocks16", 1, 1, 111, 130)]


def assert_same(mine, want):
    assert len(mine.terms) == len(want.terms)
    for a, b in zip(mine.terms, want.terms):
        assert a.indices.dtype == torch.int64
        for name in ("indices", "groups", "starts"):
            assert torch.equal(getattr(a, name).cpu(), getattr(b, name).cpu()), name


@pytest.mark.parametrize("name, h, h_kv, n_q, n_k", CASES)
def test_device_select_equals_reference(name, h, h_kv, n_q, n_k):
    pat = pattern(name)
    q, k, _ = inputs(2, h, h_kv, n_q, n_k, seed=n_q + n_k)
    scores = scores_for(pat, 2, h, n_q, n_k)
    assert_same(device_select(pat, q, k, scores), select(pat, q, k, scores))


@pytest.mark.parametrize("name", ["moba", "vs", "quest", "indexer"])
def test_device_select_documents(name):
    pat = pattern(name)
    q, k, _ = inputs(2, 4, 2, 30, 41, seed=3)
    documents = torch.tensor([[0] * 9 + [1] * 20 + [2] * 12, [5] * 41]).to(q.device)
    scores = scores_for(pat, 2, 4, 30, 41)
    assert_same(device_select(pat, q, k, scores, documents),
                select(pat, q, k, scores, documents))


def test_probe_scale_is_used():
    pat = pattern("vs")
    q, k, _ = inputs(1, 2, 2, 40, 40, seed=5)
    assert_same(device_select(pat, q, k, scale=0.7), select(pat, q, k, scale=0.7))
