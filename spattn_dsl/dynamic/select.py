"""The selection pass on the tensors' device (docs/language.md §5), vectorised over batch rows,
heads, row groups and units; Python loops only over terms and (with documents) over
documents. Estimates are fp32 (``semantics.select`` is the float64 reference; the two agree
wherever the estimates of chosen and rejected candidates differ by more than fp32 rounding).

Per term and document: keys pooled per unit (mean, or elementwise min and max), pooled
queries (the mean of each row group) scored against them by one matrix product, units that
are not candidates dropped, ``top`` (stable sort: ties to the lower index) into ascending
index lists padded with -1. ``vertical`` / ``slash``: the exact softmax of the last ``probe``
queries over the envelope, summed per column or per diagonal.

Candidates come from the static envelope: bool masks of the pattern with the term replaced
by ``dense`` and by ``none`` over (rows, keys) of the document, built once per document shape
and reduced to the term's units (``_candidates``, ``CHUNK_ROWS`` rows of masks at a time, cached:
memory ``rows x units``), and the probe rows' envelope (cached too)."""
from __future__ import annotations

import functools
import math

import torch

from ..ir import nodes as N
from ..ir.evaluate import select_head
from ..semantics.reference import evaluate
from ..semantics.select import (KINDS, Selection, TermSelection, _batch_documents, _check_inputs,
                                _check_scores, _documents_of, _only, _static, concrete_terms,
                                selection_head, term_nodes, top)


def device_select(pattern, q, k, scores=None, documents=None, *, scale=None,
                  bounds=None) -> Selection:
    """``semantics.select``'s Selection, computed on q's device (int64 tensors there).

    ``bounds`` (decoding, ``decode.select``): None, or a function of a unit size returning
    None or fp32 ``(lo, hi)`` ``[batch, kv_heads, ceil(n_k / unit), head_dim]``, each unit's
    elementwise key minimum and maximum (a KV cache keeps them per page); a ``minmax`` term
    of that unit then reads them instead of pooling ``k``. Keys are read only where a term
    needs them, so ``k`` may then be a zero-stride expanded tensor of the right shape."""
    batch, heads, n_q, dim, kv_heads, n_k = _check_inputs(q, k)
    ids = None if documents is None else _batch_documents(documents, batch, n_k)
    full = term_nodes(pattern, n_k)
    _check_scores(scores, pattern.dynamic_terms, full, batch, heads, n_q, n_k)
    scale = 1 / math.sqrt(dim) if scale is None else float(scale)
    x = _Inputs(q.detach().float(), k.detach(), None if scores is None else
                scores.detach().float(), scale, kv_heads, n_k, bounds)
    terms = tuple(_select_term(pattern, i, full[i], x, ids) for i in range(len(full)))
    return Selection(pattern, batch, heads, kv_heads, n_q, n_k, terms, ids)


