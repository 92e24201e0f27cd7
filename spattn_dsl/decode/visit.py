"""Which held pages a decode step reads, and the exact token mask inside them.

For ``m`` new queries (bottom-right aligned: row ``i`` of sequence ``b`` is the query at
position ``length_b - m + i``) the pattern's pair predicate (``layout.pairs.allowed``) is
evaluated against every held slot, on the cache's device, with torch ops: a bool
``[batch, cases, m, pages, page_size]`` tensor. That one predicate serves every static
pattern exactly (windows, sinks, globals, strides, blocks, random links...). From it:

- the token mask the kernel applies, uint8 ``[batch, cases or heads, m, pages * page_size]``
  (rows that are padding of a ragged append, slots past the length, and empty padding pages
  are all 0);
- per (sequence, KV head) the pages to visit: those where some row of the KV head's query
  heads has an allowed key, compacted to the front (``visit``, ``counts``), and whether each
  visited page is FULL (every row allowed every slot): the kernel then skips the mask load.

Cost: the predicate runs over ``m * cases * held slots`` pairs per step (a few elementwise
kernels) and the mask is that many bytes, about ``m / (4 * head_dim)`` of the K/V bytes of a
visited page per KV head (for one query and head_dim 128: 0.2%).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ir import nodes as N
from ..ir.evaluate import head_count, select_head
from ..layout.pairs import allowed


@dataclass
class Visit:
    mask: torch.Tensor  # uint8 [batch, cases or heads, m, slots]
    head_stride: int  # the mask's stride between query heads (0: one case for all heads)
    visit: torch.Tensor  # int32 [batch, kv_heads, pages]: page-table columns, visited first
    full: torch.Tensor  # int8 [batch, kv_heads, pages]: the visited page needs no mask
    counts: torch.Tensor  # int32 [batch, kv_heads]: pages to visit


def allowed_slots(pattern, cache, m: int, groups=None, heads: int = 0) -> torch.Tensor:
    """bool ``[batch, cases, m, pages, page_size]``: query row ``i`` may attend the held slot.
    A dynamic pattern needs ``groups`` (``decode.select.select_cached``) and the query
    ``heads``; its second dimension is then the query heads."""
    if pattern.dynamic:
        return _dynamic_slots(pattern, cache, m, groups, heads)
    ids, logical = cache.tables()
    device, ps = logical.device, cache.page_size
    lengths = torch.tensor(cache.lengths_list(), device=device)
    counts = torch.tensor(cache.last_counts, device=device)
    rows = torch.arange(m, device=device)
    qpos = lengths[:, None] - m + rows  # [batch, m]
    real_row = rows >= m - counts[:, None]
    kpos = logical[:, :, None] * ps + torch.arange(ps, device=device)  # [batch, pages, ps]
    real_slot = (logical[:, :, None] >= 0) & (kpos < lengths[:, None, None])
    cases = head_count(pattern.at(max(1, max(cache.lengths_list()))))
    result = torch.zeros(cache.batch, cases, m, *kpos.shape[1:], dtype=torch.bool, device=device)
    on_cpu = _needs_cpu(pattern)
    # the pattern is bound at each sequence's own length, as attn(q, k, v) binds it at n_k
    for n in sorted(set(cache.lengths_list())):
        if n == 0:
            continue
        pick = (lengths == n).nonzero().flatten()
        expr = pattern.at(n)
        q = qpos[pick][:, :, None, None]
        k = kpos[pick][:, None]
        if on_cpu:
            q, k = q.cpu(), k.cpu()
        for case in range(cases):
            hit = allowed(select_head(expr, case), q, k, n)
            result[pick, case] = torch.broadcast_to(hit, result[pick, case].shape).to(device)
    return result & real_row[:, None, :, None, None] & real_slot[:, None, None]


def _positions(cache, m: int):
    """(qpos ``[batch, m]``, real rows ``[batch, m]``, kpos ``[batch, pages, ps]``, real
    slots ``[batch, pages, ps]``) on the cache's device."""
    _, logical = cache.tables()
    device, ps = logical.device, cache.page_size
    lengths = torch.tensor(cache.lengths_list(), device=device)
    counts = torch.tensor(cache.last_counts, device=device)
    rows = torch.arange(m, device=device)
    kpos = logical[:, :, None] * ps + torch.arange(ps, device=device)
    real_slot = (logical[:, :, None] >= 0) & (kpos < lengths[:, None, None])
    return lengths[:, None] - m + rows, rows >= m - counts[:, None], kpos, real_slot


