"""Context parallel on CPUs: the plan from the pattern alone, and several gloo processes
whose outputs and gradients must equal a dense single-process oracle."""
import os

import pytest
import torch
import torch.multiprocessing as mp

import spattn_dsl as sp
from spattn_dsl.parallel.plan import exchange_plan, row_pairs

from . import workers

TOLERANCE = 1e-5


# ------------------------------------------------------------------ the plan, no processes
@pytest.mark.parametrize("exact_terms", [True, False])
@pytest.mark.parametrize("n, world", [(97, 3), (64, 4)])
def test_plan_is_exact(n, world, exact_terms):
    """Row counts and every rank's received keys equal the reference mask's, for every
    example pattern, by the term form and by the predicate fallback."""
    for name, pattern in workers.example_patterns().items():
        plan = exchange_plan(pattern, n, world, exact_terms)
        masks = torch.stack([pattern.mask(n, n, h) for h in range(pattern.heads)])
        assert torch.equal(torch.from_numpy(row_pairs(pattern, n, exact_terms)), masks.sum(2)), name
        attended = masks.any(0)
        for r in range(world):
            a, b = plan.chunk(r)
            want = attended[a:b].any(0)
            want[a:b] = False
            assert torch.equal(plan.needs[r], want.nonzero()[:, 0]), (name, r)
        assert plan.pairs.sum() == masks.sum(), name
        assert plan.held.sum() == n and (plan.held > 0).all()


@pytest.mark.parametrize("w", [16, 100])
def test_window_moves_at_most_a_halo(w):
    """causal & window(w): at most w - 1 positions into each rank per boundary it crosses
    (one, the boundary below it), nothing from further ranks."""
    pattern = sp.loads(f"pattern p() {{ causal & window({w}) }}").pattern("p")
    plan = exchange_plan(pattern, 1000, 4)
    received = plan.received
    for i in range(4):
        assert received[i, i] == 0
        assert received[i].sum() <= (w - 1) * (i > 0)
        assert received[i, :max(i - 1, 0)].sum() == 0
    assert received[1:, :].sum() > 0


def test_dense_moves_everything():
    pattern = sp.loads("pattern p() { dense }").pattern("p")
    plan = exchange_plan(pattern, 301, 4)
    assert torch.equal(plan.received.sum(1), 301 - plan.held)
    assert torch.equal(plan.bytes(2, 8, torch.float32)["received"],
                       plan.allgather_bytes(2, 8, torch.float32))


@pytest.mark.parametrize("text", ["causal", "causal & window(300)", "window(200)",
                                  "blocks(64) { band(1, 1) | global(first = 2) | random(3) }"])
@pytest.mark.parametrize("world", [4, 8])
def test_pairs_balance(text, world):
    pattern = sp.loads(f"pattern p() {{ {text} }}").pattern("p")
    plan = exchange_plan(pattern, 4096, world)
    pairs = plan.pairs.double()
    assert pairs.max() / pairs.mean() < 1.10, plan.pairs.tolist()


def test_causal_chunks_follow_pairs_not_tokens():
    pattern = sp.loads("pattern p() { causal }").pattern("p")
    held = exchange_plan(pattern, 4096, 4).held
    assert held[0] > 1.5 * held[3]  # early rows are cheap under causal


# ------------------------------------------------------------------ several processes
@pytest.mark.parametrize("world", [2, 3, 4])
def test_equals_single_process(world, tmp_path):
    """Every example pattern (and dense causal) in sequence mode, some in heads mode, GQA,
    documents and key padding, at a ragged n: outputs and dQ, dK, dV of every rank equal the
    oracle's rows within 1e-5 (relative), and unshard gives the whole output."""
    mp.spawn(workers.worker, args=(world, workers.free_port(), str(tmp_path)), nprocs=world)
    labels = [c[0] for c in workers.cases(world)]
    for rank in range(world):
        results = torch.load(os.path.join(tmp_path, f"rank{rank}.pt"))
        assert sorted(results) == sorted(labels)
        for label, errors in results.items():
            assert max(errors) < TOLERANCE, (rank, label, errors)


def test_heads_must_divide(tmp_path):
    """Heads mode with key/value heads that the ranks cannot share: a clear ValueError."""
    from spattn_dsl.parallel.context import ContextParallel
    cp = ContextParallel.__new__(ContextParallel)
    cp.pattern, cp.world = workers.example_patterns()["mistral_swa"], 4
    with pytest.raises(ValueError, match="6 key/value heads among 4 ranks"):
        cp._heads_plan(64, 12, 6)
