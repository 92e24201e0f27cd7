"""From a selection to the kernels' per-row key lists ("slots").

For query row ``i`` of head ``h``, its slots are the keys of the units its selection chose
(every term's, each key once), kept where the pattern under the selection allows the pair,
the static part does not (the static kernels attend those), and the key is not padding;
-1 elsewhere. Exact for every expression whose selection only adds pairs
(``expr.splits_exactly``): the mask is then the static part plus these slots.

Built with torch on the selection's device, vectorised over batch rows, heads, rows and
slots (loops over terms and documents); the pair test evaluates the expression on
document-relative positions with each dynamic term standing for "the key's unit is in the
row's list" (a binary search in the sorted lists)."""
from __future__ import annotations

import torch

from ..ir import nodes as N
from ..ir.evaluate import select_head
from ..layout.pairs import allowed
from ..semantics.documents import document_runs
from ..semantics.select import concrete_terms

_LAST = torch.iinfo(torch.int64).max  # pads the sorted lists in place of -1


def build_slots(pattern, selection, key_padding=None) -> torch.Tensor:
    """int32 ``[B, H, n_q, L]`` (contiguous), on the selection's device."""
    s = selection
    device = s.terms[0].indices.device
    start, end = _row_documents(s, device)  # [B, n_q] each: the row's document
    pos = torch.arange(s.n_q, device=device) + (s.n_k - s.n_q)
    lists = [_row_lists(t, s, device) for t in s.terms]  # [B, H, n_q, k] unit indices
    keys = torch.cat([_keys(t, rows, start, end, pos, s.n_k) for t, rows in zip(s.terms, lists)],
                     dim=-1)
    if len(s.terms) > 1:  # two terms may pick the same key: keep it once
        keys = keys.sort(-1).values
        keys[..., 1:] = torch.where(keys[..., 1:] == keys[..., :-1], -1, keys[..., 1:])
    keep = keys >= 0
    if key_padding is not None:
        keep &= torch.gather(key_padding[:, None, None, :].expand(*keys.shape[:3], s.n_k), 3,
                             keys.clamp(min=0))
    keep &= _adds(pattern, s, lists, keys, start, end, pos)
    return torch.where(keep, keys, -1).to(torch.int32).contiguous()


def _row_documents(s, device):
    """(start, end) int64 ``[B, n_q]``: the key range of each query row's document."""
    if s.documents is None:
        zero = torch.zeros(s.batch, s.n_q, dtype=torch.int64, device=device)
        return zero, zero + s.n_k
    ids = s.documents.to(device)
    starts, ends = [], []
    for row in ids:
        first, length = document_runs(row)
        starts.append(torch.repeat_interleave(first, length))
        ends.append(torch.repeat_interleave(first + length, length))
    cut = slice(s.n_k - s.n_q, s.n_k)
    return torch.stack(starts)[:, cut], torch.stack(ends)[:, cut]


def _row_lists(t, s, device) -> torch.Tensor:
    """int64 ``[B, H, n_q, k]``: each query head's and row's chosen units (-1 padded)."""
    heads = torch.tensor([t.selection_head(h, s.heads, s.kv_heads) for h in range(s.heads)],
                         device=device)
    chosen = t.indices.to(device)[:, heads]  # [B, H, G, k]
    groups = t.groups.to(device)[:, None, :, None].expand(-1, s.heads, -1, chosen.shape[-1])
    return chosen.gather(2, groups)


def _keys(t, rows, start, end, pos, n_k: int) -> torch.Tensor:
    """int64 ``[B, H, n_q, slots]``: the absolute keys of the chosen units (-1: none)."""
    start, end = start[:, None, :, None], end[:, None, :, None]
    if t.kind == "topk":
        keys = (start + rows * t.unit)[..., None] + torch.arange(t.unit, device=rows.device)
        ok = (rows >= 0)[..., None] & (keys < end[..., None])
        return torch.where(ok, keys, -1).flatten(-2)
    if t.kind == "vertical":
        return torch.where(rows >= 0, start + rows, -1)
    keys = pos[:, None] - (rows - (n_k - 1))  # slash: the diagonal's key in this row
    return torch.where((rows >= 0) & (keys >= start) & (keys < end), keys, -1)


