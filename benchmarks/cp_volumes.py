"""Context parallel volumes, computed from the plan alone (no processes, no timing).

For every example pattern at n tokens on a number of ranks: the K and V bytes each rank
receives in sequence mode (``cp.plan``), beside what all-gathering K and V would move, and
the allowed-pair balance (largest rank / mean). Prints a Markdown table:

    python benchmarks/cp_volumes.py [--seq-len 131072] [--world 8] [--kv-heads 8] [--head-dim 128]
"""
import argparse
import glob
import os
import time

import torch

import spattn_dsl as sp
from spattn_dsl.parallel.plan import exchange_plan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=131072)
    parser.add_argument("--world", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    args = parser.parse_args(argv)
    mib = 2 ** 20
    print(f"n = {args.seq_len}, {args.world} ranks, K and V of {args.kv_heads} KV heads x "
          f"{args.head_dim} bf16, batch 1; MiB received per rank in the forward "
          "(the backward returns dK/dV along the same lists)\n")
    print("| pattern | plan s | received MiB, min / mean / max | all-gather MiB, mean | "
          "mean / all-gather | pair balance (max / mean) |")
    print("|---|---|---|---|---|---|")
    for path in sorted(glob.glob(os.path.join(ROOT, "examples", "*.spattn"))):
        program = sp.load(path)
        for name in program.patterns:
            start = time.perf_counter()
            plan = exchange_plan(program.pattern(name), args.seq_len, args.world)
            took = time.perf_counter() - start
            got = plan.bytes(args.kv_heads, args.head_dim, torch.bfloat16)["received"].double() / mib
            gather = plan.allgather_bytes(args.kv_heads, args.head_dim, torch.bfloat16).double() / mib
            balance = plan.pairs.double().max() / plan.pairs.double().mean()
            print(f"| {name} | {took:.2f} | {got.min():.1f} / {got.mean():.1f} / {got.max():.1f} "
                  f"| {gather.mean():.1f} | {float(got.mean() / gather.mean()):.1%} | "
                  f"{float(balance):.4f} |")


if __name__ == "__main__":
    main()
