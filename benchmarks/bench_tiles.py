"""GPU: time every tile configuration of a wide space for a few patterns, to choose the
autotuning spaces of codegen/space.py (forward, dQ, dK/dV), and measure where a short call's
time goes (the whole op against its kernel launches alone).

    python benchmarks/bench_tiles.py [--seq-len 8192] [--only causal bigbird] [--no-backward]
                                     [--no-forward] [--wide-backward] [--head-major]
                                     [--out tiles.md]

bf16, batch 2, 16 heads, head_dim 128, random normal inputs; ``triton.testing.do_bench``
medians (ms). Configs that do not compile or launch (shared memory, registers) are listed as
failed. Each output is checked against the space's first config. ``--out`` also writes every
line to a file (a device call returns only the end of its output). ``--head-major``: the
fastest configs of each space, each in both program orders (slot-major and head-major).
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
from pathlib import Path

import torch

import spattn_dsl
from spattn_dsl.codegen.render import TileConfig
from spattn_dsl.runtime import compile
from spattn_dsl.runtime.launch import backward_delta, backward_dkdv, backward_dq, forward

B, H, D = 2, 16, 128
PATTERNS = [
    ("dense causal", "pattern p { causal }"),
    ("causal & window(1024)", "pattern p { causal & window(1024) }"),
    ("longformer:longformer", None),
    ("bigbird:bigbird", None),
    ("longformer:longformer_dilated", None),
    ("mistral:mistral_swa", None),
    ("sparse_transformer:strided", None),
]
BACKWARD = ("mistral:mistral_swa", "causal & window(1024)", "longformer:longformer",
            "bigbird:bigbird", "longformer:longformer_dilated", "sparse_transformer:strided")


def with_descriptors(*configs):
    """Each config, then the same tiles read by tensor descriptors."""
    return [TileConfig(*c, descriptors=d) for c in configs for d in (False, True)]


# The fastest configs of the first sweep (RESULTS.md, second GPU session), each plain and
# with tensor-descriptor loads.
FORWARD_SPACE = with_descriptors(
    (128, 128, 8, 3), (128, 64, 8, 3), (64, 64, 4, 3), (64, 64, 4, 4), (128, 128, 8, 2),
    (128, 128, 8, 3, True), (64, 64, 4, 3, True))
DQ_SPACE = with_descriptors((64, 64, 4, 2), (64, 64, 4, 3), (128, 64, 8, 3))
DKDV_SPACE = with_descriptors((32, 64, 4, 3), (64, 64, 4, 2), (64, 128, 8, 2))
# --wide-backward: shapes the spaces above lack (tall dQ tiles with 4 warps, wide dK/dV key
# tiles with 4 warps, deeper pipelines), plain loads; dense causal joins the backward sweep.
DQ_WIDE = [TileConfig(*c) for c in ((128, 32, 4, 3), (128, 32, 4, 4), (128, 64, 4, 3),
                                    (64, 64, 4, 4), (64, 32, 4, 4))]
DKDV_WIDE = [TileConfig(*c) for c in ((32, 128, 4, 3), (32, 128, 4, 4), (64, 128, 4, 3),
                                      (32, 64, 4, 5), (64, 64, 8, 3))]
# --head-major: the fastest shapes of each space, plain and descriptors, in both orders.
ORDER_SPACES = {kind: [TileConfig(*c, descriptors=d, head_major=h) for c in shapes
                       for d in (False, True) for h in (False, True)]
                for kind, shapes in (("fwd", ((128, 128, 8, 3), (128, 64, 8, 3), (64, 64, 4, 3))),
                                     ("dq", ((64, 64, 4, 2), (128, 64, 8, 3))),
                                     ("dkdv", ((64, 64, 4, 2), (32, 64, 4, 3))))}


OUT: Path | None = None  # --out: every line is appended here as it is printed


def say(line: str) -> None:
    print(line, flush=True)
    if OUT is not None:
        with OUT.open("a") as out:
            out.write(line + "\n")


def load(label: str, text: str | None):
    if text is not None:
        return spattn_dsl.loads(text).pattern("p")
    file, name = label.split(":")
    return spattn_dsl.load(Path(__file__).parents[1] / "examples" / f"{file}.spattn").pattern(name)


def bench(fn) -> float:
    import triton.testing
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def sweep(attn, configs, launch, label, check=None):
    """{config: ms} over ``configs`` (None for those that fail), printed as table rows;
    ``check``: compare each result with the first config's, or with this tensor."""
    n_q = n_k = launch.n
    times = {}
    reference = check.clone() if isinstance(check, torch.Tensor) else None
    for config in configs:
        plan = attn._make_plan(n_q, n_k, config, "cuda")
        if config.merged and not plan.merged:
            continue
        try:
            result = launch(plan)
            torch.cuda.synchronize()
            ms = bench(lambda: launch(plan))
        except Exception as error:  # shared memory, registers
            say(f"| {label} | {config} | failed: {type(error).__name__} |")
            continue
        diff = ""
        if check is not None:
            # the backward launches write one buffer: keep a copy of the first config's
            reference = result.clone() if reference is None else reference
            diff = f"{float((result.float() - reference.float()).norm() / reference.float().norm()):.1e}"
        times[config] = ms
        say(f"| {label} | {config} | {ms:.3f} | {diff} |")
    best = min(times, key=times.get)
    say(f"| {label} | best: {best} | {times[best]:.3f} | |")
    return times


