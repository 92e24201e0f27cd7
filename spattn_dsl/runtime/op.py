"""``torch.ops.spattn.attention``: the compiled attention as a torch custom op, so that eager
autograd, ``torch.compile`` and ``torch.library.opcheck`` treat it as one opaque operator.

A custom op takes tensors and plain values only, so a ``SparseAttention`` is passed by its
registry number (``op_id``, valid within one process: enough for eager mode and
``torch.compile``, not for a graph exported to another process); the op's schema is
``attention(q, k, v, key_padding?, scale, op_id, documents?) -> (out, lse)``, its backward
the op ``attention_backward``. ``documents`` (packed sequences) is an int64 ``[batch, n_k]``
id tensor, so that new boundaries are new inputs, never a new op or a recompile.

``apply`` is what a call goes through: the op while ``torch.compile`` traces; in eager mode
an ``autograd.Function`` around the same two bodies when gradients are wanted, else the
forward body alone. Both skip the custom op's dispatch, a large part of a short call's host
time (decoding, small or very sparse patterns): ``benchmarks/bench_call_overhead.py`` on a
2-core CPU, 36 -> 27 microseconds per call without gradients, 74 -> 40 with them.
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


class _EagerAttention(torch.autograd.Function):
    """The op's forward and backward bodies without the custom-op dispatch (eager mode); a
    call with documents builds its tile lists once, for both."""

    @staticmethod
    def forward(ctx, q, k, v, key_padding, scale, op_id, documents):
        ctx.memo = {}  # a document plan, built once for forward and backward
        out, lse = _COMPILED[op_id].run_forward(q, k, v, key_padding, scale, documents, ctx.memo)
        ctx.save_for_backward(q, k, v, out, lse, key_padding, documents)
        ctx.scale, ctx.op_id = scale, op_id
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        q, k, v, out, lse, key_padding, documents = ctx.saved_tensors
        grad_out = torch.zeros_like(out) if grad_out is None else grad_out.contiguous()
        dq, dk, dv = _COMPILED[ctx.op_id].run_backward(grad_out, grad_lse, q, k, v, out, lse,
                                                        key_padding, ctx.scale, documents,
                                                        ctx.memo)
        return dq, dk, dv, None, None, None, None


def apply(q, k, v, key_padding, scale: float, op_id: int, documents=None):
    """(out, lse) of the compiled attention ``op_id``: through the custom op under
    ``torch.compile``, else through ``_EagerAttention`` when gradients are wanted, else the
    forward body alone."""
    if torch.compiler.is_compiling():
        if documents is None:
            return attention(q, k, v, key_padding, scale, op_id)
        return attention(q, k, v, key_padding, scale, op_id, documents)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return _EagerAttention.apply(q, k, v, key_padding, scale, op_id, documents)
    return _COMPILED[op_id].run_forward(q, k, v, key_padding, scale, documents)


# ---------------------------------------------------------------- dynamic patterns
# ``dynamic_attention(q, k, v, slots, key_padding?, scale, op_id, documents?) -> (out, lse)``:
# the static part's kernels plus the slot kernels (``dynamic``). The selection and its slots
# are computed before the op, outside the graph; the slots are a tensor input, so a new
# selection is new data, never a recompile.
@torch.library.custom_op("spattn::dynamic_attention", mutates_args=())
def dynamic_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor,
                      key_padding: torch.Tensor | None, scale: float, op_id: int,
                      documents: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    return _COMPILED[op_id].run_forward(q, k, v, slots, key_padding, scale, documents)


@dynamic_attention.register_fake
def _(q, k, v, slots, key_padding, scale, op_id, documents=None):
    return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("spattn::dynamic_attention_backward", mutates_args=())
def dynamic_attention_backward(grad_out: torch.Tensor, grad_lse: torch.Tensor | None,
                               q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               slots: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                               key_padding: torch.Tensor | None, scale: float, op_id: int,
                               documents: torch.Tensor | None = None
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _COMPILED[op_id].run_backward(grad_out, grad_lse, q, k, v, slots, out, lse,
                                         key_padding, scale, documents)


@dynamic_attention_backward.register_fake
def _(grad_out, grad_lse, q, k, v, slots, out, lse, key_padding, scale, op_id, documents=None):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _dynamic_setup_context(ctx, inputs, output):
    q, k, v, slots, key_padding, scale, op_id, documents = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, slots, out, lse, key_padding, documents)
    ctx.scale, ctx.op_id = scale, op_id


def _dynamic_backward(ctx, grad_out, grad_lse):
    q, k, v, slots, out, lse, key_padding, documents = ctx.saved_tensors
    dq, dk, dv = dynamic_attention_backward(grad_out.contiguous(), grad_lse, q, k, v, slots, out,
                                            lse, key_padding, ctx.scale, ctx.op_id, documents)
    return dq, dk, dv, None, None, None, None, None


dynamic_attention.register_autograd(_dynamic_backward, setup_context=_dynamic_setup_context)
