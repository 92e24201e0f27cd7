"""Prefill speed of dynamic patterns on a GPU: spattn (selection + attention) vs dense causal SDPA
vs FlexAttention given a BlockMask built at run time from the same selection.

    python benchmarks/bench_dynamic.py --results benchmarks/results/DATE-GPU.json   # a GPU
    TRITON_INTERPRET=1 python benchmarks/bench_dynamic.py --dry-run                 # CPU check

Shapes: batch 1, 32 query heads, 8 key/value heads, head_dim 128, bf16, n = 32768 and 131072.
Patterns (issue 27, item 7):

- block top-k, MoBA / MiniMax-like: the own 128-block, a 128 window and the top 16 of the
  earlier 128-blocks by ``mean_key``, chosen once per 128-query block (``rows = 128``: the
  granularity of a Flex BlockMask, so that Flex gets exactly the same pairs);
- token top-2048 (``by = scores, shared = all``, DeepSeek-V3.2-like); the caller's scores are
  ``[1, 1, n, n]`` fp32 (an indexer's output), 4 GiB at 32768: at 131072 (64 GiB) it is skipped;
- vertical-slash (examples/minference.spattn, 1000 columns + 6096 diagonals + sink + window).

For each: ``select_ms`` (spattn's selection on the device and its slot lists), ``attend_ms``
(the attention given them), ``spattn_ms`` (the whole call), ``flex_build_ms`` (the BlockMask
from the selection: block grid, kv indices and a token-exact ``mask_mod`` from lookup tables, as
attention-gym's examples build one at run time), ``flex_ms`` (compiled ``flex_attention``
given that mask: add ``select_ms + flex_build_ms`` for Flex's whole call) and ``sdpa_ms``
(dense causal, ``enable_gqa``). ``"pass": "fwd+bwd"`` times forward and backward (gradients of
q, k, v) of the attention part; fwd+bwd at 131072 is skipped when ``--budget-s`` is short.

``--dry-run``: tiny sizes, fp32, on the CPU under TRITON_INTERPRET=1; checks spattn's output
and Flex's (eager) against float64 attention under ``pattern.mask(..., selection=s)``.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import spattn_dsl as spattn

RESULT_KEYS = ("pattern", "n", "pass", "spattn_ms", "flex_ms", "sdpa_ms", "pairs")


def patterns(dry: bool) -> list[tuple[str, str]]:
    """(label, pattern text): the real sizes, or small ones for the dry run."""
    if dry:
        return [("block top-k",
                 "causal & (chunk(32) | window(32) | topk(2, unit = 32, rows = 32))"),
                ("token top-k scores", "causal & topk(24, by = scores, shared = all)"),
                ("vertical-slash", "causal & (sink(4) | window(16) | vertical(12, probe = 16) "
                                   "| slash(20, probe = 16))")]
    return [("block top-k 16x128 + own block + window",
             "causal & (chunk(128) | window(128) | topk(16, unit = 128, rows = 128))"),
            ("token top-2048 by scores (shared all)",
             "causal & topk(2048, by = scores, shared = all)"),
            ("vertical-slash 1000 + 6096", "causal & (sink(4) | window(64) | vertical(1000) "
                                           "| slash(6096))")]


# ------------------------------------------------------------------ Flex from a selection
def flex_mask(label: str, selection, n: int, heads: int, block: int, device):
    """A BlockMask with the pairs of the pattern under ``selection`` (token-exact mask_mod)."""
    from torch.nn.attention.flex_attention import BlockMask

    blocks = math.ceil(n / block)
    qb = torch.arange(blocks, device=device)
    if label.startswith("block"):
        term = selection.terms[0]
        window = 32 if n <= 4096 else 128
        unit = term.unit
        idx = term.indices[0].to(device)  # [H, G, k], groups of `rows` queries (= unit = block)
        grid = torch.zeros(idx.shape[0], blocks + 1, blocks + 1, dtype=torch.bool, device=device)
        grid.scatter_(2, torch.where(idx < 0, blocks, idx)[:, :blocks], True)
        grid = grid[:, :blocks, :blocks].clone()
        sel = grid.clone()
        grid[:, qb, qb] = True
        grid[:, qb[1:], qb[:-1]] = True  # the window reaches into the previous block
        assert unit == block

        def mask_mod(b, h, q, kv):
            return (q >= kv) & ((q // block == kv // block) | (q - kv < window)
                                | sel[h, q // block, kv // block])
    elif label.startswith("token"):
        idx = selection.terms[0].indices[0, 0].to(device)  # [n, k], shared by all heads
        tok = torch.zeros(n, n + 1, dtype=torch.bool, device=device)
        tok.scatter_(1, torch.where(idx < 0, n, idx), True)
        tok = tok[:, :n].contiguous()
        grid = tok.view(blocks, block, blocks, block).any(3).any(1)[None] if n % block == 0 else \
            F.pad(tok, (0, blocks * block - n, 0, blocks * block - n)) \
            .view(blocks, block, blocks, block).any(3).any(1)[None]

        def mask_mod(b, h, q, kv):
            return (q >= kv) & tok[q, kv]
    else:
        sink, window = (4, 16) if n <= 4096 else (4, 64)
        cols_i, diag_i = (t.indices[0, :, 0].to(device) for t in selection.terms)  # [H, k]
        cols = torch.zeros(heads, n + 1, dtype=torch.bool, device=device)
        cols.scatter_(1, torch.where(cols_i < 0, n, cols_i), True)
        cols = cols[:, :n].contiguous()
        offsets = diag_i - (n - 1)  # q - k
        diag = torch.zeros(heads, n + 1, dtype=torch.bool, device=device)
        diag.scatter_(1, torch.where((diag_i < 0) | (offsets < 0), n, offsets), True)
        diag = diag[:, :n].contiguous()
        grid = torch.zeros(heads, blocks, blocks + 2, dtype=torch.bool, device=device)
        col_blocks = torch.where(cols_i < 0, blocks, cols_i // block)  # [H, k]
        grid.scatter_(2, col_blocks[:, None, :].expand(heads, blocks, -1), True)
        for h in range(heads):  # diagonals: each touches two key blocks per query block
            o = offsets[h][(diag_i[h] >= 0) & (offsets[h] >= 0)]
            first = (qb[:, None] * block - o[None, :]).clamp(min=-block)
            kb = torch.div(first, block, rounding_mode="floor")
            for shift in (0, 1):
                grid[h].scatter_(1, torch.where(kb + shift < 0, blocks + 1, kb + shift), True)
        grid = grid[:, :, :blocks].clone()
        grid[:, :, 0] = True  # the sink
        grid[:, qb, qb] = True
        grid[:, qb[1:], qb[:-1]] = True
        grid &= (qb[None, :, None] >= qb[None, None, :])

        def mask_mod(b, h, q, kv):
            return (q >= kv) & ((kv < sink) | (q - kv < window) | cols[h, kv] | diag[h, q - kv])
    counts = grid.sum(-1).to(torch.int32)
    order = torch.sort(grid.to(torch.int8), dim=-1, descending=True, stable=True).indices
    order = order.to(torch.int32)
    return BlockMask.from_kv_blocks(counts[None], order[None], BLOCK_SIZE=block,
                                    mask_mod=mask_mod, seq_lengths=(n, n))


# ------------------------------------------------------------------------ timing
def timer(fn, device, reps: int, warm: bool = True) -> float:
    """Median milliseconds of ``fn`` (after a warm-up call unless ``warm`` is False)."""
    if warm:
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2]


def reference(pattern, q, k, v, selection, scale):
    """float64 attention under the pattern's mask for this selection: [B, H, n, D]."""
    mask = pattern.mask(q.shape[2], k.shape[2], selection=selection).to(q.device)
    group = q.shape[1] // k.shape[1]
    kk, vv = (t.double().repeat_interleave(group, 1) for t in (k, v))
    s = (q.double() @ kk.transpose(-1, -2)) * scale
    p = torch.softmax(s.masked_fill(~mask, float("-inf")), -1).nan_to_num(0.0)
    return p @ vv, int(mask.sum())


def rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def run_one(label, text, n, args, device, dtype, results, flex_attention):
    pattern = spattn.loads(f"pattern p {{ {text} }}").pattern("p")
    H, HKV, D = args.heads, args.kv_heads, args.head_dim
    gen = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(1, h, n, D, generator=gen).to(device, dtype) for h in (H, HKV, HKV))
    scores = None
    if "scores" in text:
        if n * n * 4 > args.max_scores_gib * 2**30:
            print(f"skip {label} at n = {n}: scores [1, 1, n, n] fp32 need "
                  f"{n * n * 4 / 2**30:.0f} GiB (> --max-scores-gib {args.max_scores_gib})")
            return
        scores = torch.randn(1, 1, n, n, generator=gen).to(device)
    scale = 1 / math.sqrt(D)
    attn = spattn.compile(pattern)
    selection, slots = attn._select(q, k, scores, None, None, scale)

    def whole():
        return attn(q, k, v, scores=scores)

    out = whole()
    flex_block = 128 if not args.dry_run else 32
    mask = flex_mask(label, selection, n, H, flex_block, device)
    if args.dry_run:
        from spattn_dsl.dynamic.attend import on_cpu
        ref, pairs = reference(pattern, q, k, v, on_cpu(selection), scale)
        flex_out = flex_attention(q, k, v, block_mask=mask, enable_gqa=True, scale=scale)
        print(f"{label:40s} n {n}: spattn vs float64 {rel(out, ref):.1e}, "
              f"flex vs float64 {rel(flex_out, ref):.1e}")
        assert rel(out, ref) < 1e-4 and rel(flex_out, ref) < 1e-4, label
    else:
        pairs = None
    reps, warm = args.reps, not args.dry_run
    for pass_ in ("fwd", "fwd+bwd"):
        if pass_ == "fwd+bwd" and n > args.max_bwd_n:
            print(f"skip fwd+bwd of {label} at n = {n} (--max-bwd-n {args.max_bwd_n})")
            continue
        grad = torch.randn_like(q)
        qg, kg, vg = (t.detach().requires_grad_(pass_ != "fwd") for t in (q, k, v))

        def attend():
            o, _ = attn._attend(qg, kg, vg, slots, None, scale, None)
            if pass_ != "fwd":
                o.backward(grad)

        def flex():
            o = flex_attention(qg, kg, vg, block_mask=mask, enable_gqa=True, scale=scale)
            if pass_ != "fwd":
                o.backward(grad)

        def sdpa():
            o = F.scaled_dot_product_attention(qg, kg, vg, is_causal=True, enable_gqa=True)
            if pass_ != "fwd":
                o.backward(grad)

        def whole_pass():
            o = attn(qg, kg, vg, scores=scores)
            if pass_ != "fwd":
                o.backward(grad)

        row = dict(pattern=label, text=text, n=n, **{"pass": pass_})
        row["select_ms"] = timer(lambda: attn._select(q, k, scores, None, None, scale), device,
                                 reps, warm)
        row["attend_ms"] = timer(attend, device, reps, warm)
        row["spattn_ms"] = timer(whole_pass, device, reps, warm)
        row["flex_build_ms"] = timer(lambda: flex_mask(label, selection, n, H, flex_block, device),
                                     device, reps)
        row["flex_ms"] = None if device.type == "cpu" and pass_ != "fwd" else \
            timer(flex, device, reps, warm)  # (Flex has no backward on the CPU)
        row["sdpa_ms"] = timer(sdpa, device, reps, warm)
        row["pairs"] = pairs if pairs is not None else int(
            mask.to_dense().sum()) * flex_block * flex_block  # an upper bound (block pairs)
        results.append(row)
        print(json.dumps(row), flush=True)


