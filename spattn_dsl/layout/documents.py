"""The per-call tile layout of a pattern over packed documents (docs/language.md §4).

``DocumentRules(pattern)`` is built once per pattern (no ids, no lengths): per head case, the
pattern with every part that the tile classifier can decide without knowing a document's length
kept exact, and the rest (``random``, anything that mentions ``n``) marked unknown.
``document_layout(rules, documents, n_q, block_m, block_n)`` then builds, from a ``[batch, n_k]``
id tensor and on its device, the BlockLayout-shaped lists of every batch row, with torch ops
only (no Python loop over documents or tiles):

1. Candidates. Query tile i shares a document with exactly the key tiles from the one holding
   the start of its first token's document to the one holding the end of its last token's
   document, a contiguous range; every other tile is EMPTY. The ranges are enumerated flat.
2. Classes. A candidate's query and key tiles share documents ``f .. l``. Inside one document
   (``f == l`` and neither tile leaves it), its class is the pattern's class on the
   document-relative rectangle: FULL, PARTIAL or EMPTY exactly as ``layout.classify`` decides
   it. A tile that crosses a boundary holds pairs of different documents, so it is at best
   PARTIAL: EMPTY when the pattern allows nothing on the sub-rectangles of ``f`` and ``l`` and
   no document lies between them, else PARTIAL.
3. Lists. The same CSR lists as ``layout.build.BlockLayout``, with a batch dimension in front.

Unknown parts count as PARTIAL (three-valued logic: correct, only slower). When the whole
pattern is decidable, tiles inside one document that the classifier leaves unsure are settled
against the pair predicate, as the document-free layout does, all at once (in batches of
``PAIRS_PER_CHECK`` pairs only to bound memory); inside partly unknown patterns they stay
PARTIAL.

The kernel's predicate for PARTIAL tiles must test ``start[q] == start[k]`` and evaluate the
pattern at ``(q - start[q], k - start[q])`` with ``n = length[q]``: ``doc_start`` and
``doc_length`` carry those per position.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from dataclasses import dataclass

import torch

from ..ir import nodes as N
from ..ir.evaluate import eval_int, head_count, instantiate, select_head
from ..errors import PatternError
from ..ir.printer import text as expr_text
from ..semantics.documents import check_documents, document_bounds
from .build import BlockLayout, _lists, resolve, tile_bounds
from .pairs import random_table
from .classify import EMPTY, FULL, PARTIAL, classify

RULES_LENGTH = 1 << 30  # the longest sequence the kernels take (int32 tile bounds)


PAIRS_PER_CHECK = 1 << 24  # unsure tiles are settled this many query-key pairs at a time

# ------------------------------------------------------------------ per-pattern rules
@dataclass(frozen=True)
class _Exact:
    """A sub-expression decided exactly on document-relative rectangles (no ``n``, no random)."""
    concrete: object


@dataclass(frozen=True)
class _Unknown:
    """A sub-expression the document layout cannot decide per tile: counted PARTIAL."""
    text: str


class DocumentRules:
    """What the document layout needs from a pattern, computed once: one rule tree per head
    case, and the texts of the parts it marks unknown (``unknown``; empty when every part is
    decided exactly); whether a parameter mentions ``n`` (``needs_length``: the kernels then
    take each document's length), and the random links the kernels cannot draw per call
    (``undrawable``: texts; a random node whose ``r`` or seed mentions ``n``, with ``r`` above
    ``MAX_DRAWS``, inside ``blocks`` of a size that mentions ``n``, or ``fresh = 1``, whose
    candidates come from each document's own pattern)."""

    def __init__(self, pattern):
        self.pattern = pattern
        self.needs_length = _mentions_n(pattern.expr)
        self.undrawable = tuple(dict.fromkeys(_undrawable(pattern.expr)))
        self.cases = head_count(pattern.expr)
        self.trees = tuple(_prepare(select_head(pattern.expr, c)) for c in range(self.cases))
        self.unknown = tuple(dict.fromkeys(u.text for tree in self.trees for u in _unknowns(tree)))

    @property
    def exact(self) -> bool:
        return not self.unknown


def _mentions_n(node) -> bool:
    if isinstance(node, N.Var):
        return node.name == "n"
    if isinstance(node, tuple):
        return any(_mentions_n(x) for x in node)
    if dataclasses.is_dataclass(node):
        return any(_mentions_n(getattr(node, f.name)) for f in dataclasses.fields(node)
                   if f.name != "span")
    return False


MAX_DRAWS = 256  # random(r) draws at most this many keys per row in a documents kernel


def _undrawable(expr, sized_by_n: bool = False):
    """Texts of the random nodes a documents kernel cannot take (see ``DocumentRules``)."""
    if isinstance(expr, N.Random):
        r, seed = (x.value if isinstance(x, N.Num) else x for x in (expr.r, expr.seed))
        fresh = expr.fresh not in (0, N.Num(0))  # its candidates depend on each document
        if sized_by_n or fresh or not isinstance(r, int) or not isinstance(seed, int) \
                or r > MAX_DRAWS:
            yield expr_text(expr)
        return
    if isinstance(expr, N.Blocks):
        yield from _undrawable(expr.body, sized_by_n or _mentions_n(expr.size))
        return
    for child in N.children(expr):
        yield from _undrawable(child, sized_by_n)


def _decidable(expr) -> bool:
    return not _mentions_n(expr) and not any(isinstance(x, N.Random) for x in N.walk(expr))


def _prepare(expr):
    """A rule tree over a head-selected bound expression (see ``DocumentRules``)."""
    if _decidable(expr):
        # n is unused by what is decidable, but parameters are clamped to the length they are
        # bound at (window(9) at n = 1 is window(1)): bind at the longest length kernels take;
        # where(...) arithmetic that could overflow there is left to the exact predicate
        try:
            return _Exact(instantiate(expr, RULES_LENGTH))
        except PatternError:
            return _Unknown(expr_text(expr))
    if isinstance(expr, (N.Union, N.Intersect, N.Difference)):
        return (type(expr), _prepare(expr.left), _prepare(expr.right))
    if isinstance(expr, N.Complement):
        return (N.Complement, _prepare(expr.operand))
    if isinstance(expr, N.Blocks) and not _mentions_n(expr.size):
        return (N.Blocks, eval_int(expr.size), _prepare(expr.body))
    return _Unknown(expr_text(expr))


def _unknowns(tree):
    if isinstance(tree, _Unknown):
        yield tree
    elif isinstance(tree, tuple):
        for part in tree[1:]:
            if isinstance(part, (tuple, _Unknown, _Exact)):
                yield from _unknowns(part)


def _state(tree, q_lo, q_hi, k_lo, k_hi):
    """int8 class of each rectangle (bounds: int64 ``[M, 1]``, document-relative)."""
    if isinstance(tree, _Exact):
        return classify(tree.concrete, q_lo, q_hi, k_lo, k_hi, RULES_LENGTH)[0]
    if isinstance(tree, _Unknown):
        return torch.full_like(q_lo, PARTIAL, dtype=torch.int8)
    kind = tree[0]
    if kind is N.Blocks:
        b = tree[1]
        return _state(tree[2], q_lo // b, q_hi // b, k_lo // b, k_hi // b)
    if kind is N.Complement:
        return FULL - _state(tree[1], q_lo, q_hi, k_lo, k_hi)
    a = _state(tree[1], q_lo, q_hi, k_lo, k_hi)
    b = _state(tree[2], q_lo, q_hi, k_lo, k_hi)
    if kind is N.Union:
        return torch.maximum(a, b)
    if kind is N.Intersect:
        return torch.minimum(a, b)
    return torch.minimum(a, FULL - b)  # Difference


# ------------------------------------------------------------------ the per-call layout
@dataclass
class DocumentLayout:
    """A BlockLayout per batch row, stacked: every tensor has the batch dimension first.

    ``states`` int8 ``[batch, cases, T_q, T_k]``; ``full_counts`` / ``partial_counts`` int32
    ``[batch, cases, T_q]`` with ascending ``*_indices`` int32 ``[batch, cases, T_q, width]``;
    the transposed ``full_q_*`` / ``partial_q_*`` ``[batch, cases, T_k(, width)]``;
    ``row_order`` int32 ``[batch, T_q]`` (heaviest query tiles first); ``doc_start`` and
    ``doc_length`` int32 ``[batch, n_k]``, each position's document start and length.
    As in BlockLayout, a FULL tile that runs past ``n_k`` is listed PARTIAL.
    """

    n_q: int
    n_k: int
    block_m: int
    block_n: int
    states: torch.Tensor
    full_counts: torch.Tensor
    full_indices: torch.Tensor
    partial_counts: torch.Tensor
    partial_indices: torch.Tensor
    full_q_counts: torch.Tensor
    full_q_indices: torch.Tensor
    partial_q_counts: torch.Tensor
    partial_q_indices: torch.Tensor
    row_order: torch.Tensor
    doc_start: torch.Tensor
    doc_length: torch.Tensor

    @property
    def batch(self) -> int:
        return self.states.shape[0]

    @property
    def cases(self) -> int:
        return self.states.shape[1]

    @property
    def col_order(self) -> torch.Tensor:
        """int32 ``[batch, T_k]``: each row's key tiles heaviest first (the dK/dV launch order)."""
        work = (self.full_q_counts + self.partial_q_counts).sum(1)
        return torch.argsort(work, dim=1, descending=True, stable=True).to(torch.int32)

    def row(self, b: int) -> BlockLayout:
        """Batch row ``b`` as a plain BlockLayout (lists padded to the batch's widths)."""
        names = [f.name for f in dataclasses.fields(BlockLayout)]
        values = {name: getattr(self, name) for name in names}
        values.update({name: v[b] for name, v in values.items() if isinstance(v, torch.Tensor)})
        return BlockLayout(**values)

    def density(self) -> float:
        """Visited tiles / all tiles, over every row and case."""
        return float((self.states != EMPTY).float().mean()) if self.states.numel() else 0.0


def document_layout(rules, documents, n_q: int, block_m: int, block_n: int) -> DocumentLayout:
    """The layout of ``rules`` (a DocumentRules, or a Pattern) over ``documents`` ``[batch, n_k]``
    for the last ``n_q`` queries, computed on the ids' device."""
    rules = rules if isinstance(rules, DocumentRules) else DocumentRules(rules)
    if documents.dim() != 2:
        raise ValueError(f"documents must have shape [batch, n_k], got {list(documents.shape)}")
    ids = check_documents(documents, documents.shape[1], batch=documents.shape[0])
    batch, n_k = ids.shape
    if not 0 <= n_q <= n_k:
        raise ValueError(f"need 0 <= n_q <= n_k, got n_q = {n_q}, n_k = {n_k}")
    with _on(ids.device):
        start, length = document_bounds(ids)
        states = _states(rules, ids, start, length, n_q, block_m, block_n)
        return _assemble(states, start, length, n_q, n_k, block_m, block_n)


def _on(device):
    """The shared layout helpers allocate on the default device: make it the ids' device.
    (Only when it differs: the device mode costs a little on every torch call.)"""
    same = torch.get_default_device() == device
    return contextlib.nullcontext() if same else torch.device(device)


def _states(rules, ids, start, length, n_q, block_m, block_n) -> torch.Tensor:
    batch, n_k = ids.shape
    q_lo, q_hi = tile_bounds(n_q, block_m, n_k - n_q)
    k_lo, k_hi = tile_bounds(n_k, block_n)
    t_q, t_k = len(q_lo), len(k_lo)
    states = torch.zeros(batch, rules.cases, t_q, t_k, dtype=torch.int8)
    if t_q == 0 or t_k == 0:
        return states
    # per-tile tables, flat [B * T]: end positions, their document ordinals and bounds
    ordinal = torch.cumsum(torch.cat([torch.ones_like(ids[:, :1], dtype=torch.bool),
                                      ids[:, 1:] != ids[:, :-1]], 1), 1, dtype=torch.int32)
    end = start + length - 1
    q = _tile_table(ordinal, start, end, q_lo, q_hi)
    k = _tile_table(ordinal, start, end, k_lo, k_hi)
    # 1. candidates: per query tile, key tiles from its first document's start to its last's end
    first_tile = torch.div(q["start_lo"], block_n, rounding_mode="floor").long()
    last_tile = torch.div(q["end_hi"], block_n, rounding_mode="floor").long()
    counts = last_tile - first_tile + 1
    row = torch.repeat_interleave(torch.arange(batch * t_q), counts)  # flat (b, i)
    offsets = torch.cumsum(counts, 0) - counts
    j = first_tile[row] + torch.arange(len(row)) - offsets[row]
    b = row // t_q
    col = b * t_k + j  # flat (b, j)
    flat = (b * rules.cases * t_q + row % t_q) * t_k + j  # into states[b, 0, i, j]
    # 2. classes: tiles inside one document, then tiles that cross a boundary
    inside = q["single"][row] & k["single"][col] & (q["doc_lo"][row] == k["doc_lo"][col])
    pick = inside.nonzero().squeeze(1)
    r, c = row[pick], col[pick]
    s = q["start_lo"][r]
    bounds = tuple((x - s)[:, None] for x in (q["lo"][r], q["hi"][r], k["lo"][c], k["hi"][c]))
    cases = [(case * t_q * t_k, tree) for case, tree in enumerate(rules.trees)]
    for shift, tree in cases:
        states.view(-1)[flat[pick] + shift] = _sub_state(tree, bounds, block_m, block_n)
    pick = (~inside).nonzero().squeeze(1)
    r, c = row[pick], col[pick]
    first = _part(q, k, r, c, q["doc_lo"][r] >= k["doc_lo"][c], "lo")
    last = _part(q, k, r, c, q["doc_hi"][r] <= k["doc_hi"][c], "hi")
    between = torch.minimum(q["doc_hi"][r], k["doc_hi"][c]) - \
        torch.maximum(q["doc_lo"][r], k["doc_lo"][c]) >= 2
    for shift, tree in cases:
        hit = (_sub_state(tree, first) != EMPTY) | (_sub_state(tree, last) != EMPTY) | between
        states.view(-1)[flat[pick] + shift] = torch.where(hit, PARTIAL, EMPTY).to(torch.int8)
    return states


def _tile_table(ordinal, start, end, lo, hi) -> dict:
    """Flat ``[B * T]`` int32 facts of each tile of each row: its end positions (``lo``,
    ``hi``), their documents' ordinals (``doc_lo``, ``doc_hi``), the start of the first
    document, the end of the last, the span of each (``*_lo`` / ``*_hi``), and whether the tile
    lies in one document (``single``)."""
    batch = ordinal.shape[0]
    table = {"lo": lo.int().repeat(batch), "hi": hi.int().repeat(batch),
             "doc_lo": ordinal[:, lo].flatten(), "doc_hi": ordinal[:, hi].flatten()}
    for side, pos in (("lo", lo), ("hi", hi)):
        table[f"start_{side}"] = start[:, pos].flatten().int()
        table[f"end_{side}"] = end[:, pos].flatten().int()
    table["single"] = table["doc_lo"] == table["doc_hi"]
    return table


def _part(q, k, r, c, from_query, side):
    """The part of each crossing tile inside its first (``side`` "lo") or last ("hi") shared
    document, document-relative, as ``[M, 1]`` bounds (q_lo, q_hi, k_lo, k_hi). That document
    holds the query tile's end ``side`` where ``from_query``, else the key tile's."""
    s = torch.where(from_query, q[f"start_{side}"][r], k[f"start_{side}"][c])
    e = torch.where(from_query, q[f"end_{side}"][r], k[f"end_{side}"][c])
    return tuple((torch.clamp(x, min=s, max=e) - s)[:, None]
                 for x in (q["lo"][r], q["hi"][r], k["lo"][c], k["hi"][c]))


def _sub_state(tree, bounds, block_m=None, block_n=None):
    """int8 ``[M]``: the class of each rectangle. With tile sizes (rectangles that are whole
    tiles inside one document), an exact sub-expression's unsure tiles are settled against the
    pair predicate, as the document-free layout does."""
    if not isinstance(tree, _Exact):
        return _state(tree, *bounds).reshape(-1).to(torch.int8)
    state, unsure = classify(tree.concrete, *bounds, RULES_LENGTH)
    state = state.reshape(-1).to(torch.int8)
    if unsure is not None and block_m is not None:
        pick = unsure.reshape(-1).nonzero().squeeze(1)
        if len(pick):
            state = state.clone()
            q_lo, q_hi, k_lo, k_hi = (x.reshape(-1)[pick].long() for x in bounds)
            per_check = max(1, PAIRS_PER_CHECK // (block_m * block_n))  # bounds memory only
            state[pick] = resolve(tree.concrete, q_lo, q_hi, k_lo, k_hi, block_m, block_n,
                                  RULES_LENGTH,
                                  per_check)
    return state


def _assemble(states, start, length, n_q, n_k, block_m, block_n) -> DocumentLayout:
    batch, cases, t_q, t_k = states.shape
    full = states == FULL
    partial = states == PARTIAL
    if n_k % block_n and t_k:  # the ragged last key tile needs the bounds mask
        partial[..., -1] |= full[..., -1]
        full[..., -1] = False

    def lists(selected):
        flat = selected.reshape(batch * cases, *selected.shape[2:])
        counts, indices = _lists(flat)
        return counts.view(batch, cases, -1), indices.view(batch, cases, flat.shape[1], -1)

    full_counts, full_indices = lists(full)
    partial_counts, partial_indices = lists(partial)
    full_q_counts, full_q_indices = lists(full.transpose(2, 3))
    partial_q_counts, partial_q_indices = lists(partial.transpose(2, 3))
    work = (full_counts + partial_counts).sum(1)  # [B, T_q]
    row_order = torch.argsort(work, dim=1, descending=True, stable=True).to(torch.int32)
    return DocumentLayout(n_q, n_k, block_m, block_n, states, full_counts, full_indices,
                          partial_counts, partial_indices, full_q_counts, full_q_indices,
                          partial_q_counts, partial_q_indices, row_order,
                          start.to(torch.int32), length.to(torch.int32))


# ------------------------------------------------------------------ per-call random draws
def draw_tables(specs, lists: DocumentLayout) -> list:
    """For every random node of a documents kernel (``specs``: its ``(r, seed, divisors)``,
    argument order), this call's draws as its kernel arguments ``(table, table rows, rows)``:
    ``table`` int32 ``[sum of grid lengths, r]``, the draws of every grid row of every document
    length that occurs (``random`` draws per document: on a document of length L the node's
    grid has ``ceil(L / divisors)`` rows), and ``rows`` int32 ``[batch * n_k]``, the table row
    of each position's grid row. Tables per grid length are drawn once per process."""
    if not specs:
        return []
    device = lists.doc_start.device
    relative = torch.arange(lists.n_k, device=device)[None, :] - lists.doc_start  # [B, n_k]
    lengths, inverse = torch.unique(lists.doc_length, return_inverse=True)
    out = []
    for r, seed, divisors in specs:
        grid, row = lengths.tolist(), relative
        for b in divisors:
            grid, row = [-(-g // b) for g in grid], row // b
        tables = [_grid_draws(r, seed, g) for g in grid]  # grid >= 1: documents are not empty
        starts = torch.tensor([0] + [len(t) for t in tables[:-1]], device=device).cumsum(0)
        table = torch.cat(tables).to(device=device, dtype=torch.int32).contiguous()
        rows = (starts[inverse] + row).to(torch.int32).reshape(-1).contiguous()
        out.append((table, table.shape[0], rows))
    return out


@functools.lru_cache(maxsize=4096)
def _grid_draws(r: int, seed: int, grid: int) -> torch.Tensor:
    """int64 ``[grid, r]``: ``random(r, seed = seed)`` on a grid of ``grid`` keys."""
    return random_table(N.Random(r, seed), grid)
