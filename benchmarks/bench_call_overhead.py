"""CPU: the Python time of one attention call with the kernel launches stubbed out, through
the custom op and through ``attn()`` (the eager path), with and without gradients, and of a
forward + backward step. On a GPU a short call (decoding, a very sparse pattern) takes about
this long on top of its launches (less the CPU tensors' allocations, which a GPU's caching
allocator makes cheap).

    python benchmarks/bench_call_overhead.py [--rounds 7] [--calls 1000]

Prints microseconds per call, the best of ``--rounds`` interleaved rounds of ``--calls`` calls.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"  # the kernel path (its launches are stubbed below)

import torch  # noqa: E402

import spattn_dsl  # noqa: E402
from spattn_dsl.runtime import compile  # noqa: E402


class _NoLaunch:
    """Stands in for a kernel: ``kernel[grid](...)`` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def stub_launches(plan) -> None:
    for terms in plan.cases:
        for term in terms:
            term.module = type("Stub", (), {
                name: _NoLaunch() for name in ("FORWARD", "BACKWARD_DELTA", "BACKWARD_DQ",
                                               "BACKWARD_DKDV")} | {"CASES": term.module.CASES})


def best_times(rows, calls: int, rounds: int) -> dict:
    """{name: best microseconds per call}, the rows' rounds interleaved (a shared machine's
    load then affects every row alike)."""
    for _, fn in rows:
        fn()
    best = {name: float("inf") for name, _ in rows}
    for _ in range(rounds):
        for name, fn in rows:
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            best[name] = min(best[name], (time.perf_counter() - start) / calls * 1e6)
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=1000)
    args = parser.parse_args(argv)
    examples = Path(__file__).parents[1] / "examples"
    pattern = spattn_dsl.load(examples / "sparse_transformer.spattn").pattern("strided")
    attn = compile(pattern, block_m=64, block_n=64, num_warps=4, num_stages=3)
    q, k, v = (torch.randn(2, 16, 512, 128) for _ in range(3))
    scale = 128 ** -0.5
    for plan in (attn.plan(q, k, v, scale), *attn.backward_plans(q, k, v, scale)):
        stub_launches(plan)
    q_grad = q.clone().requires_grad_(True)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    grad_out = torch.randn_like(q)
    rows = [
        ("custom op", lambda: torch.ops.spattn.attention(q, k, v, None, scale, attn.op_id)),
        ("custom op, q requires grad",
         lambda: torch.ops.spattn.attention(q_grad, k, v, None, scale, attn.op_id)),
        ("attn(q, k, v)", lambda: attn(q, k, v, scale)),
        ("attn(q, k, v), q requires grad", lambda: attn(q_grad, k, v, scale)),
        ("the forward body alone (run_forward)", lambda: attn.run_forward(q, k, v, None, scale)),
        ("forward + backward (torch.autograd.grad of q, k, v)",
         lambda: torch.autograd.grad(attn(*leaves, scale), leaves, grad_out)),
    ]
    print("| path | us per call |\n|---|---|")
    for name, us in best_times(rows, args.calls, args.rounds).items():
        print(f"| {name} | {us:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
