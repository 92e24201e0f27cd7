"""Analytic tile classification: a concrete mask expression over rectangles of (q, k).

A rectangle is a query interval ``[q_lo, q_hi]`` times a key interval ``[k_lo, k_hi]`` of
absolute positions on the current grid (token or block grid, key count ``n``). The query
bounds are ``[T_q, 1]`` int64 tensors, the key bounds ``[1, T_k]``: every pass is vectorised
over all ``T_q x T_k`` rectangles at once.

Each primitive is classified exactly (EMPTY: no pair allowed, FULL: every pair allowed,
PARTIAL: some), by interval arithmetic on ``q - k`` or on one coordinate. Combinators use
three-valued logic, which can only err by calling a tile PARTIAL that is really EMPTY or
FULL; such tiles are flagged ``unsure`` and resolved by ``layout.build`` against the exact
pair predicate. ``where`` (``Compare``) is bounded by interval arithmetic and flagged unsure
when undecided; ``random`` is classified exactly by counting its draws per rectangle.
"""
from __future__ import annotations

import math

import torch

from ..ir import nodes as N
from ..semantics.random import node_keys

EMPTY, PARTIAL, FULL = 0, 1, 2
_INF = 1 << 60  # beyond any position or clamped parameter (both <= 2**48); int64 bounds


def classify(expr, q_lo, q_hi, k_lo, k_hi, n: int):
    """(state int8 [T_q, T_k], unsure bool [T_q, T_k] or None) for a concrete expression.

    Pairwise too: query and key bounds both ``[P, 1]`` (rectangle p is ``(q_p, k_p)``) give
    ``[P, 1]`` results; the rules are elementwise, ``random`` checks which form it got."""
    q_lo, q_hi, k_lo, k_hi = (t.to(torch.int64) for t in (q_lo, q_hi, k_lo, k_hi))
    band = diff_interval(expr) if isinstance(expr, N.Intersect) else None
    rule = _RULES.get(type(expr)) if band is None else _on_diff(
        lambda e, lo, hi: _count_interval(lo, hi, *band))  # exact: no unsure tiles to check
    if rule is None:
        raise TypeError(f"no tile classifier for {type(expr).__name__} (select a head first)")
    state, unsure = rule(expr, q_lo, q_hi, k_lo, k_hi, n)
    shape = (q_lo.shape[0], k_lo.shape[1])
    return state.to(torch.int8).expand(shape), None if unsure is None else unsure.expand(shape)


def diff_interval(expr):
    """(lo, hi) when ``expr`` allows exactly the pairs with ``lo <= q - k <= hi``, else None
    (bands and their intersections)."""
    if isinstance(expr, N.Dense):
        return -_INF, _INF
    if isinstance(expr, N.Causal):
        return 0, _INF
    if isinstance(expr, N.Window) or (isinstance(expr, N.Dilated) and expr.d == 1):
        return -expr.w + 1, expr.w - 1
    if isinstance(expr, N.Band):
        return -expr.after, expr.before
    if isinstance(expr, N.Intersect):
        a, b = diff_interval(expr.left), diff_interval(expr.right)
        if a is not None and b is not None:
            return max(a[0], b[0]), min(a[1], b[1])
    return None


# ------------------------------------------------------------------ counting helpers
def _by_count(count, size):
    """State from how many of ``size`` candidates are allowed."""
    return (count > 0).to(torch.int8) + (count >= size).to(torch.int8)


def _count_interval(lo, hi, a: int, b: int):
    """How many integers of ``[lo, hi]`` lie in ``[a, b]``."""
    a, b = max(a, -_INF), min(b, _INF)
    return (torch.clamp(hi, max=b) - torch.clamp(lo, min=a) + 1).clamp(min=0)


def _count_multiples(lo, hi, s: int):
    """How many multiples of ``s`` lie in ``[lo, hi]`` (0 where the interval is empty)."""
    count = torch.div(hi, s, rounding_mode="floor") - torch.div(lo - 1, s, rounding_mode="floor")
    return torch.where(hi >= lo, count, 0)


def _diff_range(q_lo, q_hi, k_lo, k_hi):
    """Every value of ``q - k`` over the rectangle: the contiguous range ``[lo, hi]``."""
    return q_lo - k_hi, q_hi - k_lo


def _on_diff(allowed_count):
    def rule(expr, q_lo, q_hi, k_lo, k_hi, n):
        lo, hi = _diff_range(q_lo, q_hi, k_lo, k_hi)
        return _by_count(allowed_count(expr, lo, hi), hi - lo + 1), None
    return rule


