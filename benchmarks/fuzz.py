"""Long fuzz run of the language (the suite's tests/test_fuzz.py runs 2,000 of these inputs).

    python benchmarks/fuzz.py --inputs 20000 --seed 0 [--limit 5] [--memory-gb 3] [--show 20]
                              [--analyze-every K] [--no-oracle]

Each input goes through loads, binding, Pattern.mask (a dynamic pattern's through the
reference selection of random inputs), model expansion and analyze (n <= 64), and every exact
report of a static target is checked against brute force (``tests/analysis/oracle.py``: causal,
diameter, reach to first, coverage depth, density; stage "oracle"), under a per-input time
limit (a hang) and a memory guard (an address-space limit, so a runaway allocation is a
MemoryError, not a dead machine). Prints counts per outcome and stage, and the first inputs of
every kind that is not "ok" or a located PatternError.
"""
from __future__ import annotations

import argparse
import collections
import random
import resource
import signal
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.test_fuzz import inputs, run_stages  # noqa: E402


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


def _guard_memory(gigabytes: float):
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[0])
    now = pages * resource.getpagesize()
    limit = now + int(gigabytes * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=float, default=5.0, help="seconds per input")
    parser.add_argument("--memory-gb", type=float, default=3.0)
    parser.add_argument("--show", type=int, default=5, help="examples printed per failure kind")
    parser.add_argument("--analyze-every", type=int, default=1,
                        help="run analyze on every K-th input (0: never)")
    parser.add_argument("--no-oracle", action="store_true",
                        help="do not check exact reports against brute force")
    args = parser.parse_args(argv)
    _guard_memory(args.memory_gb)
    import torch
    torch.set_num_threads(1)  # small tensors only: threads just contend with other jobs
    signal.signal(signal.SIGALRM, _alarm)
    rng = random.Random(args.seed)
    counts, examples, slowest = collections.Counter(), collections.defaultdict(list), []
    start, done = time.perf_counter(), 0
    try:
        done = _run(args, rng, counts, examples, slowest)
    except KeyboardInterrupt:  # Ctrl-C (SIGINT): report the inputs done so far
        done = sum(counts.values())
    total = time.perf_counter() - start
    stopped = "" if done == args.inputs else f" (interrupted after {done} of them)"
    print(f"{args.inputs} inputs{stopped}, seed {args.seed}, {total:.0f} s, "
          f"limit {args.limit} s/input, memory guard +{args.memory_gb} GiB, "
          f"analyze on every {args.analyze_every} input(s), "
          f"{'no oracle' if args.no_oracle else 'exact reports checked against brute force'}")
    print("| outcome | stage | inputs |\n|---|---|---|")
    for (kind, stage), count in sorted(counts.items()):
        label = {"ok": "ok (every stage ran)", "error": "located PatternError"}.get(kind, kind)
        print(f"| {label} | {stage or '-'} | {count} |")
    print("slowest inputs:", [(round(t, 2), s) for t, s, _ in slowest])
    for (kind, stage), items in examples.items():
        print(f"\n== {kind} in {stage}: {len(items)} inputs")
        for text, trace in items[:args.show]:
            print("---- input:", repr(text[:400]))
            print(trace)
    bad = sum(c for (kind, _), c in counts.items() if kind not in ("ok", "error"))
    return 1 if bad else 0


def _run(args, rng, counts, examples, slowest) -> int:
    for index, text in enumerate(inputs(args.seed, args.inputs)):
        stage = [""]
        analyse = args.analyze_every > 0 and index % args.analyze_every == 0
        began = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, args.limit)
        try:
            kind = run_stages(text, rng, analyse=analyse, stage=stage, oracle=not args.no_oracle)
        except Hang:
            kind = "hang"
        except MemoryError:
            kind = "memory"
        except BaseException as error:  # noqa: BLE001  (counting every escape is the point)
            if isinstance(error, KeyboardInterrupt):
                raise
            kind = f"exception {type(error).__name__}"
            examples[(kind, stage[0])].append((text, traceback.format_exc(limit=-3)))
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        elapsed = time.perf_counter() - began
        slowest[:] = sorted(slowest + [(elapsed, stage[0], text[:80])], reverse=True)[:5]
        counts[(kind, stage[0] if kind not in ("ok", "error") else "")] += 1
        if kind in ("hang", "memory"):
            examples[(kind, stage[0])].append((text, ""))
    return args.inputs


if __name__ == "__main__":
    sys.exit(main())
