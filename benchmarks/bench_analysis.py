"""Time analyze() at real lengths on the CPU (the scale targets of issues 3 and 10).

    python benchmarks/bench_analysis.py [--repeat 3] [--only SUBSTRING]

Each case runs in its own process (so its peak resident memory is its own): best wall time
of ``--repeat`` runs of ``analyze(subject, n)``, peak RSS of that process, the method, whether
the figures are exact, and the diameter. Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
M = 1 << 20
K128 = 131072


def cases():
    """(label, file or inline text, 'pattern'/'model', name, params, n, target seconds)."""
    out = []
    patterns = [("bigbird.spattn", "bigbird"), ("gemma3.spattn", "gemma_local"),
                ("longformer.spattn", "longformer"), ("longformer.spattn", "longformer_dilated"),
                ("mistral.spattn", "mistral_swa"), ("prefix_lm.spattn", "prefix_lm"),
                ("sparse_transformer.spattn", "strided"), ("sparse_transformer.spattn", "fixed"),
                ("streaming_llm.spattn", "streaming")]
    models = [("bigbird.spattn", "bigbird_base"), ("gemma3.spattn", "gemma3_like"),
              ("longformer.spattn", "longformer_base"), ("mistral.spattn", "mistral_7b"),
              ("prefix_lm.spattn", "prefix_lm_12"),
              ("sparse_transformer.spattn", "strided_transformer"),
              ("streaming_llm.spattn", "streaming_llama")]
    for file, name in patterns:
        out.append((f"pattern {name}", file, "pattern", name, K128, 5.0))
    for file, name in models:
        out.append((f"model {name}", file, "model", name, K128, 5.0))
    for file, name in [("sparse_transformer.spattn", "strided"),
                       ("sparse_transformer.spattn", "fixed"),
                       ("longformer.spattn", "longformer_dilated"), ("bigbird.spattn", "bigbird"),
                       ("bigbird.spattn", "bigbird_base" + ":model")]:
        kind = "model" if name.endswith(":model") else "pattern"
        name = name.split(":")[0]
        out.append((f"{kind} {name}", file, kind, name, M, 30.0))
    out.append(("sliding window causal & window(4096)",
                "pattern swa(w = 4096) { causal & window(w) }", "pattern", "swa", M, 5.0))
    out.append(("causal & where(q - k < 64)", "pattern p { causal & where(q - k < 64) }",
                "pattern", "p", M, None))
    out.append(("power-of-two offsets (16) with self",
                "pattern p { causal & (where(q == k) | " + " | ".join(
                    f"where(q - k == {1 << i})" for i in range(16)) + ") }",
                "pattern", "p", 65536, None))
    return out


def run_one(source, kind, name, n, repeat):
    """In this process: best time and the report's headline figures, as JSON."""
    sys.path.insert(0, str(ROOT))
    from spattn_dsl import load, loads
    from spattn_dsl.analysis import analyze
    program = load(EXAMPLES / source) if source.endswith(".spattn") else loads(source)
    subject = program.model(name) if kind == "model" else program.pattern(name)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        report = analyze(subject, n)
        times.append(time.perf_counter() - start)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": min(times), "method": report.method, "exact": report.exact,
            "diameter": str(report.diameter), "depth": report.depth, "peak_mib": peak_kib / 1024}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", default="")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        source, kind, name, n = args.child
        print(json.dumps(run_one(source, kind, name, int(n), args.repeat)))
        return
    import numpy
    import torch
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, {platform.processor()}")
    print(f"python {platform.python_version()}, numpy {numpy.__version__}, "
          f"torch {torch.__version__}\n")
    print(f"| case | n | layers | method | exact | diameter | best of {args.repeat} (s) "
          "| peak RSS (MiB) | target (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, source, kind, name, n, target in cases():
        if args.only not in label:
            continue
        done = subprocess.run([sys.executable, __file__, "--repeat", str(args.repeat),
                               "--child", source, kind, name, str(n)],
                              capture_output=True, text=True)
        if done.returncode:
            print(f"| {label} | {n} | - | failed: {done.stderr.strip().splitlines()[-1]} "
                  "| | | | | |")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        verdict = "-" if target is None else \
            f"< {target:g} {'met' if r['seconds'] < target else 'MISSED'}"
        print(f"| {label} | {n} | {r['depth']} | {r['method']} | {r['exact']} | "
              f"{r['diameter']} | {r['seconds']:.2f} | {r['peak_mib']:.0f} | {verdict} |",
              flush=True)


if __name__ == "__main__":
    main()