def _dilated_count(expr, lo, hi):
    span = min(expr.w * expr.d, _INF)
    lo, hi = lo.clamp(min=-span + 1), hi.clamp(max=span - 1)
    return _count_multiples(lo, hi, expr.d)


def _either(a, b):
    """Union of a query-only and a key-only condition (exact: the two are independent)."""
    return torch.maximum(a, b)


def _both(a, b):
    return torch.minimum(a, b)


def _below(lo, hi, g: int):
    """State of ``x < g`` over ``[lo, hi]``."""
    return _by_count(_count_interval(lo, hi, -_INF, g - 1), hi - lo + 1)


def _summary_count(x, l: int, c: int):  # noqa: E741
    """How many ``k`` in ``[0, x)`` have ``k mod l >= l - c``."""
    return torch.div(x, l, rounding_mode="floor") * c + (torch.remainder(x, l) - (l - c)).clamp(min=0)


def _tokens_in(tokens, lo, hi):
    table = torch.tensor(sorted(set(tokens)), dtype=lo.dtype)
    count = torch.searchsorted(table, hi.contiguous(), right=True) - \
        torch.searchsorted(table, lo.contiguous(), right=False)
    return _by_count(count, hi - lo + 1)


# ------------------------------------------------------------------ primitives
def _dense(expr, q_lo, q_hi, k_lo, k_hi, n):
    return torch.full((1, 1), FULL), None


def _empty(expr, q_lo, q_hi, k_lo, k_hi, n):
    return torch.full((1, 1), EMPTY), None


def _chunk(expr, q_lo, q_hi, k_lo, k_hi, n):
    l = expr.l  # noqa: E741
    qa, qb = q_lo // l, q_hi // l
    ka, kb = k_lo // l, k_hi // l
    overlap = (qa <= kb) & (ka <= qb)
    single = (qa == qb) & (ka == kb) & (qa == ka)
    return overlap.to(torch.int8) + single.to(torch.int8), None


def _summary(expr, q_lo, q_hi, k_lo, k_hi, n):
    count = _summary_count(k_hi + 1, expr.l, expr.c) - _summary_count(k_lo, expr.l, expr.c)
    return _by_count(count, k_hi - k_lo + 1), None


def _global(expr, q_lo, q_hi, k_lo, k_hi, n):
    return _either(_below(q_lo, q_hi, expr.first), _below(k_lo, k_hi, expr.first)), None


def _global_tokens(expr, q_lo, q_hi, k_lo, k_hi, n):
    if not expr.tokens:
        return torch.full((1, 1), EMPTY), None
    return _either(_tokens_in(expr.tokens, q_lo, q_hi), _tokens_in(expr.tokens, k_lo, k_hi)), None


def _sink(expr, q_lo, q_hi, k_lo, k_hi, n):
    return _below(k_lo, k_hi, expr.g), None


def _prefix(expr, q_lo, q_hi, k_lo, k_hi, n):
    return _both(_below(q_lo, q_hi, expr.p), _below(k_lo, k_hi, expr.p)), None


def _covering(lo, hi, x):
    """For sorted intervals ``[lo_j, hi_j]`` (both non-decreasing), the first and last j
    containing each value of ``x``; first > last when none does."""
    x = x.contiguous()
    first = torch.searchsorted(hi.contiguous(), x, right=False)
    last = torch.searchsorted(lo.contiguous(), x, right=True) - 1
    return first, last


def _sorted_order(lo, hi):
    """(the order sorting intervals by (lo, hi), whether hi is then non-decreasing too: what
    ``_covering`` needs; false only for nested intervals)."""
    order = torch.argsort(hi, stable=True)
    order = order[torch.argsort(lo[order], stable=True)]
    ends = hi[order]
    return order, bool((ends[1:] >= ends[:-1]).all())


def _random(expr, q_lo, q_hi, k_lo, k_hi, n):
    if k_lo.shape[0] != 1:  # pairwise rectangles, not a grid
        return _random_pairs(expr, q_lo, q_hi, k_lo, k_hi, n), None
    return _random_grid(expr, q_lo, q_hi, k_lo, k_hi, n)