def _adds(pattern, s, lists, keys, start, end, pos) -> torch.Tensor:
    """Bool like ``keys``: the pattern under the selection allows the pair and its static
    part does not; evaluated per document (its own length and relative positions)."""
    out = torch.zeros(keys.shape, dtype=torch.bool, device=keys.device)
    for rows_b, first, stop, doc_start, length in _segments(s, start, end):
        concrete, index = concrete_terms(pattern, length)
        q = (pos[first:stop] - doc_start)[None, None, :, None]
        k = keys[rows_b, :, first:stop] - doc_start
        member = _membership([r[rows_b, :, first:stop] for r in lists], s, q, k)
        for case in range(pattern.heads):
            heads = slice(case, s.heads, pattern.heads)
            expr = select_head(concrete, case)
            kc = k[:, heads].clamp(min=0)
            on = _evaluate(expr, q, kc, length, index, lambda i: member(i, heads))
            off = _evaluate(expr, q, kc, length, index, lambda i: torch.zeros_like(kc, dtype=torch.bool))
            out[rows_b, heads, first:stop] = on & ~off
    return out


def _segments(s, start, end):
    """(batch rows, first row, end row, document start, document length) per document with
    query rows (the whole batch at once without documents)."""
    if s.documents is None:
        return [(slice(0, s.batch), 0, s.n_q, 0, s.n_k)]
    out = []
    for b in range(s.batch):
        st, en = start[b].tolist(), end[b].tolist()
        first = 0
        for i in range(1, s.n_q + 1):
            if i == s.n_q or st[i] != st[first]:
                out.append((slice(b, b + 1), first, i, st[first], en[first] - st[first]))
                first = i
    return out


def _membership(lists, s, q, k):
    """``member(term, heads)``: bool, the key ``k`` lies in a unit the term chose for the row
    (a binary search of the unit's index in the row's ascending list)."""
    def member(i, heads):
        t, rows = s.terms[i], lists[i][:, heads]
        kh = k[:, heads]
        if t.kind == "topk":
            unit = torch.div(kh, t.unit, rounding_mode="floor")
        elif t.kind == "vertical":
            unit = kh
        else:
            unit = (q - kh + s.n_k - 1).expand_as(kh)
        ordered = torch.where(rows < 0, _LAST, rows).contiguous()
        at = torch.searchsorted(ordered, unit.contiguous()).clamp(max=ordered.shape[-1] - 1)
        return (ordered.gather(-1, at) == unit) & (kh >= 0)
    return member


def _evaluate(expr, q, k, n: int, index: dict, term):
    """The expression on positions ``q``, ``k`` with dynamic term ``i`` standing for
    ``term(i)``; static sub-expressions by the pair predicate."""
    if id(expr) in index:
        return term(index[id(expr)])
    if not N.dynamic_terms(expr):
        return allowed(expr, q, k, n).expand(k.shape)
    if isinstance(expr, N.Union):
        return _evaluate(expr.left, q, k, n, index, term) | _evaluate(expr.right, q, k, n, index,
                                                                        term)
    if isinstance(expr, N.Intersect):
        return _evaluate(expr.left, q, k, n, index, term) & _evaluate(expr.right, q, k, n, index,
                                                                        term)
    if isinstance(expr, N.Difference):
        return _evaluate(expr.left, q, k, n, index, term) & ~_evaluate(expr.right, q, k, n,
                                                                         index, term)
    if isinstance(expr, N.Complement):
        return ~_evaluate(expr.operand, q, k, n, index, term)
    raise TypeError(f"dynamic term inside {type(expr).__name__}: not split into slots")
