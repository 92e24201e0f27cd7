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


@pytest.mark.parametrize("name, h, h_kv, n_q, n_k",
                         CASES[::2] + [CASES[5], ("far_columns", 2, 1, 40, 40)])
def test_candidates_are_built_a_few_rows_at_a_time(monkeypatch, name, h, h_kv, n_q, n_k):
    # The pattern's pair masks are built CHUNK_ROWS rows at a time and reduced to units,
    # columns or diagonals at once (memory rows x units, not rows x keys): the same selection
    # (far_columns: the probe reaches fewer columns than it picks, so the rest come from the
    # candidates of every chunk).
    from spattn_dsl.dynamic import select as device
    from spattn_dsl.ir import nodes as N
    built = []
    masks = device._masks

    def counting(pattern, term, length, rows):
        built.append(len(rows))
        return masks(pattern, term, length, rows)

    monkeypatch.setattr(device, "CHUNK_ROWS", 7)
    monkeypatch.setattr(device, "_masks", counting)
    device._candidates.cache_clear()
    device._probe_envelope.cache_clear()
    pat = pattern(name)
    q, k, _ = inputs(2, h, h_kv, n_q, n_k, seed=n_q + n_k)
    scores = scores_for(pat, 2, h, n_q, n_k)
    assert_same(device_select(pat, q, k, scores), select(pat, q, k, scores))
    probes = [node for node in N.walk(pat.expr) if isinstance(node, (N.Vertical, N.Slash))]
    assert len(built) > len(probes) + 1  # several chunks
    assert len([rows for rows in built if rows > 7]) <= len(probes)  # only the probe's rows
    device._candidates.cache_clear()
