"""Launch the generated kernels (forward, backward dQ and dK/dV) on a layout: the only place
kernels are called."""
from __future__ import annotations

import torch

from ..layout.pairs import random_table
from ..ir import nodes as N

LOG2E = 1.4426950408889634


def random_tables(module, n_k: int, device) -> list:
    """int32 ``[rows, r]`` draw tables for the kernel's random nodes (argument order)."""
    out = []
    for r, seed, divisors in module.TABLES:
        rows = n_k
        for b in divisors:
            rows = -(-rows // b)
        table = random_table(N.Random(r, seed), rows).to(torch.int32).contiguous()
        out.append(table.to(device))
    return out


class Plan:
    """Everything one launch needs for a problem size: kernel module, tile config, the
    layout's tensors on the device, its range flags, the random tables."""

    def __init__(self, module, layout, config, device):
        self.module = module
        self.config = config
        self.full_range = layout.full_is_range
        self.partial_range = layout.partial_is_range
        self.merged = config.merged and layout.visit_is_range
        self.full_q_range = layout.full_q_is_range
        self.partial_q_range = layout.partial_q_is_range
        self.visit_start = layout.visit_start.to(device)
        self.col_order = layout.col_order.to(device)
        self.layout = layout.to(device)
        self.tables = random_tables(module, layout.n_k, device)


def forward(plan: Plan, q, k, v, scale: float, key_padding=None, out=None, lse=None):
    """(out ``[B, H, n_q, D]``, lse float32 ``[B, H, n_q]``) of one launch (into ``out`` and
    ``lse`` when given). ``key_padding``: None or ``[B, n_k]`` bool, False = a padding key."""
    module, layout, config = plan.module, plan.layout, plan.config
    batch, heads, n_q, head_dim = q.shape
    n_k = k.shape[2]
    out = q.new_empty(q.shape) if out is None else out
    if lse is None:
        lse = torch.empty(batch, heads, n_q, device=q.device, dtype=torch.float32)
    if n_q == 0 or batch == 0 or heads == 0:
        return out, lse
    pad, pad_stride = _padding(key_padding, lse)
    n_tiles_q = layout.tiles[0]
    module.FORWARD[(n_tiles_q * batch * heads,)](
        q, k, v, out, lse, pad,
        layout.full_counts, layout.full_indices, layout.partial_counts, layout.partial_indices,
        layout.row_order, plan.visit_start,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), lse.stride(0), lse.stride(1),
        pad_stride, batch, heads, heads // k.shape[1], n_q, n_k, n_tiles_q,
        layout.full_indices.shape[-1], layout.partial_indices.shape[-1],
        scale * LOG2E, *_table_args(plan.tables),
        MERGED=plan.merged, EVEN_N=n_k % config.block_n == 0,
        FULL_RANGE=plan.full_range, PARTIAL_RANGE=plan.partial_range,
        **_common(module, q, config, key_padding),
    )
    return out, lse


def backward(dq_plan: Plan, dkdv_plan: Plan, grad_out, q, k, v, out, lse, scale: float,
             key_padding=None, grad_lse=None):
    """(dq, dk, dv) of the attention that ``forward`` computed (``out``, ``lse``): the dQ
    kernel over query tiles (``dq_plan``'s layout), the dK/dV kernel over key tiles of the
    transposed layout (``dkdv_plan``'s). ``grad_lse`` (or None) is the gradient of ``lse``."""
    dq, dk, dv = q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)
    if min(*q.shape[:3], k.shape[2]) == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    delta = backward_delta(dq_plan, grad_out, out, grad_lse)
    lse = lse.contiguous()
    backward_dq(dq_plan, grad_out, q, k, v, lse, delta, scale, key_padding, dq)
    backward_dkdv(dkdv_plan, grad_out, q, k, v, lse, delta, scale, key_padding, dk, dv)
    return dq, dk, dv


