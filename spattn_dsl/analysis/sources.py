"""Engines that propagate reach from many sources at once, as bits (see ``bitsets.py``).

A state holds, for every position x, the bits of the sources that reach x. A layer is
applied with O(n) scans per term (``bitsets.apply``); these engines have no cheap
``compose(state, state)``, so the driver steps layer by layer (``stepping = True``).

- ``TokenSources``: every token is a source, so row q of the state IS the receptive field
  of q: exact for any term-form pattern (bidirectional, random keys), n <= ALL_SOURCES_MAX.
- ``PeriodicSources``: causal stacks whose masks and chunks are P-periodic from position H
  on (``terms.periodic_head``). A causal path from k to q stays inside [k, q], and that
  stretch of the graph looks the same shifted by P once k >= H, so whether k reaches q depends
  only on (k's phase, q - k). Sources 0 .. H + P - 1 then give every pair exactly:
  ``D[q, k] = D[q - jP, k - jP]`` with ``k - jP`` in ``[H, H + P)``.
- ``BlockSources``: a block pattern's relation on the grid of blocks, every block a source
  (state ``E`` without the identity, as ``engines.GridEngine``): sparse rows, so 16384 blocks
  (BigBird at 1M tokens) fit in 32 MB.
"""
from __future__ import annotations

import numpy as np

from . import bitsets as B
from .engines import RowFigures, first_missing

ALL_SOURCES_MAX = 16384
STATE_WORDS = 1 << 25  # 256 MB of bits per state at most


class _Stepping:
    stepping = True

    def relation(self, terms):
        return terms

    def compose(self, relation, state):
        return B.apply(relation, state)

    def same(self, x, y) -> bool:
        return np.array_equal(x, y)

    def missing(self, state):
        return first_missing(self, state)


