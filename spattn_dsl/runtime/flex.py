"""Export a pattern as a FlexAttention ``BlockMask``: the layout's tile lists plus a
token-exact ``mask_mod`` (a second backend for users, an independent oracle for us).

Flex numbers query rows from 0; spattn aligns queries bottom-right, so the ``mask_mod`` adds
``n_k - n_q`` to the query index.
"""
from __future__ import annotations

import torch

from ..ir import nodes as N
from ..ir.evaluate import head_count, select_head
from ..layout.build import lower
from ..layout.pairs import allowed, random_table, random_table_key


def _tables(expr, n: int, device, out: dict) -> dict:
    """Draw tables for every random node, keyed like ``layout.pairs`` expects."""
    if isinstance(expr, N.Random) and expr.r > 0:
        out[random_table_key(expr, n)] = random_table(expr, n).to(device)
    elif isinstance(expr, N.Blocks):
        _tables(expr.body, -(-n // expr.size), device, out)
    else:
        for child in N.children(expr):
            _tables(child, n, device, out)
    return out


def mask_mod(pattern, n_q: int, n_k: int, device="cuda"):
    """``mask_mod(b, h, q_idx, kv_idx)`` of the pattern (head h uses case h mod cases)."""
    concrete = pattern.at(n_k)
    cases = [select_head(concrete, c) for c in range(head_count(concrete))]
    tables: dict = {}
    for case in cases:
        _tables(case, n_k, device, tables)
    offset = n_k - n_q

    def mod(b, h, q_idx, kv_idx):
        q = q_idx + offset
        result = allowed(cases[-1], q, kv_idx, n_k, tables)
        for c in range(len(cases) - 2, -1, -1):
            result = torch.where(h % len(cases) == c, allowed(cases[c], q, kv_idx, n_k, tables),
                                 result)
        return result

    return mod


def block_mask(pattern, n_q: int, n_k: int, heads: int, block_m: int = 128, block_n: int = 128,
               device="cuda", layout=None):
    """A ``BlockMask`` for ``[*, heads, n_q, n_k]`` from the exact tile states of the layout."""
    from torch.nn.attention.flex_attention import BlockMask

    layout = layout or lower(pattern.at(n_k), n_q, n_k, block_m, block_n)
    states = layout.states[torch.arange(heads) % layout.cases]  # [H, T_q, T_k]

    def lists(selected):
        counts = selected.sum(-1, dtype=torch.int32)
        order = torch.argsort((~selected).to(torch.int8), dim=-1, stable=True).to(torch.int32)
        return counts[None].to(device), order[None].contiguous().to(device)

    kv_num, kv_idx = lists(states == 1)
    full_num, full_idx = lists(states == 2)
    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx,
                                    BLOCK_SIZE=(layout.block_m, layout.block_n),
                                    mask_mod=mask_mod(pattern, n_q, n_k, device),
                                    seq_lengths=(n_q, n_k))
