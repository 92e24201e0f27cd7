"""Softmax attention under the reference mask, in any dtype (float64 for checks).

``attention_reference`` builds the whole ``n_q x n_k`` score matrix from ``Pattern.mask``: the
oracle of the tests. ``attention_tiled`` computes the same, query tile by query tile over the
pattern's block layout (the key tiles a query tile visits, the exact predicate on PARTIAL
tiles only), so its memory grows with the allowed pairs: the CPU path of the runtime.

Masked keys are selected away, never multiplied by 0: a NaN or inf in ``v`` (or ``k``, ``q``)
at a pair a row cannot see does not reach that row.
"""
from __future__ import annotations

import torch

from ..ir.evaluate import head_count, select_head
from ..layout.build import lower
from ..layout.pairs import allowed

REFERENCE_TILE = 128  # query and key tile of the tiled reference


def reference_masks(pattern, n_q: int, n_k: int, heads: int, key_padding=None, device="cpu",
                    documents=None):
    """bool ``[1 or B, H, n_q, n_k]``: each head's ``pattern.mask`` (per batch row under its
    ``documents`` ids ``[B, n_k]`` when given), and the real keys of ``key_padding``
    (``[B, n_k]``, False = padding) when given."""
    if documents is None:
        masks = torch.stack([pattern.mask(n_q, n_k, head=h) for h in range(heads)])[None]
    else:
        masks = torch.stack([torch.stack([pattern.mask(n_q, n_k, head=h, documents=row)
                                          for h in range(heads)]) for row in documents.cpu()])
    masks = masks.to(device)
    if key_padding is not None:
        masks = masks & key_padding.to(device=device, dtype=torch.bool)[:, None, None, :]
    return masks


def attention_reference(pattern, q, k, v, scale: float | None = None, dtype=torch.float64,
                        key_padding=None, documents=None):
    """``softmax(q k^T * scale, masked) v`` per head, rows with no allowed key -> 0.

    ``q`` ``[B, H, n_q, D]``, ``k``/``v`` ``[B, H_kv, n_k, D]`` (H a multiple of H_kv); head h uses
    the mask ``pattern.mask(n_q, n_k, head=h)``. Returns ``(out [B, H, n_q, D], lse [B, H, n_q])``
    in ``dtype``. ``documents``: None or ``[B, n_k]`` ids (``Pattern.mask``'s, per batch row).
    """
    masks, scores, vd = _scores(pattern, q, k, v, scale, dtype, key_padding, documents)
    lse = torch.logsumexp(scores, dim=-1)
    probs = _probs(scores, lse, masks)
    return masked_matmul(probs, masks, vd), lse


def attention_reference_backward(pattern, grad_out, q, k, v, scale: float | None = None,
                                 dtype=torch.float32, key_padding=None, grad_lse=None,
                                 documents=None):
    """(dq, dk, dv) of ``attention_reference`` by the closed-form softmax gradient, without
    autograd (so it runs inside a custom op's backward), in ``dtype``; ``grad_lse`` is the
    gradient of its lse (or None)."""
    masks, scores, vd = _scores(pattern, q, k, v, scale, dtype, key_padding, documents)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    group = q.shape[1] // k.shape[1]
    probs = _probs(scores, torch.logsumexp(scores, dim=-1), masks)
    do = grad_out.to(dtype)
    out = masked_matmul(probs, masks, vd)
    dv = masked_matmul(probs.transpose(-1, -2), masks.transpose(-1, -2), do)
    dp = do @ vd.transpose(-1, -2)
    delta = (do * out).sum(-1, keepdim=True)
    if grad_lse is not None:
        delta = delta - grad_lse.to(dtype)[..., None]
    ds = torch.where(masks, probs * (dp - delta), 0.0)
    dq = masked_matmul(ds, masks, k.to(dtype).repeat_interleave(group, 1)) * scale
    dk = masked_matmul(ds.transpose(-1, -2), masks.transpose(-1, -2), q.to(dtype)) * scale

    def per_kv_head(t):  # sum the query heads of each group
        return t.unflatten(1, (k.shape[1], group)).sum(2)

    return dq, per_kv_head(dk), per_kv_head(dv)


