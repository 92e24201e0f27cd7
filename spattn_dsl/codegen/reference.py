"""Softmax attention under the reference mask, in any dtype (float64 for checks).

``attention_reference`` builds the whole ``n_q x n_k`` score matrix from ``Pattern.mask``: the
oracle of the tests. ``attention_tiled`` computes the same, query tile by query tile over the
pattern's block layout (the key tiles a query tile visits, the exact predicate on PARTIAL
tiles only), so its memory grows with the allowed pairs: the CPU path of the runtime.

Masked keys are selected away, never multiplied by 0: a NaN or inf in ``v`` (or ``k``, ``q``)
at a pair a row cannot see does not reach that row.
"""
from __future__ import annotations

import math
import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ..ir.evaluate import head_count, select_head
from ..layout.build import lower
from ..layout.pairs import allowed

REFERENCE_TILE = 128  # query and key tile of the tiled reference


def reference_masks(pattern, n_q: int, n_k: int, heads: int, key_padding=None, device="cpu",
                    documents=None):
    """bool ``[1 or B, H, n_q, n_k]``: each head's ``pattern.mask`` (per batch row under its
    ``documents`` ids ``[B, n_k]`` when given), and the real keys of ``key_padding``
    (``[B, n_k]``, False = padding) when given."""
    if documents is None:
        masks = torch.stack([pattern.mask(n_q, n_k, head=h) for h in range(heads)])[None]
    else:
        masks = torch.stack([torch.stack([pattern.mask(n_q, n_k, head=h, documents=row)
                                          for h in range(heads)]) for row in documents.cpu()])
    masks = masks.to(device)
    if key_padding is not None:
        masks = masks & key_padding.to(device=device, dtype=torch.bool)[:, None, None, :]
    return masks


def attention_reference(pattern, q, k, v, scale: float | None = None, dtype=torch.float64,
                        key_padding=None, documents=None):
    """``softmax(q k^T * scale, masked) v`` per head, rows with no allowed key -> 0.

    ``q`` ``[B, H, n_q, D]``, ``k``/``v`` ``[B, H_kv, n_k, D]`` (H a multiple of H_kv); head h uses
    the mask ``pattern.mask(n_q, n_k, head=h)``. Returns ``(out [B, H, n_q, D], lse [B, H, n_q])``
    in ``dtype``. ``documents``: None or ``[B, n_k]`` ids (``Pattern.mask``'s, per batch row).
    """
    masks, scores, vd = _scores(pattern, q, k, v, scale, dtype, key_padding, documents)
    lse = torch.logsumexp(scores, dim=-1)
    probs = _probs(scores, lse, masks)
    return masked_matmul(probs, masks, vd), lse


def attention_reference_backward(pattern, grad_out, q, k, v, scale: float | None = None,
                                 dtype=torch.float32, key_padding=None, grad_lse=None,
                                 documents=None):
    """(dq, dk, dv) of ``attention_reference`` by the closed-form softmax gradient, without
    autograd (so it runs inside a custom op's backward), in ``dtype``; ``grad_lse`` is the
    gradient of its lse (or None)."""
    masks, scores, vd = _scores(pattern, q, k, v, scale, dtype, key_padding, documents)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    group = q.shape[1] // k.shape[1]
    probs = _probs(scores, torch.logsumexp(scores, dim=-1), masks)
    do = grad_out.to(dtype)
    out = masked_matmul(probs, masks, vd)
    dv = masked_matmul(probs.transpose(-1, -2), masks.transpose(-1, -2), do)
    dp = do @ vd.transpose(-1, -2)
    delta = (do * out).sum(-1, keepdim=True)
    if grad_lse is not None:
        delta = delta - grad_lse.to(dtype)[..., None]
    ds = torch.where(masks, probs * (dp - delta), 0.0)
    dq = masked_matmul(ds, masks, k.to(dtype).repeat_interleave(group, 1)) * scale
    dk = masked_matmul(ds.transpose(-1, -2), masks.transpose(-1, -2), q.to(dtype)) * scale

    def per_kv_head(t):  # sum the query heads of each group
        return t.unflatten(1, (k.shape[1], group)).sum(2)

    return dq, per_kv_head(dk), per_kv_head(dv)


def _scores(pattern, q, k, v, scale, dtype, key_padding, documents=None):
    n_q, n_k = q.shape[2], k.shape[2]
    heads, group = q.shape[1], q.shape[1] // k.shape[1]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    qd, kd, vd = (t.to(dtype) for t in (q, k, v))
    kd, vd = kd.repeat_interleave(group, 1), vd.repeat_interleave(group, 1)
    masks = reference_masks(pattern, n_q, n_k, heads, key_padding, q.device, documents)
    scores = torch.einsum("bhqd,bhkd->bhqk", qd, kd) * scale
    return masks, scores.masked_fill(~masks, float("-inf")), vd


def _probs(scores, lse, masks):
    probs = torch.exp(scores - lse.nan_to_num(neginf=0.0)[..., None])
    return probs.masked_fill(~masks, 0.0)


def masked_matmul(weights, mask, values, finite: bool | None = None):
    """``weights @ values`` (``[..., m, n] @ [..., n, d]``) in which a pair outside ``mask``
    (broadcast against ``weights``; its weight is 0) contributes nothing, even where the value
    is NaN or inf. Finite values take one matmul; the non-finite ones are added by selection.
    ``finite``: True when the caller knows every value is finite (skips the check)."""
    if finite:
        return weights @ values
    finite = torch.isfinite(values)
    if bool(finite.all()):
        return weights @ values
    out = weights @ values.masked_fill(~finite, 0.0)
    bad = (~finite).flatten(0, -3).any(0).any(-1)  # the columns holding a non-finite value
    mask = mask.expand(weights.shape)[..., bad, None]
    terms = weights[..., bad, None] * values.masked_fill(finite, 0.0)[..., None, bad, :]
    return out + torch.where(mask, terms, 0.0).sum(-2)


