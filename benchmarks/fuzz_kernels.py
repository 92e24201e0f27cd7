"""Fuzz the kernels: random patterns, lowerings, tile hints and shapes, forward and gradients
against float64 autograd through the reference mask (the oracle).

    python benchmarks/fuzz_kernels.py --cases 600 [--seed 0] [--interpret]

Without ``--interpret`` CPU tensors take the tiled PyTorch path (fast); with it the generated
Triton kernels run under the interpreter (about 1 s a case). Patterns come from the analysis
oracle's generator (every primitive, unions, differences, complements, blocks, per-head mixes);
shapes are ragged, with fewer queries than keys, GQA and padded head dims. A case fails when a
result has a NaN or differs from the reference by more than 1e-4 relative (to at least 1e-2
per element: a gradient the reference gives as exactly 0 is rounding noise here). Prints each
failing case and a count; exits 1 if any failed.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def error(got, want) -> float:
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    if got.isnan().any():
        return float("nan")
    return float((got - want).norm() / max(float(want.norm()), 1e-2 * want.numel() ** 0.5))


def case(seed: int):
    """(description, errors of out, dq, dk, dv) of one seeded case."""
    import torch

    from spattn_dsl.runtime import compile
    from tests.analysis.oracle import random_pattern
    from tests.runtime.test_attention import inputs
    from tests.runtime.test_backward import grads, reference_grads

    rng = random.Random(seed)
    n_k = rng.choice([5, 17, 33, 40, 64, 97, 130])
    n_q = rng.choice([n_k, n_k, max(1, n_k // 3), max(1, n_k - 7)])
    pattern = random_pattern(rng, n_k)
    heads = rng.choice([1, 2, 3, 4])
    kv_heads = rng.choice([h for h in (1, 2, heads) if heads % h == 0])
    head_dim = rng.choice([16, 16, 24, 32])
    block_m, block_n = rng.choice([(16, 16), (16, 32), (32, 16)])
    hints = dict(lowering=rng.choice(["terms", "terms", "auto", "grid"]),
                 merged=rng.random() < 0.5, descriptors=rng.random() < 0.5)
    attn = compile(pattern, block_m=block_m, block_n=block_n, num_warps=1, num_stages=1,
                   **hints)
    q, k, v = inputs(rng.choice([1, 2]), heads, n_q, n_k, head_dim, kv_heads=kv_heads,
                     seed=seed)
    grad_out = torch.randn_like(q)
    got = grads(attn, q, k, v, grad_out)
    want = reference_grads(pattern, q, k, v, grad_out)
    text = (f"seed {seed}: {pattern} | n_q {n_q}, n_k {n_k}, heads {heads}/{kv_heads}, "
            f"head_dim {head_dim}, tiles {block_m}x{block_n}, {hints}")
    return text, [error(a, b) for a, b in zip(got, want)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0, help="the first case's seed")
    parser.add_argument("--interpret", action="store_true",
                        help="run the Triton kernels under the interpreter")
    args = parser.parse_args(argv)
    if args.interpret:
        os.environ["TRITON_INTERPRET"] = "1"
    warnings.simplefilter("ignore")  # the CPU path's notice, once per pattern
    failed, start = 0, time.perf_counter()
    for seed in range(args.seed, args.seed + args.cases):
        try:
            text, errors = case(seed)
        except Exception as exc:  # noqa: BLE001  (every escape is a finding)
            failed += 1
            print(f"CRASH seed {seed}: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
            continue
        if not all(e < 1e-4 for e in errors):  # NaN fails too
            failed += 1
            print(f"WRONG {text}: errors out/dq/dk/dv {errors}", flush=True)
        if (seed - args.seed + 1) % 100 == 0:
            print(f"{seed - args.seed + 1} cases, {failed} failed, "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
    print(f"{args.cases} cases from seed {args.seed} "
          f"({'interpreter' if args.interpret else 'CPU path'}): {failed} failed, "
          f"{time.perf_counter() - start:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
