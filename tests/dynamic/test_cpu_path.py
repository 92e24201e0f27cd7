"""compile() of a dynamic pattern on the CPU without the interpreter: the selection of
select(), attention under its mask, gradients as if the selection were fixed."""
import pytest
import torch

import spattn_dsl
import spattn_dsl.dynamic.attend  # noqa: F401  (triton is imported while interpreting: conftest)
from spattn_dsl.semantics.select import select

from . import oracle
from .oracle import check, pattern


def inputs(*args, **kwargs):
    return tuple(t.cpu() for t in oracle.inputs(*args, **kwargs))


def scores_for(*args, **kwargs):
    scores = oracle.scores_for(*args, **kwargs)
    return None if scores is None else scores.cpu()


@pytest.fixture(autouse=True)
def _no_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")


@pytest.mark.parametrize("name, h, h_kv, n_q, n_k", [
    ("moba", 2, 1, 63, 63), ("tokens", 1, 1, 5, 5), ("quest", 4, 2, 30, 47),
    ("indexer", 2, 2, 17, 17), ("free", 2, 1, 20, 33), ("vs", 2, 2, 40, 40),
    ("open_slash", 1, 1, 9, 20), ("per_head", 2, 1, 21, 21), ("minus", 1, 1, 12, 12),
])
def test_cpu_path_matches_float64(name, h, h_kv, n_q, n_k):
    pat = pattern(name)
    q, k, v = inputs(2, h, h_kv, n_q, n_k, seed=n_k)
    scores = scores_for(pat, 2, h, n_q, n_k)
    sel = check(spattn_dsl.compile(pat), pat, q, k, v, scores=scores)
    want = select(pat, q, k, scores)
    for mine, theirs in zip(sel.terms, want.terms):
        assert torch.equal(mine.indices, theirs.indices)


def test_cpu_path_documents_and_padding():
    pat = pattern("moba")
    q, k, v = inputs(2, 2, 1, 25, 30)
    documents = torch.tensor([[0] * 12 + [1] * 18, [3] * 30])
    padding = torch.ones(2, 30, dtype=torch.bool)
    padding[0, 5] = padding[1, 20:] = False  # batch 1: rows 20.. have a few keys; none past
    check(spattn_dsl.compile(pat), pat, q, k, v, key_padding=padding, documents=documents)


def test_empty_rows_are_zero():
    pat = pattern("tokens")
    q, k, v = inputs(1, 1, 1, 6, 6)
    padding = torch.zeros(1, 6, dtype=torch.bool)
    out = spattn_dsl.compile(pat)(q, k, v, key_padding=padding)
    assert torch.equal(out, torch.zeros_like(out))


def test_scores_get_no_gradient():
    pat = pattern("indexer")
    q, k, v = inputs(1, 2, 2, 8, 8)
    scores = scores_for(pat, 1, 2, 8, 8).requires_grad_()
    q.requires_grad_()
    spattn_dsl.compile(pat)(q, k, v, scores=scores).sum().backward()
    assert scores.grad is None and q.grad is not None
