"""Softmax attention under an explicit bool mask ``[B, H, n_q, n_k]``, tile by tile of query
rows, forward and closed-form backward (fp32 or float64): the CPU path of dynamic patterns and
the fallback for expressions the kernels do not split (``expr.splits_exactly``). Memory holds
one tile of scores at a time (``ROWS x n_k`` per head), never an ``n_q x n_k`` float matrix.
Masked pairs are selected away (``masked_matmul``), so a non-finite value a row cannot see
does not reach it; rows with no key give 0 and lse -inf."""
from __future__ import annotations

import torch

from ..codegen.reference import masked_matmul

ROWS = 128  # query rows per tile


def _tile(q, k, mask, rows, scale, dtype):
    """(probabilities ``[B, H, rows, n_k]``, 0 outside the mask; lse ``[B, H, rows]``)."""
    m = mask[:, :, rows]
    scores = (q[:, :, rows].to(dtype) @ k.transpose(-1, -2)).mul_(scale)
    scores.masked_fill_(~m, float("-inf"))
    top = scores.amax(-1, keepdim=True).nan_to_num_(neginf=0.0)
    probs = scores.sub_(top).exp_()
    total = probs.sum(-1, keepdim=True)
    lse = (top + total.log()).squeeze(-1)
    return probs.div_(total.clamp_(min=1.0)), lse, m


def _per_query_head(t, heads, dtype):
    return t.to(dtype).repeat_interleave(heads // t.shape[1], dim=1)


def masked_forward(q, k, v, mask, scale: float, dtype=torch.float32):
    """(out in q's dtype, lse fp32) of ``softmax(q k^T * scale)`` under ``mask``."""
    heads, n_q = q.shape[1], q.shape[2]
    kd, vd = _per_query_head(k, heads, dtype), _per_query_head(v, heads, dtype)
    out = torch.zeros(q.shape, dtype=dtype, device=q.device)
    lse = torch.full(q.shape[:3], float("-inf"), dtype=torch.float32, device=q.device)
    for start in range(0, n_q, ROWS):
        rows = slice(start, min(n_q, start + ROWS))
        probs, tile_lse, m = _tile(q, kd, mask, rows, scale, dtype)
        out[:, :, rows] = masked_matmul(probs, m, vd)
        lse[:, :, rows] = tile_lse.float()
    return out.to(q.dtype), lse


def masked_backward(grad_out, grad_lse, q, k, v, mask, scale: float, dtype=torch.float32):
    """(dq, dk, dv) of ``masked_forward``; ``grad_lse`` (or None) the gradient of its lse."""
    heads, n_q = q.shape[1], q.shape[2]
    kv_heads = k.shape[1]
    kd, vd = _per_query_head(k, heads, dtype), _per_query_head(v, heads, dtype)
    dq = torch.zeros(q.shape, dtype=dtype, device=q.device)
    dk = torch.zeros(kd.shape, dtype=dtype, device=q.device)  # per query head, summed below
    dv = torch.zeros(vd.shape, dtype=dtype, device=q.device)
    for start in range(0, n_q, ROWS):
        rows = slice(start, min(n_q, start + ROWS))
        probs, _, m = _tile(q, kd, mask, rows, scale, dtype)
        do = grad_out[:, :, rows].to(dtype)
        qt = q[:, :, rows].to(dtype)
        delta = (do * masked_matmul(probs, m, vd)).sum(-1, keepdim=True)
        if grad_lse is not None:
            delta = delta - grad_lse[:, :, rows].to(dtype)[..., None]
        ds = torch.where(m, probs * (do @ vd.transpose(-1, -2) - delta), 0.0)
        dq[:, :, rows] = masked_matmul(ds, m, kd) * scale
        dk += masked_matmul(ds.transpose(-1, -2), m.transpose(-1, -2), qt) * scale
        dv += masked_matmul(probs.transpose(-1, -2), m.transpose(-1, -2), do)

    def per_kv_head(t):
        return t.unflatten(1, (kv_heads, heads // kv_heads)).sum(2)

    return dq.to(q.dtype), per_kv_head(dk).to(k.dtype), per_kv_head(dv).to(v.dtype)