def _random_grid(expr, q_lo, q_hi, k_lo, k_hi, n):
    """Exact: count the drawn pairs falling in each rectangle (a draw may lie in several
    rectangles when intervals repeat, as on a block grid coarser than the tiles, or overlap,
    as the tiles of residue classes do)."""
    qa, qb, ka, kb = (t.reshape(-1).long() for t in (q_lo, q_hi, k_lo, k_hi))
    t_q, t_k = len(qa), len(ka)
    area = (qb - qa + 1)[:, None] * (kb - ka + 1)[None, :]
    if expr.r == 0 or t_q == 0 or t_k == 0:
        return _by_count(torch.zeros(t_q, t_k, dtype=torch.int64), area), None
    q_order, q_sorted = _sorted_order(qa, qb)
    k_order, k_sorted = _sorted_order(ka, kb)
    if not (q_sorted and k_sorted):
        return _by_count(_random_counts_per_row_interval(expr, qa, qb, ka, kb, n), area), None
    counts = torch.zeros(t_q, t_k, dtype=torch.int64)
    counts[q_order[:, None], k_order[None, :]] = _random_counts_sorted(
        expr, qa[q_order], qb[q_order], ka[k_order], kb[k_order], n)
    return _by_count(counts, area), None


def _random_counts_sorted(expr, qa, qb, ka, kb, n):
    """Drawn pairs per rectangle, for intervals sorted as ``_covering`` needs."""
    t_q, t_k = len(qa), len(ka)
    codes = _draw_codes(expr, qa, qb, ka, kb, n)
    return torch.bincount(codes, minlength=t_q * t_k).view(t_q, t_k)


DRAW_ROWS = 1 << 20  # rows whose random draws are made at once (bounds the temporaries)


def _rows_of(qa, qb):
    """Sorted distinct rows lying in any of the intervals ``[qa_i, qb_i]``."""
    length = (qb - qa + 1).clamp(min=0)
    starts = torch.repeat_interleave(qa, length)
    steps = torch.arange(len(starts)) - torch.repeat_interleave(torch.cumsum(length, 0) - length,
                                                                length)
    return torch.unique(starts + steps)


def _draw_codes(expr, qa, qb, ka, kb, n):
    """int64 ``i * len(ka) + j`` of every draw (once per rectangle ``(i, j)`` holding it),
    for intervals sorted as ``_covering`` needs: O(draws), no grid of rectangles."""
    t_k = len(ka)
    out = [torch.zeros(0, dtype=torch.int64)]
    all_rows = _rows_of(qa, qb)
    for start in range(0, len(all_rows), DRAW_ROWS):
        rows = all_rows[start:start + DRAW_ROWS]
        keys = torch.from_numpy(node_keys(expr, rows.numpy(), n))
        draw_rows = rows[:, None].expand_as(keys).reshape(-1)
        keys = keys.reshape(-1)
        drawn = keys >= 0  # (padding: r > n, or a fresh row with fewer candidates)
        draw_rows, keys = draw_rows[drawn], keys[drawn]
        i0, i1 = _covering(qa, qb, draw_rows)
        j0, j1 = _covering(ka, kb, keys)
        for di in range(int((i1 - i0).max().clamp(min=-1)) + 1 if len(keys) else 0):
            for dj in range(int((j1 - j0).max().clamp(min=-1)) + 1):
                i, j = i0 + di, j0 + dj
                ok = (i <= i1) & (j <= j1)
                out.append((i * t_k + j)[ok])
    return torch.cat(out)


def _random_pairs(expr, q_lo, q_hi, k_lo, k_hi, n):
    """Drawn pairs' state per listed rectangle (pairwise form): the draws are coded on the
    distinct intervals, then looked up, so the work is the draws plus the rectangles."""
    qa, qb, ka, kb = (t.reshape(-1).long() for t in (q_lo, q_hi, k_lo, k_hi))
    area = (qb - qa + 1) * (kb - ka + 1)
    if expr.r == 0:
        return _by_count(torch.zeros_like(area), area).view(-1, 1)
    uq, q_idx = torch.unique(torch.stack([qa, qb], 1), dim=0, return_inverse=True)
    uk, k_idx = torch.unique(torch.stack([ka, kb], 1), dim=0, return_inverse=True)
    if _ends_sorted(uq[:, 1]) and _ends_sorted(uk[:, 1]):
        codes = torch.sort(_draw_codes(expr, uq[:, 0], uq[:, 1], uk[:, 0], uk[:, 1], n)).values
        want = q_idx * len(uk) + k_idx
        count = torch.searchsorted(codes, want, right=True) - torch.searchsorted(codes, want)
    else:
        count = _random_counts_per_pair(expr, qa, qb, ka, kb, n)
    return _by_count(count, area).view(-1, 1)


def _ends_sorted(hi) -> bool:
    return bool((hi[1:] >= hi[:-1]).all())


