"""``compile(pattern)`` for a pattern with dynamic terms (docs/language.md §5): each call selects
(``select``'s contract: the units with the highest estimates among the candidates), then
attends under ``pattern.mask(..., selection=s)`` in one softmax.

Paths:

- kernels (a GPU, or the CPU under ``TRITON_INTERPRET``) for expressions whose selection only
  adds pairs (``expr.splits_exactly``): the selection on the device (``select.device_select``),
  the static part's own plan of kernels (the pattern with every dynamic term replaced by
  ``none``, compiled as any static pattern) giving (out, lse), the slot kernels over the
  selected keys that the static part does not allow (``slots``, ``kernels``), the two merged by
  log-sum-exp. The backward runs both parts' kernels from the final out and lse; their
  gradients add.
- otherwise (a CPU without the interpreter; a dynamic term under a negation or inside
  ``blocks``): the float64 reference ``select`` (on the CPU) or the device selection, then
  attention under the selection's mask tile by tile (``masked``; the mask is ``n_q x n_k``
  bits).

Gradients flow through the attention as if the selection were fixed; the selection (and
``scores``) get none."""
from __future__ import annotations

import torch

from ..runtime import op
from ..runtime.attention import (SparseAttention, check_document_ids, check_inputs,
                                 check_padding, interpreting)
from ..semantics.select import select
from . import launch
from .expr import splits_exactly, static_part
from .masked import masked_backward, masked_forward
from .select import device_select
from .slots import build_slots


class DynamicAttention:
    """The compiled attention of a dynamic pattern; call it as ``attn(q, k, v, scale=None,
    key_padding=None, documents=None, scores=None, return_selection=False)``."""

    def __init__(self, pattern, **hints):
        self.pattern = pattern
        self.split = splits_exactly(pattern.expr)
        self.static = SparseAttention(static_part(pattern), **hints)  # checks the hints too
        self.op_id = op.register(self)

    def __call__(self, q, k, v=None, scale=None, key_padding=None, documents=None, scores=None,
                 return_selection: bool = False):
        out, _, selection = self.forward(q, k, v, scale, key_padding, documents, scores)
        if getattr(k, "is_spattn_kv_cache", False):
            return (out, selection) if return_selection else out
        return (out, on_cpu(selection)) if return_selection else out

    def forward(self, q, k, v=None, scale=None, key_padding=None, documents=None, scores=None):
        """(out, lse, selection): the output, the natural-log log-sum-exp per row (fp32),
        both differentiable, and the selection they were computed under.

        ``attn(q, cache)`` with a ``KVCache`` (``decode.select``): decoding, selecting among
        the cached units as ``attn(q, k_all, v_all)`` selects on the full history; the
        selection is then a tuple of one ``Selection`` per sequence (batch 1, ``n_q`` its
        query rows, ``n_k`` its length), not differentiable (the cache holds no graph)."""
        if getattr(k, "is_spattn_kv_cache", False):
            from ..decode.attend import attend_dynamic
            return attend_dynamic(self, q, k, v, scale, key_padding, documents, scores)
        scale = check_inputs(q, k, v, scale)
        key_padding = check_padding(key_padding, q, k)
        if documents is not None:
            documents = check_document_ids(documents, q, k)
        kernels = q.device.type == "cuda" or interpreting()
        if kernels and self.split:
            selection, slots = self._select(q, k, scores, documents, key_padding, scale)
            out, lse = self._attend(q, k, v, slots, key_padding, scale, documents)
        else:
            selection, mask = self._select_mask(q, k, scores, documents, key_padding, scale,
                                                kernels)
            out, lse = _MaskedAttention.apply(q, k, v, mask, scale)
        return out, lse, selection

    @torch.compiler.disable
    def _select_mask(self, q, k, scores, documents, key_padding, scale, kernels):
        """(selection, bool mask): outside any compiled graph, as ``_select`` (a traced
        selection would recompile for each new choice)."""
        choose = device_select if kernels else select
        selection = choose(self.pattern, q, k, scores, documents, scale=scale)
        return selection, self.mask(selection, key_padding, q.device)

    @torch.compiler.disable
    def _select(self, q, k, scores, documents, key_padding, scale):
        """(selection, slots): outside any compiled graph (data-dependent Python); the slots
        enter the op as a tensor."""
        selection = device_select(self.pattern, q, k, scores, documents, scale=scale)
        return selection, build_slots(self.pattern, selection, key_padding)

    def _attend(self, q, k, v, slots, key_padding, scale, documents):
        """(out, lse): the custom op while ``torch.compile`` traces, else ``_SplitAttention``
        (the same bodies without the op's dispatch)."""
        if torch.compiler.is_compiling():
            return op.dynamic_attention(q, k, v, slots, key_padding, scale, self.op_id,
                                        documents)
        return _SplitAttention.apply(q, k, v, slots, key_padding, documents, scale, self)

    # -------------------------------------------------------- the op's bodies
    def run_forward(self, q, k, v, slots, key_padding, scale, documents=None):
        """(out, lse): the static part's kernels and the slot kernels, merged."""
        out_s, lse_s = self.static.run_forward(q, k, v, key_padding, scale, documents)
        out_d, lse_d = launch.slots_forward(q, k, v, slots, scale)
        out, lse = launch.merge(out_s, lse_s, out_d, lse_d)
        return out.to(q.dtype), lse

    def run_backward(self, grad_out, grad_lse, q, k, v, slots, out, lse, key_padding, scale,
                     documents=None):
        """(dq, dk, dv): both parts' kernels from the final out and lse; the gradients add."""
        grads = self.static.run_backward(grad_out, grad_lse, q, k, v, out, lse, key_padding,
                                         scale, documents)
        delta = (grad_out.float() * out.float()).sum(-1)
        if grad_lse is not None:
            delta = delta - grad_lse
        extra = launch.slots_backward(grad_out, q, k, v, slots, lse, delta, scale)
        return tuple((a.float() + b).to(a.dtype) for a, b in zip(grads, extra))

    def mask(self, selection, key_padding, device) -> torch.Tensor:
        """Bool ``[B, H, n_q, n_k]``: the pattern under the selection, padding keys removed."""
        selection = on_cpu(selection)
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


class _SplitAttention(torch.autograd.Function):
    """``dynamic_attention``'s bodies in eager mode (``DynamicAttention.run_forward`` and
    ``run_backward``)."""

    @staticmethod
    def forward(ctx, q, k, v, slots, key_padding, documents, scale, attn):
        out, lse = attn.run_forward(q, k, v, slots, key_padding, scale, documents)
        ctx.save_for_backward(q, k, v, slots, key_padding, documents, out, lse)
        ctx.scale, ctx.attn = scale, attn
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        q, k, v, slots, key_padding, documents, out, lse = ctx.saved_tensors
        grad_out = torch.zeros_like(out) if grad_out is None else grad_out.contiguous()
        dq, dk, dv = ctx.attn.run_backward(grad_out, grad_lse, q, k, v, slots, out, lse,
                                           key_padding, ctx.scale, documents)
        return dq, dk, dv, None, None, None, None, None


def on_cpu(selection):
    """The selection with its tensors on the CPU (what ``Pattern.mask`` reads)."""
    import dataclasses

    def move(t):
        return dataclasses.replace(t, indices=t.indices.cpu(), groups=t.groups.cpu(),
                                   starts=t.starts.cpu())
    ids = None if selection.documents is None else selection.documents.cpu()
    return dataclasses.replace(selection, terms=tuple(move(t) for t in selection.terms),
                               documents=ids)
