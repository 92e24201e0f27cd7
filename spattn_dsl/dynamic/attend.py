"""``compile(pattern)`` for a pattern with dynamic terms (SPEC section 8): each call selects
(``select``'s contract: the units with the highest estimates among the candidates), then
attends under ``pattern.mask(..., selection=s)`` in one softmax.

Paths: without kernels (a CPU without ``TRITON_INTERPRET``), or for an expression the kernels
do not split (a dynamic term under a negation or inside ``blocks``), attention under the
selection's mask tile by tile (``masked``). Gradients flow through the attention as if the
selection were fixed; the selection (and ``scores``) get none."""
from __future__ import annotations

import torch

from ..runtime.attention import check_document_ids, check_inputs, check_padding
from ..semantics.select import select
from .masked import masked_backward, masked_forward


class DynamicAttention:
    """The compiled attention of a dynamic pattern; call it as ``attn(q, k, v, scale=None,
    key_padding=None, documents=None, scores=None, return_selection=False)``."""

    def __init__(self, pattern, **hints):
        self.pattern = pattern
        self.hints = hints

    def __call__(self, q, k, v=None, scale=None, key_padding=None, documents=None, scores=None,
                 return_selection: bool = False):
        out, _, selection = self.forward(q, k, v, scale, key_padding, documents, scores)
        return (out, selection) if return_selection else out

    def forward(self, q, k, v=None, scale=None, key_padding=None, documents=None, scores=None):
        """(out, lse, selection): the output, the natural-log log-sum-exp per row (fp32),
        both differentiable, and the selection they were computed under."""
        scale = check_inputs(q, k, v, scale)
        key_padding = check_padding(key_padding, q, k)
        if documents is not None:
            documents = check_document_ids(documents, q, k)
        selection = self.select(q, k, scores, documents, scale)
        mask = self.mask(selection, key_padding, q.device)
        out, lse = _MaskedAttention.apply(q, k, v, mask, scale)
        return out, lse, selection

    def select(self, q, k, scores, documents, scale: float):
        """This call's selection (the float64 reference)."""
        return select(self.pattern, q, k, scores, documents, scale=scale)

    def mask(self, selection, key_padding, device) -> torch.Tensor:
        """Bool ``[B, H, n_q, n_k]``: the pattern under the selection, padding keys removed."""
        mask = self.pattern.mask(selection.n_q, selection.n_k, selection=selection).to(device)
        if key_padding is not None:
            mask &= key_padding[:, None, None, :]
        return mask


class _MaskedAttention(torch.autograd.Function):
    """Attention under a fixed bool mask; the mask gets no gradient."""

    @staticmethod
    def forward(ctx, q, k, v, mask, scale):
        out, lse = masked_forward(q, k, v, mask, scale)
        ctx.save_for_backward(q, k, v, mask)
        ctx.scale = scale
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        q, k, v, mask = ctx.saved_tensors
        if grad_out is None:
            grad_out = torch.zeros_like(q)
        dq, dk, dv = masked_backward(grad_out, grad_lse, q, k, v, mask, ctx.scale)
        return dq, dk, dv, None, None