def _dynamic_slots(pattern, cache, m: int, groups, heads: int) -> torch.Tensor:
    """``allowed_slots`` of a dynamic pattern: per query head, each dynamic term standing for
    the slots of the units its selection chose (``select.term_hits``)."""
    from ..semantics.select import concrete_terms
    from .select import term_hits

    qpos, real_row, kpos, real_slot = _positions(cache, m)
    result = torch.zeros(cache.batch, heads, m, *kpos.shape[1:], dtype=torch.bool,
                         device=kpos.device)
    on_cpu = _needs_cpu(pattern)
    for group in groups:
        pick = group.pick
        concrete, index = concrete_terms(pattern, group.n)
        hits = term_hits(group, qpos[pick], real_row[pick], kpos[pick], heads, cache.kv_heads)
        q = qpos[pick][:, :, None, None]
        k = kpos[pick][:, None]
        if on_cpu:
            q, k = q.cpu(), k.cpu()
        cases = head_count(concrete)
        for case in range(cases):
            which = torch.arange(case, heads, cases, device=kpos.device)
            terms = [hit[:, which] for hit in hits]  # [g, heads of the case, m, pages, ps]
            expr = select_head(concrete, case)
            hit = _with_terms(expr, index, terms, q[:, None], k[:, None], group.n)
            shape = (len(pick), len(which), m, *kpos.shape[1:])
            result[pick[:, None], which[None, :]] = \
                torch.broadcast_to(hit.to(kpos.device), shape)
    return result & real_row[:, None, :, None, None] & real_slot[:, None, None]


def _with_terms(expr, index: dict, terms: list, q, k, n: int):
    """``allowed`` with dynamic node ``t`` standing for ``terms[index[id(t)]]``."""
    if isinstance(expr, N.DYNAMIC):
        return terms[index[id(expr)]].to(q.device)
    if not N.dynamic_terms(expr):
        return allowed(expr, q, k, n)
    if isinstance(expr, N.Union):
        return _with_terms(expr.left, index, terms, q, k, n) | \
            _with_terms(expr.right, index, terms, q, k, n)
    if isinstance(expr, N.Intersect):
        return _with_terms(expr.left, index, terms, q, k, n) & \
            _with_terms(expr.right, index, terms, q, k, n)
    if isinstance(expr, N.Difference):
        return _with_terms(expr.left, index, terms, q, k, n) & \
            ~_with_terms(expr.right, index, terms, q, k, n)
    if isinstance(expr, N.Complement):
        return ~_with_terms(expr.operand, index, terms, q, k, n)
    raise ValueError(f"attn(q, cache): a dynamic term under {type(expr).__name__} is not "
                     f"supported in decoding")


def _needs_cpu(pattern) -> bool:
    """Random links draw with numpy, on the host."""
    return any(isinstance(node, N.Random) for node in N.walk(pattern.expr))


def plan_visit(pattern, cache, m: int, heads: int, groups=None) -> Visit:
    """The mask and visit lists of one decode step for ``heads`` query heads (``groups``: a
    dynamic pattern's selection, ``decode.select.select_cached``)."""
    hit = allowed_slots(pattern, cache, m, groups, heads)
    batch, cases, _, pages, ps = hit.shape
    group = heads // cache.kv_heads
    head_case = torch.arange(heads, device=hit.device) % cases
    page_any = hit.any(dim=4).any(dim=2)[:, head_case]  # [batch, heads, pages]
    page_all = hit.all(dim=4).all(dim=2)[:, head_case]
    page_any = page_any.view(batch, cache.kv_heads, group, pages).any(dim=2)
    page_all = page_all.view(batch, cache.kv_heads, group, pages).all(dim=2)
    order = torch.argsort((~page_any).to(torch.int8), dim=-1, stable=True)
    full = torch.gather(page_all, -1, order).to(torch.int8)
    mask = hit.flatten(3).to(torch.uint8)
    if cases > 1:
        mask = mask[:, head_case]
    return Visit(mask.contiguous(), 0 if cases == 1 else mask.stride(1),
                 order.to(torch.int32).contiguous(), full.contiguous(),
                 page_any.sum(dim=-1).to(torch.int32).contiguous())