# ------------------------------------------------------------------ tiled over the layout
class _Tile:
    """One query tile of one head case: its rows and the heads of the case (slices, so that
    ``index`` selects a view), the key positions of its visited key tiles and the exact mask
    over them (``[1 or B, 1, rows, keys]``)."""

    def __init__(self, rows: slice, heads: slice, keys, mask):
        self.rows, self.heads, self.keys, self.mask = rows, heads, keys, mask
        self.index = (slice(None), heads, rows)


def _key_positions(tiles, block_n: int, n_k: int):
    pos = (tiles.long()[:, None] * block_n + torch.arange(block_n)).flatten()
    return pos[pos < n_k]


def _tiles(pattern, n_q, n_k, heads, key_padding, device, layout):
    """The query tiles of every head case, each with the keys it may see (FULL key tiles
    allowed whole, PARTIAL ones through the exact pair predicate)."""
    concrete = pattern.at(n_k)
    layout = layout or lower(concrete, n_q, n_k, REFERENCE_TILE, REFERENCE_TILE)
    bm, bn = layout.block_m, layout.block_n
    cases = head_count(concrete)
    assert layout.cases == cases, "layout of another pattern"
    padding = None if key_padding is None else key_padding.to(device=device, dtype=torch.bool)
    for case in range(cases):
        expr = select_head(concrete, case)
        case_heads = slice(case, heads, cases)
        for i in range(layout.tiles[0]):
            full = layout.full_indices[case, i, :layout.full_counts[case, i]]
            partial = layout.partial_indices[case, i, :layout.partial_counts[case, i]]
            full_keys = _key_positions(full, bn, n_k)
            partial_keys = _key_positions(partial, bn, n_k)
            rows = torch.arange(i * bm, min(n_q, (i + 1) * bm))
            q_pos = rows + (n_k - n_q)
            mask = torch.cat([torch.ones(len(rows), len(full_keys), dtype=torch.bool),
                              allowed(expr, q_pos[:, None], partial_keys[None, :], n_k)
                              .expand(len(rows), len(partial_keys))], dim=1)
            keys = torch.cat([full_keys, partial_keys]).to(device)
            mask = mask.to(device)[None, None]
            if padding is not None:
                mask = mask & padding[:, keys][:, None, None, :]
            yield _Tile(slice(i * bm, i * bm + len(rows)), case_heads, keys, mask)


def _gather(tile, q, k, v, group, dtype):
    """(q rows, k keys, v keys) of a tile's heads, in ``dtype``."""
    kv_heads = torch.arange(q.shape[1], device=q.device)[tile.heads] // group
    qt = q[tile.index].to(dtype)
    kt = k.index_select(2, tile.keys).index_select(1, kv_heads).to(dtype)
    vt = v.index_select(2, tile.keys).index_select(1, kv_heads).to(dtype)
    return qt, kt, vt


def _tile_probs(tile, qt, kt, scale):
    """(probabilities ``[B, h, rows, keys]`` (0 outside the mask), lse ``[B, h, rows]``)."""
    scores = torch.matmul(qt, kt.transpose(-1, -2)).mul_(scale)
    scores.masked_fill_(~tile.mask, float("-inf"))
    top = scores.amax(-1, keepdim=True).nan_to_num_(neginf=0.0)  # 0 in rows without keys
    probs = scores.sub_(top).exp_()  # masked scores give exactly 0
    total = probs.sum(-1, keepdim=True)  # >= 1 in a row with a key (its maximum gives 1)
    lse = (top + total.log()).squeeze(-1)  # -inf in rows without keys
    return probs.div_(total.clamp_(min=1.0)), lse


def _all_finite(*tensors) -> list:
    """Per tensor: whether all its values are finite (checked once, not per tile). A finite
    sum proves it in one fast pass (a NaN or inf makes any sum NaN or inf); only a sum that
    is not finite (such a value, or an overflow) needs the elementwise check."""
    def finite(t):
        total = t.sum(dtype=torch.float64 if t.dtype == torch.float64 else torch.float32)
        return bool(torch.isfinite(total)) or bool(torch.isfinite(t).all())
    return [finite(t) for t in tensors]


def _attention_tiled_exact(pattern, q, k, v, scale: float | None = None, dtype=torch.float32,
                    key_padding=None, layout=None):
    """``attention_tiled`` for inputs that may hold NaN or inf: one query tile at a time, every
    masked pair selected away (``masked_matmul``), never multiplied by 0."""
    batch, heads, n_q, head_dim = q.shape
    n_k, group = k.shape[2], heads // k.shape[1]
    scale = head_dim ** -0.5 if scale is None else scale
    out = torch.zeros(batch, heads, n_q, head_dim, dtype=dtype, device=q.device)
    lse = torch.full((batch, heads, n_q), float("-inf"), dtype=dtype, device=q.device)
    [finite_v] = _all_finite(v)
    for tile in _tiles(pattern, n_q, n_k, heads, key_padding, q.device, layout):
        if len(tile.keys) == 0:
            continue
        qt, kt, vt = _gather(tile, q, k, v, group, dtype)
        probs, tile_lse = _tile_probs(tile, qt, kt, scale)
        out[tile.index] = masked_matmul(probs, tile.mask, vt, finite_v)
        lse[tile.index] = tile_lse
    return out, lse