def _scores(pattern, q, k, v, scale, dtype, key_padding, documents=None):
    n_q, n_k = q.shape[2], k.shape[2]
    heads, group = q.shape[1], q.shape[1] // k.shape[1]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    qd, kd, vd = (t.to(dtype) for t in (q, k, v))
    kd, vd = kd.repeat_interleave(group, 1), vd.repeat_interleave(group, 1)
    masks = reference_masks(pattern, n_q, n_k, heads, key_padding, q.device, documents)
    scores = torch.einsum("bhqd,bhkd->bhqk", qd, kd) * scale
    return masks, scores.masked_fill(~masks, float("-inf")), vd


def _probs(scores, lse, masks):
    probs = torch.exp(scores - lse.nan_to_num(neginf=0.0)[..., None])
    return probs.masked_fill(~masks, 0.0)


def masked_matmul(weights, mask, values, finite: bool | None = None):
    """``weights @ values`` (``[..., m, n] @ [..., n, d]``) in which a pair outside ``mask``
    (broadcast against ``weights``; its weight is 0) contributes nothing, even where the value
    is NaN or inf. Finite values take one matmul; the non-finite ones are added by selection.
    ``finite``: True when the caller knows every value is finite (skips the check)."""
    if finite:
        return weights @ values
    finite = torch.isfinite(values)
    if bool(finite.all()):
        return weights @ values
    out = weights @ values.masked_fill(~finite, 0.0)
    bad = (~finite).flatten(0, -3).any(0).any(-1)  # the columns holding a non-finite value
    mask = mask.expand(weights.shape)[..., bad, None]
    terms = weights[..., bad, None] * values.masked_fill(finite, 0.0)[..., None, bad, :]
    return out + torch.where(mask, terms, 0.0).sum(-2)


# ------------------------------------------------------------------ tiled over the layout
class _Tile:
    """One query tile of one head case: its rows and the heads of the case (slices, so that
    ``index`` selects a view), the key positions of its visited key tiles and the exact mask
    over them (``[1 or B, 1, rows, keys]``)."""

    def __init__(self, rows: slice, heads: slice, keys, mask):
        self.rows, self.heads, self.keys, self.mask = rows, heads, keys, mask
        self.index = (slice(None), heads, rows)


def _key_positions(tiles, block_n: int, n_k: int):
    pos = (tiles.long()[:, None] * block_n + torch.arange(block_n)).flatten()
    return pos[pos < n_k]


def _tiles(pattern, n_q, n_k, heads, key_padding, device, layout):
    """The query tiles of every head case, each with the keys it may see (FULL key tiles
    allowed whole, PARTIAL ones through the exact pair predicate)."""
    concrete = pattern.at(n_k)
    layout = layout or lower(concrete, n_q, n_k, REFERENCE_TILE, REFERENCE_TILE)
    bm, bn = layout.block_m, layout.block_n
    cases = head_count(concrete)
    assert layout.cases == cases, "layout of another pattern"
    padding = None if key_padding is None else key_padding.to(device=device, dtype=torch.bool)
    for case in range(cases):
        expr = select_head(concrete, case)
        case_heads = slice(case, heads, cases)
        for i in range(layout.tiles[0]):
            full = layout.full_indices[case, i, :layout.full_counts[case, i]]
            partial = layout.partial_indices[case, i, :layout.partial_counts[case, i]]
            full_keys = _key_positions(full, bn, n_k)
            partial_keys = _key_positions(partial, bn, n_k)
            rows = torch.arange(i * bm, min(n_q, (i + 1) * bm))
            q_pos = rows + (n_k - n_q)
            mask = torch.cat([torch.ones(len(rows), len(full_keys), dtype=torch.bool),
                              allowed(expr, q_pos[:, None], partial_keys[None, :], n_k)
                              .expand(len(rows), len(partial_keys))], dim=1)
            keys = torch.cat([full_keys, partial_keys]).to(device)
            mask = mask.to(device)[None, None]
            if padding is not None:
                mask = mask & padding[:, keys][:, None, None, :]
            yield _Tile(slice(i * bm, i * bm + len(rows)), case_heads, keys, mask)


def _gather(tile, q, k, v, group, dtype):
    """(q rows, k keys, v keys) of a tile's heads, in ``dtype``."""
    kv_heads = torch.arange(q.shape[1], device=q.device)[tile.heads] // group
    qt = q[tile.index].to(dtype)
    kt = k.index_select(2, tile.keys).index_select(1, kv_heads).to(dtype)
    vt = v.index_select(2, tile.keys).index_select(1, kv_heads).to(dtype)
    return qt, kt, vt


