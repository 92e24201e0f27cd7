"""benchmarks/bench_needle.py, much smaller: the generator's invariants, a few training steps, and
the evaluation through hf.register (dense, static and dynamic patterns)."""
from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    path = ROOT / "benchmarks" / "bench_needle.py"
    spec = importlib.util.spec_from_file_location("bench_needle", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_needle"] = module
    spec.loader.exec_module(module)
    return module


TINY = ["--n", "64", "--budget", "32", "--window", "16", "--block", "16", "--steps", "3",
        "--tokens", "256", "--eval", "8", "--eval-batch", "8", "--hidden", "32",
        "--head-dim", "16", "--key-tokens", "16", "--values", "16", "--min-dense", "0"]


def test_generator(bench):
    k, v, labels, answer, distance = bench.needle_batch(16, 48, torch.Generator().manual_seed(3),
                                                        keys=256, values=8, query_rate=0.2)
    assert k.shape == v.shape == labels.shape == (16, 48)
    for b in range(16):
        needle = 47 - int(distance[b])
        assert 0 <= needle < 47 and v[b, needle] == answer[b] and v[b, -1] == 8  # a query
        assert int((k[b, :-1] == k[b, -1]).sum()) == 1 and k[b, needle] == k[b, -1]
        pairs = v[b] < 8
        assert len(set(k[b, pairs].tolist())) == int(pairs.sum())  # distinct pair keys
        for t in (labels[b] >= 0).nonzero()[:, 0].tolist():  # every query is answerable
            earlier = pairs[:t] & (k[b, :t] == k[b, t])
            assert int(earlier.sum()) == 1 and v[b, :t][earlier].item() == labels[b, t]
    assert (labels >= 0).sum() == (v == 8).sum()


def test_patterns_share_the_budget(bench):
    import spattn_dsl as spattn

    rows = bench.patterns(128)
    assert [label for label, _ in rows][0] == "dense" and len(rows) == 5
    for _, text in rows[1:]:
        pattern = spattn.loads(f"pattern p {{ {text} }}").pattern("p")
        assert spattn.analyze(pattern, 256).max_keys_per_query == 128
    with pytest.raises(ValueError):
        bench.patterns(65)


def test_tiny_run(bench, monkeypatch):
    # the benchmark's CPU path (reference select + masked attention), as
    # `python benchmarks/bench_needle.py` runs it; the interpreted kernels are tested elsewhere
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    args = bench.parse_args(TINY)
    torch.set_num_threads(1)
    model = bench.train(args, "cpu", log=lambda _: None)
    rows = bench.evaluate(args, model, "cpu", log=lambda _: None)
    assert [r["label"] for r in rows] == [label for label, _ in bench.patterns(32, 16, 16)]
    assert [r["keys"] for r in rows] == [64, 32, 32, 32, 32]
    assert all(0 <= r["accuracy"] <= 1 for r in rows)
    k, v, answer, _ = bench.eval_set(args)
    with torch.no_grad():
        dense = model(k, v)[:, -1]  # the model's own SDPA
    assert rows[0]["accuracy"] == float((dense.argmax(-1) == answer).float().mean())
    # a dynamic budget that covers every earlier key is dense attention again
    from spattn_dsl import hf

    name = hf.register("needle_test_full", "causal & (window(16) | topk(64))")
    full = bench.NeedleModel(args, name).eval()
    full.load_state_dict(model.state_dict())
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = full(k, v)[:, -1]
    torch.testing.assert_close(out, dense, atol=1e-4, rtol=1e-4)
    table = bench.table(rows, args)
    assert table.count("\n| ") == 6 and "`causal & (sink(4) \\| window(28))`" in table
