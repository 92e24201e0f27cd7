"""A/B timing of two checkouts' kernels on one GPU: forward and forward + backward of a few
patterns through the public op, each checkout in its own process, then one table of ratios.

    python benchmarks/ab_kernels.py run --label new --out new.json [--only causal]  # per checkout
    python benchmarks/ab_kernels.py table old.json new.json            # ratios, new / old

bf16, batch 2, 16 heads, head_dim 128, random normal inputs, ``do_bench`` medians (ms) after
the autotuner's pick (or ``--tiles`` for every kernel); the output is checked against float32 SDPA with the pattern's mask on
batch 0's first 1024 rows.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

PATTERNS = {
    "dense causal": "pattern p { causal }",
    "causal & window(1024)": "pattern p { causal & window(1024) }",
    "mistral window(4096)": "pattern p { causal & window(4096) }",
    "longformer": "pattern p { band(256, 256) | global(first = 1) }",
    "strided": "pattern p { heads { causal & window(128); causal & stride(128) } }",
    "bigbird": "pattern p { blocks(64) { band(1, 1) | global(first = 2) | random(3, seed = 0) } }",
}
B, H, D = 2, 16, 128


def run(label: str, out: str, n: int, only=None, hints=None) -> None:
    import triton.testing

    import spattn_dsl

    rows = []
    for name, text in PATTERNS.items():
        if only and not any(part in name for part in only):
            continue
        pattern = spattn_dsl.loads(text).pattern("p")
        attn = spattn_dsl.compile(pattern, **(hints or {}))
        q, k, v = (torch.randn(B, H, n, D, device="cuda", dtype=torch.bfloat16,
                               requires_grad=True) for _ in range(3))
        grad = torch.randn_like(q)
        out_ = attn(q, k, v)
        error = check(pattern, q, k, v, out_)

        def step():
            attn(q, k, v).backward(grad)

        fwd = triton.testing.do_bench(lambda: attn(q, k, v), warmup=25, rep=200,
                                      return_mode="median")
        both = triton.testing.do_bench(step, warmup=25, rep=200, return_mode="median")
        rows.append(dict(label=label, pattern=name, n=n, fwd_ms=fwd, fwd_bwd_ms=both,
                         rel_err=error))
        print(f"{label:6s} {name:24s} fwd {fwd:.3f} ms  fwd+bwd {both:.3f} ms  err {error:.1e}",
              flush=True)
    with open(out, "w") as file:
        json.dump(rows, file, indent=1)


def check(pattern, q, k, v, out, rows: int = 1024) -> float:
    n = q.shape[2]
    worst = 0.0
    for head in range(H):
        mask = pattern.mask(n, n, head=head)[:rows].cuda()
        ref = torch.nn.functional.scaled_dot_product_attention(
            q[0, head, :rows].float(), k[0, head].float(), v[0, head].float(), attn_mask=mask)
        got = out[0, head, :rows].float()
        worst = max(worst, float((got - ref).norm() / ref.norm()))
    return worst


def table(old: str, new: str) -> None:
    before = {row["pattern"]: row for row in json.load(open(old))}
    after = {row["pattern"]: row for row in json.load(open(new))}
    print("| pattern | fwd old | fwd new | new/old | fwd+bwd old | fwd+bwd new | new/old |")
    print("|---|---|---|---|---|---|---|")
    for name, row in after.items():
        was = before.get(name)
        if was is None:
            continue
        print(f"| {name} | {was['fwd_ms']:.3f} | {row['fwd_ms']:.3f} | "
              f"{row['fwd_ms'] / was['fwd_ms']:.3f} | {was['fwd_bwd_ms']:.3f} | "
              f"{row['fwd_bwd_ms']:.3f} | {row['fwd_bwd_ms'] / was['fwd_bwd_ms']:.3f} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("run")
    one.add_argument("--label", required=True)
    one.add_argument("--out", required=True)
    one.add_argument("--seq-len", type=int, default=8192)
    one.add_argument("--only", nargs="+", default=None, help="patterns whose name has one of these")
    one.add_argument("--tiles", default=None, help="BLOCK_M,BLOCK_N,warps,stages: fixed tiles "
                     "(every kernel), no autotuning")
    both = sub.add_parser("table")
    both.add_argument("old")
    both.add_argument("new")
    args = parser.parse_args(argv)
    if args.command == "table":
        table(args.old, args.new)
        return 0
    if not torch.cuda.is_available():
        print("ab_kernels needs a CUDA GPU", file=sys.stderr)
        return 2
    hints = None
    if args.tiles:
        block_m, block_n, warps, stages = (int(x) for x in args.tiles.split(","))
        hints = dict(block_m=block_m, block_n=block_n, num_warps=warps, num_stages=stages)
    run(args.label, args.out, args.seq_len, args.only, hints)
    return 0


if __name__ == "__main__":
    sys.exit(main())
