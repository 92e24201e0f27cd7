"""The kernel path (static plan + slot kernels, merged by log-sum-exp) under the interpreter:
forward and gradients against float64 under the returned selection, which equals select()."""
import pytest
import torch

import spattn_dsl
from spattn_dsl.semantics.select import select

from .oracle import check, inputs, pattern, scores_for


@pytest.fixture(autouse=True)
def _interpreter(monkeypatch):
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.mark.parametrize("name, h, h_kv, n_q, n_k", [
    ("moba", 2, 1, 63, 63), ("tokens", 1, 1, 5, 5), ("quest", 4, 2, 30, 47),
    ("indexer", 2, 2, 17, 17), ("free", 2, 1, 20, 33), ("vs", 2, 2, 40, 40),
    ("open_slash", 1, 1, 9, 20), ("per_head", 2, 1, 21, 21), ("both", 2, 2, 30, 30),
    ("blocks16", 1, 1, 111, 130),
])
def test_kernels_match_float64(name, h, h_kv, n_q, n_k):
    pat = pattern(name)
    q, k, v = inputs(1, h, h_kv, n_q, n_k, seed=n_k)
    scores = scores_for(pat, 1, h, n_q, n_k)
    sel = check(spattn_dsl.compile(pat), pat, q, k, v, scores=scores)
    want = select(pat, q, k, scores)
    for mine, theirs in zip(sel.terms, want.terms):
        assert torch.equal(mine.indices, theirs.indices.cpu())


def test_kernels_documents_and_padding():
    pat = pattern("vs")
    q, k, v = inputs(2, 2, 1, 25, 30)
    documents = torch.tensor([[0] * 12 + [1] * 18, [3] * 30])
    padding = torch.ones(2, 30, dtype=torch.bool)
    padding[0, 5] = padding[1, 20:] = False
    check(spattn_dsl.compile(pat), pat, q, k, v, key_padding=padding, documents=documents)


def test_negated_term_falls_back_exactly():
    pat = pattern("minus")
    q, k, v = inputs(1, 1, 1, 12, 12)
    check(spattn_dsl.compile(pat), pat, q, k, v)
