"""Peak memory and CPU time of the CPU attention paths (no GPU, no Triton interpreter).

Each measurement runs in its own subprocess, so that its peak resident set size
(``ru_maxrss``) is its own:

- ``tiled``: the runtime's CPU path, ``codegen.reference.attention_tiled`` (query tile by query
  tile over the block layout), forward and closed-form backward, fp32;
- ``dense``: the previous CPU path, ``attention_reference`` (an ``n x n`` score matrix), fp32;
- ``flex``: ``torch.nn.attention.flex_attention`` on the CPU with the pattern's BlockMask
  (``runtime.flex``), eager, and ``flex-compiled`` under ``torch.compile``.

Usage: ``python benchmarks/bench_cpu_reference.py [--n 4096 8192 32768] [--paths tiled dense]
[--threads 1] [--forward-only]``
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

PATTERN = "pattern p { causal & window(1024) }"


def measure(path: str, n: int, heads: int, head_dim: int, backward: bool, threads: int) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)

    import spattn_dsl
    from spattn_dsl.codegen.reference import attention_reference, \
        attention_reference_backward, attention_tiled, attention_tiled_backward

    p = spattn_dsl.loads(PATTERN).pattern("p")
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, n, head_dim, generator=gen) for _ in range(3))
    grad = torch.randn(1, heads, n, head_dim, generator=gen)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cpu, wall = time.process_time(), time.perf_counter()
    if path == "tiled":
        out, _ = attention_tiled(p, q, k, v)
        if backward:
            attention_tiled_backward(p, grad, q, k, v)
    elif path == "dense":
        out, _ = attention_reference(p, q, k, v, dtype=torch.float32)
        if backward:
            attention_reference_backward(p, grad, q, k, v)
    else:
        from torch.nn.attention.flex_attention import flex_attention

        from spattn_dsl.runtime.flex import block_mask

        mask = block_mask(p, n, n, heads, device="cpu")
        fn = torch.compile(flex_attention) if path == "flex-compiled" else flex_attention
        leaves = [t.clone().requires_grad_(backward) for t in (q, k, v)]
        if path == "flex-compiled":  # compile outside the timing
            fn(*leaves, block_mask=mask)
            cpu, wall = time.process_time(), time.perf_counter()
        out = fn(*leaves, block_mask=mask)
        if backward:
            out.backward(grad)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    check, _ = attention_tiled(p, q[:, :, -256:], k, v)  # last rows, against the tiled path
    err = float((out[:, :, -256:].detach() - check).abs().max())
    return {"path": path, "n": n, "heads": heads, "head_dim": head_dim, "backward": backward,
            "cpu_s": round(cpu, 2), "wall_s": round(wall, 2),
            "peak_rss_mb": round(peak / 1024), "rss_before_mb": round(before / 1024),
            "max_abs_diff_last_rows": err}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[4096, 8192, 32768])
    parser.add_argument("--paths", nargs="+", default=["tiled", "dense"])
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--forward-only", action="store_true")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--child", nargs=2, metavar=("PATH", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = measure(args.child[0], int(args.child[1]), args.heads, args.head_dim,
                         not args.forward_only, args.threads)
        print(json.dumps(result))
        return
    print("| path | n | heads | backward | CPU s | wall s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for n in args.n:
        for path in args.paths:
            cmd = [sys.executable, __file__, "--child", path, str(n), "--heads", str(args.heads),
                   "--head-dim", str(args.head_dim), "--threads", str(args.threads)]
            cmd += ["--forward-only"] if args.forward_only else []
            done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
            if done.returncode:
                print(f"| {path} | {n} | failed: {done.stderr.strip().splitlines()[-1][:100]} |")
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"| {path} | {n} | {r['heads']} | {r['backward']} | {r['cpu_s']} | "
                  f"{r['wall_s']} | {r['peak_rss_mb']} |  diff {r['max_abs_diff_last_rows']:.1e}",
                  flush=True)


if __name__ == "__main__":
    main()
