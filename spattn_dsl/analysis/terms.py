"""A layer's mask as a union of *terms*: conjunctions of conditions the periodic engine can scan.

A ``Term`` allows the pair (q, k) iff all of:
- the offset ``d = q - k`` is in the term's offset set (a bool vector over ``-(n-1) .. n-1``);
- ``qmask[q]`` and ``kmask[k]`` (bool vectors; None means every position);
- ``q // chunk == k // chunk`` when ``chunk`` is set;
- ``k`` is one of the ``random(r, seed)`` keys drawn for row q, when ``random`` is set.

Windows, bands, causal, stride and dilation are offset sets; summaries, sinks, global tokens,
prefixes and comparisons on ``q`` or ``k`` alone are masks; ``where`` comparisons linear in
``q - k`` (or functions of ``q - k`` through ``%`` and ``//``) are offset sets. Heads are unioned,
``!`` and ``-`` are pushed down to the conditions (De Morgan). What has no such form (a chunk or
random keys under ``!``, a comparison mixing ``q`` and ``k`` otherwise, ``blocks`` at token
level) raises ``NotRepresentable``.

Counting allowed pairs per query is exact: terms with the same masks, chunk and random keys
share one offset set, and different ones are combined by inclusion-exclusion.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
import torch

from ..ir import nodes as N
from ..ir.evaluate import head_count, select_head
from .draws import drawn_keys, node_random
from .rows import NotRepresentable

MAX_TERMS = 64
MAX_PIECES = 1024
FEW_PIECES = 16  # beyond this many pieces, pair counts go by FFT


@dataclass(frozen=True)
class Piece:
    """Offsets ``lo, lo + step, ..., hi`` (``lo <= hi``)."""

    lo: int
    hi: int
    step: int

    @property
    def count(self) -> int:
        return (self.hi - self.lo) // self.step + 1


@dataclass
class Term:
    n: int
    offsets: np.ndarray  # bool [2n - 1], index d + n - 1
    modulus: int = 1  # a hint: the offset set's natural period (from stride, dilated, %)
    qmask: np.ndarray | None = None
    kmask: np.ndarray | None = None
    chunk: int | None = None
    random: tuple | None = None  # (r, seed), or (r, seed, among) for fresh = 1 (draws.drawn_keys)
    period: int = 1  # the masks' natural period (summary length, % moduli)
    _keys: np.ndarray | None = field(default=None, repr=False)
    _pieces: list | None = field(default=None, repr=False)
    _cover: list | None = field(default=None, repr=False)

    def signature(self):
        def packed(m):
            return None if m is None else np.packbits(m).tobytes()
        return (packed(self.qmask), packed(self.kmask), self.chunk, self.random)

    def is_empty(self) -> bool:
        if not self.offsets.any():
            return True
        return any(m is not None and not m.any() for m in (self.qmask, self.kmask))

    def keys(self) -> np.ndarray:
        """int64 [n, r]: the random keys of every row, -1 where a key breaks another condition."""
        if self._keys is None:
            q = np.arange(self.n, dtype=np.int64)
            keys = drawn_keys(self.random, q, self.n)  # (fresh: -1 past a row's candidates)
            drawn = keys >= 0
            ok = self.contains(np.broadcast_to(q[:, None], keys.shape), np.where(drawn, keys, 0),
                               with_random=False)
            self._keys = np.where(ok & drawn, keys, -1)
        return self._keys

    def contains(self, q, k, with_random=True) -> np.ndarray:
        """Whether each pair (q[i], k[i]) is allowed (arrays of one shape)."""
        ok = self.offsets[q - k + self.n - 1]
        if self.qmask is not None:
            ok = ok & self.qmask[q]
        if self.kmask is not None:
            ok = ok & self.kmask[k]
        if self.chunk is not None:
            ok = ok & (q // self.chunk == k // self.chunk)
        if with_random and self.random is not None:
            keys = self.keys()
            ok = ok & (keys[q] == np.asarray(k)[..., None]).any(axis=-1)
        return ok

    def pieces(self) -> list:
        """Disjoint ``Piece`` s (one residue class, one run each) that make the offset set:
        few of them, since counting pairs costs O(n) per piece."""
        if self._pieces is None:
            best = None
            for step in sorted({1, self.modulus}):
                found = _runs(self.offsets, self.n, step)
                if best is None or len(found) < len(best):
                    best = found
            if len(best) > MAX_PIECES:
                raise NotRepresentable(f"an offset set of {len(best)} separate pieces")
            self._pieces = best
        return self._pieces

    def cover(self) -> list:
        """Pieces whose union is the offset set, overlaps allowed (an OR does not mind): the
        long runs of single steps, then the rest by residue class mod ``modulus``, where
        offsets already covered may join a run. ``window(l) | stride(l)`` is two pieces."""
        if self._cover is None:
            disjoint = self.pieces()
            if self.modulus == 1 or len(disjoint) <= 2:
                self._cover = disjoint
                return disjoint
            runs = _runs(self.offsets, self.n, 1)
            long_runs = [r for r in runs if r.count >= min(self.modulus, 8)]
            covered = np.zeros_like(self.offsets)
            for r in long_runs:
                covered[r.lo + self.n - 1:r.hi + self.n] = True
            left = self.offsets & ~covered
            if not left.any():
                self._cover = long_runs
                return long_runs
            rest = [p for p in _runs(self.offsets, self.n, self.modulus)
                    if _any_in(left, p, self.n)]
            found = long_runs + rest
            self._cover = found if len(found) < len(disjoint) else disjoint
        return self._cover


# ---------------------------------------------------------------- building terms
def layer_terms(expr, n: int) -> list:
    """The terms of a concrete expression, heads unioned, merged by signature."""
    out = []
    for head in range(head_count(expr)):
        out = _union(out, _terms(select_head(expr, head), n), n)
    return out


def block_terms(expr, n: int) -> list:
    """The terms of a layer whose every head is ``blocks(b) { body }``, on the grid of blocks."""
    out = []
    for head in range(head_count(expr)):
        body = select_head(expr, head)
        out = _union(out, _terms(body.body, -(-n // body.size)), -(-n // body.size))
    return out


def _all(n) -> np.ndarray:
    return np.ones(2 * n - 1, dtype=bool)


def _offsets(n, lo=None, hi=None, step=1, residue=0) -> np.ndarray:
    d = np.arange(-(n - 1), n, dtype=np.int64)
    ok = np.ones(2 * n - 1, dtype=bool)
    if lo is not None:
        ok &= d >= lo
    if hi is not None:
        ok &= d <= hi
    if step > 1:
        ok &= d % step == residue
    return ok


def _term(n, **kw) -> Term:
    kw.setdefault("offsets", _all(n))
    return Term(n, **kw)


def _terms(expr, n: int) -> list:
    t = type(expr)
    q = np.arange(n, dtype=np.int64)
    if t is N.Dense:
        return [_term(n)]
    if t is N.Empty:
        return []
    if t is N.Causal:
        return [_term(n, offsets=_offsets(n, lo=0))]
    if t is N.Window:
        return [_term(n, offsets=_offsets(n, lo=1 - expr.w, hi=expr.w - 1))]
    if t is N.Band:
        return [_term(n, offsets=_offsets(n, lo=-expr.after, hi=expr.before))]
    if t is N.Dilated:
        span = expr.w * expr.d
        return [_term(n, offsets=_offsets(n, 1 - span, span - 1, expr.d), modulus=expr.d)]
    if t is N.Stride:
        return [_term(n, offsets=_offsets(n, step=expr.s), modulus=expr.s)]
    if t is N.Chunk:
        return [_term(n, chunk=expr.l)]
    if t is N.Summary:
        return [_term(n, kmask=q % expr.l >= expr.l - expr.c, period=expr.l)]
    if t is N.Sink:
        return [_term(n, kmask=q < expr.g)]
    if t is N.Prefix:
        return [_term(n, qmask=q < expr.p, kmask=q < expr.p)]
    if t is N.Global:
        return _union([_term(n, qmask=q < expr.first)], [_term(n, kmask=q < expr.first)], n)
    if t is N.GlobalTokens:
        listed = np.isin(q, np.array(expr.tokens, dtype=np.int64))
        return _union([_term(n, qmask=listed)], [_term(n, kmask=listed.copy())], n)
    if t is N.Random:
        return [_term(n, random=node_random(expr))] if expr.r > 0 else []
    if t is N.Compare:
        return _compare(expr, n)
    if t is N.Union:
        return _union(_terms(expr.left, n), _terms(expr.right, n), n)
    if t is N.Intersect:
        return _intersect(_terms(expr.left, n), _terms(expr.right, n), n)
    if t is N.Difference:
        return _intersect(_terms(expr.left, n), _negate(_terms(expr.right, n), n), n)
    if t is N.Complement:
        return _negate(_terms(expr.operand, n), n)
    raise NotRepresentable(f"{type(expr).__name__.lower()} has no term form at token level")


def _union(a: list, b: list, n: int) -> list:
    merged = {}
    for term in a + b:
        if term.is_empty():
            continue
        key = term.signature()
        if key in merged:
            old = merged[key]
            merged[key] = Term(n, old.offsets | term.offsets, math.lcm(old.modulus, term.modulus),
                               old.qmask, old.kmask, old.chunk, old.random,
                               math.lcm(old.period, term.period))
        else:
            merged[key] = term
    if len(merged) > MAX_TERMS:
        raise NotRepresentable(f"more than {MAX_TERMS} terms")
    return list(merged.values())


def meet(a: Term, b: Term) -> Term | None:
    """The conjunction of two terms (None when empty)."""
    n = a.n
    chunk = a.chunk if b.chunk is None else b.chunk
    if a.chunk is not None and b.chunk is not None and a.chunk != b.chunk:
        small, large = sorted((a.chunk, b.chunk))
        if large % small:
            raise NotRepresentable("two chunk sizes that do not divide each other")
        chunk = small
    if a.random is not None and b.random is not None and a.random != b.random:
        raise NotRepresentable("an intersection of two different random draws")
    term = Term(n, a.offsets & b.offsets, math.lcm(a.modulus, b.modulus),
                _and(a.qmask, b.qmask), _and(a.kmask, b.kmask), chunk,
                a.random or b.random, math.lcm(a.period, b.period))
    return None if term.is_empty() else term


def _and(x, y):
    if x is None or y is None:
        return y if x is None else x
    return x & y


def _intersect(a: list, b: list, n: int) -> list:
    out = []
    for x in a:
        for y in b:
            both = meet(x, y)
            if both is not None:
                out = _union(out, [both], n)
    return out


def _negate(terms: list, n: int) -> list:
    result = [_term(n)]
    for term in terms:
        if term.chunk is not None or term.random is not None:
            raise NotRepresentable("a chunk or random keys under '!' or '-' have no term form")
        pieces = [_term(n, offsets=~term.offsets, modulus=term.modulus)]
        if term.qmask is not None:
            pieces.append(_term(n, qmask=~term.qmask, period=term.period))
        if term.kmask is not None:
            pieces.append(_term(n, kmask=~term.kmask, period=term.period))
        result = _intersect(result, _union([], pieces, n), n)
    return result


# ---------------------------------------------------------------- where(...)
def _linear(expr):
    """``{'q': a, 'k': b, 1: c}`` when the integer expression is a q + b k + c, else None."""
    if isinstance(expr, N.Num):
        return {"q": 0, "k": 0, 1: expr.value}
    if isinstance(expr, N.Var) and expr.name in ("q", "k"):
        return {"q": int(expr.name == "q"), "k": int(expr.name == "k"), 1: 0}
    if isinstance(expr, N.Neg):
        inner = _linear(expr.operand)
        return None if inner is None else {x: -v for x, v in inner.items()}
    if isinstance(expr, N.BinOp) and expr.op in "+-*":
        a, b = _linear(expr.left), _linear(expr.right)
        if a is None or b is None:
            return None
        if expr.op == "+":
            return {x: a[x] + b[x] for x in a}
        if expr.op == "-":
            return {x: a[x] - b[x] for x in a}
        if a["q"] == a["k"] == 0:
            return {x: a[1] * b[x] for x in b}
        if b["q"] == b["k"] == 0:
            return {x: b[1] * a[x] for x in a}
    return None


def _offset_only(expr) -> bool:
    """Whether the expression depends on q and k only through q - k."""
    from ..ir.evaluate import mentions
    if not mentions(expr, {"q", "k"}):
        return True
    form = _linear(expr)
    if form is not None:
        return form["q"] == -form["k"]
    if isinstance(expr, N.BinOp):
        return _offset_only(expr.left) and _offset_only(expr.right)
    if isinstance(expr, N.Neg):
        return _offset_only(expr.operand)
    if isinstance(expr, N.Call):
        return all(_offset_only(a) for a in expr.args)
    return False


def _moduli(expr) -> int:
    """lcm of the constant right operands of ``%`` (a period hint)."""
    m = 1
    if isinstance(expr, N.BinOp):
        if expr.op == "%" and isinstance(expr.right, N.Num) and expr.right.value:
            m = abs(expr.right.value)
        m = math.lcm(m, _moduli(expr.left), _moduli(expr.right))
    elif isinstance(expr, N.Neg):
        m = _moduli(expr.operand)
    elif isinstance(expr, N.Call):
        for a in expr.args:
            m = math.lcm(m, _moduli(a))
    return m


def _compare(expr: N.Compare, n: int) -> list:
    from ..ir.evaluate import mentions
    from ..semantics.reference import _compare as reference_compare
    difference = N.BinOp("-", expr.left, expr.right)
    uses_q, uses_k = mentions(difference, {"q"}), mentions(difference, {"k"})
    period = _moduli(difference)
    positions = torch.arange(n, dtype=torch.int64)
    if not uses_q and not uses_k:  # a constant comparison
        return [_term(n)] if _constant(expr) else []
    if not uses_k:  # a condition on the query alone
        value = reference_compare(expr, positions, torch.zeros(1, dtype=torch.int64))
        return [_term(n, qmask=value.expand(n).numpy().copy(), period=period)]
    if not uses_q:
        mask = reference_compare(expr, torch.zeros(1, dtype=torch.int64), positions)
        return [_term(n, kmask=mask.expand(n).numpy().copy(), period=period)]
    if not _offset_only(difference):
        raise NotRepresentable("a where(...) comparison that mixes q and k beyond q - k")
    d = torch.arange(-(n - 1), n, dtype=torch.int64)
    offsets = reference_compare(expr, d, torch.zeros(1, dtype=torch.int64)).numpy().copy()
    return [_term(n, offsets=offsets, modulus=period)]


def _constant(expr: N.Compare) -> bool:
    from ..ir.evaluate import eval_int
    a, b = eval_int(expr.left), eval_int(expr.right)
    return {"<": a < b, "<=": a <= b, "==": a == b, "!=": a != b, ">=": a >= b,
            ">": a > b}[expr.op]


# ---------------------------------------------------------------- offsets as pieces
def _runs(offsets: np.ndarray, n: int, step: int) -> list:
    """Maximal runs of allowed offsets inside each residue class mod ``step``."""
    first = -(n - 1)
    start = first - (first % step)  # aligned so that column c of the grid is residue c
    padded = np.zeros(-(-(n - 1 - start + 1) // step) * step, dtype=bool)
    padded[first - start:first - start + len(offsets)] = offsets
    grid = padded.reshape(-1, step).T  # [residue, index]
    edges = np.diff(np.pad(grid, ((0, 0), (1, 1))).astype(np.int8), axis=1)
    r0, i0 = np.nonzero(edges == 1)
    r1, i1 = np.nonzero(edges == -1)
    lo = start + i0 * step + r0
    hi = start + (i1 - 1) * step + r1
    return [Piece(int(a), int(b), step) for a, b in zip(lo, hi)]


def _any_in(flags, piece: Piece, n: int) -> bool:
    return bool(flags[piece.lo + n - 1:piece.hi + n:piece.step].any())


# ---------------------------------------------------------------- exact pair counts
COUNT_BITS_MAX = 1 << 26  # n * n / 64 words: counting by bits, at most 64K tokens


def pairs_per_query(terms: list, n: int) -> np.ndarray:
    """How many keys each query may attend, by inclusion-exclusion over the terms; where
    that fails (many terms, two random draws or chunks that do not nest meet), by bits."""
    try:
        return _inclusion_exclusion(terms, n)
    except NotRepresentable:
        if n * -(-n // 64) > COUNT_BITS_MAX:
            raise
    return _count_by_bits(terms, n)


def _inclusion_exclusion(terms: list, n: int) -> np.ndarray:
    total = np.zeros(n, dtype=np.int64)
    if len(terms) > 12:
        raise NotRepresentable("too many terms to count pairs exactly")
    for size in range(1, len(terms) + 1):
        for group in combinations(terms, size):
            both = group[0]
            for other in group[1:]:
                both = meet(both, other) if both is not None else None
            if both is not None:
                total += (-1) ** (size + 1) * _count(both)
    return total


def _count_by_bits(terms: list, n: int) -> np.ndarray:
    """Each key a source bit, a few thousand at a time: a query's allowed keys are the OR of
    the terms' images, counted by popcount. O(n^2 / 64) words per piece, small memory."""
    from . import bitsets as B
    total = np.zeros(n, dtype=np.int64)
    width = 64 * max(1, (1 << 16) // max(n, 1))  # keys per pass: n * width / 64 words
    for first in range(0, n, width):
        keys = np.arange(first, min(first + width, n))
        state = np.zeros((n, -(-len(keys) // 64)), dtype=np.uint64)
        j = np.arange(len(keys))
        np.bitwise_or.at(state, (keys, j // 64), np.uint64(1) << (j % 64).astype(np.uint64))
        hit = np.zeros_like(state)
        for term in terms:
            hit |= B.image(term, state)
        total += B.popcount(hit)
    return total


def _count(term: Term) -> np.ndarray:
    n = term.n
    if term.random is not None:
        counted = (term.keys() >= 0).sum(axis=1).astype(np.int64)
    elif term.kmask is None and term.chunk is None:
        # keys 0 .. n-1 are offsets q - n + 1 .. q: a window of the offset set's running sum
        running = np.concatenate([[0], np.cumsum(term.offsets, dtype=np.int64)])
        q = np.arange(n)
        counted = running[q + n] - running[q]
    elif len(term.pieces()) > FEW_PIECES:
        counted = _correlate(term)
    else:
        weights = np.ones(n, dtype=np.int64) if term.kmask is None \
            else term.kmask.astype(np.int64)
        counted = np.zeros(n, dtype=np.int64)
        for piece in term.pieces():
            counted += _piece_sum(weights, piece, term.chunk)
    if term.qmask is not None:
        counted = counted * term.qmask
    return counted


def _correlate(term: Term) -> np.ndarray:
    """``sum_k kmask[k] offsets[q - k]`` per q (inside q's chunk if set), by FFT: the sums
    are integers below 2^31, far inside float64's exact range after rounding."""
    n = term.n
    weights = np.ones(n) if term.kmask is None else term.kmask.astype(np.float64)
    if term.chunk is None:
        rows, width, near = weights[None, :], n, term.offsets
    else:
        l = term.chunk  # noqa: E741
        chunks = -(-n // l)
        padded = np.zeros(chunks * l)
        padded[:n] = weights
        rows, width = padded.reshape(chunks, l), l
        near = term.offsets[n - l:n + l - 1] if l <= n else \
            np.pad(term.offsets, (l - n, l - n))
    size = 1 << int(3 * width - 2).bit_length()
    product = np.fft.rfft(rows, size, axis=1) * np.fft.rfft(near.astype(np.float64), size)
    full = np.fft.irfft(product, size, axis=1)[:, width - 1:2 * width - 1]
    return np.rint(full).astype(np.int64).reshape(-1)[:n]


def _piece_sum(weights, piece: Piece, chunk) -> np.ndarray:
    """``sum_t weights[q - piece.hi + step t]`` over the piece, per q (same chunk if set)."""
    n = len(weights)
    if chunk is None:
        return _window_sum(weights[:, None], piece)[:, 0]
    chunks = -(-n // chunk)
    padded = np.zeros(chunks * chunk, dtype=np.int64)
    padded[:n] = weights
    inner = padded.reshape(chunks, chunk).T  # [position in chunk, chunk]
    return _window_sum(inner, piece).T.reshape(-1)[:n]


def _window_sum(values: np.ndarray, piece: Piece) -> np.ndarray:
    """Along axis 0: ``out[x] = sum values[x - d]`` for d in the piece (zero outside)."""
    length, step = values.shape[0], piece.step
    rows = -(-length // step)
    padded = np.zeros((rows * step,) + values.shape[1:], dtype=np.int64)
    padded[:length] = values
    # sums along each residue class: cum[x] = values[x] + cum[x - step]
    cum = padded.reshape((rows, step) + values.shape[1:]).cumsum(axis=0).reshape(padded.shape)
    x = np.arange(length, dtype=np.int64)
    newest, oldest = x - piece.lo, x - piece.hi  # keys of the smallest and largest offset
    beyond = np.maximum(newest - (length - 1), 0)
    newest = newest - -(-beyond // step) * step  # the newest key inside the sequence
    valid = (newest >= 0) & (newest >= oldest)
    below = oldest - step
    upper = cum[np.clip(newest, 0, length - 1)]
    lower = np.where(_col(below >= 0, values), cum[np.clip(below, 0, length - 1)], 0)
    return np.where(_col(valid, values), upper - lower, 0)


def _col(flags, values):
    return flags[(...,) + (None,) * (values.ndim - 1)]


# ---------------------------------------------------------------- periodicity
def periodic_head(terms_by_layer, n: int):
    """(H, P): every mask and chunk is P-periodic from position H on; None with random keys."""
    period, masks = 1, []
    for terms in terms_by_layer:
        for term in terms:
            if term.random is not None:
                return None
            if term.chunk is not None:
                period = math.lcm(period, term.chunk)
            period = math.lcm(period, term.period)
            masks += [m for m in (term.qmask, term.kmask) if m is not None]
    if period > n:
        period = n
    head = 0
    for mask in masks:
        differs = np.flatnonzero(mask[period:] != mask[:n - period]) if period < n else []
        if len(differs):
            head = max(head, int(differs[-1]) + 1)
    return head, period


def is_causal(terms_by_layer, n: int) -> bool:
    """Whether no term of any layer allows a pair with k > q."""
    ahead = _offsets(n, hi=-1)
    for terms in terms_by_layer:
        for term in terms:
            if term.random is not None:
                keys = term.keys()
                if (keys > np.arange(n)[:, None]).any():
                    return False
                continue
            part = Term(n, term.offsets & ahead, term.modulus, term.qmask, term.kmask,
                        term.chunk, None, term.period)
            if not part.is_empty() and _count(part).any():
                return False
    return True


# ---------------------------------------------------------------- residue classes
def residue_spans(terms_by_layer, n: int):
    """(s, [(low, high) per layer]) when every term is a pure offset set inside s Z, s > 1,
    and each layer's offsets / s, with 0, form the interval [low, high]."""
    s = 0
    for terms in terms_by_layer:
        for term in terms:
            if term.qmask is not None or term.kmask is not None or term.chunk is not None \
                    or term.random is not None:
                raise NotRepresentable("masks, chunks or random keys do not split by residue")
            d = np.flatnonzero(term.offsets) - (n - 1)
            s = math.gcd(s, int(np.gcd.reduce(np.abs(d))) if len(d) else 0)
    if s <= 1:
        raise NotRepresentable("the offsets share no common step")
    spans = []
    for terms in terms_by_layer:
        allowed = np.zeros(2 * n - 1, dtype=bool)
        allowed[n - 1] = True
        for term in terms:
            allowed |= term.offsets
        classes = (np.flatnonzero(allowed) - (n - 1)) // s
        low, high = int(classes.min()), int(classes.max())
        if len(classes) != high - low + 1:
            raise NotRepresentable("the offsets inside a residue class are not one interval")
        spans.append((low, high))
    return s, spans


# ---------------------------------------------------------------- bounds
def subset_expr(expr, n: int, dropped: list, negated: bool = False):
    """The expression with what has no term form (random keys, comparisons mixing q and k)
    replaced so that the result allows a SUBSET of the pairs: ``none`` under an even number
    of negations, ``dense`` under an odd one. ``dropped`` collects what was left out."""
    import dataclasses
    if isinstance(expr, N.Random) or (isinstance(expr, N.Compare) and not _term_form(expr, n)):
        dropped.append("random keys" if isinstance(expr, N.Random) else
                       "comparisons mixing q and k")
        return N.Dense() if negated else N.Empty()
    if isinstance(expr, N.Blocks):
        return N.Blocks(expr.size, subset_expr(expr.body, -(-n // expr.size), dropped, negated))
    if isinstance(expr, N.Heads):
        return N.Heads(tuple(subset_expr(b, n, dropped, negated) for b in expr.bodies))
    if isinstance(expr, N.Complement):
        return N.Complement(subset_expr(expr.operand, n, dropped, not negated))
    if isinstance(expr, N.Difference):
        return N.Difference(subset_expr(expr.left, n, dropped, negated),
                            subset_expr(expr.right, n, dropped, not negated))
    if isinstance(expr, (N.Union, N.Intersect)):
        return dataclasses.replace(expr, left=subset_expr(expr.left, n, dropped, negated),
                                   right=subset_expr(expr.right, n, dropped, negated))
    return expr


def _term_form(expr: N.Compare, n: int) -> bool:
    try:
        _compare(expr, min(n, 4))  # the form does not depend on n
    except NotRepresentable:
        return False
    return True
