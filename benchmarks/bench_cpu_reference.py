"""Peak memory and CPU time of the CPU attention paths (no GPU, no Triton interpreter).

Each measurement runs in its own subprocess, so that its peak resident set size
(``ru_maxrss``) is its own:

- ``tiled``: the runtime's CPU path as users call it (``spattn.compile(p)(q, k, v)`` without
  ``TRITON_INTERPRET``, then ``backward``): ``codegen.reference.attention_tiled``, whole query
  tiles over the block layout, and its closed-form backward, fp32;
- ``tiled-old``: the CPU path before issue 26 (``_attention_tiled_exact``, kept for inputs
  holding NaN or inf): 128 x 128 tiles, one query tile at a time, masks over every column;
- ``dense``: ``attention_reference`` (an ``n x n`` score matrix), fp32;
- ``flex``: ``torch.nn.attention.flex_attention`` on the CPU with the pattern's BlockMask
  (``runtime.flex``), eager, and ``flex-compiled`` under ``torch.compile`` (forward only: no
  backward on the CPU);
- ``sdpa``: ``scaled_dot_product_attention`` with the pattern's boolean mask (autograd).

``tiled``, ``flex-compiled`` and ``sdpa`` are timed after a first call (which builds the
layout, the BlockMask's compile, ...): the median of ``--calls`` calls (wall time, and the
CPU time of that call); the peak RSS covers every call. ``--interleave ROUNDS`` times the
paths in turn in one process instead (``interleaved``; ratios that hold on a shared machine).

Usage: ``python benchmarks/bench_cpu_reference.py [--n 4096 8192 32768] [--paths tiled dense]
[--pattern "causal"] [--threads 1] [--forward-only] [--repeat 2] [--calls 5]
[--interleave ROUNDS]``
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import time

PATTERN = "causal & window(1024)"
WARMED = ("tiled", "flex-compiled", "sdpa")  # paths timed after a first call


def prepare(path: str, n: int, heads: int, head_dim: int, backward: bool, threads: int,
            pattern: str):
    """(run, leaves, (p, q, k, v)): one call of ``path`` on fixed random inputs, and the
    tensors whose gradients it fills."""
    import warnings

    import torch

    if threads:
        torch.set_num_threads(threads)
    os.environ.pop("TRITON_INTERPRET", None)  # the CPU path, not the kernels' interpreter
    warnings.simplefilter("ignore")

    import spattn_dsl
    from spattn_dsl.codegen import reference as R

    p = spattn_dsl.loads(f"pattern p {{ {pattern} }}").pattern("p")
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, n, head_dim, generator=gen) for _ in range(3))
    grad = torch.randn(1, heads, n, head_dim, generator=gen)
    leaves = [t.clone().requires_grad_(backward) for t in (q, k, v)]
    if path == "tiled":
        attn = spattn_dsl.compile(p)

        def run():
            out = attn(*leaves)
            if backward:
                out.backward(grad)
            return out
    elif path == "tiled-old":
        def run():
            out, _ = R._attention_tiled_exact(p, q, k, v)
            if backward:
                R._attention_tiled_backward_exact(p, grad, q, k, v)
            return out
    elif path == "dense":
        def run():
            out, _ = R.attention_reference(p, q, k, v, dtype=torch.float32)
            if backward:
                R.attention_reference_backward(p, grad, q, k, v)
            return out
    elif path == "sdpa":
        mask = p.mask(n)

        def run():
            out = torch.nn.functional.scaled_dot_product_attention(*leaves, attn_mask=mask)
            if backward:
                out.backward(grad)
            return out
    else:
        from torch.nn.attention.flex_attention import flex_attention

        from spattn_dsl.runtime.flex import block_mask

        mask = block_mask(p, n, n, heads, device="cpu")
        fn = torch.compile(flex_attention) if path == "flex-compiled" else flex_attention

        def run():
            out = fn(*leaves, block_mask=mask)
            if backward:
                out.backward(grad)
            return out
    return run, leaves, (p, q, k, v)


def measure(path: str, n: int, heads: int, head_dim: int, backward: bool, threads: int,
            pattern: str, calls: int = 1) -> dict:
    import torch

    from spattn_dsl.codegen import reference as R

    run, leaves, (p, q, k, v) = prepare(path, n, heads, head_dim, backward, threads, pattern)
    if path in WARMED:  # layouts, compiles: outside the timing
        run()
        for t in leaves:
            t.grad = None
    timings = []  # (wall, cpu) of each timed call
    for _ in range(calls if path in WARMED else 1):
        for t in leaves:
            t.grad = None
        cpu, wall = time.process_time(), time.perf_counter()
        out = run()
        timings.append((time.perf_counter() - wall, time.process_time() - cpu))
    wall, cpu = sorted(timings)[len(timings) // 2]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    check, _ = R.attention_reference(p, q[:, :, -64:], k, v, dtype=torch.float64)  # last rows
    err = float((out[:, :, -64:].detach().double() - check).abs().max())
    return {"path": path, "n": n, "heads": heads, "head_dim": head_dim, "backward": backward,
            "cpu_s": round(cpu, 3), "wall_s": round(wall, 3),
            "peak_rss_mb": round(peak / 1024),
            "max_abs_diff_last_rows": err, "load": round(os.getloadavg()[0], 1)}


def interleaved(paths: list, n: int, heads: int, head_dim: int, backward: bool, threads: int,
                pattern: str, rounds: int) -> dict:
    """Median and least wall time of each path's calls, the paths called in turn in one
    process (after a first call each), their order rotated every round: a neighbour's load
    on a shared machine then slows every path alike, so their ratios hold where separate
    processes' times drift 10-30% from one minute to the next."""
    import statistics

    import torch

    runs = {path: prepare(path, n, heads, head_dim, backward, threads, pattern)[:2]
            for path in paths}
    walls = {path: [] for path in paths}
    with torch.no_grad() if not backward else contextlib.nullcontext():
        for path in paths:
            runs[path][0]()
        for round_ in range(rounds):
            for path in paths[round_ % len(paths):] + paths[:round_ % len(paths)]:
                run, leaves = runs[path]
                for t in leaves:
                    t.grad = None
                start = time.perf_counter()
                run()
                walls[path].append(time.perf_counter() - start)
    return {path: (statistics.median(w), min(w)) for path, w in walls.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[4096, 8192, 32768])
    parser.add_argument("--paths", nargs="+", default=["tiled", "dense"])
    parser.add_argument("--pattern", default=PATTERN, help="pattern text (default %(default)s)")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--forward-only", action="store_true")
    parser.add_argument("--repeat", type=int, default=1,
                        help="processes per measurement; the best wall time is kept")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--calls", type=int, default=5,
                        help="timed calls after the first (the median is reported)")
    parser.add_argument("--interleave", type=int, default=0, metavar="ROUNDS",
                        help="time the paths in turn in one process, ROUNDS calls each, and "
                             "give their ratios to the last path (no memory column)")
    parser.add_argument("--child", nargs=2, metavar=("PATH", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = measure(args.child[0], int(args.child[1]), args.heads, args.head_dim,
                         not args.forward_only, args.threads, args.pattern, args.calls)
        print(json.dumps(result))
        return
    if args.interleave:
        return print_interleaved(args)
    print(f"pattern `{args.pattern}`, batch 1, {args.heads} heads, head_dim {args.head_dim}, fp32, "
          f"{'forward' if args.forward_only else 'forward + backward'}; median of {args.calls} "
          f"calls, best of {args.repeat} processes")
    print()
    print("| path | n | CPU s | wall s | peak RSS MB | max abs diff (last rows) | load |")
    print("|---|---|---|---|---|---|---|")
    for n in args.n:
        for path in args.paths:
            cmd = [sys.executable, __file__, "--child", path, str(n), "--heads", str(args.heads),
                   "--head-dim", str(args.head_dim), "--threads", str(args.threads),
                   "--pattern", args.pattern, "--calls", str(args.calls)]
            cmd += ["--forward-only"] if args.forward_only else []
            runs = []
            for _ in range(args.repeat):
                done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
                if done.returncode:
                    print(f"| {path} | {n} | failed: "
                          f"{done.stderr.strip().splitlines()[-1][:100]} |", flush=True)
                    break
                runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            if runs:
                r = min(runs, key=lambda r: r["wall_s"])
                print(f"| {path} | {n} | {r['cpu_s']} | {r['wall_s']} | {r['peak_rss_mb']} | "
                      f"{r['max_abs_diff_last_rows']:.1e} | {r['load']} |", flush=True)


def print_interleaved(args) -> None:
    baseline = args.paths[-1]
    print(f"pattern `{args.pattern}`, batch 1, {args.heads} heads, head_dim {args.head_dim}, fp32, "
          f"{'forward' if args.forward_only else 'forward + backward'}, "
          f"{args.threads or 'default'} threads; the paths in turn in one process, "
          f"{args.interleave} calls each after a first")
    print()
    print(f"| n | path | median wall s | least wall s | median / {baseline} |")
    print("|---|---|---|---|---|")
    for n in args.n:
        times = interleaved(args.paths, n, args.heads, args.head_dim, not args.forward_only,
                            args.threads, args.pattern, args.interleave)
        for path, (median, least) in times.items():
            print(f"| {n} | {path} | {median:.3f} | {least:.3f} | "
                  f"{median / times[baseline][0]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
