"""Time the reference mask of every bundled example pattern at 16384 x 16384 (target: < 2 s each).

Run: python benchmarks/bench_mask.py [--seq-len N]
"""
import argparse
import platform
import time
from pathlib import Path

import torch

import spattn_dsl


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seq-len", type=int, default=16384)
    args = parser.parse_args()
    n = args.seq_len
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"| example | pattern | n | seconds | density |\n|---|---|---|---|---|")
    for path in sorted((Path(__file__).parent.parent / "examples").glob("*.spattn")):
        program = spattn_dsl.load(path)
        for name in program.patterns:
            pattern = program.pattern(name)
            start = time.perf_counter()
            mask = pattern.mask(n)
            seconds = time.perf_counter() - start
            density = mask.sum().item() / n / n
            print(f"| {path.name} | {name} | {n} | {seconds:.2f} | {density:.4f} |")
            del mask


if __name__ == "__main__":
    main()
