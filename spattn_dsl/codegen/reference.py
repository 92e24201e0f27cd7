"""Naive softmax attention under the reference mask, in any dtype (float64 for checks)."""
from __future__ import annotations

import torch


def reference_masks(pattern, n_q: int, n_k: int, heads: int, key_padding=None, device="cpu"):
    """bool ``[1 or B, H, n_q, n_k]``: each head's ``pattern.mask``, and the real keys of
    ``key_padding`` (``[B, n_k]``, False = padding) when given."""
    masks = torch.stack([pattern.mask(n_q, n_k, head=h) for h in range(heads)]).to(device)[None]
    if key_padding is not None:
        masks = masks & key_padding.to(device=device, dtype=torch.bool)[:, None, None, :]
    return masks


def attention_reference(pattern, q, k, v, scale: float | None = None, dtype=torch.float64,
                        key_padding=None):
    """``softmax(q k^T * scale, masked) v`` per head, rows with no allowed key -> 0.

    ``q`` ``[B, H, n_q, D]``, ``k``/``v`` ``[B, H_kv, n_k, D]`` (H a multiple of H_kv); head h uses
    the mask ``pattern.mask(n_q, n_k, head=h)``. Returns ``(out [B, H, n_q, D], lse [B, H, n_q])``
    in ``dtype``.
    """
    masks, scores, vd = _scores(pattern, q, k, v, scale, dtype, key_padding)
    lse = torch.logsumexp(scores, dim=-1)
    probs = _probs(scores, lse, masks)
    return torch.einsum("bhqk,bhkd->bhqd", probs, vd), lse


def attention_reference_backward(pattern, grad_out, q, k, v, scale: float | None = None,
                                 dtype=torch.float32, key_padding=None, grad_lse=None):
    """(dq, dk, dv) of ``attention_reference`` by the closed-form softmax gradient, without
    autograd (so it runs inside a custom op's backward), in ``dtype``; ``grad_lse`` is the
    gradient of its lse (or None)."""
    masks, scores, vd = _scores(pattern, q, k, v, scale, dtype, key_padding)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    group = q.shape[1] // k.shape[1]
    probs = _probs(scores, torch.logsumexp(scores, dim=-1), masks)
    do = grad_out.to(dtype)
    out = torch.einsum("bhqk,bhkd->bhqd", probs, vd)
    dv = torch.einsum("bhqk,bhqd->bhkd", probs, do)
    dp = torch.einsum("bhqd,bhkd->bhqk", do, vd)
    delta = (do * out).sum(-1, keepdim=True)
    if grad_lse is not None:
        delta = delta - grad_lse.to(dtype)[..., None]
    ds = probs * (dp - delta)
    dq = torch.einsum("bhqk,bhkd->bhqd", ds, k.to(dtype).repeat_interleave(group, 1)) * scale
    dk = torch.einsum("bhqk,bhqd->bhkd", ds, q.to(dtype)) * scale

    def per_kv_head(t):  # sum the query heads of each group
        return t.unflatten(1, (k.shape[1], group)).sum(2)

    return dq, per_kv_head(dk), per_kv_head(dv)


def _scores(pattern, q, k, v, scale, dtype, key_padding):
    n_q, n_k = q.shape[2], k.shape[2]
    heads, group = q.shape[1], q.shape[1] // k.shape[1]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    qd, kd, vd = (t.to(dtype) for t in (q, k, v))
    kd, vd = kd.repeat_interleave(group, 1), vd.repeat_interleave(group, 1)
    masks = reference_masks(pattern, n_q, n_k, heads, key_padding, q.device)
    scores = torch.einsum("bhqd,bhkd->bhqk", qd, kd) * scale
    return masks, scores.masked_fill(~masks, float("-inf")), vd


def _probs(scores, lse, masks):
    probs = torch.exp(scores - lse.nan_to_num(neginf=0.0)[..., None])
    return probs.masked_fill(~masks, 0.0)