def _attention_tiled_backward_exact(pattern, grad_out, q, k, v, scale: float | None = None,
                             dtype=torch.float32, key_padding=None, grad_lse=None, layout=None):
    """``attention_tiled_backward`` for inputs that may hold NaN or inf (see
    ``_attention_tiled_exact``)."""
    batch, heads, n_q, head_dim = q.shape
    kv_heads, n_k = k.shape[1], k.shape[2]
    group = heads // kv_heads
    scale = head_dim ** -0.5 if scale is None else scale
    dq = torch.zeros(q.shape, dtype=dtype, device=q.device)
    dk = torch.zeros(batch, heads, n_k, head_dim, dtype=dtype, device=q.device)  # per query head
    dv = torch.zeros_like(dk)
    finite_q, finite_k, finite_v, finite_do = _all_finite(q, k, v, grad_out)
    for tile in _tiles(pattern, n_q, n_k, heads, key_padding, q.device, layout):
        if len(tile.keys) == 0:
            continue
        qt, kt, vt = _gather(tile, q, k, v, group, dtype)
        probs, _ = _tile_probs(tile, qt, kt, scale)
        do = grad_out[tile.index].to(dtype)
        out = masked_matmul(probs, tile.mask, vt, finite_v)
        delta = (do * out).sum(-1, keepdim=True)
        if grad_lse is not None:
            delta = delta - grad_lse[tile.index].to(dtype)[..., None]
        ds = probs * (do @ vt.transpose(-1, -2) - delta)
        if not finite_v:  # a NaN in v at a masked key makes dp NaN there: select it away
            ds = torch.where(tile.mask, ds, 0.0)
        mask_t = tile.mask.transpose(-1, -2)
        dq[tile.index] = masked_matmul(ds, tile.mask, kt, finite_k) * scale
        for grads, part in ((dk, masked_matmul(ds.transpose(-1, -2), mask_t, qt, finite_q) * scale),
                            (dv, masked_matmul(probs.transpose(-1, -2), mask_t, do, finite_do))):
            grads[:, tile.heads].index_add_(2, tile.keys, part)  # a view: adds in place

    def per_kv_head(t):  # sum the query heads of each group
        return t.unflatten(1, (kv_heads, group)).sum(2)

    return dq, per_kv_head(dk), per_kv_head(dv)


# --------------------------------------------------- the CPU path: whole query tiles, finite
CPU_BLOCK_M = (512, 256, 128, 64)  # query tiles tried
CPU_BLOCK_N = 64  # key tile: the granularity at which unvisited keys are skipped
TILE_COST = 1 << 17  # a query tile's fixed cost (some 15 torch calls), in score elements
PIECE = 1 << 21  # score elements of one piece of a query tile's keys (8 MB: the forward
# splits longer rows, so that two workers' score blocks stay in a 32 MB cache; blocks that
# spill run 10-25% slower when both cores stream them, measured on the 2-core test machine)
PIECE_KEYS = 256  # the fewest keys of a piece: each further piece costs a merge of the
# tile's outputs (batch x heads x rows x head_dim), so 64-key pieces would double the work


