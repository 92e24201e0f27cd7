"""GPU: where one pattern's forward and backward time goes, kernel by kernel (torch.profiler),
and each term's plan (layout, tile counts, gathers), to explain a slow pass.

    python benchmarks/profile_pass.py sparse_transformer:strided [--seq-len 8192] [--steps 5]

bf16, batch 2, 16 heads, head_dim 128, random normal inputs. Prints, per pass, the CUDA time
of every kernel (total over ``--steps`` steps, per step, launches), and the terms of the
forward, dQ and dK/dV plans; then the wall time of a step (``triton.testing.do_bench``) and
where its host time goes (cProfile over ``--host-steps`` steps, by own time; then the step's
time with direct launches, Triton's launch path and no launches at all).
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import sys

import torch

from bench_tiles import load
from spattn_dsl.runtime import compile

B, H, D = 2, 16, 128


def describe(label: str, plan) -> None:
    print(f"{label}: config {plan.config}")
    for c, terms in enumerate(plan.cases):
        for term in terms:
            layout = term.layout
            print(f"  case {c}: tiles {layout.tiles}, density {layout.density():.3f}, "
                  f"gather q {term.q_gather is not None} k {term.k_gather is not None}, "
                  f"m_q {term.m_q} m_k {term.m_k}, config {term.config}, merged {term.merged}")


def profile(label: str, step, steps: int) -> None:
    from torch.profiler import ProfilerActivity, profile as torch_profile
    step()
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    print(f"\n== {label}: {steps} steps")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60))


def host_profile(label: str, step, steps: int) -> None:
    import triton.testing
    wall_ms = triton.testing.do_bench(step, warmup=25, rep=100, return_mode="median")
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    profiler.disable()
    print(f"\n== {label}: {wall_ms:.3f} ms a step (do_bench median); host, {steps} steps:")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(22)


def host_split(step, steps: int, rounds: int = 3) -> None:
    """Microseconds a step (best of interleaved rounds): its wall time, and the host time spent
    inside kernel launches, with direct launches, with Triton's own path, and with every
    launch skipped (the rest of the host's work alone)."""
    import os
    import time
    from spattn_dsl.runtime import direct
    real = direct.launch
    inside = [0.0]

    def timed(*args, **kwargs):
        start = time.perf_counter()
        real(*args, **kwargs)
        inside[0] += time.perf_counter() - start

    modes = {"direct launches": ("1", timed), "Triton's launch path": ("0", timed),
             "launches skipped": ("1", lambda *args, **kwargs: None)}
    best = {mode: (float("inf"), float("inf")) for mode in modes}
    try:
        for _ in range(rounds):
            for mode, (switch, launcher) in modes.items():
                os.environ["SPATTN_DIRECT_LAUNCH"], direct.launch = switch, launcher
                step()
                torch.cuda.synchronize()
                inside[0] = 0.0
                start = time.perf_counter()
                for _ in range(steps):
                    step()
                torch.cuda.synchronize()
                wall = (time.perf_counter() - start) / steps * 1e6
                best[mode] = min(best[mode], (wall, inside[0] / steps * 1e6))
    finally:
        direct.launch = real
        os.environ.pop("SPATTN_DIRECT_LAUNCH", None)
    print("\n| host, forward + backward | us a step | us inside launches |\n|---|---|---|")
    for mode, (wall, launching) in best.items():
        print(f"| {mode} | {wall:.0f} | {launching:.0f} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pattern", help="file:name of an example pattern")
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--host-steps", type=int, default=200)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("profile_pass needs a CUDA GPU", file=sys.stderr)
        return 2
    n = args.seq_len
    q, k, v = (torch.randn(B, H, n, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    grad_out = torch.randn_like(q)
    attn = compile(load(args.pattern, None))
    out = attn(q, k, v)
    torch.autograd.grad(out, (q, k, v), grad_out)  # tunes forward and backward
    describe("forward", next(iter(attn._plans.values())))
    dq_plan, dkdv_plan = attn.backward_plans(q, k, v, D ** -0.5)
    describe("dQ", dq_plan)
    describe("dK/dV", dkdv_plan)
    with torch.no_grad():
        profile("forward", lambda: attn(q, k, v), args.steps)
    out = attn(q, k, v)
    profile("backward", lambda: torch.autograd.grad(out, (q, k, v), grad_out, retain_graph=True),
            args.steps)
    with torch.no_grad():
        host_profile("forward", lambda: attn(q, k, v), args.host_steps)
    host_profile("forward + backward",
                 lambda: torch.autograd.grad(attn(q, k, v), (q, k, v), grad_out), args.host_steps)
    host_split(lambda: torch.autograd.grad(attn(q, k, v), (q, k, v), grad_out), args.host_steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
