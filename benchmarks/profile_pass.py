"""GPU: where one pattern's forward and backward time goes, kernel by kernel (torch.profiler),
and each term's plan (layout, tile counts, gathers), to explain a slow pass.

    python benchmarks/profile_pass.py sparse_transformer:strided [--seq-len 8192] [--steps 5]

bf16, batch 2, 16 heads, head_dim 128, random normal inputs. Prints, per pass, the CUDA time
of every kernel (total over ``--steps`` steps, per step, launches), and the terms of the
forward, dQ and dK/dV plans; then the wall time of a step (``triton.testing.do_bench``) and
where its host time goes (cProfile over ``--host-steps`` steps, by own time; then the step's
time with direct launches, Triton's launch path and no launches at all; then the time inside
the op's forward and backward bodies, and a cProfile of the backward, which runs on autograd's
device thread; a timeline of do_bench's loop, GPU kernels and host events; and the op's bodies
without autograd).
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


def timeline(step, iterations: int = 12) -> None:
    """One forward + backward step as ``triton.testing.do_bench`` times it (the L2 cleared
    before each step, steps queued back to back): every GPU kernel's start, duration and the
    idle gap before it, and the host events of our op and autograd in the same window (from
    the middle of ``iterations`` profiled steps, offsets in microseconds from the step's
    start event)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile as torch_profile
    from triton import runtime
    cache = runtime.driver.active.get_empty_cache_for_benchmark()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(iterations)]
    step()
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for start, end in events:
            runtime.driver.active.clear_cache(cache)
            start.record()
            step()
            end.record()
        torch.cuda.synchronize()
    print("\n== timeline (do_bench's loop): " + ", ".join(
        f"{start.elapsed_time(end) * 1e3:.0f}" for start, end in events) + " us a step")
    kernels = sorted((e for e in prof.events() if e.device_type == DeviceType.CUDA),
                     key=lambda e: e.time_range.start)
    clears = [e for e in kernels if ("zero" in e.name.lower() or "fill" in e.name.lower())
              and e.time_range.end - e.time_range.start >= 20]  # the 256 MB clears
    middle = iterations // 2
    if len(clears) < middle + 2:
        print("  (no L2 clears found in the trace)")
        return
    begin, finish = clears[middle].time_range.start, clears[middle + 1].time_range.start
    last_end = begin
    print("| GPU kernel | start us | us | idle before us |\n|---|---|---|---|")
    for e in kernels:
        if begin <= e.time_range.start < finish:
            print(f"| {e.name[:50]} | {e.time_range.start - begin:.0f} | "
                  f"{e.time_range.end - e.time_range.start:.0f} | "
                  f"{max(0.0, e.time_range.start - last_end):.0f} |")
            last_end = max(last_end, e.time_range.end)
    # host events start earlier than the GPU runs them: show the host window before it too
    host_begin = begin - 1500
    print("| host event | thread | start us | us |\n|---|---|---|---|")
    for e in sorted((e for e in prof.events() if e.device_type == DeviceType.CPU),
                    key=lambda e: e.time_range.start):
        if host_begin <= e.time_range.start < finish and e.time_range.end - e.time_range.start >= 3 \
                and not e.name.startswith(("aten::", "cudaEvent", "cudaStream")):
            print(f"| {e.name[:50]} | {e.thread % 1000} | {e.time_range.start - begin:.0f} | "
                  f"{e.time_range.end - e.time_range.start:.0f} |")


def wall_us(step, steps: int, rounds: int = 3) -> float:
    """Microseconds a step, best of ``rounds`` (a host-bound step's host time)."""
    import time
    best = float("inf")
    for _ in range(rounds):
        step()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / steps * 1e6)
    return best


def body_split(attn, step, steps: int) -> None:
    """Where a forward + backward step's host time goes: the step's wall time, the time inside
    the op's forward and backward bodies (the backward runs on autograd's device thread, which
    ``host_profile``'s cProfile does not see), and a cProfile of the backward bodies alone."""
    import time
    bodies = {"run_forward": attn.run_forward, "run_backward": attn.run_backward}
    inside = dict.fromkeys(bodies, 0.0)
    profiler = cProfile.Profile()

    def timed(name, body, profiled):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            if profiled:
                profiler.enable()
            try:
                return body(*args, **kwargs)
            finally:
                if profiled:
                    profiler.disable()
                inside[name] += time.perf_counter() - start
        return wrapper

    try:
        for profiled in (False, True):
            for name, body in bodies.items():
                setattr(attn, name, timed(name, body, profiled and name == "run_backward"))
            step()
            torch.cuda.synchronize()
            inside.update(dict.fromkeys(bodies, 0.0))
            start = time.perf_counter()
            for _ in range(steps):
                step()
            torch.cuda.synchronize()
            wall = (time.perf_counter() - start) / steps * 1e6
            print(f"\n== bodies ({'backward profiled' if profiled else 'timed'}): {wall:.0f} us a "
                  "step; " + ", ".join(f"{name} {t / steps * 1e6:.0f} us" for name, t in inside.items()))
    finally:
        for name in bodies:
            delattr(attn, name)
    pstats.Stats(profiler).sort_stats("tottime").print_stats(22)


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
    scale = D ** -0.5
    attn = compile(load(args.pattern, None))
    out = attn(q, k, v)
    torch.autograd.grad(out, (q, k, v), grad_out)  # tunes forward and backward
    describe("forward", next(iter(attn._plans.values())))
    dq_plan, dkdv_plan = attn.backward_plans(q, k, v, scale)
    describe("dQ", dq_plan)
    describe("dK/dV", dkdv_plan)
    with torch.no_grad():
        profile("forward", lambda: attn(q, k, v), args.steps)
    out = attn(q, k, v)
    profile("backward", lambda: torch.autograd.grad(out, (q, k, v), grad_out, retain_graph=True),
            args.steps)
    with torch.no_grad():
        host_profile("forward", lambda: attn(q, k, v), args.host_steps)

    def step():
        return torch.autograd.grad(attn(q, k, v), (q, k, v), grad_out)

    host_profile("forward + backward", step, args.host_steps)
    host_split(step, args.host_steps)
    body_split(attn, step, args.host_steps)
    timeline(step)
    with torch.no_grad():
        main_thread = wall_us(lambda: attn.run_backward(
            grad_out, None, q, k, v, *attn.run_forward(q, k, v, None, scale), None, scale),
            args.host_steps)
    print(f"\n== the op's bodies on this thread, no autograd: {main_thread:.0f} us a step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