def _random_counts_per_pair(expr, qa, qb, ka, kb, n):
    """Draws per rectangle for nested intervals: row by row of the rectangles' heights."""
    count = torch.zeros(len(qa), dtype=torch.int64)
    for di in range(int((qb - qa).max()) + 1 if len(qa) else 0):
        live = (qa + di <= qb).nonzero().squeeze(1)
        keys = torch.from_numpy(node_keys(expr, (qa[live] + di).numpy(), n))
        count[live] += ((keys >= ka[live, None]) & (keys <= kb[live, None])).sum(1)
    return count


def _random_counts_per_row_interval(expr, qa, qb, ka, kb, n):
    """The same for any intervals (nested ones too): each row interval's draws against every
    key interval."""
    counts = torch.zeros(len(qa), len(ka), dtype=torch.int64)
    for i in range(len(qa)):
        rows = torch.arange(int(qa[i]), int(qb[i]) + 1, dtype=torch.int64)
        keys = torch.from_numpy(node_keys(expr, rows.numpy(), n)).reshape(-1, 1)
        counts[i] = ((keys >= ka[None, :]) & (keys <= kb[None, :])).sum(0)
    return counts


# ------------------------------------------------------------------ where(...)
def _interval(expr, q, k):
    """Float64 interval (lo, hi) of an integer expression; +-inf where unbounded."""
    if isinstance(expr, N.Num):
        v = torch.tensor(float(expr.value), dtype=torch.float64)
        return v, v
    if isinstance(expr, N.Var):
        return q if expr.name == "q" else k
    if isinstance(expr, N.Neg):
        lo, hi = _interval(expr.operand, q, k)
        return -hi, -lo
    if isinstance(expr, N.Call):
        args = [_interval(a, q, k) for a in expr.args]
        if expr.func in ("min", "max"):
            f = torch.minimum if expr.func == "min" else torch.maximum
            return _clean(f(args[0][0], args[1][0]), f(args[0][1], args[1][1]))
        lo, hi = args[0]
        if expr.func == "isqrt":
            return _clean(torch.floor(torch.sqrt(lo.clamp(min=0))) - 1,
                          torch.floor(torch.sqrt(hi.clamp(min=0))) + 1)
        return _clean(torch.floor(torch.log2(lo.clamp(min=1))) - 1,
                      torch.floor(torch.log2(hi.clamp(min=1))) + 1)
    (alo, ahi), (blo, bhi) = _interval(expr.left, q, k), _interval(expr.right, q, k)
    if expr.op == "+":
        return _clean(alo + blo, ahi + bhi)
    if expr.op == "-":
        return _clean(alo - bhi, ahi - blo)
    if expr.op == "*":
        prods = torch.stack(torch.broadcast_tensors(alo * blo, alo * bhi, ahi * blo, ahi * bhi))
        return _clean(prods.nan_to_num(nan=-math.inf).amin(0), prods.nan_to_num(nan=math.inf).amax(0))
    constant = _constant(blo, bhi)
    if expr.op == "//" and constant is not None and constant > 0:
        return _clean(torch.floor(alo / constant), torch.floor(ahi / constant))
    if expr.op == "%" and constant is not None and constant > 0:
        same = torch.floor(alo / constant) == torch.floor(ahi / constant)
        lo = torch.where(same, alo - constant * torch.floor(alo / constant), 0.0)
        hi = torch.where(same, ahi - constant * torch.floor(ahi / constant), constant - 1.0)
        return _clean(lo, hi)
    inf = torch.tensor(math.inf, dtype=torch.float64)
    return -inf, inf


def _constant(lo, hi):
    if lo.numel() == 1 and hi.numel() == 1 and float(lo) == float(hi) and math.isfinite(float(lo)):
        return float(lo)
    return None


def _clean(lo, hi):
    """Widen NaN and very large bounds (past exact float64 integers) to infinity."""
    big = float(1 << 50)
    lo = torch.where(torch.isnan(lo) | (lo < -big), -math.inf, lo)
    hi = torch.where(torch.isnan(hi) | (hi > big), math.inf, hi)
    return lo, hi


def _compare(expr, q_lo, q_hi, k_lo, k_hi, n):
    q = (q_lo.double(), q_hi.double())
    k = (k_lo.double(), k_hi.double())
    (alo, ahi), (blo, bhi) = _interval(expr.left, q, k), _interval(expr.right, q, k)
    op = expr.op
    if op in (">", ">="):
        (alo, ahi), (blo, bhi), op = (blo, bhi), (alo, ahi), "<" if op == ">" else "<="
    if op == "<":
        true, false = ahi < blo, alo >= bhi
    elif op == "<=":
        true, false = ahi <= blo, alo > bhi
    else:
        true = (alo == ahi) & (blo == bhi) & (alo == blo)
        false = (ahi < blo) | (bhi < alo)
        if op == "!=":
            true, false = false, true
    state = torch.where(true, FULL, torch.where(false, EMPTY, PARTIAL))
    return state, state == PARTIAL


