"""Forward-pass benchmark on a GPU: spattn vs FlexAttention (compiled, with spattn's exported
block mask) vs dense SDPA, bf16, plus correctness against float64 and against Flex.

    python benchmarks/bench_forward.py [--seq-lens 8192 32768] [--json out.json]
    python benchmarks/bench_forward.py --backward [--seq-lens 8192]   # every example pattern
    python benchmarks/bench_forward.py --examples --results results.json  # forward, every example

``--results`` writes (or extends) a JSON list of rows ``{"pattern", "n", "pass", "spattn_ms",
"flex_ms", "sdpa_ms", "pairs", "gpu", "torch", "triton"}``, the format of benchmarks/results/.

Effective TFLOP/s counts only allowed pairs: 4 * B * H * D * pairs / time. With
``--backward`` it times forward + backward (gradients of q, k, v) of every pattern in
``examples/*.spattn`` at its default parameters, against Flex and SDPA doing the same.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import spattn_dsl
from spattn_dsl.ir.evaluate import select_head
from spattn_dsl.layout import pair_count
from spattn_dsl.runtime import compile
from spattn_dsl.runtime.flex import block_mask
from spattn_dsl.runtime.launch import forward as launch_forward
from spattn_dsl.semantics.reference import evaluate

PATTERNS = [
    # label, source text, name, causal (for SDPA)
    ("causal & window(1024)", "pattern p { causal & window(1024) }", True),
    ("BigBird-ITC (64-blocks)", "pattern p { blocks(64) { band(1, 1) | global(first = 2) | "
                                "random(3, seed = 0) } }", False),
    ("Sparse Transformer strided (l=128, 2 heads)",
     "pattern p { heads { causal & window(128); causal & stride(128) } }", True),
    ("Longformer band(256,256) | global(1)", "pattern p { band(256, 256) | global(first = 1) }", False),
    ("dense causal", "pattern p { causal }", True),
]
B, H, D = 2, 16, 128
CHECK_ROWS = 384


def bench(fn) -> float:
    import triton.testing
    return triton.testing.do_bench(fn, warmup=50, rep=200, return_mode="median")


def allowed_pairs(pattern, n: int) -> int:
    """Pairs over all heads (head h uses case h mod cases), counted from the layout."""
    concrete = pattern.at(n)
    per_case = [pair_count(concrete, n, n, head=c, block=128) for c in range(pattern.heads)]
    return sum(per_case[h % pattern.heads] for h in range(H))


def reference_rows(pattern, q, k, v, rows, scale):
    """float64 attention of batch 0 for the given query rows, every head: [H, R, D]."""
    n = k.shape[2]
    concrete = pattern.at(n)
    outs = []
    for h in range(H):
        mask = evaluate(select_head(concrete, h), rows.cpu(), n).expand(len(rows), n).to(q.device)
        s = (q[0, h, rows].double() @ k[0, h].double().T) * scale
        s = s.masked_fill(~mask, float("-inf"))
        p = torch.softmax(s, -1).nan_to_num(0.0)
        outs.append(p @ v[0, h].double())
    return torch.stack(outs)


def rel(a, b) -> float:
    a, b = a.double(), b.double()
    if torch.isnan(a).any():
        return float("nan")
    return float((a - b).norm() / b.norm())


def forward_patterns(examples: bool, only=None):
    """(label, pattern, causal) of the forward run: the fixed list, or with ``examples`` every
    example pattern and dense causal (the others are examples too); with ``only``, those whose
    label contains one of its words."""
    fixed = [p for p in PATTERNS if not examples or p[0] == "dense causal"]
    chosen = [(label, spattn_dsl.loads(text).pattern("p"), causal) for label, text, causal in fixed]
    chosen += example_patterns() if examples else []
    return [p for p in chosen if not only or any(part in p[0] for part in only)]


def run(n: int, results: list, flex, examples: bool = False, only=None):
    torch.manual_seed(n)
    q, k, v = (torch.randn(B, H, n, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    scale = D ** -0.5
    for label, pattern, causal in forward_patterns(examples, only):
        t0 = time.time()
        pairs = allowed_pairs(pattern, n)
        attn = compile(pattern, verbose=True)
        out = attn(q, k, v)  # tunes on first call
        torch.cuda.synchronize()
        setup_s = time.time() - t0
        plan = next(iter(attn._plans.values()))
        bm = block_mask(pattern, n, n, H, 128, 128, device="cuda")
        flex_out = flex(q, k, v, block_mask=bm, scale=scale)
        # two interleaved rounds; each side keeps its better median
        ms, flex_ms, kernel_ms = (float("inf"),) * 3
        for _ in range(2):
            ms = min(ms, bench(lambda: attn(q, k, v)))
            kernel_ms = min(kernel_ms, bench(lambda: launch_forward(plan, q, k, v, scale)))
            flex_ms = min(flex_ms, bench(lambda: flex(q, k, v, block_mask=bm, scale=scale)))
        sdpa_ms = bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale))

        rows = torch.cat([torch.arange(CHECK_ROWS // 2), torch.arange(n - CHECK_ROWS // 2, n)])
        rows = torch.cat([rows, torch.randint(0, n, (CHECK_ROWS,))]).to("cuda")
        ref = reference_rows(pattern, q, k, v, rows, scale)
        err_ref = rel(out[0][:, rows], ref)
        err_flex_ref = rel(flex_out[0][:, rows], ref)
        err_flex = rel(out, flex_out)
        flop = 4.0 * B * D * pairs  # pairs already summed over heads
        sdpa_pairs = n * (n + 1) // 2 if causal else n * n
        row = {
            "n": n, "pattern": label, "pass": "fwd", "density": pairs / (H * n * n), "pairs": pairs,
            "config": str(plan.config), "spattn_ms": ms, "kernel_only_ms": kernel_ms, "spattn_tflops": flop / ms / 1e9,
            "flex_ms": flex_ms, "flex_tflops": flop / flex_ms / 1e9,
            "sdpa_ms": sdpa_ms, "sdpa_tflops_own": 4.0 * B * H * D * sdpa_pairs / sdpa_ms / 1e9,
            "speedup_vs_flex": flex_ms / ms, "err_vs_f64": err_ref, "flex_err_vs_f64": err_flex_ref,
            "err_vs_flex": err_flex, "setup_s": setup_s,
            "tile_density": plan.layout.density(),
        }
        results.append(row)
        print(json.dumps(row), flush=True)
        del bm, flex_out, out


def example_patterns():
    """(label, pattern, causal) for every pattern of the bundled examples, default parameters."""
    out = []
    for path in sorted((Path(__file__).parents[1] / "examples").glob("*.spattn")):
        program = spattn_dsl.load(path)
        for name in program.patterns:
            pattern = program.pattern(name)
            causal = not pattern.mask(512).triu(1).any()
            out.append((f"{path.stem}:{name}", pattern, causal))
    return out


def run_backward(n: int, results: list, flex, only=None):
    """Forward + backward of every example pattern: spattn vs Flex vs SDPA."""
    torch.manual_seed(n)
    q, k, v = (torch.randn(B, H, n, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    grad_out = torch.randn_like(q)
    scale = D ** -0.5

    def fwd_bwd(fn):
        return lambda: torch.autograd.grad(fn(), (q, k, v), grad_out)

    for label, pattern, causal in example_patterns():
        if only and not any(part in label for part in only):
            continue
        t0 = time.time()
        pairs = allowed_pairs(pattern, n)
        attn = compile(pattern)
        spattn_grads = fwd_bwd(lambda: attn(q, k, v))()  # tunes forward and backward
        torch.cuda.synchronize()
        setup_s = time.time() - t0
        bm = block_mask(pattern, n, n, H, 128, 128, device="cuda")
        flex_grads = fwd_bwd(lambda: flex(q, k, v, block_mask=bm, scale=scale))()
        ms, flex_ms = float("inf"), float("inf")
        for _ in range(2):  # interleaved rounds; each side keeps its better median
            ms = min(ms, bench(fwd_bwd(lambda: attn(q, k, v))))
            flex_ms = min(flex_ms, bench(fwd_bwd(lambda: flex(q, k, v, block_mask=bm, scale=scale))))
        fwd_ms = bench(lambda: attn(q, k, v))
        sdpa_ms = bench(fwd_bwd(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal,
                                                                        scale=scale)))
        dq_plan, dkdv_plan = attn.backward_plans(q, k, v, scale)
        flop = 2.5 * 4.0 * B * D * pairs  # backward: 5 products to the forward's 2
        row = {
            "n": n, "pattern": label, "pass": "fwd+bwd", "density": pairs / (H * n * n), "pairs": pairs,
            "config": f"dq {dq_plan.config} / dkdv {dkdv_plan.config}",
            "spattn_ms": ms, "spattn_fwd_ms": fwd_ms, "spattn_tflops": flop / ms / 1e9,
            "flex_ms": flex_ms, "flex_tflops": flop / flex_ms / 1e9, "sdpa_ms": sdpa_ms,
            "causal": causal, "speedup_vs_flex": flex_ms / ms, "setup_s": setup_s,
            "grad_err_vs_flex": max(rel(a, b) for a, b in zip(spattn_grads, flex_grads)),
        }
        results.append(row)
        print(json.dumps(row), flush=True)
        del bm, spattn_grads, flex_grads


def backward_table(results) -> str:
    lines = ["| N | pattern | density | spattn fwd+bwd ms | TFLOP/s | (fwd ms) | Flex fwd+bwd ms "
             "| TFLOP/s | speedup vs Flex | SDPA fwd+bwd ms | grad err vs Flex | backward tiles |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['n']} | {r['pattern']} | {100 * r['density']:.2f}% | {r['spattn_ms']:.3f} "
                     f"| {r['spattn_tflops']:.0f} | {r['spattn_fwd_ms']:.3f} | {r['flex_ms']:.3f} "
                     f"| {r['flex_tflops']:.0f} | {r['speedup_vs_flex']:.2f}x "
                     f"| {r['sdpa_ms']:.3f} ({'causal' if r['causal'] else 'dense'}) "
                     f"| {r['grad_err_vs_flex']:.1e} | {r['config']} |")
    return "\n".join(lines)


def table(results) -> str:
    lines = ["| N | pattern | density | spattn ms | spattn TFLOP/s | config | Flex ms | Flex TFLOP/s "
             "| spattn speedup vs Flex | SDPA ms (dense/causal) | err vs f64 | err vs Flex |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['n']} | {r['pattern']} | {100 * r['density']:.2f}% | {r['spattn_ms']:.3f} "
                     f"| {r['spattn_tflops']:.0f} | {r['config']} | {r['flex_ms']:.3f} "
                     f"| {r['flex_tflops']:.0f} | {r['speedup_vs_flex']:.2f}x | {r['sdpa_ms']:.3f} "
                     f"| {r['err_vs_f64']:.1e} | {r['err_vs_flex']:.1e} |")
    return "\n".join(lines)


RESULT_KEYS = ("pattern", "n", "pass", "spattn_ms", "flex_ms", "sdpa_ms", "pairs")


def write_results(path: str, results: list) -> None:
    """Append this run's rows, in the benchmarks/results/ format, to the JSON list at ``path``."""
    import triton
    meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
            "triton": triton.__version__}
    rows = json.loads(Path(path).read_text()) if Path(path).exists() else []
    rows += [{**{key: r[key] for key in RESULT_KEYS}, **meta} for r in results]
    Path(path).write_text(json.dumps(rows, indent=1) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[8192, 32768])
    parser.add_argument("--json", default=None)
    parser.add_argument("--only", nargs="+", default=None,
                        help="run patterns whose label contains one of these")
    parser.add_argument("--backward", action="store_true",
                        help="forward + backward of every example pattern")
    parser.add_argument("--examples", action="store_true",
                        help="forward: every example pattern too, after the fixed list")
    parser.add_argument("--results", default=None,
                        help="append rows in the benchmarks/results/ format to this JSON list")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_forward needs a CUDA GPU", file=sys.stderr)
        return 2
    from torch.nn.attention.flex_attention import flex_attention
    import triton

    torch._dynamo.config.cache_size_limit = 64  # one compile per pattern and length
    if hasattr(torch._dynamo.config, "recompile_limit"):
        torch._dynamo.config.recompile_limit = 64
    flex = torch.compile(flex_attention, dynamic=False)
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
    results: list = []
    try:
        for n in args.seq_lens:
            if args.backward:
                run_backward(n, results, flex, args.only)
            else:
                run(n, results, flex, args.examples, args.only)
    finally:
        if args.results:
            write_results(args.results, results)
        if args.json:
            with open(args.json, "w") as handle:
                json.dump(results, handle, indent=1)
        print((backward_table if args.backward else table)(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
