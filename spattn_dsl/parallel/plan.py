"""The sequence-mode exchange plan: which rank holds which positions, and which keys it needs.

Computed once per (pattern, n, world size), the same on every rank, with no n x n structure:

- **row counts**: each query row's allowed pairs per head case, from the analysis' term form
  (``analysis.terms``: offset sets, masks, chunks, random draws, counted exactly in O(n) per
  term); patterns with no term form fall back to the exact pair predicate over row blocks
  (``layout.pairs.allowed``: quadratic time, linear memory).
- **assignment**: contiguous chunks whose allowed-pair totals are as equal as row granularity
  allows (prefix sums of the row counts, cut at multiples of total / world).
- **needs**: for every key position, the set of ranks whose queries may attend it, as one bit
  per rank. The term form's *transpose* (offsets reversed, query and key masks swapped) maps
  each query's rank bits onto the keys it attends, by the same sliding-OR scans the analysis
  uses for reach (``analysis.bitsets.image``); random draws are scattered directly. A rank
  receives exactly the keys with its bit set outside its own chunk.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..ir import nodes as N
from ..ir.evaluate import select_head
from ..layout.pairs import allowed

ROW_BLOCK = 256  # query rows per step of the predicate fallback


# ---------------------------------------------------------------- per-case term forms
def _term_mask(expr, n: int):
    """The analysis' term form of one head's concrete expression (NotRepresentable if none)."""
    from ..analysis.masks import TermMask
    from ..analysis.terms import block_terms, layer_terms

    if isinstance(expr, N.Blocks):
        return TermMask(n, block_terms(expr, n), expr, expr.size)
    return TermMask(n, layer_terms(expr, n), expr)


def _cases(pattern, n: int) -> list:
    concrete = pattern.at(n)
    return [select_head(concrete, c) for c in range(pattern.heads)]


def row_pairs(pattern, n: int, exact_terms: bool = True) -> np.ndarray:
    """int64 ``[cases, n]``: the keys each query row may attend, per head case.
    ``exact_terms=False`` forces the predicate fallback (tests compare the two)."""
    from ..analysis.rows import NotRepresentable

    out = np.zeros((pattern.heads, n), dtype=np.int64)
    for c, expr in enumerate(_cases(pattern, n)):
        try:
            if not exact_terms:
                raise NotRepresentable("fallback requested")
            out[c] = _term_mask(expr, n).pairs_per_query()
        except NotRepresentable:
            for rows, block in _predicate_blocks(expr, n):
                out[c, rows] = block.sum(1).numpy()
    return out


def _predicate_blocks(expr, n: int):
    """(row slice, bool [rows, n]) for blocks of query rows: the exact predicate."""
    keys = torch.arange(n)[None, :]
    for start in range(0, n, ROW_BLOCK):
        rows = torch.arange(start, min(start + ROW_BLOCK, n))[:, None]
        yield slice(start, start + len(rows)), allowed(expr, rows, keys, n).expand(len(rows), n)


# ---------------------------------------------------------------- assignment
def balance(weights: np.ndarray, world: int) -> list:
    """Chunk bounds ``[0, b_1, ..., n]``: contiguous chunks of about equal total weight, each
    at least one position long (the cut nearest each multiple of total / world)."""
    n = len(weights)
    if n < world:
        raise ValueError(f"context parallel needs at least one position per rank: n = {n} < "
                         f"{world} ranks")
    cum = np.concatenate([[0], np.cumsum(weights)])
    if cum[-1] == 0:
        cum = np.arange(n + 1)  # nothing allowed: balance tokens
    bounds = [0]
    for r in range(1, world):
        target = cum[-1] * r / world
        i = int(np.searchsorted(cum, target))
        if i > 0 and target - cum[i - 1] <= cum[min(i, n)] - target:
            i -= 1
        bounds.append(min(max(i, bounds[-1] + 1), n - (world - r)))
    return bounds + [n]


def even_bounds(n: int, world: int) -> list:
    """Token-balanced chunk bounds (heads mode): the first ``n % world`` ranks one longer."""
    if n < world:
        raise ValueError(f"context parallel needs at least one position per rank: n = {n} < "
                         f"{world} ranks")
    sizes = [n // world + (r < n % world) for r in range(world)]
    return [0] + np.cumsum(sizes).tolist()


# ---------------------------------------------------------------- needs
def _rank_bits(bounds: list, n: int) -> np.ndarray:
    """uint64 ``[n, words]``: bit r set on the positions rank r holds."""
    world = len(bounds) - 1
    bits = np.zeros((n, -(-world // 64)), dtype=np.uint64)
    for r in range(world):
        bits[bounds[r]:bounds[r + 1], r // 64] = np.uint64(1) << np.uint64(r % 64)
    return bits


def _transposed_image(term, state: np.ndarray) -> np.ndarray:
    """``out[k] = OR of state[q]`` over the queries q the term allows to attend key k."""
    from ..analysis.bitsets import image
    from ..analysis.terms import Term

    if term.random is not None:
        keys = term.keys()  # [n, r], -1 where a draw breaks another condition
        rows, j = np.nonzero(keys >= 0)
        out = np.zeros_like(state)
        np.bitwise_or.at(out, keys[rows, j], state[rows])
        return out
    flipped = Term(term.n, term.offsets[::-1].copy(), term.modulus, qmask=term.kmask,
                   kmask=term.qmask, chunk=term.chunk, period=term.period)
    return image(flipped, state)


def needing_ranks(pattern, n: int, bounds: list, exact_terms: bool = True) -> np.ndarray:
    """uint64 ``[n, words]``: for each key position, a bit per rank whose queries may attend
    it under some head case."""
    from ..analysis.rows import NotRepresentable

    bits = _rank_bits(bounds, n)
    need = np.zeros_like(bits)
    for expr in _cases(pattern, n):
        try:
            if not exact_terms:
                raise NotRepresentable("fallback requested")
            need |= _term_needs(expr, n, bits)
        except NotRepresentable:
            for rows, block in _predicate_blocks(expr, n):
                need |= _or_rows(bits[rows], block.numpy())
    return need


def _term_needs(expr, n: int, bits: np.ndarray) -> np.ndarray:
    mask = _term_mask(expr, n)
    b = mask.b
    state = np.bitwise_or.reduceat(bits, np.arange(0, n, b), axis=0) if b > 1 else bits
    out = np.zeros_like(state)
    for term in mask.terms:
        out |= _transposed_image(term, state)
    return out[np.arange(n) // b] if b > 1 else out


def _or_rows(row_bits: np.ndarray, block: np.ndarray) -> np.ndarray:
    """``out[k] = OR of row_bits[i]`` over the rows i with ``block[i, k]``."""
    out = np.zeros((block.shape[1], row_bits.shape[1]), dtype=np.uint64)
    for value in np.unique(row_bits, axis=0):  # a block spans few ranks
        hit = block[(row_bits == value).all(1)].any(0)
        out[hit] |= value
    return out


def _has_bit(need: np.ndarray, r: int) -> np.ndarray:
    return (need[:, r // 64] >> np.uint64(r % 64)) & np.uint64(1) == 1


# ---------------------------------------------------------------- the plan
@dataclass
class Chunks:
    """Contiguous chunks: rank r holds positions ``bounds[r] .. bounds[r+1]-1`` of ``n``."""

    n: int
    bounds: list

    @property
    def world(self) -> int:
        return len(self.bounds) - 1

    @property
    def held(self) -> torch.Tensor:
        return torch.tensor(np.diff(self.bounds), dtype=torch.int64)


@dataclass
class ExchangePlan(Chunks):
    """Sequence mode's exchange, the same on every rank.

    ``bounds``: rank r holds positions ``bounds[r] .. bounds[r+1]-1`` (queries, keys and
    values alike). ``needs[r]``: the sorted global key positions rank r receives (none of its
    own). ``held``, ``pairs`` (allowed pairs of the rank's queries, summed over the pattern's
    head cases: one head of each) and ``received`` (``[world, world]``: positions rank i
    receives from rank j) are int64 tensors.
    """

    needs: list
    pairs: torch.Tensor

    @property
    def received(self) -> torch.Tensor:
        edges = torch.tensor(self.bounds[1:-1], dtype=torch.int64)
        out = torch.zeros(self.world, self.world, dtype=torch.int64)
        for i, keys in enumerate(self.needs):
            owner = torch.bucketize(keys, edges, right=True)
            out[i] = torch.bincount(owner, minlength=self.world)
        return out

    @property
    def sent(self) -> torch.Tensor:
        """Positions each rank sends (the column sums of ``received``)."""
        return self.received.sum(0)

    def bytes(self, kv_heads: int, head_dim: int, dtype=torch.bfloat16, batch: int = 1) -> dict:
        """Bytes of K and V each rank sends and receives in the forward (the backward sends
        dK and dV back along the same lists: the same volumes reversed)."""
        per_position = 2 * batch * kv_heads * head_dim * _itemsize(dtype)
        received = self.received
        return {"sent": received.sum(0) * per_position, "received": received.sum(1) * per_position}

    def allgather_bytes(self, kv_heads: int, head_dim: int, dtype=torch.bfloat16,
                        batch: int = 1) -> torch.Tensor:
        """Bytes of K and V each rank would receive if it all-gathered the whole sequence."""
        per_position = 2 * batch * kv_heads * head_dim * _itemsize(dtype)
        return (self.n - self.held) * per_position

    def chunk(self, r: int) -> tuple:
        return self.bounds[r], self.bounds[r + 1]


def _itemsize(dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def exchange_plan(pattern, n: int, world: int, exact_terms: bool = True) -> ExchangePlan:
    """Balance the chunks by allowed pairs and list the keys every rank needs."""
    per_row = row_pairs(pattern, n, exact_terms).sum(0)
    bounds = balance(per_row, world)
    need = needing_ranks(pattern, n, bounds, exact_terms)
    needs = []
    for r in range(world):
        hit = _has_bit(need, r)
        hit[bounds[r]:bounds[r + 1]] = False
        needs.append(torch.from_numpy(np.nonzero(hit)[0].astype(np.int64)))
    pairs = torch.tensor([int(per_row[bounds[r]:bounds[r + 1]].sum()) for r in range(world)])
    return ExchangePlan(n, bounds, needs, pairs)


def document_needs(documents: torch.Tensor, bounds: list) -> list:
    """With documents every document is its own sequence, so a rank may need any key of the
    documents its queries lie in: per rank, the keys of those documents (over all batch rows)
    outside its own chunk. The local mask then applies the exact per-document predicate."""
    from ..semantics.documents import document_bounds

    start, length = document_bounds(documents.cpu())
    out = []
    for r in range(len(bounds) - 1):
        a, b = bounds[r], bounds[r + 1]
        lo = int(start[:, a].min())
        hi = int((start[:, b - 1] + length[:, b - 1]).max())
        out.append(torch.cat([torch.arange(lo, a), torch.arange(b, hi)]))
    return out
