"""Time analyze() at real lengths on the CPU (the scale targets of issue 3).

    python benchmarks/bench_analysis.py [--repeat 3]

Prints a Markdown table: case, n, layers analysed, method, diameter, best wall time of
``--repeat`` runs, and the target where the issue sets one.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy
import torch

from spattn_dsl import load, loads
from spattn_dsl.analysis import analyze

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def cases():
    mistral = load(EXAMPLES / "mistral.spattn")
    yield "Mistral-7B model (32 x causal & window(4096))", mistral.model("mistral_7b"), 131072, 2.0
    swa = loads("pattern swa(w = 4096) { causal & window(w) }").pattern("swa")
    yield "sliding window pattern, causal & window(4096)", swa, 1 << 20, 5.0
    yield "Longformer pattern (band 256 + global)", \
        load(EXAMPLES / "longformer.spattn").pattern("longformer"), 1 << 20, None
    yield "StreamingLLM model (32 x sinks + window)", \
        load(EXAMPLES / "streaming_llm.spattn").model("streaming_llama"), 131072, None
    yield "Gemma-3-like model (5 local : 1 global) x 4", \
        load(EXAMPLES / "gemma3.spattn").model("gemma3_like"), 131072, None
    yield "BigBird model (12 layers, 64-token blocks)", \
        load(EXAMPLES / "bigbird.spattn").model("bigbird_base"), 131072, None


def best_time(subject, n, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        report = analyze(subject, n)
        times.append(time.perf_counter() - start)
    return min(times), report


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, {platform.processor()}")
    print(f"python {platform.python_version()}, numpy {numpy.__version__}, "
          f"torch {torch.__version__}\n")
    print("| case | n | layers | method | diameter | best of "
          f"{args.repeat} (s) | target (s) |")
    print("|---|---|---|---|---|---|---|")
    for name, subject, n, target in cases():
        seconds, report = best_time(subject, n, args.repeat)
        verdict = "-" if target is None else f"< {target:g} {'met' if seconds < target else 'MISSED'}"
        print(f"| {name} | {n} | {report.depth} | {report.method} | {report.diameter} | "
              f"{seconds:.2f} | {verdict} |")


if __name__ == "__main__":
    main()
