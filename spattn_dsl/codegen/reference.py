"""Naive softmax attention under the reference mask, in any dtype (float64 for checks)."""
from __future__ import annotations

import torch


def attention_reference(pattern, q, k, v, scale: float | None = None, dtype=torch.float64):
    """``softmax(q k^T * scale, masked) v`` per head, rows with no allowed key -> 0.

    ``q`` ``[B, H, n_q, D]``, ``k``/``v`` ``[B, H_kv, n_k, D]`` (H a multiple of H_kv); head h uses
    the mask ``pattern.mask(n_q, n_k, head=h)``. Returns ``(out [B, H, n_q, D], lse [B, H, n_q])``
    in ``dtype``.
    """
    n_q, n_k = q.shape[2], k.shape[2]
    heads, group = q.shape[1], q.shape[1] // k.shape[1]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    qd, kd, vd = (t.to(dtype) for t in (q, k, v))
    kd, vd = kd.repeat_interleave(group, 1), vd.repeat_interleave(group, 1)
    masks = torch.stack([pattern.mask(n_q, n_k, head=h) for h in range(heads)]).to(q.device)
    scores = torch.einsum("bhqd,bhkd->bhqk", qd, kd) * scale
    scores = scores.masked_fill(~masks, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - lse.nan_to_num(neginf=0.0)[..., None])
    probs = probs.masked_fill(~masks, 0.0)
    return torch.einsum("bhqk,bhkd->bhqd", probs, vd), lse
