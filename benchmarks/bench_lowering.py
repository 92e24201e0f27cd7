"""GPU: the plan of terms against the single token-grid layout, forward, same tiles, to
calibrate the plan pass's cost model (layout/plan.py).

    python benchmarks/bench_lowering.py [--seq-lens 8192 32768] [--only fixed strided]

For each example pattern with structure the plan pass can split, times ``compile(p,
lowering=mode)`` for mode grid / terms / auto at 64 x 64 tiles (4 warps, 3 stages), bf16,
batch 2, 16 heads, head_dim 128, and prints which the cost model picked.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import spattn_dsl
from spattn_dsl.runtime import compile

PATTERNS = ["longformer:longformer", "longformer:longformer_dilated", "streaming_llm:streaming",
            "sparse_transformer:strided", "sparse_transformer:fixed"]
B, H, D = 2, 16, 128
TILES = dict(block_m=64, block_n=64, num_warps=4, num_stages=3)


def load(label: str):
    file, name = label.split(":")
    return spattn_dsl.load(Path(__file__).parents[1] / "examples" / f"{file}.spattn").pattern(name)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[8192, 32768])
    parser.add_argument("--only", nargs="+", default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_lowering needs a CUDA GPU", file=sys.stderr)
        return 2
    import triton.testing

    print("| N | pattern | grid ms | terms ms | auto ms | auto's plan | terms / grid |")
    print("|---|---|---|---|---|---|---|")
    for n in args.seq_lens:
        torch.manual_seed(n)
        q, k, v = (torch.randn(B, H, n, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        for label in PATTERNS:
            if args.only and not any(part in label for part in args.only):
                continue
            pattern = load(label)
            ms, outs, kinds = {}, {}, ""
            for mode in ("grid", "terms", "auto"):
                attn = compile(pattern, lowering=mode, **TILES)
                outs[mode] = attn(q, k, v)
                ms[mode] = triton.testing.do_bench(lambda: attn(q, k, v), warmup=50, rep=200,
                                                   return_mode="median")
                if mode == "auto":
                    plan = next(iter(attn._plans.values()))
                    kinds = " / ".join("+".join(t.kind for t in case) for case in plan.cases)
            err = max(float((outs[m].float() - outs["grid"].float()).norm()
                            / outs["grid"].float().norm()) for m in outs)
            print(f"| {n} | {label} | {ms['grid']:.3f} | {ms['terms']:.3f} | {ms['auto']:.3f} "
                  f"| {kinds} | {ms['terms'] / ms['grid']:.2f} (max rel diff {err:.1e}) |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