def backward_delta(plan: Plan, grad_out, out, grad_lse=None):
    """float32 ``[B, H, n_q]``: Delta = rowsum(dO * O). An lse gradient g adds g * P to dS,
    that is, subtracts g from Delta."""
    batch, heads, n_q, head_dim = out.shape
    delta = torch.empty(batch, heads, n_q, device=out.device, dtype=torch.float32)
    block_m = 64
    plan.module.BACKWARD_DELTA[(-(-n_q // block_m), batch * heads)](
        out, grad_out, delta if grad_lse is None else grad_lse.contiguous(), delta,
        *out.stride(), *grad_out.stride(), delta.stride(0), delta.stride(1), heads, n_q,
        HEAD_DIM=head_dim, HEAD_DIM_PAD=_padded(head_dim), BLOCK_M=block_m,
        HAS_GRAD_LSE=grad_lse is not None,
    )
    return delta


def backward_dq(plan: Plan, grad_out, q, k, v, lse, delta, scale, key_padding, dq):
    """The dQ kernel: one program per (query tile, batch, head)."""
    module, layout, config = plan.module, plan.layout, plan.config
    batch, heads, n_q, _ = q.shape
    kv_heads, n_k = k.shape[1], k.shape[2]
    pad, pad_stride = _padding(key_padding, lse)
    n_tiles_q = layout.tiles[0]
    module.BACKWARD_DQ[(n_tiles_q * batch * heads,)](
        q, k, v, grad_out, lse, delta, dq, pad,
        layout.full_counts, layout.full_indices, layout.partial_counts, layout.partial_indices,
        layout.row_order, *q.stride(), *k.stride(), *v.stride(), *grad_out.stride(),
        *dq.stride(), lse.stride(0), lse.stride(1), pad_stride,
        batch, heads, heads // kv_heads, n_q, n_k, n_tiles_q,
        layout.full_indices.shape[-1], layout.partial_indices.shape[-1],
        scale * LOG2E, scale, *_table_args(plan.tables),
        FULL_RANGE=plan.full_range, PARTIAL_RANGE=plan.partial_range,
        **_common(module, q, config, key_padding),
    )
    return dq


def backward_dkdv(plan: Plan, grad_out, q, k, v, lse, delta, scale, key_padding, dk, dv):
    """The dK/dV kernel: one program per (key tile, batch, key/value head), over the query
    tiles of the transposed layout and the query heads of its group."""
    module, layout, config = plan.module, plan.layout, plan.config
    batch, heads, n_q, _ = q.shape
    kv_heads, n_k = k.shape[1], k.shape[2]
    pad, pad_stride = _padding(key_padding, lse)
    n_tiles_k = layout.tiles[1]
    module.BACKWARD_DKDV[(n_tiles_k * batch * kv_heads,)](
        q, k, v, grad_out, lse, delta, dk, dv, pad,
        layout.full_q_counts, layout.full_q_indices, layout.partial_q_counts,
        layout.partial_q_indices, plan.col_order,
        *q.stride(), *k.stride(), *v.stride(), *grad_out.stride(),
        *dk.stride(), lse.stride(0), lse.stride(1), pad_stride,
        batch, kv_heads, heads // kv_heads, n_q, n_k, n_tiles_k,
        layout.full_q_indices.shape[-1], layout.partial_q_indices.shape[-1],
        scale * LOG2E, scale, *_table_args(plan.tables),
        EVEN_M=n_q % config.block_m == 0,
        FULL_RANGE=plan.full_q_range, PARTIAL_RANGE=plan.partial_q_range,
        **_common(module, q, config, key_padding),
    )
    return dk, dv


def _common(module, q, config, key_padding) -> dict:
    """Launch constants every kernel takes."""
    head_dim = q.shape[3]
    return dict(CASES=module.CASES, HEAD_DIM=head_dim,
                HEAD_DIM_PAD=_padded(head_dim),
                BLOCK_M=config.block_m, BLOCK_N=config.block_n, HAS_PAD=key_padding is not None,
                DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
                num_warps=config.num_warps, num_stages=config.num_stages)


def _padded(head_dim: int) -> int:
    return max(16, 1 << (head_dim - 1).bit_length())


def _padding(key_padding, placeholder):
    """(tensor, batch stride) for the kernels' KeyPad argument (a placeholder when None)."""
    if key_padding is None:
        return placeholder, 0
    return key_padding, key_padding.stride(0)


def _table_args(tables) -> list:
    args = []
    for table in tables:
        args += [table, table.shape[0]]
    return args


def flops(batch: int, heads: int, head_dim: int, pairs: int) -> float:
    """Useful forward FLOPs: two matrix products over the allowed pairs."""
    return 4.0 * batch * heads * head_dim * pairs