# ------------------------------------------------------------------ combinators
def _union(expr, q_lo, q_hi, k_lo, k_hi, n):
    a, ua = classify(expr.left, q_lo, q_hi, k_lo, k_hi, n)
    b, ub = classify(expr.right, q_lo, q_hi, k_lo, k_hi, n)
    return torch.maximum(a, b), _merge_unsure(a, ua, b, ub, settled=EMPTY)


def _intersect(expr, q_lo, q_hi, k_lo, k_hi, n):
    a, ua = classify(expr.left, q_lo, q_hi, k_lo, k_hi, n)
    b, ub = classify(expr.right, q_lo, q_hi, k_lo, k_hi, n)
    return torch.minimum(a, b), _merge_unsure(a, ua, b, ub, settled=FULL)


def _difference(expr, q_lo, q_hi, k_lo, k_hi, n):
    a, ua = classify(expr.left, q_lo, q_hi, k_lo, k_hi, n)
    b, ub = classify(expr.right, q_lo, q_hi, k_lo, k_hi, n)
    b = FULL - b
    return torch.minimum(a, b), _merge_unsure(a, ua, b, ub, settled=FULL)


def _complement(expr, q_lo, q_hi, k_lo, k_hi, n):
    a, ua = classify(expr.operand, q_lo, q_hi, k_lo, k_hi, n)
    return FULL - a, ua


def _merge_unsure(a, ua, b, ub, settled: int):
    """A PARTIAL result is exact only when one side is an exact PARTIAL and the other is the
    neutral state (EMPTY for a union, FULL for an intersection)."""
    exact_a = (a == PARTIAL) & (b == settled)
    exact_b = (b == PARTIAL) & (a == settled)
    if ua is not None:
        exact_a &= ~ua
    if ub is not None:
        exact_b &= ~ub
    partial = (a == PARTIAL) | (b == PARTIAL)
    return partial & ~exact_a & ~exact_b & (a != FULL - settled) & (b != FULL - settled)


