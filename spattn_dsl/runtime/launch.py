"""Launch a generated forward kernel on a layout: the only place kernels are called."""
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
        self.visit_start = layout.visit_start.to(device)
        self.layout = layout.to(device)
        self.tables = random_tables(module, layout.n_k, device)


def forward(plan: Plan, q, k, v, scale: float, out=None, lse=None):
    """(out ``[B, H, n_q, D]``, lse float32 ``[B, H, n_q]``) of one launch (into ``out`` and
    ``lse`` when given)."""
    module, layout, tables, config = plan.module, plan.layout, plan.tables, plan.config
    batch, heads, n_q, head_dim = q.shape
    n_k = k.shape[2]
    out = torch.empty_like(q) if out is None else out
    if lse is None:
        lse = torch.empty(batch, heads, n_q, device=q.device, dtype=torch.float32)
    if n_q == 0 or batch == 0 or heads == 0:
        return out, lse
    n_tiles_q = layout.tiles[0]
    table_args = []
    for table in tables:
        table_args += [table, table.shape[0]]
    grid = (n_tiles_q * batch * heads,)
    module.FORWARD[grid](
        q, k, v, out, lse,
        layout.full_counts, layout.full_indices, layout.partial_counts, layout.partial_indices,
        layout.row_order, plan.visit_start,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), lse.stride(0), lse.stride(1),
        batch, heads, heads // k.shape[1], n_q, n_k, n_tiles_q,
        layout.full_indices.shape[-1], layout.partial_indices.shape[-1],
        scale * LOG2E, *table_args,
        CASES=module.CASES, HEAD_DIM=head_dim, HEAD_DIM_PAD=max(16, 1 << (head_dim - 1).bit_length()),
        BLOCK_M=config.block_m, BLOCK_N=config.block_n,
        FULL_RANGE=plan.full_range, PARTIAL_RANGE=plan.partial_range,
        EVEN_N=n_k % config.block_n == 0, MERGED=plan.merged,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    return out, lse


def flops(batch: int, heads: int, head_dim: int, pairs: int) -> float:
    """Useful forward FLOPs: two matrix products over the allowed pairs."""
    return 4.0 * batch * heads * head_dim * pairs