def write_results(path: str, results: list) -> None:
    import triton
    meta = {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "torch": torch.__version__, "triton": triton.__version__}
    rows = json.loads(Path(path).read_text()) if Path(path).exists() else []
    extra = ("select_ms", "attend_ms", "flex_build_ms")
    rows += [{**{key: r[key] for key in RESULT_KEYS + extra}, **meta} for r in results]
    Path(path).write_text(json.dumps(rows, indent=1) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-lens", type=int, nargs="+", default=None)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--results", default=None, help="append rows to this JSON list")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--max-bwd-n", type=int, default=32768,
                        help="skip fwd+bwd above this length (the 10-minute call)")
    parser.add_argument("--max-scores-gib", type=float, default=16)
    args = parser.parse_args(argv)
    from torch.nn.attention.flex_attention import flex_attention
    if args.dry_run:
        device, dtype = torch.device("cpu"), torch.float32
        args.heads, args.kv_heads, args.head_dim = 4, 2, 16
        args.seq_lens = args.seq_lens or [160]
        args.reps = args.reps or 1
        args.max_bwd_n = max(args.max_bwd_n, max(args.seq_lens))
    else:
        device, dtype = torch.device("cuda"), torch.bfloat16
        args.heads, args.kv_heads, args.head_dim = 32, 8, 128
        args.seq_lens = args.seq_lens or [32768, 131072]
        args.reps = args.reps or 10
        flex_attention = torch.compile(flex_attention, dynamic=False)
    results: list = []
    for n in args.seq_lens:
        for label, text in patterns(args.dry_run):
            run_one(label, text, n, args, device, dtype, results, flex_attention)
    if args.results:
        write_results(args.results, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
