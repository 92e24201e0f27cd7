"""Dynamic terms (docs/language.md §5): the float64 reference selection and the mask under it.

``select(pattern, q, k)`` chooses, for every dynamic term, batch row, selecting head and row
group, the units with the highest estimates among the term's candidates; ``selection_mask``
(``Pattern.mask(..., selection=s)``) evaluates the expression with each term standing for
"k lies in a selected unit of q's group". The kernels are tested against these two.

Conventions (also in ``TermSelection``'s docstring, which kernel code reads):

- Terms are ``pattern.dynamic_terms``: the distinct dynamic terms, equal terms being one.
- Units, row groups, columns and the probe are document-relative (each document is its own
  sequence, docs/language.md §4); without documents the whole row is one document starting at 0.
- A term's candidates: pairs allowed with the term replaced by ``dense`` and not with it
  replaced by ``none``, every other dynamic term replaced by ``none``; a unit is a candidate
  for a group when it holds a candidate pair of one of the group's queries (of this call) in
  one of the sharing heads.
- Estimates are float64; a NaN estimate ranks below every number. Ties go to the lower index.
- ``probe``: softmax of ``scale * q . k`` (default ``scale = 1 / sqrt(head_dim)``) of the last
  ``probe`` queries of the call in the document over the keys allowed with the term replaced by
  ``dense`` (other dynamic terms by ``none``); a row with no such key contributes nothing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..ir import nodes as N
from ..ir.evaluate import select_head
from ..ir.printer import text as expr_text
from .documents import check_documents, document_runs
from .reference import evaluate

KINDS = {N.TopK: "topk", N.Vertical: "vertical", N.Slash: "slash"}
_TRUE = torch.ones(1, 1, dtype=torch.bool)
_FALSE = torch.zeros(1, 1, dtype=torch.bool)


# ---------------------------------------------------------------- the selection
@dataclass(frozen=True, eq=False)
class TermSelection:
    """One dynamic term's choice. With ``B`` batch rows, ``G`` row groups and budget ``k``:

    - ``term``: the bound IR node (``TopK``, ``Vertical`` or ``Slash``); ``kind`` its name.
    - ``unit``: keys per unit (topk's ``unit``; 1 for vertical and slash).
    - ``shared``: "head", "group" or "all"; ``indices``' second dimension ``Hs`` is then the
      query heads ``H``, the key/value heads ``H_kv``, or 1. Query head ``h`` reads selection
      head ``h``, ``h // (H // H_kv)``, or 0 (``selection_head``).
    - ``indices``: int64 ``[B, Hs, G, k]``, the chosen units in ascending order, padded with
      -1 (fewer candidates than ``k``, or a group that this batch row does not have). ``k`` is
      the budget clamped to the number of units at ``n_k`` (``ceil(n_k / unit)`` for topk,
      ``n_k`` columns for vertical, ``2 * n_k - 1`` diagonals for slash).
    - ``groups``: int64 ``[B, n_q]``, the row group of each query row. topk: one group per
      aligned run of ``rows`` positions of a document; vertical and slash: one per document.
    - ``starts``: int64 ``[B, G]``, the first key position of each group's document (0 without
      documents; 0 for unused groups).

    What an index means, for a query at absolute position ``q`` in group ``g`` whose document
    starts at ``s = starts[b, g]``: topk unit ``j`` holds keys ``s + j*unit ... s + j*unit +
    unit - 1`` (cut at the document's end); vertical column ``j`` is key ``s + j``; slash index
    ``j`` is the diagonal ``q - k = j - (n_k - 1)`` (so ``j`` grows with the offset ``q - k``).
    """

    term: object
    kind: str
    unit: int
    shared: str
    indices: torch.Tensor
    groups: torch.Tensor
    starts: torch.Tensor

    @property
    def budget(self) -> int:
        return self.indices.shape[-1]

    def selection_head(self, head: int, heads: int, kv_heads: int) -> int:
        """The selection head (``indices``' dimension 1) that query head ``head`` reads."""
        return selection_head(self.shared, head, heads, kv_heads)

    def __repr__(self) -> str:
        b, hs, g, k = self.indices.shape
        return (f"TermSelection({expr_text(self.term)}: indices [{b}, {hs}, {g}, {k}] of "
                f"{self.kind} units of {self.unit}, shared = {self.shared})")


@dataclass(frozen=True, eq=False)
class Selection:
    """``select``'s result: one ``TermSelection`` per term of ``pattern.dynamic_terms`` (in
    that order), for ``batch`` rows, ``heads`` query heads and ``kv_heads`` key/value heads,
    ``n_q`` queries (bottom-right aligned) over ``n_k`` keys; ``documents`` the ``[batch,
    n_k]`` int64 ids it was made with, or None. ``Pattern.mask(n_q, n_k, selection=s)`` is
    the mask under it."""

    pattern: object
    batch: int
    heads: int
    kv_heads: int
    n_q: int
    n_k: int
    terms: tuple
    documents: torch.Tensor | None = None

    def __repr__(self) -> str:
        terms = "; ".join(repr(t) for t in self.terms) or "no dynamic terms"
        docs = "" if self.documents is None else ", documents"
        return (f"Selection({self.pattern.text!r}: batch {self.batch}, heads {self.heads}, "
                f"kv_heads {self.kv_heads}, n_q {self.n_q}, n_k {self.n_k}{docs}; {terms})")


# ---------------------------------------------------------------- terms in an expression
def concrete_terms(pattern, n: int):
    """(the concrete expression at ``n``, ``{id(node): term index}`` for each dynamic node in
    it). Indices follow ``pattern.dynamic_terms``; bound and concrete trees have the same
    shape, so walking both side by side pairs each node with its bound original."""
    concrete = pattern.at(n)
    position = {term: i for i, term in enumerate(pattern.dynamic_terms)}
    index = {id(node): position[bound] for bound, node in zip(N.walk(pattern.expr),
                                                              N.walk(concrete))
             if isinstance(bound, N.DYNAMIC)}
    return concrete, index


def term_nodes(pattern, n: int) -> list:
    """Each term's concrete node at ``n`` (its arguments clamped to ``n``), in term order."""
    concrete, index = concrete_terms(pattern, n)
    nodes = {}
    for node in N.walk(concrete):
        if id(node) in index:
            nodes.setdefault(index[id(node)], node)
    return [nodes[i] for i in range(len(pattern.dynamic_terms))]


def _context(index: dict, value):
    """``evaluate``'s ``dynamic``: term ``i`` stands for ``value(i, q, n)``."""
    return lambda node, q, n: value(index[id(node)], q, n)


def _only(index: dict, term: int):
    """Term ``term`` replaced by dense, every other dynamic term by none."""
    return _context(index, lambda i, q, n: _TRUE if i == term else _FALSE)


def _static(index: dict):
    return _context(index, lambda i, q, n: _FALSE)


def static_pairs(pattern, n: int, head: int, rows: torch.Tensor) -> torch.Tensor:
    """Bool ``[len(rows), n]``: the static part (every dynamic term replaced by none)."""
    concrete, index = concrete_terms(pattern, n)
    expr = select_head(concrete, head)
    return evaluate(expr, rows, n, dynamic=_static(index)).expand(len(rows), n)


def candidate_pairs(pattern, n: int, head: int, rows: torch.Tensor) -> torch.Tensor:
    """Bool ``[len(rows), n]``: pairs that are a candidate of some dynamic term."""
    concrete, index = concrete_terms(pattern, n)
    expr = select_head(concrete, head)
    static = evaluate(expr, rows, n, dynamic=_static(index))
    out = torch.zeros(len(rows), n, dtype=torch.bool)
    for term in range(len(pattern.dynamic_terms)):
        out |= evaluate(expr, rows, n, dynamic=_only(index, term)) & ~static
    return out


# ---------------------------------------------------------------- select
def select(pattern, q, k, scores=None, documents=None, *, scale=None) -> Selection:
    """The float64 reference selection of a pattern's dynamic terms for these inputs.

    ``q``: ``[B, H, n_q, D]``; ``k``: ``[B, H_kv, n_k, D]`` (``H`` a multiple of ``H_kv``;
    query head ``h`` reads key head ``h // (H // H_kv)``); ``scores``: for ``by = scores``
    terms, ``[B, H or 1, n_q, ceil(n_k / unit)]`` floating, larger is better, column ``j`` the
    document-relative unit ``j``; ``documents``: None or integer ids ``[n_k]`` or ``[B, n_k]``;
    ``scale``: the probe's softmax scale (default ``1 / sqrt(D)``)."""
    from ..ir.program import Pattern

    if not isinstance(pattern, Pattern):
        raise ValueError(f"select: pattern must be a Pattern, got {type(pattern).__name__}")
    shape = _check_inputs(q, k)
    batch, heads, n_q, dim, kv_heads, n_k = shape
    ids = _batch_documents(documents, batch, n_k)
    full = term_nodes(pattern, n_k)
    terms = pattern.dynamic_terms
    _check_scores(scores, terms, full, batch, heads, n_q, n_k)
    scale = 1 / math.sqrt(dim) if scale is None else float(scale)
    inputs = _Inputs(q.detach().double().cpu(), _per_query_head(k, heads, kv_heads), scores,
                     scale, n_q, n_k, kv_heads)
    chosen = tuple(_select_term(pattern, i, full[i], inputs, ids) for i in range(len(terms)))
    return Selection(pattern, batch, heads, kv_heads, n_q, n_k, chosen, ids)


@dataclass(frozen=True)
class _Inputs:
    q: torch.Tensor  # float64 [B, H, n_q, D]
    k: torch.Tensor  # float64 [B, H, n_k, D]: each query head's key head
    scores: torch.Tensor | None
    scale: float
    n_q: int
    n_k: int
    kv_heads: int


def _check_inputs(q, k) -> tuple:
    for name, x in (("q", q), ("k", k)):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"select: {name} must be a tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"select: {name} must be [batch, heads, seq, head_dim], got shape "
                             f"{list(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"select: {name} must be floating point, got {x.dtype}")
    batch, heads, n_q, dim = q.shape
    kb, kv_heads, n_k, kd = k.shape
    if (kb, kd) != (batch, dim):
        raise ValueError(f"select: k must share q's batch and head_dim, got q {list(q.shape)} "
                         f"and k {list(k.shape)}")
    if kv_heads < 1 or heads % kv_heads:
        raise ValueError(f"select: k's heads ({kv_heads}) must divide q's heads ({heads})")
    if n_q > n_k:
        raise ValueError(f"select: q has more positions ({n_q}) than k ({n_k}); queries are "
                         "the last n_q of the n_k positions")
    return batch, heads, n_q, dim, kv_heads, n_k


def _per_query_head(k, heads: int, kv_heads: int) -> torch.Tensor:
    return k.detach().double().cpu().repeat_interleave(heads // kv_heads, dim=1)


def _batch_documents(documents, batch: int, n_k: int):
    """Checked ids as int64 ``[batch, n_k]`` (a single row is used for every batch row)."""
    if documents is None:
        return None
    one_row = not isinstance(documents, torch.Tensor) or documents.dim() < 2
    ids = check_documents(documents, n_k, None if one_row else batch).cpu()
    return ids.expand(batch, n_k).clone() if one_row else ids


def _check_scores(scores, terms, full, batch, heads, n_q, n_k):
    users = [i for i, term in enumerate(terms) if getattr(term, "by", None) == "scores"]
    if scores is None:
        if users:
            raise ValueError(f"scores: {expr_text(terms[users[0]])} estimates by scores; pass "
                             f"scores=[batch, heads or 1, n_q, ceil(n_k / unit)]")
        return
    if not users:
        raise ValueError("scores: no term of this pattern uses by = scores")
    if not isinstance(scores, torch.Tensor):
        raise ValueError(f"scores must be a tensor, got {type(scores).__name__}")
    if not scores.is_floating_point():
        raise ValueError(f"scores must be floating point, got dtype {scores.dtype}")
    units = {-(-n_k // full[i].unit) for i in users}
    if len(units) > 1:
        raise ValueError("scores: the by = scores terms of this pattern use different units; "
                         "one scores tensor cannot serve them all")
    want = [batch, heads, n_q, units.pop()]
    if scores.dim() != 4 or list(scores.shape) not in (want, want[:1] + [1] + want[2:]):
        raise ValueError(f"scores must have shape {want} (or heads 1), got "
                         f"{list(scores.shape)}")


def _documents_of(ids, b: int, n_q: int, n_k: int):
    """(start, length, first query row, end query row) of each document with queries."""
    if ids is None:
        runs = [(0, n_k)]
    else:
        runs = zip(*(t.tolist() for t in document_runs(ids[b])))
    offset = n_k - n_q
    out = []
    for start, length in runs:
        first, end = max(start, offset) - offset, start + length - offset
        if end > first:
            out.append((start, length, first, end))
    return out


def _select_term(pattern, term: int, node, x: _Inputs, ids) -> TermSelection:
    """One term's TermSelection: each batch row's documents selected in turn."""
    batch, heads = x.q.shape[:2]
    sharing = {"head": heads, "group": x.kv_heads, "all": 1}[node.shared]
    owner = torch.tensor([selection_head(node.shared, h, heads, x.kv_heads)
                          for h in range(heads)])
    unit = node.unit if isinstance(node, N.TopK) else 1
    parts = []  # (b, group offset, start, rows, chosen [Hs, Gd, k])
    groups = torch.zeros(batch, x.n_q, dtype=torch.int64)
    for b in range(batch):
        offset = 0
        for start, length, first, end in _documents_of(ids, b, x.n_q, x.n_k):
            local, chosen = _select_document(pattern, term, node, x, b, start, length,
                                             first, end, owner, sharing)
            groups[b, first:end] = local + offset
            parts.append((b, offset, start, chosen))
            offset += chosen.shape[1]
    count = max((p[1] + p[3].shape[1] for p in parts), default=0)
    indices = torch.full((batch, sharing, count, node.k), -1, dtype=torch.int64)
    starts = torch.zeros(batch, count, dtype=torch.int64)
    for b, offset, start, chosen in parts:
        indices[b, :, offset:offset + chosen.shape[1]] = chosen
        starts[b, offset:offset + chosen.shape[1]] = start
    return TermSelection(pattern.dynamic_terms[term], KINDS[type(node)], unit, node.shared,
                         indices, groups, starts)


def selection_head(shared: str, head: int, heads: int, kv_heads: int) -> int:
    """The selection head that query head ``head`` reads (or adds its estimate to)."""
    if shared == "head":
        return head
    return head // (heads // kv_heads) if shared == "group" else 0


def _select_document(pattern, term, node, x: _Inputs, b, start, length, first, end, owner,
                     sharing):
    """(group of each query row, local; chosen units ``[Hs, G_doc, k]``) in one document."""
    heads = x.q.shape[1]
    rows = torch.arange(first, end) + (x.n_k - x.n_q) - start  # document-relative positions
    concrete, index = concrete_terms(pattern, length)
    cases = [select_head(concrete, c) for c in range(pattern.heads)]
    shape = (len(rows), length)
    static = [evaluate(e, rows, length, dynamic=_static(index)).expand(shape) for e in cases]
    envelope = [evaluate(e, rows, length, dynamic=_only(index, term)).expand(shape)
                for e in cases]
    pairs = torch.stack([envelope[h % len(cases)] & ~static[h % len(cases)]
                         for h in range(heads)])  # candidate pairs [H, rows, length]
    q = x.q[b, :, first:end]
    keys = x.k[b, :, start:start + length]
    if isinstance(node, N.TopK):
        local = rows // node.rows
        local = local - local[0]
        estimate, candidate = _topk(node, q, keys, pairs, local, x, b, first, end, length)
    else:
        local = torch.zeros(len(rows), dtype=torch.int64)
        probe = torch.stack([envelope[h % len(cases)] for h in range(heads)])
        estimate, candidate = _probe(node, q, keys, pairs, probe, rows, x)
    estimate = _share(estimate, owner, sharing)
    candidate = _share(candidate.double(), owner, sharing) > 0
    return local, top(estimate, candidate, node.k)


def _group_mean(values: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
    """Mean over each row group: ``[H, rows, X] -> [H, G, X]``."""
    count = int(local[-1]) + 1
    sums = torch.zeros(values.shape[0], count, values.shape[2], dtype=torch.float64)
    sums.index_add_(1, local, values)
    sizes = torch.zeros(count, dtype=torch.float64).index_add_(0, local, torch.ones(len(local),
                                                               dtype=torch.float64))
    return sums / sizes[None, :, None]


def _topk(node, q, keys, pairs, local, x: _Inputs, b, first, end, length):
    """(estimates, candidates), each ``[H, G_doc, units]``."""
    u = node.unit
    units = -(-length // u)
    unit_of = torch.arange(length) // u
    per_row = torch.zeros(*pairs.shape[:2], units, dtype=torch.float64)
    per_row.index_add_(2, unit_of, pairs.double())
    candidate = _group_mean(per_row, local) > 0
    if node.by == "scores":
        scores = x.scores[b, :, first:end, :units].detach().double().cpu()
        estimate = _group_mean(scores.expand(q.shape[0], -1, -1), local)
        return estimate, candidate
    mean_q = _group_mean(q, local)  # [H, G, D]
    if node.by == "mean_key":
        sums = torch.zeros(keys.shape[0], units, keys.shape[2], dtype=torch.float64)
        sums.index_add_(1, unit_of, keys)
        sizes = torch.bincount(unit_of, minlength=units).double()
        return mean_q @ (sums / sizes[None, :, None]).transpose(1, 2), candidate
    shape = (keys.shape[0], units, keys.shape[2])
    where = unit_of[None, :, None].expand_as(keys)
    lo = torch.full(shape, math.inf, dtype=torch.float64).scatter_reduce(1, where, keys, "amin")
    hi = torch.full(shape, -math.inf, dtype=torch.float64).scatter_reduce(1, where, keys, "amax")
    bound = torch.maximum(mean_q[:, :, None, :] * lo[:, None], mean_q[:, :, None, :] * hi[:, None])
    return bound.sum(-1), candidate


def _probe(node, q, keys, pairs, envelope, rows, x: _Inputs):
    """vertical / slash: (estimates, candidates), each ``[H, 1, units]``, from the exact
    softmax of the last ``probe`` queries over the envelope."""
    m = min(node.probe, len(rows))
    logits = (q[:, -m:] @ keys.transpose(1, 2)) * x.scale
    allowed = envelope[:, -m:]
    logits = logits.masked_fill(~allowed, -math.inf)
    peak = logits.amax(-1, keepdim=True).clamp(min=-1e308)  # a row with no key stays finite
    weights = torch.exp(logits - peak) * allowed
    total = weights.sum(-1, keepdim=True)
    probs = torch.where(total > 0, weights / total.clamp(min=1e-308), 0.0)
    if isinstance(node, N.Vertical):
        return probs.sum(1)[:, None], pairs.any(1)[:, None]
    length = keys.shape[1]
    diagonal = rows[:, None] - torch.arange(length)[None, :] + x.n_k - 1  # [rows, length]
    count = 2 * x.n_k - 1
    heads = q.shape[0]
    estimate = torch.zeros(heads, count, dtype=torch.float64)
    estimate.index_add_(1, diagonal[-m:].reshape(-1), probs.reshape(heads, -1))
    candidate = torch.zeros(heads, count, dtype=torch.float64)
    candidate.index_add_(1, diagonal.reshape(-1), pairs.reshape(heads, -1).double())
    return estimate[:, None], candidate[:, None] > 0


def _share(values: torch.Tensor, owner: torch.Tensor, sharing: int) -> torch.Tensor:
    """Sum over the query heads that share a selection: ``[H, ...] -> [Hs, ...]``."""
    out = torch.zeros(sharing, *values.shape[1:], dtype=values.dtype)
    return out.index_add_(0, owner, values)


def top(estimate: torch.Tensor, candidate: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` candidates with the highest estimates (ties to the lower index; NaN lowest),
    in ascending order, padded with -1: ``[..., units] -> [..., k]``."""
    units = estimate.shape[-1]
    estimate = estimate.nan_to_num(nan=-math.inf, posinf=math.inf, neginf=-math.inf)
    order = torch.sort(estimate, dim=-1, descending=True, stable=True).indices
    first = torch.sort((~candidate.gather(-1, order)).to(torch.int8), dim=-1, stable=True)
    order = order.gather(-1, first.indices)[..., :k]  # candidates first, then by estimate
    picked = torch.where(candidate.gather(-1, order), order, units).sort(-1).values
    picked = torch.where(picked == units, -1, picked)
    pad = k - picked.shape[-1]
    return torch.nn.functional.pad(picked, (0, pad), value=-1) if pad > 0 else picked


# ---------------------------------------------------------------- the mask under a selection
def selection_mask(pattern, n_q: int, n_k: int, head: int, documents, selection) -> torch.Tensor:
    """``Pattern.mask(..., selection=s)``: bool ``[batch, heads, n_q, n_k]``."""
    _check_selection(pattern, n_q, n_k, head, selection)
    ids = _mask_documents(documents, selection)
    s = selection
    out = torch.zeros(s.batch, s.heads, n_q, n_k, dtype=torch.bool)
    for b in range(s.batch):
        for start, length, first, end in _documents_of(ids, b, n_q, n_k):
            rows = torch.arange(first, end) + (n_k - n_q) - start
            concrete, index = concrete_terms(pattern, length)
            cases = [select_head(concrete, c) for c in range(pattern.heads)]
            for h in range(s.heads):
                chosen = _context(index, lambda i, q, n: _term_mask(s, i, b, h, q, n, start))
                allowed = evaluate(cases[h % len(cases)], rows, length, dynamic=chosen)
                out[b, h, first:end, start:start + length] = allowed
    return out


def _term_mask(s: Selection, term: int, b: int, h: int, rows, length: int, start: int):
    """Bool ``[len(rows), length]``: keys in a unit that term ``term`` chose for each row's
    group (``rows``: document-relative positions)."""
    t = s.terms[term]
    which = t.selection_head(h, s.heads, s.kv_heads)
    chosen = t.indices[b, which, t.groups[b, rows + start - (s.n_k - s.n_q)]]  # [rows, k]
    count = {"topk": -(-s.n_k // t.unit), "vertical": s.n_k, "slash": 2 * s.n_k - 1}[t.kind]
    hit = torch.zeros(len(rows), count + 1, dtype=torch.bool)
    hit.scatter_(1, torch.where(chosen < 0, count, chosen), True)
    keys = torch.arange(length)
    if t.kind == "slash":
        return hit.gather(1, rows[:, None] - keys[None, :] + s.n_k - 1)
    return hit[:, keys // t.unit]


def _check_selection(pattern, n_q, n_k, head, selection):
    if selection is None:
        terms = "; ".join(expr_text(t) for t in pattern.dynamic_terms)
        raise ValueError(f"mask: this pattern has dynamic terms ({terms}): pass "
                         "selection=spattn_dsl.select(pattern, q, k), the choice they make")
    if not isinstance(selection, Selection):
        raise ValueError(f"selection must be a Selection (from spattn_dsl.select), got "
                         f"{type(selection).__name__}")
    if selection.pattern != pattern:
        raise ValueError(f"selection was made for {selection.pattern.text!r}, not for "
                         f"{pattern.text!r}")
    if (selection.n_q, selection.n_k) != (n_q, n_k):
        raise ValueError(f"selection was made for n_q = {selection.n_q}, n_k = {selection.n_k}"
                         f", not n_q = {n_q}, n_k = {n_k}")
    if head != 0:
        raise ValueError("head: a mask under a selection covers every head; leave head at 0")
    _check_shapes(pattern, selection)


def _check_shapes(pattern, s: Selection):
    """Every TermSelection has the shapes, dtypes and index range of its term."""
    if len(s.terms) != len(pattern.dynamic_terms):
        raise ValueError(f"selection has {len(s.terms)} terms, the pattern "
                         f"{len(pattern.dynamic_terms)}")
    for i, (t, node) in enumerate(zip(s.terms, term_nodes(pattern, s.n_k))):
        sharing = {"head": s.heads, "group": s.kv_heads, "all": 1}[node.shared]
        count = t.indices.shape[2] if t.indices.dim() == 4 else -1
        units = {"topk": -(-s.n_k // t.unit), "vertical": s.n_k, "slash": 2 * s.n_k - 1}
        want = {"indices": [s.batch, sharing, count, node.k], "groups": [s.batch, s.n_q],
                "starts": [s.batch, count]}
        for name, shape in want.items():
            value = getattr(t, name)
            if not isinstance(value, torch.Tensor) or value.dtype != torch.int64 \
                    or list(value.shape) != shape:
                got = list(value.shape) if isinstance(value, torch.Tensor) else type(value)
                raise ValueError(f"selection: term {i} ({expr_text(node)}): {name} must be "
                                 f"int64 {shape}, got {got}")
        bad = (t.indices < -1) | (t.indices >= units.get(t.kind, 0))
        if t.kind != KINDS[type(node)] or bool(bad.any()) or t.unit != getattr(node, "unit", 1) \
                or bool(((t.groups < 0) | (t.groups >= max(count, 1))).any()):
            raise ValueError(f"selection: term {i} ({expr_text(node)}) holds indices outside "
                             "its units or groups, or is for another term")


def _mask_documents(documents, selection: Selection):
    """The selection's document ids; ``documents``, when given, must be the same."""
    if documents is None:
        return selection.documents
    ids = _batch_documents(documents, selection.batch, selection.n_k)
    if selection.documents is None or not torch.equal(ids, selection.documents):
        raise ValueError("documents differ from those the selection was made with")
    return ids


# ---------------------------------------------------------------- pictures
def sample_selection(pattern, n: int, seed: int, head: int = 0) -> torch.Tensor:
    """Bool ``[n, n]``: head ``head``'s mask under ``select`` on random normal inputs (one
    batch row, head_dim 16, as many key heads as query heads) drawn from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    heads = max(pattern.heads, head + 1)
    q = torch.randn(1, heads, n, 16, generator=generator, dtype=torch.float64)
    k = torch.randn(1, heads, n, 16, generator=generator, dtype=torch.float64)
    scores = None
    units = [t.unit for t in term_nodes(pattern, n) if getattr(t, "by", None) == "scores"]
    if units:
        scores = torch.randn(1, heads, n, -(-n // units[0]), generator=generator,
                             dtype=torch.float64)
    selection = select(pattern, q, k, scores)
    return pattern.mask(n, selection=selection)[0, head]
