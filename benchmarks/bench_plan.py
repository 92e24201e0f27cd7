"""CPU benchmark of the plan pass (``layout.plan``): time to plan every example pattern at a
few lengths, against the number of tiles of its grid, and the waste of the chosen plan.

    python benchmarks/bench_plan.py [--lengths 2048 8192 32768] [--head-dim 128]

Planning is timed at the tile size the cost model picks (one size, every candidate plan of
it: the same work ``compile`` does per tile config). Waste = pairs computed / pairs allowed;
allowed pairs are counted per tile (``layout.build.pair_count``), never with an n x n mask.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import spattn_dsl
from spattn_dsl.layout.build import pair_count
from spattn_dsl.layout.plan import plan_pattern
from spattn_dsl.runtime.artifacts import default_config

EXAMPLES = [("sparse_transformer", "strided"), ("sparse_transformer", "fixed"),
            ("longformer", "longformer_dilated"), ("longformer", "longformer"),
            ("streaming_llm", "streaming"), ("gemma3", "gemma_local"), ("bigbird", "bigbird"),
            ("mistral", "mistral_swa"), ("prefix_lm", "prefix_lm")]
ROOT = Path(__file__).resolve().parents[1] / "examples"


def bench(pattern, n: int, head_dim: int, rounds: int = 3) -> dict:
    config = default_config(pattern, head_dim, n)
    concrete = pattern.at(n)
    tiles = [(config.block_m, config.block_n)]
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        plans = plan_pattern(concrete, n, n, tiles)
        times.append(time.perf_counter() - start)
    grid_tiles = -(-n // config.block_m) * -(-n // config.block_n) * len(plans)
    allowed = sum(pair_count(concrete, n, n, c) for c in range(len(plans)))
    computed = sum(p.pairs_computed for p in plans)
    return {"ms": statistics.median(times) * 1e3, "tiles": grid_tiles,
            "tile": f"{config.block_m}x{config.block_n}", "waste": computed / allowed,
            "terms": " + ".join("/".join(t.kind for t in p.terms) for p in plans)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192, 32768])
    parser.add_argument("--head-dim", type=int, default=128)
    args = parser.parse_args(argv)
    print("| pattern | n | tiles | plan | grid tiles | plan ms | us per tile | waste |")
    print("|---|---|---|---|---|---|---|---|")
    for file, name in EXAMPLES:
        pattern = spattn_dsl.load(ROOT / f"{file}.spattn").pattern(name)
        for n in args.lengths:
            r = bench(pattern, n, args.head_dim)
            print(f"| {name} | {n} | {r['tile']} | {r['terms']} | {r['tiles']} | {r['ms']:.1f} | "
                  f"{r['ms'] * 1e3 / r['tiles']:.2f} | {r['waste']:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
