"""Dynamic terms in decoding (docs/python.md, KV cache; docs/language.md section 5): the
selection among the cached units, and what each term allows per query row and held slot.

Semantics: ``attn(q, cache)`` selects exactly as ``attn(q, k_all, v_all)`` does on the full
history with the same ``m`` queries (``q`` bottom-right aligned; the rows of a ragged append
that are padding take no part): units are aligned runs of ``unit`` positions from position 0,
candidates are the units that hold a key allowed with the term replaced by ``dense`` and not
with it replaced by ``none``, ties go to the lower index, ``rows`` groups and ``shared`` as
docs/language.md section 5 says. Liveness of a dynamic pattern is all True (``Pattern.live``),
so a cache of one holds every position and every unit stays selectable.

How the estimates are read:

- ``topk(..., by = minmax)`` whose ``unit`` is a multiple of the page size (or equal to it,
  Quest): from the per-page ``key_min`` / ``key_max`` the cache keeps on append (a unit of
  ``r`` pages: their elementwise minimum and maximum), so the selection reads ``2 * head_dim``
  numbers per page, not the page's keys. Those are the fp32 minimum and maximum of the stored
  keys, the same numbers pooling the keys gives, so the selection equals the one
  ``attn(q, k_all, v_all)`` makes.
- every other term (``minmax`` with a smaller or unaligned unit, ``mean_key``, ``scores`` with
  ``scores=[batch, heads or 1, m, ceil(length / unit)]``, ``vertical`` / ``slash`` probing the
  call's last ``probe`` queries): from the cache's keys of the full history (``gather``), by
  the same device selection (``dynamic.select.device_select``).

Sequences of different lengths (or different numbers of new rows) select separately, one
``device_select`` per (length, rows) group, since the pattern binds at each length.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from ..dynamic.select import device_select
from ..ir import nodes as N
from ..semantics.select import term_nodes


@dataclasses.dataclass
class Group:
    """Sequences ``pick`` (int64 on the device) of length ``n`` whose newest ``count`` rows are
    queries, and their Selection (batch ``len(pick)``, ``n_q = count``, ``n_k = n``)."""

    pick: torch.Tensor
    n: int
    count: int
    selection: object


def select_cached(pattern, q, cache, scores=None, scale=None) -> list:
    """[Group]: the selection of every sequence with queries, for ``q``
    ``[batch, heads, m, head_dim]`` (bottom-right aligned)."""
    m = q.shape[2]
    lengths, counts = cache.lengths_list(), [min(c, m) for c in cache.last_counts]
    held = cache.held.tolist()
    if held != lengths:
        raise ValueError(f"attn(q, cache): a dynamic pattern selects among all cached units, "
                         f"but this cache holds {held} of {lengths} positions")
    if scores is not None:
        _check_scores(scores, q, pattern)
    groups = []
    keys = None
    for n, c in sorted({(n, c) for n, c in zip(lengths, counts) if n > 0 and c > 0}):
        pick_list = [b for b in range(cache.batch) if (lengths[b], counts[b]) == (n, c)]
        pick = torch.tensor(pick_list, device=q.device)
        rows = q[pick, :, m - c:]
        s = None if scores is None else _scores_at(scores, pattern, pick, m - c, n)
        if all(isinstance(t, N.TopK) and t.by == "minmax" and t.unit % cache.page_size == 0
               for t in term_nodes(pattern, n)):
            k = torch.zeros((), dtype=torch.float32, device=q.device).expand(
                len(pick_list), cache.kv_heads, n, cache.head_dim)
            bounds = _page_bounds(cache, pick, n)
        else:
            if keys is None:
                keys = cache.gather()[0]  # every position is held, in order: slot == position
            k, bounds = keys[pick, :, :n], None
        selection = device_select(pattern, rows, k, s, scale=scale, bounds=bounds)
        groups.append(Group(pick, n, c, selection))
    return groups


def _check_scores(scores, q, pattern) -> None:
    if not isinstance(scores, torch.Tensor) or scores.dim() != 4 or \
            scores.shape[0] != q.shape[0] or scores.shape[1] not in (1, q.shape[1]) or \
            scores.shape[2] != q.shape[2]:
        shape = getattr(scores, "shape", None)
        raise ValueError(f"attn(q, cache, scores=S): S must be [batch, heads or 1, m, units] "
                         f"for q {list(q.shape)} (units: ceil(length / unit) of the longest "
                         f"sequence; each sequence reads its first ceil(length_b / unit)), got "
                         f"{None if shape is None else list(shape)}")


def _scores_at(scores, pattern, pick, first: int, n: int):
    """The group's rows of ``scores``, cut to the units of length ``n``."""
    units = {-(-n // t.unit) for t in term_nodes(pattern, n) if getattr(t, "by", None) ==
             "scores"}
    width = max(units, default=scores.shape[3])
    if scores.shape[3] < width:
        raise ValueError(f"attn(q, cache, scores=S): S has {scores.shape[3]} units, a sequence "
                         f"of length {n} needs {width}")
    return scores[pick, :, first:, :width]


def _page_bounds(cache, pick: torch.Tensor, n: int):
    """The ``device_select`` ``bounds`` hook: each unit's key min and max from the pages'."""
    ids, _ = cache.tables()
    ps = cache.page_size
    pages = -(-n // ps)
    table = ids[pick, :pages].long()
    lo = cache.key_min[table].transpose(1, 2)  # [g, kv_heads, pages, D]
    hi = cache.key_max[table].transpose(1, 2)

    def bounds(unit: int):
        if unit % ps:
            return None
        r = unit // ps
        units = -(-n // unit)
        pad = units * r - pages
        low = torch.nn.functional.pad(lo, (0, 0, 0, pad), value=math.inf)
        high = torch.nn.functional.pad(hi, (0, 0, 0, pad), value=-math.inf)
        return low.unflatten(2, (units, r)).amin(3), high.unflatten(2, (units, r)).amax(3)

    return bounds


def term_hits(group: Group, qpos: torch.Tensor, real: torch.Tensor, kpos: torch.Tensor,
              heads: int, kv_heads: int) -> list:
    """Per term, bool ``[g, heads, m, pages, page_size]``: the key slot lies in a unit that the
    term chose for the query row's group. ``qpos`` ``[g, m]`` positions of the rows, ``real``
    ``[g, m]`` whether a row is a query, ``kpos`` ``[g, pages, page_size]`` slot positions."""
    s = group.selection
    g, m = qpos.shape
    n, c = group.n, group.count
    slots = kpos.flatten(1)  # [g, S]
    row = (torch.arange(m, device=qpos.device) - (m - c)).clamp(min=0)  # row of the selection
    out = []
    for t in s.terms:
        owner = torch.tensor([t.selection_head(h, heads, kv_heads) for h in range(heads)],
                             device=qpos.device)
        count = {"topk": -(-n // t.unit), "vertical": n, "slash": 2 * n - 1}[t.kind]
        chosen = torch.where(t.indices < 0, count, t.indices)  # [g, Hs, G, k]
        table = torch.zeros(*chosen.shape[:3], count + 1, dtype=torch.bool,
                            device=qpos.device)
        table.scatter_(3, chosen, True)
        table = table[:, owner]  # [g, heads, G, count + 1]
        groups = t.groups[:, row]  # [g, m]
        table = table.gather(2, groups[:, None, :, None].expand(g, heads, m, count + 1))
        if t.kind == "slash":
            index = qpos[:, :, None] - slots[:, None, :] + n - 1  # [g, m, S]
        else:
            index = torch.div(slots, t.unit, rounding_mode="floor")[:, None, :].expand(g, m, -1)
        index = torch.where((index >= 0) & (index < count) & (slots[:, None, :] >= 0) &
                            (slots[:, None, :] < n), index, count)
        hit = table.gather(3, index[:, None].expand(g, heads, m, -1))
        out.append((hit & real[:, None, :, None]).view(g, heads, m, *kpos.shape[1:]))
    return out


def split_selection(groups: list, batch: int) -> tuple:
    """One Selection per sequence (batch 1; None for a sequence without queries): sequences
    differ in length, so one Selection cannot hold them all."""
    out = [None] * batch
    for group in groups:
        s = group.selection
        for i, b in enumerate(group.pick.tolist()):
            terms = tuple(dataclasses.replace(
                t, indices=t.indices[i:i + 1].cpu(), groups=t.groups[i:i + 1].cpu(),
                starts=t.starts[i:i + 1].cpu()) for t in s.terms)
            out[b] = dataclasses.replace(s, batch=1, terms=terms)
    return tuple(out)