def _tile_probs(tile, qt, kt, scale):
    """(probabilities ``[B, h, rows, keys]`` (0 outside the mask), lse ``[B, h, rows]``)."""
    scores = torch.matmul(qt, kt.transpose(-1, -2)).mul_(scale)
    scores.masked_fill_(~tile.mask, float("-inf"))
    top = scores.amax(-1, keepdim=True).nan_to_num_(neginf=0.0)  # 0 in rows without keys
    probs = scores.sub_(top).exp_()  # masked scores give exactly 0
    total = probs.sum(-1, keepdim=True)  # >= 1 in a row with a key (its maximum gives 1)
    lse = (top + total.log()).squeeze(-1)  # -inf in rows without keys
    return probs.div_(total.clamp_(min=1.0)), lse


def _all_finite(*tensors) -> list:
    """Per tensor: whether all its values are finite (checked once, not per tile)."""
    return [bool(torch.isfinite(t).all()) for t in tensors]


def attention_tiled(pattern, q, k, v, scale: float | None = None, dtype=torch.float32,
                    key_padding=None, layout=None):
    """``attention_reference`` (same arguments and results) without an ``n_q x n_k`` matrix:
    one query tile at a time over the block layout (``layout``, or one of 128 x 128 tiles)."""
    batch, heads, n_q, head_dim = q.shape
    n_k, group = k.shape[2], heads // k.shape[1]
    scale = head_dim ** -0.5 if scale is None else scale
    out = torch.zeros(batch, heads, n_q, head_dim, dtype=dtype, device=q.device)
    lse = torch.full((batch, heads, n_q), float("-inf"), dtype=dtype, device=q.device)
    [finite_v] = _all_finite(v)
    for tile in _tiles(pattern, n_q, n_k, heads, key_padding, q.device, layout):
        if len(tile.keys) == 0:
            continue
        qt, kt, vt = _gather(tile, q, k, v, group, dtype)
        probs, tile_lse = _tile_probs(tile, qt, kt, scale)
        out[tile.index] = masked_matmul(probs, tile.mask, vt, finite_v)
        lse[tile.index] = tile_lse
    return out, lse


def attention_tiled_backward(pattern, grad_out, q, k, v, scale: float | None = None,
                             dtype=torch.float32, key_padding=None, grad_lse=None, layout=None):
    """``attention_reference_backward`` (same arguments and results), one query tile at a time:
    each tile's rows get their dq whole, and add their share of dk and dv at the tile's keys."""
    batch, heads, n_q, head_dim = q.shape
    kv_heads, n_k = k.shape[1], k.shape[2]
    group = heads // kv_heads
    scale = head_dim ** -0.5 if scale is None else scale
    dq = torch.zeros(q.shape, dtype=dtype, device=q.device)
    dk = torch.zeros(batch, heads, n_k, head_dim, dtype=dtype, device=q.device)  # per query head
    dv = torch.zeros_like(dk)
    finite_q, finite_k, finite_v, finite_do = _all_finite(q, k, v, grad_out)
    for tile in _tiles(pattern, n_q, n_k, heads, key_padding, q.device, layout):
        if len(tile.keys) == 0:
            continue
        qt, kt, vt = _gather(tile, q, k, v, group, dtype)
        probs, _ = _tile_probs(tile, qt, kt, scale)
        do = grad_out[tile.index].to(dtype)
        out = masked_matmul(probs, tile.mask, vt, finite_v)
        delta = (do * out).sum(-1, keepdim=True)
        if grad_lse is not None:
            delta = delta - grad_lse[tile.index].to(dtype)[..., None]
        ds = probs * (do @ vt.transpose(-1, -2) - delta)
        if not finite_v:  # a NaN in v at a masked key makes dp NaN there: select it away
            ds = torch.where(tile.mask, ds, 0.0)
        mask_t = tile.mask.transpose(-1, -2)
        dq[tile.index] = masked_matmul(ds, tile.mask, kt, finite_k) * scale
        for grads, part in ((dk, masked_matmul(ds.transpose(-1, -2), mask_t, qt, finite_q) * scale),
                            (dv, masked_matmul(probs.transpose(-1, -2), mask_t, do, finite_do))):
            grads[:, tile.heads].index_add_(2, tile.keys, part)  # a view: adds in place

    def per_kv_head(t):  # sum the query heads of each group
        return t.unflatten(1, (kv_heads, group)).sum(2)

    return dq, per_kv_head(dk), per_kv_head(dv)