def _blocks(expr, q_lo, q_hi, k_lo, k_hi, n):
    """A token rectangle covers exactly the block rectangle of its end points' blocks."""
    b = expr.size
    return classify(expr.body, q_lo // b, q_hi // b, k_lo // b, k_hi // b, -(-n // b))


_RULES = {
    N.Dense: _dense, N.Empty: _empty,
    N.Causal: _on_diff(lambda e, lo, hi: _count_interval(lo, hi, 0, _INF)),
    N.Window: _on_diff(lambda e, lo, hi: _count_interval(lo, hi, -e.w + 1, e.w - 1)),
    N.Band: _on_diff(lambda e, lo, hi: _count_interval(lo, hi, -e.after, e.before)),
    N.Dilated: _on_diff(_dilated_count),
    N.Stride: _on_diff(lambda e, lo, hi: _count_multiples(lo, hi, e.s)),
    N.Chunk: _chunk, N.Summary: _summary, N.Global: _global, N.GlobalTokens: _global_tokens,
    N.Sink: _sink, N.Prefix: _prefix, N.Random: _random, N.Compare: _compare,
    N.Union: _union, N.Intersect: _intersect, N.Difference: _difference,
    N.Complement: _complement, N.Blocks: _blocks,
}



# ------------------------------------------------------------------ candidate tiles
# A layout must cost time and memory in proportion to the tiles it visits, not T_q x T_k:
# ``support`` lists a superset of the tiles an expression may allow, from interval bounds
# per query tile (a band's key range, a chunk's, a sink's columns, random draws), and only
# those are classified. Tiles are named by codes ``row * T_k + col``.
POS_MAX = (1 << 31) - 1          # above every position of a grid (n <= 2**30 on a grid)
_TAG_SHIFT = 32                  # tag * 2**32 + position: tiles of one tag sort together
MAX_CANDIDATES = 1 << 27         # tiles listed for one layout before LayoutLimitError
# Query or key tiles of one layout: a window layout costs ~0.7 KB per query tile to build
# (2**21 tiles: 1.4 GB, ~40 s on a loaded 2-core machine), so 2**28 tokens in 128-wide tiles
MAX_TILES_PER_SIDE = 1 << 21
PAIRS_PER_PASS = 1 << 21         # tiles classified at once (bounds the temporaries)


class LayoutLimitError(ValueError):
    """A layout too large to build: more than ``MAX_TILES_PER_SIDE`` query or key tiles, or
    more tiles to visit than ``MAX_CANDIDATES``."""


def check_tiles(t_q: int, t_k: int):
    """Refuse, before any work, a layout with too many tiles on a side."""
    if max(t_q, t_k) > MAX_TILES_PER_SIDE:
        raise LayoutLimitError(
            f"a layout of {t_q} x {t_k} tiles: more than {MAX_TILES_PER_SIDE} query or key "
            f"tiles are not built (memory); a shorter sequence or wider tiles fit")


class Grid:
    """Tiles as intervals of positions: query tiles ``[q_lo, q_hi]`` (int64 ``[T_q]``), key
    tiles ``[k_lo, k_hi]``; with tags, only tiles of equal tag pair up (residue classes)."""

    def __init__(self, q_lo, q_hi, k_lo, k_hi, n, q_tag=None, k_tag=None):
        self.q_lo, self.q_hi, self.k_lo, self.k_hi = (t.to(torch.int64) for t in
                                                      (q_lo, q_hi, k_lo, k_hi))
        self.n = n
        check_tiles(len(q_lo), len(k_lo))
        zeros = torch.zeros
        self.q_tag = zeros(len(q_lo), dtype=torch.int64) if q_tag is None else q_tag.long()
        self.k_tag = zeros(len(k_lo), dtype=torch.int64) if k_tag is None else k_tag.long()
        self._keys = None

    @property
    def shape(self):
        return len(self.q_lo), len(self.k_lo)

    def scaled(self, b: int) -> "Grid":
        """The same tiles on a grid of ``b``-token blocks."""
        return Grid(self.q_lo // b, self.q_hi // b, self.k_lo // b, self.k_hi // b,
                    -(-self.n // b), self.q_tag, self.k_tag)

    def key_index(self):
        """(order, tagged lo, tagged hi) of the key tiles sorted so that both ends ascend, or
        None when they cannot (nested intervals)."""
        if self._keys is None:
            lo = self.k_tag * (1 << _TAG_SHIFT) + self.k_lo.clamp(-1, POS_MAX)
            hi = self.k_tag * (1 << _TAG_SHIFT) + self.k_hi.clamp(-1, POS_MAX)
            order = torch.argsort(hi, stable=True)
            order = order[torch.argsort(lo[order], stable=True)]
            lo, hi = lo[order], hi[order]
            self._keys = (order, lo, hi) if _ends_sorted(hi) else False
        return self._keys or None


def candidates(expr, grid: Grid) -> torch.Tensor:
    """Sorted codes of the tiles that may be allowed (a superset; every pair of equal tags
    when nothing narrower is known)."""
    codes = support(expr, grid)
    return _every_pair(grid) if codes is None else codes


def classify_codes(expr, grid: Grid, codes: torch.Tensor, rule=None):
    """(state int8 ``[P]``, unsure bool ``[P]``) of the listed tiles, in passes (``rule``:
    the classifier, ``classify`` unless a caller counts its calls)."""
    rule = rule or classify
    t_k = grid.shape[1]
    states, unsure = [torch.zeros(0, dtype=torch.int8)], [torch.zeros(0, dtype=torch.bool)]
    for start in range(0, len(codes), PAIRS_PER_PASS):
        i, j = torch.div(codes[start:start + PAIRS_PER_PASS], t_k, rounding_mode="floor"), \
            torch.remainder(codes[start:start + PAIRS_PER_PASS], t_k)
        state, doubt = rule(expr, grid.q_lo[i, None], grid.q_hi[i, None], grid.k_lo[j, None],
                            grid.k_hi[j, None], grid.n)
        states.append(state.reshape(-1))
        unsure.append(torch.zeros(len(i), dtype=torch.bool) if doubt is None else doubt.reshape(-1))
    return torch.cat(states), torch.cat(unsure)


def support(expr, grid: Grid):
    """Sorted unique codes of a superset of the tiles ``expr`` may allow, or None (every
    pair)."""
    return _codes(grid, _support(expr, grid))


class _Ranges:
    """Per query tile, the key positions ``[a_i, b_i]`` (empty where a > b): kept unlisted,
    so that an intersection of bands (``causal & window(w)``) never lists the wider one."""

    def __init__(self, a, b):
        self.a, self.b = a, b


def _support(expr, grid: Grid):
    """None (every pair), sorted codes, or ``_Ranges``."""
    rule = _SUPPORT.get(type(expr))
    return None if rule is None else rule(expr, grid)


def _codes(grid: Grid, found):
    if isinstance(found, _Ranges):
        return _keys_for_rows(grid, _all_rows(grid), found.a, found.b)
    return found


def _keys_for_rows(grid: Grid, rows, a, b):
    """Codes of the key tiles (of the row's tag) meeting positions ``[a_i, b_i]``, per listed
    query tile ``rows[i]``; None when the key tiles are nested (no ranges to search)."""
    index = grid.key_index()
    if index is None:
        return None
    order, lo, hi = index
    tag = grid.q_tag[rows] * (1 << _TAG_SHIFT)
    a = tag + a.clamp(-1, POS_MAX)
    b = tag + b.clamp(-1, POS_MAX)
    first = torch.searchsorted(hi, a.contiguous())
    last = torch.searchsorted(lo, b.contiguous(), right=True) - 1
    count = (last - first + 1).clamp(min=0)
    return _expand(grid, rows, first, count, order)


def _expand(grid: Grid, rows, first, count, order):
    """Codes of ``count[i]`` consecutive sorted key tiles from ``first[i]``, per row."""
    total = int(count.sum())
    _check_size(grid, total)
    rows = torch.repeat_interleave(rows, count)
    steps = torch.arange(total) - torch.repeat_interleave(torch.cumsum(count, 0) - count, count)
    cols = order[torch.repeat_interleave(first, count) + steps]
    return torch.unique(rows * grid.shape[1] + cols)


def _check_size(grid: Grid, total: int):
    if total > MAX_CANDIDATES:
        raise LayoutLimitError(
            f"the layout would list {total} tiles (more than {MAX_CANDIDATES}) of a "
            f"{grid.shape[0]} x {grid.shape[1]} tile grid: too large to build; a shorter "
            f"sequence or larger tiles fit")


def _every_pair(grid: Grid):
    rows = torch.arange(grid.shape[0])
    codes = _keys_for_rows(grid, rows, torch.full_like(rows, -1), torch.full_like(rows, POS_MAX))
    if codes is None:  # nested key tiles: the plain product, of equal tags
        cols = torch.arange(grid.shape[1])
        codes = _expand(grid, rows, torch.zeros_like(rows), torch.full_like(rows, len(cols)), cols)
        i, j = codes // grid.shape[1], codes % grid.shape[1]
        codes = codes[grid.q_tag[i] == grid.k_tag[j]]
    return codes


def _all_rows(grid: Grid):
    return torch.arange(grid.shape[0])


def _rows_times_keys(grid: Grid, rows):
    """Every key tile (of equal tag) for the listed rows."""
    rows = rows.to(torch.int64)
    full = torch.full_like(rows, POS_MAX)
    codes = _keys_for_rows(grid, rows, torch.full_like(rows, -1), full)
    if codes is None:
        cols = torch.arange(grid.shape[1])
        codes = _expand(grid, rows, torch.zeros_like(rows), torch.full_like(rows, len(cols)), cols)
    return codes


def _rows_times_cols(grid: Grid, cols):
    """Every query tile with each listed key tile (of equal tag)."""
    t_q, t_k = grid.shape
    cols = cols.to(torch.int64)
    _check_size(grid, t_q * len(cols))
    codes = (torch.arange(t_q)[:, None] * t_k + cols[None, :]).reshape(-1)
    i, j = codes // t_k, codes % t_k
    return torch.sort(codes[grid.q_tag[i] == grid.k_tag[j]]).values


def _union(expr, g):
    a, b = _support(expr.left, g), _support(expr.right, g)
    if a is None or b is None:
        return None
    a, b = _codes(g, a), _codes(g, b)
    return None if a is None or b is None else torch.unique(torch.cat([a, b]))


def _union_codes(a, b):
    return None if a is None or b is None else torch.unique(torch.cat([a, b]))


def _intersect(expr, g):
    a, b = _support(expr.left, g), _support(expr.right, g)
    if a is None or b is None:
        return b if a is None else a
    if isinstance(a, _Ranges) and isinstance(b, _Ranges):
        return _Ranges(torch.maximum(a.a, b.a), torch.minimum(a.b, b.b))
    if isinstance(a, _Ranges):
        a, b = b, a
    if isinstance(b, _Ranges):  # keep the listed tiles whose keys meet the row's range
        i, j = a // g.shape[1], a % g.shape[1]
        return a[(g.k_hi[j] >= b.a[i]) & (g.k_lo[j] <= b.b[i])]
    return a[torch.isin(a, b)]


def _diff_support(bounds):
    """Pairs with ``q - k`` in ``[lo, hi]``: per query tile the keys ``[q_lo - hi, q_hi - lo]``."""
    def rule(expr, g):
        lo, hi = bounds(expr)
        if lo > hi:
            return torch.zeros(0, dtype=torch.int64)
        return _Ranges(g.q_lo - min(hi, _INF), g.q_hi - max(lo, -_INF))
    return rule


def _dilated_bounds(expr):
    span = min(expr.w * expr.d, _INF)
    return -span + 1, span - 1


def _chunk_support(expr, g):
    l = expr.l  # noqa: E741
    return _Ranges(g.q_lo // l * l, g.q_hi // l * l + l - 1)


def _key_range(g, lo: int, hi: int):
    """Every query tile with the keys ``[lo, hi]``."""
    return _Ranges(torch.full_like(g.q_lo, lo), torch.full_like(g.q_lo, hi))


def _sink_support(expr, g):
    return _key_range(g, 0, expr.g - 1)


def _prefix_support(expr, g):
    rows = g.q_lo < expr.p
    return _Ranges(torch.where(rows, 0, POS_MAX), torch.where(rows, expr.p - 1, -1))


def _global_support(expr, g):
    rows = (g.q_lo < expr.first).nonzero().squeeze(1)
    return _union_codes(_rows_times_keys(g, rows), _codes(g, _key_range(g, 0, expr.first - 1)))


def _global_tokens_support(expr, g):
    if not expr.tokens:
        return torch.zeros(0, dtype=torch.int64)
    rows = (_tokens_in(expr.tokens, g.q_lo, g.q_hi) > 0).nonzero().squeeze(1)
    cols = (_tokens_in(expr.tokens, g.k_lo, g.k_hi) > 0).nonzero().squeeze(1)
    return _union_codes(_rows_times_keys(g, rows), _rows_times_cols(g, cols))


def _summary_support(expr, g):
    state, _ = _summary(expr, None, None, g.k_lo, g.k_hi, g.n)
    cols = (state > 0).nonzero().squeeze(1)
    return None if len(cols) == g.shape[1] else _rows_times_cols(g, cols)


def _random_support(expr, g):
    """The tiles holding a draw (exact), from the draws: O(draws)."""
    if expr.r == 0 or 0 in g.shape:
        return torch.zeros(0, dtype=torch.int64)
    q_order, q_sorted = _sorted_order(g.q_lo, g.q_hi)
    k_order, k_sorted = _sorted_order(g.k_lo, g.k_hi)
    if not (q_sorted and k_sorted):
        return None
    codes = torch.unique(_draw_codes(expr, g.q_lo[q_order], g.q_hi[q_order], g.k_lo[k_order],
                                     g.k_hi[k_order], g.n))
    i, j = q_order[codes // len(k_order)], k_order[codes % len(k_order)]
    same = g.q_tag[i] == g.k_tag[j]
    return torch.unique(i[same] * g.shape[1] + j[same])


def _unscaled(found, b: int):
    """A support on the grid of ``b``-token blocks, in token positions (codes are the same
    tiles; a block range is the token range of its blocks)."""
    if not isinstance(found, _Ranges):
        return found
    a, hi = found.a.clamp(-1, POS_MAX), found.b.clamp(-1, POS_MAX)
    return _Ranges(torch.where(a < 0, a, a * b), torch.where(hi < 0, hi, hi * b + b - 1))


def _empty_support(expr, g):
    return torch.zeros(0, dtype=torch.int64)


_SUPPORT = {
    N.Empty: _empty_support,
    N.Causal: _diff_support(lambda e: (0, _INF)),
    N.Window: _diff_support(lambda e: (-e.w + 1, e.w - 1)),
    N.Band: _diff_support(lambda e: (-e.after, e.before)),
    N.Dilated: _diff_support(_dilated_bounds),
    N.Chunk: _chunk_support, N.Sink: _sink_support, N.Prefix: _prefix_support,
    N.Global: _global_support, N.GlobalTokens: _global_tokens_support,
    N.Summary: _summary_support, N.Random: _random_support,
    N.Union: _union, N.Intersect: _intersect,
    N.Difference: lambda e, g: _support(e.left, g),
    N.Blocks: lambda e, g: _unscaled(_support(e.body, g.scaled(e.size)), e.size),
}

__all__ = ["classify", "classify_codes", "candidates", "support", "Grid", "LayoutLimitError",
           "EMPTY", "PARTIAL", "FULL"]
