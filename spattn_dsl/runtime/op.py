"""``torch.ops.spattn.attention``: the compiled attention as a torch custom op, so that eager
autograd, ``torch.compile`` and ``torch.library.opcheck`` treat it as one opaque operator.

A custom op takes tensors and plain values only, so a ``SparseAttention`` is passed by its
registry number (``op_id``, valid within one process: enough for eager mode and
``torch.compile``, not for a graph exported to another process); the op's schema is
``attention(q, k, v, key_padding?, scale, op_id, documents?) -> (out, lse)``, its backward
the op ``attention_backward``. ``documents`` (packed sequences) is an int64 ``[batch, n_k]``
id tensor, so that new boundaries are new inputs, never a new op or a recompile.
"""
from __future__ import annotations

import itertools

import torch

_COMPILED: dict = {}
_IDS = itertools.count()


def register(attn) -> int:
    """The op_id under which the op finds ``attn``."""
    op_id = next(_IDS)
    _COMPILED[op_id] = attn
    return op_id


@torch.library.custom_op("spattn::attention", mutates_args=())
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              key_padding: torch.Tensor | None, scale: float, op_id: int,
              documents: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    return _COMPILED[op_id].run_forward(q, k, v, key_padding, scale, documents)


@attention.register_fake
def _(q, k, v, key_padding, scale, op_id, documents=None):
    return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("spattn::attention_backward", mutates_args=())
def attention_backward(grad_out: torch.Tensor, grad_lse: torch.Tensor | None, q: torch.Tensor,
                       k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                       key_padding: torch.Tensor | None, scale: float, op_id: int,
                       documents: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _COMPILED[op_id].run_backward(grad_out, grad_lse, q, k, v, out, lse, key_padding, scale,
                                         documents)


@attention_backward.register_fake
def _(grad_out, grad_lse, q, k, v, out, lse, key_padding, scale, op_id, documents=None):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, key_padding, scale, op_id, documents = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, key_padding, documents)
    ctx.scale, ctx.op_id = scale, op_id


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, key_padding, documents = ctx.saved_tensors
    dq, dk, dv = attention_backward(grad_out.contiguous(), grad_lse, q, k, v, out, lse,
                                    key_padding, ctx.scale, ctx.op_id, documents)
    return dq, dk, dv, None, None, None, None


attention.register_autograd(_backward, setup_context=_setup_context)