def cpu_tiles(pattern, n_q: int, n_k: int, batch_heads: int, layout_for=None,
              forward: bool = False) -> tuple:
    """(block_m, block_n) of the CPU path: among ``CPU_BLOCK_M``, the query tile of the least
    estimated cost (score elements computed, plus ``TILE_COST`` per product: big tiles
    amortise the calls, small ones waste less of a band's edges) whose pieces of
    ``PIECE`` score elements (``batch_heads`` x rows x keys) still hold ``PIECE_KEYS`` keys,
    judged from the layout at 64-row tiles (``layout_for(pattern, n_q, n_k, bm, bn)``, a
    cached lowering, or ``lower``). ``forward``: the forward multiplies the 64-row tiles of a
    band (``_bands``, at most ``PIECE`` scores per head) in one product per head."""
    probe = (layout_for or _lower)(pattern, n_q, n_k, 64, CPU_BLOCK_N)
    visited = int((probe.full_counts.long() + probe.partial_counts.long()).amax()) \
        if probe.full_counts.numel() else 0
    keys = visited * CPU_BLOCK_N
    banded = forward and _band_share(probe) >= 0.5
    best = None
    for bm in CPU_BLOCK_M:
        width = min(n_k, keys + bm - 64)
        tiles = -(-n_q // bm)
        if banded and bm == 64:  # per band, one product per batch row and head
            calls = batch_heads * -(-tiles // max(1, PIECE // max(1, bm * width)))
        else:  # per tile, one per piece of its keys
            calls = tiles * -(-width // max(CPU_BLOCK_N, PIECE // (batch_heads * bm)))
        cost = tiles * batch_heads * bm * width + calls * TILE_COST
        fits = batch_heads * bm * min(width, PIECE_KEYS) <= PIECE
        if (fits or bm == CPU_BLOCK_M[-1]) and (best is None or cost < best[0]):
            best = (cost, bm)
    return best[1], CPU_BLOCK_N


_BAND_SHARES: dict = {}  # id(layout) -> _band_share, dropped with the layout


def _band_share(layout) -> float:
    """The share of query tiles (after the first, over the head cases) whose visited key tiles
    are one run, as long as the previous tile's and ``block_m`` keys further on: a band
    (kept per layout: the runtime's layouts are cached, and every forward call asks)."""
    share = _BAND_SHARES.get(id(layout))
    if share is None:
        share = _BAND_SHARES[id(layout)] = _count_band_share(layout)
        weakref.finalize(layout, _BAND_SHARES.pop, id(layout), None)
    return share


def _count_band_share(layout) -> float:
    if layout.tiles[0] < 2 or layout.block_m % layout.block_n:
        return 0.0
    counts = layout.full_counts.long() + layout.partial_counts.long()
    lo, hi = [], []
    for indices, count in ((layout.full_indices, layout.full_counts),
                           (layout.partial_indices, layout.partial_counts)):
        valid = torch.arange(indices.shape[-1]) < count.long()[..., None]
        none = torch.zeros(count.shape + (1,), dtype=torch.long)  # for tiles that visit none
        indices = indices.long()
        lo.append(torch.cat([indices.masked_fill(~valid, 1 << 62), none + (1 << 62)], -1).amin(-1))
        hi.append(torch.cat([indices.masked_fill(~valid, -1), none - 1], -1).amax(-1))
    lo, hi = torch.minimum(*lo), torch.maximum(*hi)
    one_run = (counts > 0) & (hi - lo + 1 == counts)
    moving = one_run[:, 1:] & one_run[:, :-1] & (counts[:, 1:] == counts[:, :-1]) & \
        (lo[:, 1:] - lo[:, :-1] == layout.block_m // layout.block_n)
    return float(moving.double().mean())


def _lower(pattern, n_q, n_k, bm, bn):
    return lower(pattern.at(n_k), n_q, n_k, bm, bn)


class _Row:
    """One query tile of one head case: its rows (a slice), the key ranges its visited key
    tiles cover in order (``runs``, (first, end) positions; their keys side by side are the
    tile's ``width`` columns) and the columns where the pair predicate applies (``hidden``:
    (first column, end column, float ``[rows, columns]`` bias: -inf where the pair is NOT
    allowed, else 0; added to the scores, 20x faster than a boolean ``masked_fill_``).
    A band (``_bands``): ``tiles`` such tiles of ``block_m`` rows each, one after the other,
    tile t's keys ``runs[0]`` moved ``t * step`` keys on, with the same ``hidden``."""

    __slots__ = ("rows", "runs", "hidden", "width", "tiles", "step")

    def __init__(self, rows, runs, hidden, width, tiles=1, step=0):
        self.rows, self.runs, self.hidden, self.width = rows, runs, hidden, width
        self.tiles, self.step = tiles, step


ROW_CACHE_BYTES = 1 << 28  # the predicate's masks kept per layout (forward, backward, calls)
_ROW_CACHE: dict = {}  # id(layout) -> {(case, device): [_Row]}, dropped with the layout


def _rows(expr, layout, case: int, n_q: int, n_k: int, device, band_limit: int = 0):
    """The ``_Row`` of every query tile of one head case that visits a key tile, kept with the
    layout (the runtime's layouts are cached, so forward, backward and later calls reuse them)
    while their masks take at most ``ROW_CACHE_BYTES``. ``band_limit``: bands of at most
    that many score elements (per batch row and head) as one ``_Row`` each (0: none)."""
    key = (case, str(device), band_limit)
    per_layout = _ROW_CACHE.get(id(layout))
    if per_layout is not None and key in per_layout:
        return per_layout[key]
    rows = list(_build_rows(expr, layout, case, n_q, n_k, device))
    if band_limit:
        rows = _bands(rows, layout.block_m, band_limit)
    biases = {id(bias): bias for row in rows for _, _, bias in row.hidden}
    size = sum(bias.numel() * bias.element_size() for bias in biases.values())
    if size <= ROW_CACHE_BYTES:
        if per_layout is None:
            per_layout = _ROW_CACHE[id(layout)] = {}
            weakref.finalize(layout, _ROW_CACHE.pop, id(layout), None)
        per_layout[key] = rows
    return rows


def _bands(rows, block_m: int, limit: int) -> list:
    """``rows`` with each run of consecutive whole tiles that form a band (one key run of one
    width, moving on by the same step, the same predicate columns and biases) as one
    ``_Row`` of ``tiles`` > 1, of at most ``limit`` score elements."""
    merged = []
    for row in rows:
        band = merged[-1] if merged else None
        if band is not None and _extends(band, row, block_m) and \
                (band.tiles + 1) * block_m * band.width <= limit:
            step = row.runs[0][0] - band.runs[0][0] if band.tiles == 1 else band.step
            merged[-1] = _Row(slice(band.rows.start, row.rows.stop), band.runs, band.hidden,
                              band.width, band.tiles + 1, step)
        else:
            merged.append(row)
    return merged


def _extends(band, row, block_m: int) -> bool:
    """``row`` is the next tile of ``band``."""
    if len(band.runs) != 1 or len(row.runs) != 1 or row.width != band.width or \
            band.rows.stop - band.rows.start != band.tiles * block_m or \
            row.rows.start != band.rows.stop or row.rows.stop - row.rows.start != block_m:
        return False
    step = row.runs[0][0] - (band.runs[0][0] + (band.tiles - 1) * band.step)
    if step < 0 or (band.tiles > 1 and step != band.step):
        return False
    return len(band.hidden) == len(row.hidden) and all(
        a[0] == b[0] and a[1] == b[1] and a[2] is b[2] for a, b in zip(band.hidden, row.hidden))


def _build_rows(expr, layout, case: int, n_q: int, n_k: int, device):
    """The rows of ``_rows``: FULL tiles need no predicate, PARTIAL ones get it over their
    columns, consecutive tiles are one run. Equal masks share one bias tensor (a band's or
    the causal diagonal's tiles all have the same)."""
    bm, bn = layout.block_m, layout.block_n
    biases = {}
    full_counts = layout.full_counts[case].tolist()
    partial_counts = layout.partial_counts[case].tolist()
    full_indices, partial_indices = layout.full_indices[case], layout.partial_indices[case]
    for i in range(layout.tiles[0]):
        full = full_indices[i, :full_counts[i]].long().numpy()
        partial = partial_indices[i, :partial_counts[i]].long().numpy()
        if len(full) + len(partial) == 0:
            continue
        tiles = np.concatenate([full, partial])
        order = np.argsort(tiles, kind="stable")
        tiles = tiles[order]
        is_partial = (order >= len(full))
        cut = np.flatnonzero(np.diff(tiles) != 1) + 1  # runs of consecutive tiles
        runs = [(int(tiles[a]) * bn, min(int(tiles[b - 1] + 1) * bn, n_k))
                for a, b in zip(np.r_[0, cut], np.r_[cut, len(tiles)])]
        width = sum(end - first for first, end in runs)
        rows = slice(i * bm, min(n_q, (i + 1) * bm))
        q_pos = torch.arange(rows.start, rows.stop)[:, None] + (n_k - n_q)
        hidden = []
        marked = np.flatnonzero(is_partial)  # tile j's columns start at j * bn (only the
        if len(marked):                      # last tile, the highest, may be short)
            cut = np.flatnonzero(np.diff(marked) != 1) + 1
            for a, b in zip(marked[np.r_[0, cut]], marked[np.r_[cut - 1, len(marked) - 1]] + 1):
                keys = _key_positions(torch.from_numpy(tiles[a:b]), bn, n_k)
                mask = ~allowed(expr, q_pos, keys[None, :], n_k).expand(len(q_pos), len(keys))
                hidden.append((int(a) * bn, int(a) * bn + len(keys), _bias(mask, biases, device)))
        yield _Row(rows, runs, hidden, width)


def _bias(hidden, shared: dict, device):
    """float32 0 / -inf of a bool mask (True: hidden), one tensor per distinct mask."""
    mask = hidden.contiguous()
    key = (tuple(mask.shape), mask.numpy().tobytes())
    bias = shared.get(key)
    if bias is None:
        bias = shared[key] = torch.zeros(mask.shape).masked_fill_(mask, float("-inf")).to(device)
    return bias


def _pieces(row, columns: int) -> list:
    """``row`` as consecutive pieces of at most ``columns`` of its columns, each a ``_Row``
    over its own key runs and predicate columns."""
    if row.width <= columns:
        return [row]
    pieces = []
    for start in range(0, row.width, columns):
        stop = min(row.width, start + columns)
        runs, column = [], 0
        for first, end in row.runs:
            a, b = max(column, start), min(column + end - first, stop)
            if a < b:
                runs.append((first + a - column, first + b - column))
            column += end - first
        hidden = [(max(first, start) - start, min(end, stop) - start,
                   bias[:, max(first, start) - first:min(end, stop) - first])
                  for first, end, bias in row.hidden if max(first, start) < min(end, stop)]
        pieces.append(_Row(row.rows, runs, hidden, stop - start))
    return pieces


def merge(out_a, lse_a, out_b, lse_b):
    """(out, lse) of two disjoint parts of one softmax, by log-sum-exp (rows empty in both
    stay 0 with lse -inf)."""
    lse = torch.logaddexp(lse_a, lse_b)
    top = lse.nan_to_num(neginf=0.0)
    w_a = torch.exp(lse_a - top)[..., None]
    w_b = torch.exp(lse_b - top)[..., None]
    return out_a * w_a + out_b * w_b, lse


def _columns(t, runs, heads=None):
    """``t[:, heads]`` at the keys of ``runs`` side by side (a view when there is one run)."""
    if heads is not None:
        t = t[:, heads] if isinstance(heads, slice) else t.index_select(1, heads)
    if len(runs) == 1:
        return t[:, :, runs[0][0]:runs[0][1]]
    return torch.cat([t[:, :, first:end] for first, end in runs], dim=2)


def _padding_bias(key_padding, dtype, device):
    """None, or ``key_padding`` (True: a real key) as a float ``[B, n_k]`` bias: 0 at real
    keys, -inf at padding; made once per call, read per tile by ``_key_columns``."""
    if key_padding is None:
        return None
    hidden = ~key_padding.to(device=device, dtype=torch.bool)
    return torch.zeros(hidden.shape, dtype=dtype, device=device).masked_fill_(hidden,
                                                                              float("-inf"))


def _key_columns(padding_bias, runs):
    """None, or ``padding_bias`` at the keys of ``runs`` (a view when there is one run),
    broadcast over every row of ``_softmax_``'s groups."""
    if padding_bias is None:
        return None
    return _columns(padding_bias[:, None], runs)[:, 0][:, None, None, None, :]


def _add_columns(target, part, runs, heads=None):
    """``target[:, heads]`` at the keys of ``runs`` += ``part``'s columns (``heads`` None: all;
    an index tensor: query heads summed into their key/value head)."""
    column = 0
    for first, end in runs:
        piece = part[:, :, column:column + end - first]
        if heads is None:
            target[:, :, first:end] += piece
        else:
            target[:, :, first:end].index_add_(1, heads, piece)
        column += end - first


class _Buffers:
    """Flat scratch tensors reused by every query tile of a call (no allocation per tile)."""

    def __init__(self, dtype, device):
        self.dtype, self.device, self.flat = dtype, device, {}

    def reserve(self, names, size):
        """Allocate each named tensor at ``size`` elements now (the largest tile's), so that
        growing tiles (causal) never allocate again: RSS stays at one buffer each."""
        for name in names:
            self.get(name, (size,))

    def get(self, name, shape):
        size = math.prod(shape)
        flat = self.flat.get(name)
        if flat is None or flat.numel() < size:
            flat = self.flat[name] = torch.empty(size, dtype=self.dtype, device=self.device)
        return flat[:size].view(shape)


_WORKERS: dict = {}  # thread count -> a pool of tile workers, one intra-op thread each
_WORKERS_STARTING = threading.Lock()
os.register_at_fork(after_in_child=_WORKERS.clear)  # a forked child has none of the threads
WORKER_NAME = "spattn-tiles"


def _tile_workers():
    """A pool of ``torch.get_num_threads()`` threads that each run whole query tiles with one
    intra-op thread (None when torch runs one thread, or in a tile worker). Parallel over
    tiles instead of inside each small product: no two-thread barrier per torch call, which
    cost the tiled path 40% of its CPU time with two threads. torch's thread count is per
    OpenMP thread: each worker sets its own to 1; the process-wide default is put back."""
    count = torch.get_num_threads()
    if count < 2 or threading.current_thread().name.startswith(WORKER_NAME):
        return None
    with _WORKERS_STARTING:  # one pool per count, even when several threads call at once
        return _WORKERS.get(count) or _start_workers(count)


def _start_workers(count: int):
    ready = threading.Barrier(count + 1)

    def single_threaded():
        torch.set_num_threads(1)
        ready.wait()

    pool = ThreadPoolExecutor(count, WORKER_NAME, initializer=single_threaded)
    for _ in range(count):  # start every worker now (each waits for the others)
        pool.submit(lambda: None)
    ready.wait()
    torch.set_num_threads(count)  # new threads' default again (this thread keeps count)
    _WORKERS[count] = pool
    return pool


def _for_each_tile(tasks, tile, scratch, size=None):
    """``tile(task, buffers)`` for every task (a query tile's ``_Row``, or a part of one), in
    this thread or split among the tile workers (largest first by ``size(task)``, score
    elements, by default a ``_Row``'s; each worker taking the next when done);
    ``scratch()`` makes a thread's buffers. Tasks write disjoint parts of the outputs."""
    pool = _tile_workers() if len(tasks) > 1 else None
    if pool is None:
        buffers = scratch()
        for task in tasks:
            tile(task, buffers)
        return
    per_thread, inference = {}, torch.is_inference_mode_enabled()

    def run(task):  # grad and inference modes are per thread: the caller's here
        buffers = per_thread.get(threading.get_ident())
        if buffers is None:
            buffers = per_thread[threading.get_ident()] = scratch()
        with torch.inference_mode(inference), torch.no_grad():
            tile(task, buffers)

    size = size or (lambda row: row.width * (row.rows.stop - row.rows.start))
    for _ in pool.map(run, sorted(tasks, key=lambda task: -size(task))):
        pass  # re-raises a task's error here


def _softmax_(scores, hidden, rows: int, padding=None):
    """In place: ``scores`` ``[B, X, R, width]`` -> probabilities (0 at hidden pairs and in
    rows without keys); returns the empty rows' bool ``[B, X, R]`` (or None) and the row
    maxima before the softmax. The R rows are groups of ``rows`` (a key head's query heads,
    or a band's tiles) with the same predicate columns ``hidden`` (``_Row.hidden``);
    ``padding``: None, or a float 0/-inf bias broadcast over ``[B, X, R / rows, rows, width]``."""
    batch, x, r, width = scores.shape
    grouped = scores.view(batch, x, r // rows, rows, width)
    for first, end, bias in hidden:
        grouped[..., first:end].add_(bias)
    if padding is not None:
        grouped.add_(padding)
    top = scores.amax(-1)
    torch.ops.aten._softmax.out(scores, -1, False, out=scores)  # row by row, in place
    empty = top == float("-inf")
    if bool(empty.any()):
        scores[empty] = 0.0
        return empty, top
    return None, top


def _onednn_linear():
    """``torch.ops.mkldnn._linear_pointwise`` (``x @ w^T`` by oneDNN, which inductor's CPU
    kernels use too), or None where this torch lacks it. On this project's AMD test machine
    it multiplies fp32 about 1.3-1.6x faster than ``torch.matmul`` (MKL)."""
    try:
        if torch.backends.mkldnn.is_available():
            return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        pass
    return None


_LINEAR = _onednn_linear()


def _matmul_nt(a, b, out):
    """``out = a @ b^T`` over ``[B, X, m, n]`` and ``[B, X, d, n]`` (a small ``d``: the products
    over a tile's keys, ``p v`` and ``ds k``): per (batch row, head) through oneDNN where it
    takes the operands (fp32 on the CPU, rows of ``b`` contiguous), else one ``torch.matmul``.
    Not for the score blocks: oneDNN allocates each result, and blocks of growing sizes
    fragment the heap (causal at n = 32768: 2.6 GB of RSS instead of 0.5)."""
    if _LINEAR is None or a.dtype != torch.float32 or a.device.type != "cpu" or \
            not (a.is_contiguous() and b.is_contiguous() and out.is_contiguous()):
        return torch.matmul(a, b.transpose(-1, -2), out=out)
    parts = [_LINEAR(x, w, None, "none", [], "")  # few torch calls: this runs per tile
             for x, w in zip(a.flatten(0, 1).unbind(0), b.flatten(0, 1).unbind(0))]
    torch.stack(parts, out=out.view((-1,) + out.shape[2:]))
    return out


def _layout_for_call(pattern, q, k, layout, forward: bool = False):
    if layout is not None:
        return layout
    batch_heads = q.shape[0] * q.shape[1]
    bm, bn = cpu_tiles(pattern, q.shape[2], k.shape[2], batch_heads, forward=forward)
    return _lower(pattern, q.shape[2], k.shape[2], bm, bn)


def _cases(pattern, q, k, layout):
    """Per head case: (expr, query heads (a slice), key/value heads of those query heads as
    an index tensor, or None when the case is every head: then query heads are grouped over
    their key/value head, G = heads / kv_heads rows per key row)."""
    concrete = pattern.at(k.shape[2])
    cases = head_count(concrete)
    assert layout.cases == cases, "layout of another pattern"
    heads, group = q.shape[1], q.shape[1] // k.shape[1]
    for case in range(cases):
        if cases == 1:
            yield case, select_head(concrete, case), slice(None), None
        else:
            kv = torch.arange(case, heads, cases, device=q.device) // group
            yield case, select_head(concrete, case), slice(case, heads, cases), kv


def _key_rows(scratch, name, t_t, runs):
    """``[B, X, D, width]``: the keys of ``runs`` side by side, from ``t_t`` (k or v
    transposed once per call, ``[B, X, D, n_k]``) into a scratch tensor: contiguous rows, as
    oneDNN takes them (a transposed copy per tile read k or v across the cache, 14% of the
    causal forward at 32768)."""
    width = sum(end - first for first, end in runs)
    out = scratch.get(name, t_t.shape[:-1] + (width,))
    if len(runs) == 1:
        return out.copy_(t_t[..., runs[0][0]:runs[0][1]])
    return torch.cat([t_t[..., first:end] for first, end in runs], dim=-1, out=out)


def _largest(rows, batch: int, heads: int, layout, every_head: bool, cases: int) -> int:
    """Elements of the largest score block among ``rows`` (a head case's query tiles)."""
    if not rows:
        return 0
    case_heads = heads if every_head else -(-heads // cases)
    return batch * case_heads * layout.block_m * max(row.tiles * row.width for row in rows)


def _band_view(t, dim: int, first: int, step: int, tiles: int, width: int):
    """A view of ``t`` with dimension ``dim`` (positions) as ``[tiles, width]``: tile i holds
    positions ``first + i * step`` to ``first + i * step + width`` (overlapping: no copy)."""
    size, stride = list(t.shape), list(t.stride())
    size[dim:dim + 1] = [tiles, width]
    stride[dim:dim + 1] = [step * stride[dim], stride[dim]]
    return t.as_strided(size, stride, t.storage_offset() + first * t.stride(dim))


def _grouped(t, heads, kv, rows, kv_heads):
    """Query-side ``t[:, heads, rows]`` as ``[B, X, G*rows, D]``."""
    part = t[:, heads, rows]
    if kv is None:
        return part.reshape(part.shape[0], kv_heads, -1, part.shape[-1])
    return part


def attention_tiled(pattern, q, k, v, scale: float | None = None, dtype=torch.float32,
                    key_padding=None, layout=None):
    """``attention_reference`` (same arguments and results) without an ``n_q x n_k`` matrix:
    whole query tiles over the block layout (``layout``, or ``cpu_tiles``'s): per tile, its
    visited keys side by side (a view of k and v where they are consecutive), one matmul for
    the scores of all its heads, the pair predicate on PARTIAL tiles' columns only, a softmax
    in place, one matmul for the output. Inputs holding NaN or inf take
    ``_attention_tiled_exact`` (masked pairs selected away, not multiplied by 0)."""
    if not all(_all_finite(q, k, v)):
        return _attention_tiled_exact(pattern, q, k, v, scale, dtype, key_padding, layout)
    layout = _layout_for_call(pattern, q, k, layout, forward=True)
    batch, heads, n_q, head_dim = q.shape
    kv_heads, n_k = k.shape[1], k.shape[2]
    scale = head_dim ** -0.5 if scale is None else scale
    k, v = k.to(dtype), v.to(dtype)
    padding_bias = _padding_bias(key_padding, dtype, q.device)
    out = torch.zeros(batch, heads, n_q, head_dim, dtype=dtype, device=q.device)
    lse = torch.full((batch, heads, n_q), float("-inf"), dtype=dtype, device=q.device)
    for case, expr, case_heads, kv in _cases(pattern, q, k, layout):
        kc, vc = (k, v) if kv is None else (k.index_select(1, kv), v.index_select(1, kv))
        rows = _rows(expr, layout, case, n_q, n_k, q.device, PIECE)
        span = max((row.runs[-1][1] for row in rows if row.tiles == 1), default=0)
        # [B, X, D, keys up to the last one a single tile reads]: rows for oneDNN's p v
        vc_t = vc[:, :, :span].transpose(-1, -2).contiguous()
        largest = _largest(rows, batch, heads, layout, kv is None, layout.cases)
        case_head_list = range(heads)[case_heads]
        kv_of = (lambda h: h // (heads // kv_heads)) if kv is None else (lambda h: h)  # h: of kc

        def scratch():
            buffers = _Buffers(dtype, q.device)
            buffers.reserve(("scores",), min(largest, PIECE))
            buffers.reserve(("vt",), min(largest, PIECE) // layout.block_m * head_dim)
            return buffers

        def piece(row, qt, scratch, name):
            """(p v, lse) of one piece of a tile's keys, ``p v`` in scratch ``name``."""
            kt = _columns(kc, row.runs)
            scores = scratch.get("scores", qt.shape[:-1] + (row.width,))
            torch.matmul(qt, kt.transpose(-1, -2), out=scores)
            rows = row.rows.stop - row.rows.start
            empty, top = _softmax_(scores, row.hidden, rows, _key_columns(padding_bias, row.runs))
            row_lse = top - scores.amax(-1).log()  # the largest probability is 1 / sum
            if empty is not None:
                row_lse[empty] = float("-inf")
            pv = _matmul_nt(scores, _key_rows(scratch, "vt", vc_t, row.runs),
                            scratch.get(name, qt.shape))
            return pv, row_lse

        def band(row, b, h, scratch):
            """A band's tiles for batch row ``b`` and the case's query head ``h``: one product
            for all their scores (k as a strided view, ``_band_view``), their softmax, one
            product for their outputs (v likewise) straight into ``out``."""
            tiles, bm, width, first = row.tiles, layout.block_m, row.width, row.runs[0][0]
            head = case_head_list[h]
            scores = scratch.get("scores", (1, 1, tiles * bm, width))
            qt = scratch.get("q", (tiles, bm, head_dim))
            qt.copy_(q[b, head, row.rows].view(tiles, bm, head_dim)).mul_(scale)
            keys = _band_view(kc[b, kv_of(h)], 0, first, row.step, tiles, width)
            torch.bmm(qt, keys.transpose(1, 2), out=scores.view(tiles, bm, width))
            padding = None if padding_bias is None else _band_view(
                padding_bias[b:b + 1], 1, first, row.step, tiles, width)[:, None, :, None, :]
            empty, top = _softmax_(scores, row.hidden, bm, padding)
            row_lse = lse[b, head, row.rows]
            torch.sub(top.view(-1), scores.amax(-1).log_().view(-1), out=row_lse)
            if empty is not None:
                row_lse[empty.view(-1)] = float("-inf")
            values = _band_view(vc[b, kv_of(h)], 0, first, row.step, tiles, width)
            torch.bmm(scores.view(tiles, bm, width), values,
                      out=out[b, head, row.rows].view(tiles, bm, head_dim))

        def tile(task, scratch):
            row, b, h = task
            if b is not None:
                return band(row, b, h, scratch)
            qt = _grouped(q, case_heads, kv, row.rows, kv_heads).to(dtype) * scale
            columns = max(CPU_BLOCK_N, PIECE * head_dim // qt.numel() // CPU_BLOCK_N * CPU_BLOCK_N)
            first, *more = _pieces(row, columns)
            pv, row_lse = piece(first, qt, scratch, "out")
            for part in more:
                pv, row_lse = merge(pv, row_lse, *piece(part, qt, scratch, "part"))
            rows = row.rows.stop - row.rows.start
            out[:, case_heads, row.rows] = pv.view(batch, -1, rows, head_dim)
            lse[:, case_heads, row.rows] = row_lse.view(batch, -1, rows)

        def size(task):  # score elements
            row, b, _ = task
            return row.width * (row.rows.stop - row.rows.start) * \
                (1 if b is not None else batch * len(case_head_list))

        tasks = [(row, b, h) for row in rows if row.tiles > 1  # a band: per batch row and head
                 for b, h in np.ndindex(batch, len(case_head_list))]
        _for_each_tile(tasks + [(row, None, None) for row in rows if row.tiles == 1], tile,
                       scratch, size)
    if not _all_finite(out)[0]:  # finite inputs whose product overflowed: an added -inf
        return _attention_tiled_exact(pattern, q, k, v, scale, dtype, key_padding, layout)
    return out, lse


def attention_tiled_backward(pattern, grad_out, q, k, v, scale: float | None = None,
                             dtype=torch.float32, key_padding=None, grad_lse=None, layout=None,
                             out=None, lse=None):
    """``attention_reference_backward`` (same arguments and results), whole query tiles as in
    ``attention_tiled``, their keys in pieces: per piece the probabilities again from the
    forward's ``lse`` (one matmul, a softmax in place, rescaled), then dv, dp, ds (with
    ``delta = rowsum(grad_out * out)``), dq and dk, four matmuls; each tile's rows get their
    dq whole and add their share of dk and dv at the tile's keys. ``out`` and ``lse``: the
    forward's (computed here when not given)."""
    if not all(_all_finite(q, k, v, grad_out)):
        return _attention_tiled_backward_exact(pattern, grad_out, q, k, v, scale, dtype,
                                               key_padding, grad_lse, layout)
    layout = _layout_for_call(pattern, q, k, layout)
    if out is None or lse is None:
        out, lse = attention_tiled(pattern, q, k, v, scale, dtype, key_padding, layout)
    batch, heads, n_q, head_dim = q.shape
    kv_heads, n_k = k.shape[1], k.shape[2]
    scale = head_dim ** -0.5 if scale is None else scale
    k, v, do = k.to(dtype), v.to(dtype), grad_out.to(dtype)
    delta = (do * out.to(dtype)).sum(-1)  # sum_j p_j dp_j, over all of a row's keys
    if grad_lse is not None:  # d lse / d scores = probs
        delta = delta - grad_lse.to(dtype)
    row_stats = torch.stack([lse.to(dtype), delta], -1)  # [B, H, n_q, 2]
    padding_bias = _padding_bias(key_padding, dtype, q.device)
    dq = torch.zeros(q.shape, dtype=dtype, device=q.device)
    dk = torch.zeros(k.shape, dtype=dtype, device=q.device)
    dv = torch.zeros(v.shape, dtype=dtype, device=q.device)
    extra, taking = [], threading.Lock()  # every thread's dk and dv; the others added at the end
    for case, expr, case_heads, kv in _cases(pattern, q, k, layout):
        kc, vc = (k, v) if kv is None else (k.index_select(1, kv), v.index_select(1, kv))
        kc_t = kc.transpose(-1, -2).contiguous()  # [B, X, D, n_k]: rows for oneDNN
        rows = _rows(expr, layout, case, n_q, n_k, q.device)
        largest = min(PIECE, _largest(rows, batch, heads, layout, kv is None, layout.cases))

        def scratch():
            buffers = _Buffers(dtype, q.device)
            buffers.reserve(("probs", "ds"), largest)
            buffers.reserve(("kt",), largest // layout.block_m * head_dim)
            with taking:  # the first thread adds into dk and dv, the others into their own
                buffers.dk, buffers.dv = (dk, dv) if not extra else \
                    (torch.zeros_like(dk), torch.zeros_like(dv))
                extra.append((buffers.dk, buffers.dv))
            return buffers

        def piece(row, qt, dot, row_lse, row_delta, scratch, dq_name, whole):
            """Adds one piece's share to dk and dv; returns its ``ds k`` (in ``dq_name``).
            ``whole``: the piece is the tile's every key (its softmax is the row's)."""
            kt, vt = _columns(kc, row.runs), _columns(vc, row.runs)
            shape = qt.shape[:-1] + (row.width,)
            probs = scratch.get("probs", shape)
            torch.matmul(qt, kt.transpose(-1, -2), out=probs)
            rows = row.rows.stop - row.rows.start
            empty, top = _softmax_(probs, row.hidden, rows, _key_columns(padding_bias, row.runs))
            if not whole:  # from the piece's own softmax to the row's
                piece_lse = top - probs.amax(-1).log()
                if empty is not None:
                    piece_lse[empty] = float("-inf")
                probs.mul_((piece_lse - row_lse).exp_().nan_to_num_(0.0)[..., None])
            _add_columns(scratch.dv, torch.matmul(probs.transpose(-1, -2), dot), row.runs, kv)
            ds = scratch.get("ds", shape)
            torch.matmul(dot, vt.transpose(-1, -2), out=ds)  # dp
            ds.sub_(row_delta[..., None]).mul_(probs)
            _add_columns(scratch.dk, torch.matmul(ds.transpose(-1, -2), qt), row.runs, kv)
            return _matmul_nt(ds, _key_rows(scratch, "kt", kc_t, row.runs),
                              scratch.get(dq_name, qt.shape))

        def tile(row, scratch):
            qt = _grouped(q, case_heads, kv, row.rows, kv_heads).to(dtype) * scale
            dot = _grouped(do, case_heads, kv, row.rows, kv_heads)
            stats = _grouped(row_stats, case_heads, kv, row.rows, kv_heads)
            row_lse, row_delta = stats[..., 0], stats[..., 1]
            columns = max(CPU_BLOCK_N, PIECE * head_dim // qt.numel() // CPU_BLOCK_N * CPU_BLOCK_N)
            first, *more = _pieces(row, columns)
            dqt = piece(first, qt, dot, row_lse, row_delta, scratch, "dq", not more)
            for part in more:
                dqt += piece(part, qt, dot, row_lse, row_delta, scratch, "dq_part", False)
            rows = row.rows.stop - row.rows.start
            dq[:, case_heads, row.rows] = dqt.mul_(scale).view(batch, -1, rows, head_dim)

        _for_each_tile(rows, tile, scratch)
    for more_dk, more_dv in extra[1:]:
        dk += more_dk
        dv += more_dv
    if not all(_all_finite(dq, dk, dv)):  # finite inputs whose product overflowed
        return _attention_tiled_backward_exact(pattern, grad_out, q, k, v, scale, dtype,
                                               key_padding, grad_lse, layout)
    return dq, dk, dv