class TokenSources(_Stepping):
    def __init__(self, n: int, causal: bool):
        self.n, self.causal = n, causal
        self.words = -(-n // 64)

    def identity(self):
        return B.unit_rows(np.arange(self.n), self.n, self.words)

    def row_keys(self, state, q, keys):
        return B.bit(state, np.full(len(keys), q), keys)

    def has(self, state, q, k) -> bool:
        return bool(B.bit(state, np.array([q]), np.array([k]))[0])

    def rows(self, state) -> RowFigures:
        size = B.popcount(state)
        q = np.arange(self.n)
        full = size == (q + 1 if self.causal else self.n)
        return RowFigures(size, B.lowest_bit(state), B.highest_bit(state), full)


class PeriodicSources(_Stepping):
    def __init__(self, n: int, head: int, period: int):
        self.n, self.causal = n, True
        self.head, self.period = head, period
        self.count = min(head + period, n)  # sources 0 .. count - 1
        self.words = -(-self.count // 64)

    def identity(self):
        return B.unit_rows(np.arange(self.count), self.n, self.words)

    def _source_of(self, k):
        """(source, shift): D[q, k] = D[q - shift, source]."""
        k = np.asarray(k)
        late = k >= self.count
        phase = self.head + (k - self.head) % self.period
        source = np.where(late, phase, k)
        return source, k - source

    def row_keys(self, state, q, keys):
        source, shift = self._source_of(keys)
        at = q - shift
        ok = at >= 0
        return ok & B.bit(state, np.maximum(at, 0), source)

    def has(self, state, q, k) -> bool:
        return bool(self.row_keys(state, q, np.array([k]))[0])

    def rows(self, state) -> RowFigures:
        n, head, period = self.n, self.head, self.period
        q = np.arange(n, dtype=np.int64)
        in_head = B.count_below(state, np.full(n, head)) if head else np.zeros(n, np.int64)
        late = B.popcount(state) - in_head
        size = in_head + _class_cumsum(late, period)
        lowest = B.lowest_bit(state)
        if head:
            cleared = state.copy()
            for word in range(-(-head // 64)):
                keep = min(64, head - 64 * word)
                low_bits = np.uint64((1 << keep) - 1) if keep < 64 else ~np.uint64(0)
                cleared[:, word] &= ~low_bits
            lowest_late = B.lowest_bit(cleared)
        else:
            lowest_late = lowest
        # the oldest key reached through a periodic source: q - max over x = q - jP of
        # (x - lowest source at x)
        gain = np.where(lowest_late >= 0, q - lowest_late, -(n + 1))
        farthest = _class_cummax(gain, period)
        low = np.where(in_head > 0, lowest, q - farthest)
        return RowFigures(size, low, q.copy(), size == q + 1)


def _class_cumsum(values, period):
    n = len(values)
    rows = -(-n // period)
    padded = np.zeros(rows * period, dtype=np.int64)
    padded[:n] = values
    return padded.reshape(rows, period).cumsum(axis=0).reshape(-1)[:n]


def _class_cummax(values, period):
    n = len(values)
    rows = -(-n // period)
    padded = np.full(rows * period, values.min(), dtype=np.int64)
    padded[:n] = values
    return np.maximum.accumulate(padded.reshape(rows, period), axis=0).reshape(-1)[:n]


class BlockSources(_Stepping):
    """Blocks of ``b`` tokens; a state ``E`` means ``lift(E) | id`` on tokens."""

    def __init__(self, n: int, b: int, causal: bool):
        self.n, self.b, self.causal = n, b, causal
        self.blocks = -(-n // b)
        self.words = -(-self.blocks // 64)
        self.last_size = n - (self.blocks - 1) * b
        self.ids = np.arange(self.blocks)

    def identity(self):
        return np.zeros((self.blocks, self.words), dtype=np.uint64)

    def compose(self, relation, state):
        with_self = state | B.unit_rows(self.ids, self.blocks, self.words)
        out = state.copy()
        for term in relation:
            out |= B.image(term, with_self)
        return out

    def row_keys(self, state, q, keys):
        return B.bit(state, np.full(len(keys), q // self.b), keys // self.b) | (keys == q)

    def has(self, state, q, k) -> bool:
        return q == k or bool(B.bit(state, np.array([q // self.b]), np.array([k // self.b]))[0])

    def rows(self, state) -> RowFigures:
        b, n = self.b, self.n
        q = np.arange(n, dtype=np.int64)
        block = q // b
        own = B.bit(state, self.ids, self.ids)
        per_block = b * B.popcount(state) - (b - self.last_size) * B.bit(
            state, self.ids, np.full(self.blocks, self.blocks - 1))
        size = per_block[block] + ~own[block]
        first, last = B.lowest_bit(state), B.highest_bit(state)
        low = np.where(first[block] >= 0, np.minimum(first[block] * b, q), q)
        high = np.where(last[block] >= 0,
                        np.maximum(np.minimum(last[block] * b + b, n) - 1, q), q)
        if self.causal:
            others_in = B.count_below(state, self.ids) == self.ids
            alone = q == block * b
        else:
            others_in = B.popcount(state) - own == self.blocks - 1
            sizes = np.minimum(self.ids * b + b, n) - self.ids * b
            alone = sizes[block] == 1
        full = others_in[block] & (own[block] | alone)
        return RowFigures(size, low, high, full)


def fits_all_sources(n: int) -> bool:
    return n <= ALL_SOURCES_MAX


def fits_periodic(n: int, head: int, period: int) -> bool:
    return n * -(-min(head + period, n) // 64) <= STATE_WORDS


SAMPLE_SOURCES = 64
SAMPLED_MAX = 1 << 20  # the sampled fallback runs up to here


def sample_sources(n: int) -> np.ndarray:
    """Token 0 and evenly spaced others (token n - 1 among them)."""
    return np.unique(np.linspace(0, n - 1, min(SAMPLE_SOURCES, n)).astype(np.int64))


class SampledSources(_Stepping):
    """Only the sampled sources: row q holds the sampled keys q reaches, so receptive fields
    and coverage are lower bounds (the fallback when no exact method fits)."""

    def __init__(self, n: int, causal: bool):
        self.n, self.causal = n, causal
        self.sources = sample_sources(n)
        self.words = -(-len(self.sources) // 64)

    def identity(self):
        return B.unit_rows(self.sources, self.n, self.words)

    def has(self, state, q, k) -> bool:
        j = np.searchsorted(self.sources, k)
        if q == k or j == len(self.sources) or self.sources[j] != k:
            return q == k  # an unsampled key counts as unreached (a lower bound)
        return bool(B.bit(state, np.array([q]), np.array([j]))[0])

    def missing(self, state):
        """A pair truly never covered: a sampled key that an admissible query lacks."""
        q = np.arange(self.n)
        bits = np.unpackbits(state.view(np.uint8), axis=1, bitorder="little")
        admissible = self.sources[None, :] <= q[:, None] if self.causal else True
        lacking = np.argwhere(~bits[:, :len(self.sources)].astype(bool) & admissible)
        if not len(lacking):
            return None
        q, j = lacking[0]
        return int(q), int(self.sources[j])

    def rows(self, state) -> RowFigures:
        q = np.arange(self.n, dtype=np.int64)
        own = np.isin(q, self.sources)  # an unsampled query still reaches itself
        size = B.popcount(state) + ~own
        first, last = B.lowest_bit(state), B.highest_bit(state)
        low = np.where(first >= 0, np.minimum(self.sources[first], q), q)
        high = np.where(last >= 0, np.maximum(self.sources[last], q), q)
        return RowFigures(size, low, high, size == (q + 1 if self.causal else self.n))


def sampled_search(schedule_terms, n: int, causal: bool, limit: int):
    """Exact hop distances from a sample of sources (token 0 and evenly spaced others) through
    the full stack, random keys included: every source's eccentricity over its admissible
    targets, and dist(0 -> n - 1). Returns (sources, eccentricities, reach_to_first), with
    math.inf where a fixpoint came first and None where ``limit`` layers ran out."""
    import math
    sources = sample_sources(n)
    state = B.unit_rows(sources, n, 1)
    targets = n - sources if causal else np.full(len(sources), n)
    ecc = [0 if t == 1 else None for t in targets]  # a source is its own only target
    first = 0 if n == 1 else None
    period_start = state
    for layer in range(1, limit + 1):
        state = B.apply(schedule_terms[(layer - 1) % len(schedule_terms)], state)
        bits = np.unpackbits(state.view(np.uint8), axis=1, bitorder="little")[:, :len(sources)]
        reached = bits.sum(axis=0)
        for j in np.flatnonzero(reached == targets):
            if ecc[j] is None:
                ecc[j] = layer
        if first is None and bits[n - 1, 0]:
            first = layer
        if all(e is not None for e in ecc) and first is not None:
            break
        if layer % len(schedule_terms) == 0:
            if np.array_equal(state, period_start):
                ecc = [math.inf if e is None else e for e in ecc]
                first = math.inf if first is None else first
                break
            period_start = state
    return sources, ecc, first
