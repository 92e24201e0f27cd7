"""``attn(q, cache)``: the newest queries of each sequence against its KV cache.

``q`` is ``[batch, heads, m, head_dim]``, row ``i`` the query at position ``length - m + i``
of its sequence (bottom-right aligned); the queries are those of the newest append, so ``m``
is at most its width. Paths:

- the kernels (``decode.kernels``): the pages that ``decode.visit`` lists, split across
  programs, merged by log-sum-exp; on a CPU under ``TRITON_INTERPRET`` in fp32;
- a prefill (``m > MAX_DECODE_QUERIES`` on a cache that has freed nothing and has one length):
  the compiled attention's own kernels on the gathered keys, which are the full history;
- the reference in torch (fp32, every held slot, the same mask) on a CPU without the
  interpreter, or for fp16/bf16 on a CPU (the interpreter's dot is fp32).

A dynamic pattern (``attend_dynamic``, reached through ``DynamicAttention``) first selects
among the cached units (``decode.select``); the mask of every path then holds its static keys
plus the selected units' slots, per query head.
"""
from __future__ import annotations

import os

import torch

from ..runtime.attention import check_scale
from .visit import plan_visit

MAX_DECODE_QUERIES = 64
LOG2E = 1.4426950408889634


def attend(attn, q, cache, v=None, scale=None, key_padding=None, documents=None):
    """(out ``[batch, heads, m, head_dim]`` in q's dtype, lse fp32 ``[batch, heads, m]``)."""
    return _attend(attn, q, cache, v, scale, key_padding, documents)[:2]


def attend_dynamic(attn, q, cache, v=None, scale=None, key_padding=None, documents=None,
                   scores=None):
    """A dynamic pattern's ``attn(q, cache)`` (``decode.select``): (out, lse, selections),
    ``selections`` one ``Selection`` per sequence (batch 1, ``n_q`` its query rows, ``n_k``
    its length; None for a sequence without queries)."""
    from .select import split_selection

    out, lse, groups = _attend(attn, q, cache, v, scale, key_padding, documents, scores)
    return out, lse, split_selection(groups, cache.batch)


def _attend(attn, q, cache, v, scale, key_padding, documents, scores=None):
    """(out, lse, groups): ``groups`` a dynamic pattern's selection (else None)."""
    if v is not None:
        raise TypeError("attn(q, cache) takes no v (the cache holds the values); pass scale= "
                        "by keyword")
    if key_padding is not None or documents is not None:
        raise ValueError("attn(q, cache): key_padding and documents are not supported with a "
                         "KV cache")
    if cache.pattern != attn.pattern:
        raise ValueError(f"attn(q, cache): the cache was made for pattern "
                         f"'{cache.pattern.name}' ({cache.pattern.text}), this attention is "
                         f"compiled for '{attn.pattern.name}' ({attn.pattern.text})")
    check_queries(q, cache)
    scale = q.shape[3] ** -0.5 if scale is None else check_scale(scale)
    dynamic = cache.pattern.dynamic
    if scores is not None and not dynamic:
        raise ValueError("attn(q, cache): scores= is for patterns with a by = scores term")
    if _prefill(q, cache):
        k, v, _ = cache.gather()
        n = cache.lengths_list()[0]
        k, v = k[:, :, :n].contiguous(), v[:, :, :n].contiguous()
        if not dynamic:
            return (*attn.forward(q, k, v, scale), None)
        from .select import Group

        out, lse, selection = attn.forward(q, k, v, scale, scores=scores)
        pick = torch.arange(cache.batch, device=q.device)
        return out, lse, [Group(pick, n, q.shape[2], selection)]
    groups = None
    if dynamic:
        from .select import select_cached

        groups = select_cached(cache.pattern, q, cache, scores, scale)
    if q.device.type == "cpu" and (not _interpreting() or q.dtype != torch.float32):
        return (*reference(q, cache, scale, groups), groups)
    return (*launch(q, cache, scale, groups), groups)


