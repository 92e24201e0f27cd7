"""Launch the slot kernels (``kernels``) and merge their result with the static part's."""
from __future__ import annotations

import importlib

import torch

from ..codegen.reference import merge as merge_parts

LOG2E = 1.4426950408889634
BLOCK_M, BLOCK_N = 16, 16  # rows and slots per step: [16, 16, head_dim] gathers


def _kernels():
    """The kernel module, imported at first use: ``triton.jit`` reads ``TRITON_INTERPRET`` when
    the module is imported, so a process that ran the CPU path first still interprets."""
    return importlib.import_module(".kernels", __package__)


def _head_dim_pad(d: int) -> int:
    return max(16, 1 << (d - 1).bit_length())


def slots_forward(q, k, v, slots, scale: float):
    """(out, lse) fp32 of the attention of each row over its slots alone."""
    batch, heads, n_q, dim = q.shape
    out = torch.empty(q.shape, device=q.device, dtype=torch.float32)
    lse = torch.empty(q.shape[:3], device=q.device, dtype=torch.float32)
    grid = (-(-n_q // BLOCK_M), batch * heads)
    _kernels().slots_forward[grid](
        q, k, v, slots, out, lse, *q.stride(), *k.stride(), *v.stride(), *slots.stride(),
        *out.stride(), lse.stride(0), lse.stride(1), heads, heads // k.shape[1], n_q,
        slots.shape[-1], scale * LOG2E,
        HEAD_DIM=dim, HEAD_DIM_PAD=_head_dim_pad(dim), BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N)
    return out, lse


def slots_backward(grad_out, q, k, v, slots, lse, delta, scale: float):
    """(dq, dk, dv) fp32 of the slots' pairs, from the final lse and Delta."""
    batch, heads, n_q, dim = q.shape
    q, grad_out = q.contiguous(), grad_out.contiguous()
    dq = torch.empty(q.shape, device=q.device, dtype=torch.float32)
    dk = torch.zeros(k.shape, device=q.device, dtype=torch.float32)
    dv = torch.zeros(v.shape, device=q.device, dtype=torch.float32)
    grid = (-(-n_q // BLOCK_M), batch * heads)
    _kernels().slots_backward[grid](
        q, k, v, slots, grad_out, lse, delta, dq, dk, dv, *q.stride(), *k.stride(), *v.stride(),
        *slots.stride(), *grad_out.stride(), lse.stride(0), lse.stride(1), *dk.stride(),
        heads, heads // k.shape[1], n_q, slots.shape[-1], scale * LOG2E, scale,
        HEAD_DIM=dim, HEAD_DIM_PAD=_head_dim_pad(dim), BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N)
    return dq, dk, dv


def merge(out_a, lse_a, out_b, lse_b):
    """(out, lse) of two disjoint parts of one softmax (``codegen.reference.merge``), the
    static part's output in fp32."""
    return merge_parts(out_a.float(), lse_a, out_b, lse_b)