def overhead(n: int) -> None:
    """The whole op against the kernels alone for a short call (strided at 8K), and a
    profile of the Python side."""
    pattern = load("sparse_transformer:strided", None)
    q, k, v = (torch.randn(B, H, n, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    attn = compile(pattern)
    attn(q, k, v)
    plan = next(iter(attn._plans.values()))
    scale = D ** -0.5
    op_ms = bench(lambda: attn(q, k, v))
    kernel_ms = bench(lambda: forward(plan, q, k, v, scale))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        forward(plan, q, k, v, scale)
    graph_ms = bench(graph.replay)
    say(f"strided {n}: op {op_ms:.3f} ms, launches alone {kernel_ms:.3f} ms, as a CUDA graph "
          f"{graph_ms:.3f} ms; plan {[[t.kind for t in c] for c in plan.cases]}, {plan.config}")
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(200):
        attn(q, k, v)
    torch.cuda.synchronize()
    profile.disable()
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(14)
    say(text.getvalue()[-3500:])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--only", nargs="+", default=None)
    parser.add_argument("--no-backward", action="store_true")
    parser.add_argument("--no-forward", action="store_true")
    parser.add_argument("--out", default=None, help="also write every line to this file")
    parser.add_argument("--wide-backward", action="store_true",
                        help="backward: more tile shapes, and dense causal too")
    parser.add_argument("--head-major", action="store_true",
                        help="the fastest shapes in both program orders")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_tiles needs a CUDA GPU", file=sys.stderr)
        return 2
    global OUT
    OUT = Path(args.out) if args.out else None
    n = args.seq_len
    overhead(n)
    torch.manual_seed(n)
    q, k, v = (torch.randn(B, H, n, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    grad_out = torch.randn_like(q)
    scale = D ** -0.5
    say("| pattern / kernel | config | ms | rel diff to first |\n|---|---|---|---|")
    for label, text in PATTERNS:
        if args.only and not any(part in label for part in args.only):
            continue
        attn = compile(load(label, text))

        def fwd(plan):
            return forward(plan, q, k, v, scale)[0]
        fwd.n = n
        if not args.no_forward:
            space = ORDER_SPACES["fwd"] if args.head_major else FORWARD_SPACE
            sweep(attn, space, fwd, f"{label} fwd", check=True)
        backward = BACKWARD + (("dense causal",) if args.wide_backward or args.head_major
                               else ())
        if args.no_backward or label not in backward:
            continue
        base = attn._make_plan(n, n, FORWARD_SPACE[0], "cuda")
        out, lse = forward(base, q, k, v, scale)
        delta = backward_delta(base, grad_out, out)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

        def dq_launch(plan):
            return backward_dq(plan, grad_out, q, k, v, lse, delta, scale, None, dq)
        dq_launch.n = n

        def dkdv_launch(plan):
            return backward_dkdv(plan, grad_out, q, k, v, lse, delta, scale, None, dk, dv)[0]
        dkdv_launch.n = n
        wide = args.wide_backward
        dq_space = DQ_SPACE + (DQ_WIDE if wide else [])
        dkdv_space = DKDV_SPACE + (DKDV_WIDE if wide else [])
        if args.head_major:
            dq_space, dkdv_space = ORDER_SPACES["dq"], ORDER_SPACES["dkdv"]
        sweep(attn, dq_space, dq_launch, f"{label} dq", check=True)
        sweep(attn, dkdv_space, dkdv_launch, f"{label} dkdv", check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