class _Inputs:
    def __init__(self, q, k, scores, scale, kv_heads, n_k, bounds=None):
        self.q, self.scores, self.scale = q, scores, scale
        self.kv_heads, self.n_k, self.bounds = kv_heads, n_k, bounds
        self._k_kv, self._k = k, None

    @property
    def k(self) -> torch.Tensor:
        """fp32 keys per query head (made on first use)."""
        if self._k is None:
            heads = self.q.shape[1]
            self._k = self._k_kv.float().repeat_interleave(heads // self.kv_heads, 1)
        return self._k

    def unit_bounds(self, unit: int):
        """fp32 (lo, hi) per query head ``[batch, heads, units, D]`` from ``bounds``, or None."""
        found = None if self.bounds is None else self.bounds(unit)
        if found is None:
            return None
        group = self.q.shape[1] // self.kv_heads
        return tuple(t.float().repeat_interleave(group, 1) for t in found)


def _segments(ids, batch: int, n_q: int, n_k: int):
    """(batch rows, start, length, first query row, end query row): the whole batch at once
    without documents, else one entry per (batch row, document with queries)."""
    if ids is None:
        return [(slice(0, batch), 0, n_k, 0, n_q)]
    return [(slice(b, b + 1), *doc) for b in range(batch)
            for doc in _documents_of(ids, b, n_q, n_k)]


def _select_term(pattern, term: int, node, x: _Inputs, ids) -> TermSelection:
    batch, heads, n_q, _ = x.q.shape
    device = x.q.device
    sharing = {"head": heads, "group": x.kv_heads, "all": 1}[node.shared]
    owner = torch.tensor([selection_head(node.shared, h, heads, x.kv_heads)
                          for h in range(heads)], device=device)
    parts, offsets = [], torch.zeros(batch, dtype=torch.int64)
    groups = torch.zeros(batch, n_q, dtype=torch.int64, device=device)
    for rows_b, start, length, first, end in _segments(ids, batch, n_q, x.n_k):
        local, chosen = _segment(pattern, term, node, x, rows_b, start, length, first, end,
                                 owner, sharing)
        offset = int(offsets[rows_b][0])
        groups[rows_b, first:end] = local.to(device) + offset
        parts.append((rows_b, offset, start, chosen))
        offsets[rows_b] += chosen.shape[2]
    count = int(offsets.max()) if parts else 0
    indices = torch.full((batch, sharing, count, node.k), -1, dtype=torch.int64, device=device)
    starts = torch.zeros(batch, count, dtype=torch.int64, device=device)
    for rows_b, offset, start, chosen in parts:
        indices[rows_b, :, offset:offset + chosen.shape[2]] = chosen
        starts[rows_b, offset:offset + chosen.shape[2]] = start
    unit = node.unit if isinstance(node, N.TopK) else 1
    return TermSelection(pattern.dynamic_terms[term], KINDS[type(node)], unit, node.shared,
                         indices, groups, starts)


CHUNK_ROWS = 512  # rows of the pair masks built at once: each chunk is reduced to its
# candidates before the next, so memory grows with rows x units, not rows x keys


def _masks(pattern, term: int, length: int, rows: torch.Tensor):
    """(static, envelope): bool ``[cases, rows, length]`` over the document-relative
    ``rows``, on the CPU: the pattern with every dynamic term replaced by none, and with
    term ``term`` replaced by dense."""
    concrete, index = concrete_terms(pattern, length)
    shape = (len(rows), length)
    cases = [select_head(concrete, c) for c in range(pattern.heads)]
    static = torch.stack([evaluate(e, rows, length, dynamic=_static(index)).expand(shape)
                          for e in cases])
    envelope = torch.stack([evaluate(e, rows, length, dynamic=_only(index, term)).expand(shape)
                            for e in cases])
    return static, envelope


@functools.lru_cache(maxsize=64)
def _candidates(pattern, term: int, kind: str, unit: int, length: int, first_pos: int,
                count: int, n_k: int) -> torch.Tensor:
    """Where term ``term`` may add pairs (its envelope minus the static part) over the
    document-relative rows ``first_pos ..`` (``count`` of them) and keys ``0 .. length``, on
    the CPU, built ``CHUNK_ROWS`` rows at a time: ``topk``: bool ``[cases, count, units]``
    (the row has a candidate key in the unit of ``unit`` keys); ``vertical``: bool
    ``[cases, length]`` (some row has the key); ``slash``: bool ``[cases, 2 n_k - 1]`` (some
    row has a key on the diagonal ``q - k + n_k - 1``)."""
    cases = pattern.heads
    units = -(-length // unit)
    if kind == "topk":
        found = torch.zeros(cases, count, units, dtype=torch.bool)
    elif kind == "vertical":
        found = torch.zeros(cases, length, dtype=torch.bool)
    else:
        found = torch.zeros(cases, 2 * n_k - 1, dtype=torch.bool)
    for lo in range(0, count, CHUNK_ROWS):
        rows = torch.arange(first_pos + lo, first_pos + min(count, lo + CHUNK_ROWS))
        static, envelope = _masks(pattern, term, length, rows)
        pairs = envelope & ~static
        if kind == "topk":
            padded = torch.nn.functional.pad(pairs, (0, units * unit - length))
            found[:, lo:lo + len(rows)] = padded.unflatten(-1, (units, unit)).any(-1)
        elif kind == "vertical":
            found |= pairs.any(1)
        else:  # rows are consecutive: diagonal rows[0] + j - length + n_k of the j-th one
            base = int(rows[0]) - length + n_k
            found[:, base:base + len(rows) + length - 1] |= _sheared(pairs).any(1)
    return found


def _sheared(pairs: torch.Tensor) -> torch.Tensor:
    """``[C, R, L] -> [C, R, R + L - 1]``: row ``i`` moved ``i`` columns on, with its keys
    in reverse order (``out[:, i, i + L - 1 - k] = pairs[:, i, k]``, zeros elsewhere), so
    that each column holds one diagonal ``i - k``."""
    c, r, length = pairs.shape
    padded = torch.zeros(c, r, length + r, dtype=pairs.dtype)
    padded[:, :, :length] = pairs.flip(-1)
    # flat index i * (L + R - 1) + j of row i is i * (L + R) + (j - i): column j - i of row
    # i where 0 <= j - i (< L: its keys, else zeros); for j < i, the zeros ending row i - 1
    return padded.as_strided((c, r, length + r - 1), (r * (length + r), length + r - 1, 1))


@functools.lru_cache(maxsize=64)
def _probe_envelope(pattern, term: int, length: int, first_pos: int, m: int) -> torch.Tensor:
    """bool ``[cases, m, length]``: the envelope of the ``m`` probe rows from ``first_pos``."""
    return _masks(pattern, term, length, torch.arange(first_pos, first_pos + m))[1]


def _segment(pattern, term, node, x: _Inputs, rows_b, start, length, first, end, owner,
             sharing):
    """(local group of each query row [R] on the CPU; chosen [Bs, Hs, G, k]) in one segment."""
    heads = x.q.shape[1]
    device = x.q.device
    first_pos = first + x.n_k - x.q.shape[2] - start  # document-relative position of row 0
    kind = "topk" if isinstance(node, N.TopK) else \
        "vertical" if isinstance(node, N.Vertical) else "slash"
    unit = node.unit if isinstance(node, N.TopK) else 1
    case = torch.arange(heads) % pattern.heads
    candidates = _candidates(pattern, term, kind, unit, length, first_pos, end - first, x.n_k)
    q = x.q[rows_b, :, first:end]
    bounds = x.unit_bounds(node.unit) if isinstance(node, N.TopK) and node.by == "minmax" \
        and (start, length) == (0, x.n_k) else None
    keys = None if bounds is not None or getattr(node, "by", None) == "scores" else \
        x.k[rows_b, :, start:start + length]
    if isinstance(node, N.TopK):
        positions = torch.arange(first_pos, first_pos + end - first)
        local = positions // node.rows - first_pos // node.rows
        count = int(local[-1]) + 1  # row groups: a candidate unit of any row is the group's
        per_group = (_group_mean(candidates.float(), local, count) > 0)[case].to(device)
        estimate, candidate = _topk(node, q, keys, per_group, length, local.to(device), x,
                                    rows_b, first, end, bounds)
    else:
        local = torch.zeros(end - first, dtype=torch.int64)
        m = min(node.probe, end - first)  # the probe rows: the last m
        allowed = _probe_envelope(pattern, term, length, first_pos + end - first - m,
                                  m)[case].to(device)  # [H, m, L]
        estimate, candidate = _probe(node, q, keys, candidates[case].to(device), allowed,
                                     first_pos, x)
    estimate = _share(estimate, owner, sharing)
    candidate = _share(candidate.float(), owner, sharing) > 0
    return local, top(estimate, candidate.expand_as(estimate), node.k)


def _group_mean(values: torch.Tensor, local: torch.Tensor, count: int) -> torch.Tensor:
    """Mean over each row group along dimension -2: ``[..., R, X] -> [..., G, X]``."""
    sums = values.new_zeros(*values.shape[:-2], count, values.shape[-1])
    sums.index_add_(values.dim() - 2, local, values)
    sizes = torch.bincount(local, minlength=count).to(values.dtype)
    return sums / sizes[:, None]


def _topk(node, q, keys, per_group, length: int, local, x: _Inputs, rows_b, first, end,
          bounds=None):
    """(estimates [Bs, H, G, U], candidates [1, H, G, U]) from ``per_group``, bool [H, G, U]
    (``_candidates`` over each row group); ``bounds``: None or the units' (lo, hi) for the
    whole batch (``_Inputs.unit_bounds``)."""
    u, units = node.unit, per_group.shape[-1]
    count = per_group.shape[1]
    candidate = per_group[None]
    if node.by == "scores":
        scores = x.scores[rows_b, :, first:end, :units]  # heads or 1
        return _group_mean(scores.expand(-1, q.shape[1], -1, -1), local, count), candidate
    mean_q = _group_mean(q, local, count)  # [Bs, H, G, D]
    pad = units * u - length
    if node.by == "mean_key":
        sums = torch.nn.functional.pad(keys, (0, 0, 0, pad)).unflatten(2, (units, u)).sum(3)
        sizes = torch.full((units,), float(u), device=keys.device)
        sizes[-1] = length - (units - 1) * u
        return mean_q @ (sums / sizes[:, None]).transpose(-1, -2), candidate
    if bounds is not None:
        lo, hi = bounds[0][rows_b], bounds[1][rows_b]
    else:
        lo = torch.nn.functional.pad(keys, (0, 0, 0, pad), value=math.inf)
        hi = torch.nn.functional.pad(keys, (0, 0, 0, pad), value=-math.inf)
        lo = lo.unflatten(2, (units, u)).amin(3)
        hi = hi.unflatten(2, (units, u)).amax(3)
    # sum_d max(q_d lo_d, q_d hi_d): hi where q_d > 0, lo where q_d < 0 (hi >= lo)
    return (mean_q.clamp(min=0) @ hi.transpose(-1, -2)
            + mean_q.clamp(max=0) @ lo.transpose(-1, -2)), candidate


def _probe(node, q, keys, found, allowed, first_pos, x: _Inputs):
    """vertical / slash: (estimates [Bs, H, 1, units], candidates [1, H, 1, units]) from the
    candidate columns or diagonals ``found`` (``_candidates``) and ``allowed``, the envelope
    of the last ``m`` query rows (the probe)."""
    rows, length = q.shape[2], keys.shape[2]
    m = allowed.shape[1]
    logits = (q[:, :, -m:] @ keys.transpose(-1, -2)) * x.scale
    logits = logits.masked_fill(~allowed, -math.inf)
    peak = logits.amax(-1, keepdim=True).nan_to_num(neginf=0.0)
    weights = torch.exp(logits - peak)  # 0 outside the envelope
    total = weights.sum(-1, keepdim=True)
    probs = weights / total.clamp(min=1e-30)  # rows without keys stay 0
    if isinstance(node, N.Vertical):
        return probs.sum(2)[:, :, None], found[None, :, None]
    positions = torch.arange(first_pos + rows - m, first_pos + rows, device=q.device)
    diagonal = positions[:, None] - torch.arange(length, device=q.device) + x.n_k - 1
    estimate = probs.new_zeros(*probs.shape[:2], 2 * x.n_k - 1)
    estimate.index_add_(2, diagonal.reshape(-1), probs.flatten(2))
    return estimate[:, :, None], found[None, :, None]


def _share(values: torch.Tensor, owner: torch.Tensor, sharing: int) -> torch.Tensor:
    """Sum over the query heads that share a selection: dimension 1, ``H -> Hs``."""
    out = values.new_zeros(values.shape[0], sharing, *values.shape[2:])
    return out.index_add_(1, owner, values)