def check_queries(q, cache) -> None:
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"attn(q, cache): q must be a torch.Tensor, got {type(q).__name__}")
    if q.dim() != 4 or q.shape[0] != cache.batch or q.shape[3] != cache.head_dim or \
            q.shape[1] % cache.kv_heads:
        raise ValueError(f"attn(q, cache): q must be [batch, heads, m, head_dim] with batch = "
                         f"{cache.batch}, head_dim = {cache.head_dim} and heads a multiple of "
                         f"kv_heads = {cache.kv_heads}, got {list(q.shape)}")
    if q.dtype != cache.dtype:
        raise TypeError(f"attn(q, cache): q has dtype {q.dtype}, the cache holds {cache.dtype}")
    if q.device != cache.device:
        raise ValueError(f"attn(q, cache): q is on {q.device}, the cache on {cache.device}")
    width = max(cache.last_counts)
    if not 1 <= q.shape[2] <= width:
        raise ValueError(f"attn(q, cache): q has {q.shape[2]} query rows, but the queries are "
                         f"the positions of the newest append, {width} at most")


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _prefill(q, cache) -> bool:
    """Many queries over a cache that still holds the whole history (one length)."""
    lengths = cache.lengths_list()
    return q.shape[2] > MAX_DECODE_QUERIES and len(set(lengths)) == 1 and \
        all(h == lengths[0] for h in cache.held.tolist()) and \
        all(c == q.shape[2] for c in cache.last_counts)


def reference(q, cache, scale, groups=None):
    """fp32 attention over every held slot with the visit plan's mask (torch only)."""
    batch, heads, m, dim = q.shape
    plan = plan_visit(cache.pattern, cache, m, heads, groups)
    k, v, _ = cache.gather()
    group = heads // cache.kv_heads
    k = k.float().repeat_interleave(group, dim=1)
    v = v.float().repeat_interleave(group, dim=1)
    mask = plan.mask.bool().expand(batch, heads, m, -1)
    scores = (q.float() @ k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    weights = torch.exp(scores - torch.where(lse.isinf(), 0.0, lse)[..., None])
    return (weights @ v).to(q.dtype), lse


def launch(q, cache, scale, groups=None):
    """The two kernels: split-K over visited pages, then the merge."""
    from . import kernels

    batch, heads, m, dim = q.shape
    q = q.contiguous()
    plan = plan_visit(cache.pattern, cache, m, heads, groups)
    ids, _ = cache.tables()
    group = heads // cache.kv_heads
    rows = group * m
    block_r = min(64, max(16, _pow2(rows)))
    block_d = max(16, _pow2(dim))
    row_tiles = -(-rows // block_r)
    pages = ids.shape[1]
    splits = _splits(q.device, batch * cache.kv_heads * row_tiles, pages)
    out_part = torch.empty(batch * cache.kv_heads, splits, rows, dim, device=q.device,
                           dtype=torch.float32)
    lse_part = torch.empty(batch * cache.kv_heads, splits, rows, device=q.device,
                           dtype=torch.float32)
    kp, vp, mask = cache.k_pages, cache.v_pages, plan.mask
    kernels.split_pages[(batch * cache.kv_heads, splits, row_tiles)](
        q, kp, vp, ids, plan.visit, plan.full, plan.counts, mask, out_part, lse_part,
        q.stride(0), q.stride(1), q.stride(2), kp.stride(0), kp.stride(1), kp.stride(2),
        mask.stride(0), plan.head_stride, mask.stride(2),
        scale * LOG2E, cache.kv_heads, group, m, rows, pages,
        PS=cache.page_size, D=dim, BLOCK_R=block_r, BLOCK_D=block_d, SPLITS=splits,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32")
    out = torch.empty_like(q)
    lse = torch.empty(batch, heads, m, device=q.device, dtype=torch.float32)
    kernels.merge_splits[(batch * cache.kv_heads, row_tiles)](
        out_part, lse_part, out, lse, out.stride(0), out.stride(1), out.stride(2),
        cache.kv_heads, group, m, rows, D=dim, BLOCK_R=block_r, BLOCK_D=block_d, SPLITS=splits)
    return out, lse


def _pow2(x: int) -> int:
    return 1 << max(0, x - 1).bit_length()


def _splits(device, programs: int, pages: int) -> int:
    """Enough splits to give every SM a few programs (flash-decoding); few on a CPU, where
    the interpreter runs programs one by one. A power of two, so kernels compile rarely."""
    if device.type != "cuda":
        return min(2, pages)
    import torch.cuda

    sms = torch.cuda.get_device_properties(device).multi_processor_count
    want = max(1, min(pages, -(-2 * sms // programs), 128))
    return _pow2(want)
