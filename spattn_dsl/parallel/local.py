"""Attention of query positions against arbitrary key positions, masked by the exact predicate.

The one-device kernels assume queries are the last ``n_q`` positions of keys ``0..n_k-1``; a
context-parallel rank holds a chunk of queries and a scattered set of keys (its own chunk plus
what it received). This module is the exact baseline for that local step: per block of
queries, the pair mask comes from ``layout.pairs.allowed`` on global positions (with
documents, on document-relative positions), only the key columns some query of the block may
attend are kept, and softmax attention runs in fp32 with its closed-form backward (masks
recomputed, never stored). It is written to be replaced by generated kernels on position
lists; the interface is ``masked_attention(q, k, v, mask_fn, scale)``.
"""
from __future__ import annotations

import torch

from ..ir.evaluate import select_head
from ..layout.pairs import allowed

QUERY_BLOCK = 256
BLOCK_ELEMENTS = 1 << 27  # fp32 scores of one query block (512 MiB): long key lists take fewer rows


def _query_block(q, k) -> int:
    per_row = q.shape[0] * q.shape[1] * max(k.shape[2], 1)
    return max(1, min(QUERY_BLOCK, BLOCK_ELEMENTS // per_row))


class PairMask:
    """``mask(rows)``: bool ``[batch or 1, cases, len(rows), n_keys]`` for the query rows
    ``rows`` (indices into ``q_pos``) against every key of ``k_pos``, all global positions on
    a sequence of ``n``. ``documents`` (int64 ``[batch, n]``) and ``key_padding`` (bool
    ``[batch, n]``, False = padding) are whole-sequence tensors."""

    def __init__(self, pattern, n: int, q_pos, k_pos, documents=None, key_padding=None):
        self.pattern, self.n = pattern, n
        self.q_pos, self.k_pos = q_pos.cpu(), k_pos.cpu()
        self.documents = None if documents is None else documents.cpu()
        self.padding = None if key_padding is None else key_padding.cpu()[:, self.k_pos]
        if self.documents is not None:
            from ..semantics.documents import document_bounds
            self.start, self.length = document_bounds(self.documents)

    def __call__(self, rows) -> torch.Tensor:
        q = self.q_pos[rows][:, None]
        k = self.k_pos[None, :]
        if self.documents is None:
            concrete = self.pattern.at(self.n)
            mask = torch.stack([allowed(select_head(concrete, c), q, k, self.n).expand(
                len(rows), len(self.k_pos)) for c in range(self.pattern.heads)])[None]
        else:
            mask = torch.stack([self._document_mask(b, q, k)
                                for b in range(self.documents.shape[0])])
        if self.padding is not None:
            mask = mask & self.padding[:, None, None, :]
        return mask

    def _document_mask(self, b: int, q, k) -> torch.Tensor:
        """Same document, and the pattern on document-relative positions at that document's
        length (one pass per distinct length)."""
        ids, start, length = self.documents[b], self.start[b], self.length[b]
        same = ids[q] == ids[k]
        out = torch.zeros(self.pattern.heads, q.shape[0], k.shape[1], dtype=torch.bool)
        for size in torch.unique(length[q[:, 0]]).tolist():
            concrete = self.pattern.at(size)
            here = same & (length[q] == size)
            rq = (q - start[q]).clamp(0, size - 1)  # rows of other lengths: masked below
            rk = (k - start[q]).clamp(0, size - 1)  # keys of other documents: masked by same
            for c in range(self.pattern.heads):
                out[c] |= here & allowed(select_head(concrete, c), rq, rk, size)
        return out


def _expand(mask, heads: int):
    """``[b, cases, m, n]`` -> ``[b, heads, m, n]``: head h uses case h mod cases."""
    index = torch.arange(heads, device=mask.device) % mask.shape[1]
    return mask[:, index]


def _block(mask, rows, heads: int, device):
    """(the key columns some query of the block may attend, the mask on them per head)."""
    m = mask(rows).to(device)
    cols = m.any(dim=(0, 1, 2)).nonzero()[:, 0]
    return cols, _expand(m[..., cols], heads)


class _MaskedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, scale):
        group = q.shape[1] // k.shape[1]
        out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        lse = torch.full(q.shape[:3], float("-inf"), dtype=torch.float32, device=q.device)
        step = _query_block(q, k)
        for start in range(0, q.shape[2], step):
            rows = torch.arange(start, min(start + step, q.shape[2]))
            cols, m = _block(mask, rows, q.shape[1], q.device)
            if len(cols) == 0:
                continue
            kb, vb = (t[:, :, cols].float().repeat_interleave(group, 1) for t in (k, v))
            s = (q[:, :, rows].float() @ kb.transpose(-1, -2) * scale).masked_fill(~m, float("-inf"))
            row_lse = torch.logsumexp(s, -1)
            p = torch.exp(s - row_lse.nan_to_num(neginf=0.0)[..., None])  # empty rows: p = 0
            out[:, :, rows] = p @ vb
            lse[:, :, rows] = row_lse
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.mask, ctx.scale = mask, scale
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        mask, scale = ctx.mask, ctx.scale
        group = q.shape[1] // k.shape[1]
        dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        dk = torch.zeros(k.shape[0], q.shape[1], *k.shape[2:], dtype=torch.float32, device=q.device)
        dv = torch.zeros_like(dk)
        grad_out = grad_out.float()
        delta = (grad_out * out).sum(-1)
        step = _query_block(q, k)
        for start in range(0, q.shape[2], step):
            rows = torch.arange(start, min(start + step, q.shape[2]))
            cols, m = _block(mask, rows, q.shape[1], q.device)
            if len(cols) == 0:
                continue
            kb, vb = (t[:, :, cols].float().repeat_interleave(group, 1) for t in (k, v))
            qb, gb = q[:, :, rows].float(), grad_out[:, :, rows]
            s = (qb @ kb.transpose(-1, -2) * scale).masked_fill(~m, float("-inf"))
            p = torch.exp(s - lse[:, :, rows].nan_to_num(neginf=0.0)[..., None])
            ds = p * (gb @ vb.transpose(-1, -2) - delta[:, :, rows, None])
            dq[:, :, rows] = ds @ kb * scale
            dk[:, :, cols] += ds.transpose(-1, -2) @ qb * scale
            dv[:, :, cols] += p.transpose(-1, -2) @ gb
        fold = k.shape[:2] + (group,) + k.shape[2:]  # query heads back onto their KV head
        dk = dk.view(fold).sum(2)
        dv = dv.view(fold).sum(2)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None


def masked_attention(q, k, v, mask: PairMask, scale: float):
    """Softmax attention of ``q`` ``[B, H, m, D]`` over ``k``, ``v`` ``[B, H_kv, n, D]`` where
    ``mask(rows)`` allows pairs; rows with no allowed key give 0. Differentiable."""
    return _MaskedAttention.apply(q, k, v, mask, scale)
