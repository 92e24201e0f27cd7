"""One decode step on a GPU: spattn's KV cache and decode kernels vs SDPA on the full cache vs
FlexAttention decoding (compiled ``flex_attention``, one query row, the same mask).

    python benchmarks/bench_decode.py [--results rows.json] [--json all.json]
    python benchmarks/bench_decode.py --dry-run      # tiny sizes, Triton interpreter, CPU

Shapes (issue 28): batch 1 and 16, 32 query heads, 8 KV heads, head_dim 128, bf16, caches of
32768 and 131072 positions; patterns dense causal, ``causal & window(4096)``, StreamingLLM
(sink 4 + window 1024), strided (``causal & (window(128) | stride(128))``). Per row: the median
time (``triton.testing.do_bench``) of spattn (the whole call: visit plan + kernels) and of its
kernels alone, SDPA and Flex; the bytes of K and V spattn reads (visited pages x page bytes),
the fraction of the GPU's memory bandwidth that reaches in the kernel time, and the cache's
held pages' memory against a full cache (``pool_bytes``: the pool, which grows by doubling and
keeps its peak, here the prefill chunk's).

Quest-like top-k pages (``causal & (chunk(64) | topk(16, unit = 64, by = minmax))``: the query's
own page plus the 16 pages of 64 keys, 1024 tokens, with the largest upper bound of ``q . k``
from each page's key minimum and maximum; units are the cache's pages, so the selection reads
the per-page ``key_min`` / ``key_max`` the cache keeps, not the keys). Its rows add
``select_ms`` (the selection alone) and ``minmax_bytes_read`` (the fp32 page bounds the
selection reads; ``kv_bytes_read`` stays the kernels' K and V pages); ``kernel_only_ms`` is the
kernels under the fixed selection. Flex gets the same mask as a tensor (the selection's). A
dynamic pattern's cache holds every position (its liveness is all True).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

PATTERNS = [
    ("dense causal", "causal"),
    ("causal & window(4096)", "causal & window(4096)"),
    ("StreamingLLM sink(4) + window(1024)", "causal & (sink(4) | window(1024))"),
    ("strided window(128) | stride(128)", "causal & (window(128) | stride(128))"),
    ("Quest top-16 pages of 64 (minmax)", "causal & (chunk(64) | topk(16, unit = 64, "
                                          "by = minmax))"),
]
DRY_PATTERNS = [  # the same shapes, scaled to a few hundred positions
    ("dense causal", "causal"),
    ("causal & window(64)", "causal & window(64)"),
    ("StreamingLLM sink(4) + window(32)", "causal & (sink(4) | window(32))"),
    ("strided window(16) | stride(16)", "causal & (window(16) | stride(16))"),
    ("Quest top-4 pages of 16 (minmax)", "causal & (chunk(16) | topk(4, unit = 16, "
                                         "by = minmax))"),
]
H, KVH, D = 32, 8, 128
BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12}  # bytes/s of HBM


def bench(fn) -> float:
    import triton.testing
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def fill(cache, k_full, v_full, chunk: int):
    """Append the history but its last position in chunks, then the last one: a decode step."""
    n = k_full.shape[2]
    for start in range(0, n - 1, chunk):
        end = min(start + chunk, n - 1)
        cache.append(k_full[:, :, start:end], v_full[:, :, start:end])
    cache.append(k_full[:, :, n - 1:], v_full[:, :, n - 1:])


def bytes_read(cache, pattern, heads: int, groups=None) -> int:
    """Bytes of K and V the kernels read: every visited page, once per KV head (``groups``: a
    dynamic pattern's selection, ``decode.select.select_cached``)."""
    from spattn_dsl.decode.visit import plan_visit
    plan = plan_visit(pattern, cache, 1, heads, groups)
    page = 2 * cache.page_size * D * cache.k_pages.element_size()
    return int(plan.counts.sum()) * page


def minmax_bytes(cache) -> int:
    """Bytes of the fp32 page bounds a minmax selection reads: every held page, per KV head."""
    return int(cache.pages_held.sum()) * 2 * cache.kv_heads * D * cache.key_min.element_size()


def run(label, text, batch, n, flex, device, dtype, page_size, chunk):
    import spattn_dsl
    from spattn_dsl.decode.attend import launch
    from spattn_dsl.decode.select import select_cached

    pattern = spattn_dsl.loads(f"pattern p {{ {text} }}").pattern("p")
    attn = spattn_dsl.compile(pattern)
    torch.manual_seed(n + batch)
    k_full = torch.randn(batch, KVH, n, D, device=device, dtype=dtype)
    v_full = torch.randn_like(k_full)
    q = torch.randn(batch, H, 1, D, device=device, dtype=dtype)
    scale = D ** -0.5
    t0 = time.time()
    cache = spattn_dsl.KVCache(pattern, batch, KVH, D, dtype=dtype, device=device,
                               page_size=page_size)
    fill(cache, k_full, v_full, chunk)
    out = attn(q, cache)
    groups = select_cached(pattern, q, cache, scale=scale) if pattern.dynamic else None
    full_bytes = 2 * k_full.numel() * k_full.element_size()
    row = {"pattern": label, "n": n, "batch": batch, "pass": "decode",
           "fill_s": time.time() - t0, "pages_held": int(cache.pages_held.max()),
           "page_size": page_size,
           "kv_bytes_read": bytes_read(cache, pattern, H, groups)}
    if pattern.dynamic:
        row["minmax_bytes_read"] = minmax_bytes(cache)
    page_bytes = 2 * cache.k_pages[0].numel() * cache.k_pages.element_size()
    row["cache_bytes"] = int(cache.pages_held.sum()) * page_bytes  # held pages
    row["pool_bytes"] = cache.capacity * page_bytes  # the pool, grown by doubling
    row["cache_vs_full"] = row["cache_bytes"] / full_bytes
    if flex is None:  # dry run: check against the pattern's full-history attention
        row["err_vs_full"] = float((out - attn(q, k_full, v_full)).abs().max())
        print(json.dumps(row), flush=True)
        return row
    row["spattn_ms"] = bench(lambda: attn(q, cache))
    row["kernel_only_ms"] = bench(lambda: launch(q, cache, scale, groups))
    if pattern.dynamic:
        row["select_ms"] = bench(lambda: select_cached(pattern, q, cache, scale=scale))
    try:  # a baseline that fails (torch 2.11's Flex fails to compile some decode shapes) is
        flex_row(row, pattern, attn, q, cache, k_full, v_full, out, flex, batch, n, scale)
    except Exception as error:  # recorded, the output checked against the full history
        row["flex_error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        row["err_vs_full"] = float((out.float() - attn(q, k_full, v_full).float()).abs().max())
    row["sdpa_ms"] = bench(lambda: torch.nn.functional.scaled_dot_product_attention(
        q, k_full, v_full, scale=scale, enable_gqa=True))  # the last query sees every key
    peak = next((bw for name, bw in BANDWIDTH.items() if name in torch.cuda.get_device_name()),
                3.35e12)
    row["bandwidth_fraction"] = row["kv_bytes_read"] / (row["kernel_only_ms"] * 1e-3) / peak
    row["sdpa_bandwidth_fraction"] = full_bytes / (row["sdpa_ms"] * 1e-3) / peak
    print(json.dumps(row), flush=True)
    del cache, k_full, v_full
    torch.cuda.empty_cache()
    return row


def flex_row(row, pattern, attn, q, cache, k_full, v_full, out, flex, batch, n, scale):
    """FlexAttention over the full history with the step's BlockMask: its error against
    spattn's output and its time."""
    from torch.nn.attention.flex_attention import create_block_mask

    from spattn_dsl.runtime.flex import mask_mod

    device = q.device
    if pattern.dynamic:  # the selection's mask, as a tensor: [batch, heads, 1, n]
        mask = torch.stack([pattern.mask(1, n, selection=s)[0] for s in
                            attn.forward(q, cache)[2]]).to(device)
        block_mask = create_block_mask(lambda b, h, qi, ki: mask[b, h, qi, ki], batch, H, 1, n,
                                       device=device, BLOCK_SIZE=128)
    else:
        mod = mask_mod(pattern, 1, n, device=device)  # one query row at position n - 1
        block_mask = create_block_mask(mod, None, None, 1, n, device=device, BLOCK_SIZE=128)
    flex_out = flex(q, k_full, v_full, block_mask=block_mask, scale=scale, enable_gqa=True)
    row["err_vs_flex"] = float((out.float() - flex_out.float()).abs().max())
    row["flex_ms"] = bench(lambda: flex(q, k_full, v_full, block_mask=block_mask, scale=scale,
                                        enable_gqa=True))


RESULT_KEYS = ("pattern", "n", "pass", "spattn_ms", "flex_ms", "sdpa_ms", "batch",
               "kernel_only_ms", "kv_bytes_read", "bandwidth_fraction", "cache_vs_full")
OPTIONAL_KEYS = ("select_ms", "minmax_bytes_read",  # dynamic (Quest) rows only
                 "flex_error")


def write_results(path: str, results: list) -> None:
    """Append this run's rows, in the benchmarks/results/ format, to the JSON list at path."""
    import triton
    meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
            "triton": triton.__version__}
    rows = json.loads(Path(path).read_text()) if Path(path).exists() else []
    rows += [{**{key: r.get(key) for key in RESULT_KEYS},
              **{key: r[key] for key in OPTIONAL_KEYS if key in r}, **meta} for r in results]
    Path(path).write_text(json.dumps(rows, indent=1) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="tiny sizes on the CPU under the Triton interpreter (fp32)")
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[32768, 131072])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--results", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        global H, KVH, D
        H, KVH, D = 4, 2, 16
        device, dtype, page_size, chunk = "cpu", torch.float32, 16, 256
        sizes = [(1, 300), (2, 200)]
        patterns = DRY_PATTERNS
        flex = None
    else:
        if not torch.cuda.is_available():
            print("bench_decode needs a CUDA GPU (or --dry-run)", file=sys.stderr)
            return 2
        from torch.nn.attention.flex_attention import flex_attention
        device, dtype, page_size, chunk = "cuda", torch.bfloat16, 64, 8192
        sizes = [(b, n) for n in args.seq_lens for b in args.batches]
        patterns = PATTERNS
        torch._dynamo.config.cache_size_limit = 64
        flex = torch.compile(flex_attention, dynamic=False)
    results = []
    try:
        for batch, n in sizes:
            for label, text in patterns:
                results.append(run(label, text, batch, n, flex, device, dtype, page_size,
                                   chunk))
                if args.json:  # after every row, so that a cut-off run keeps what it measured
                    Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    finally:
        if args.results and not args.dry_run:
            write_results(args.results, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
