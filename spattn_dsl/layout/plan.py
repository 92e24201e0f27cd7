"""``plan``: the structure-aware lowering of one head case (DESIGN section 3.4).

A concrete pattern is rewritten into disjoint *terms* whose union is the pattern (each
allowed pair lies in exactly one term). Each term is a sub-attention on its own index space:

- ``grid``: the token grid (the single-layout kernel of ``layout.build``);
- ``residue``: a stride or dilation ``s``: positions reordered by (pos mod s, pos div s), so
  that each residue class is one contiguous run of the virtual grid and a stride becomes
  causal or dense attention inside each class, a dilation a band;
- ``columns``: a short list of key columns every row may attend (``sink``, ``summary``,
  global keys), gathered into a dense virtual key grid;
- ``rows``: global query rows (``global(first = g)``, ``global(t, ...)``) over all keys.

A term's index space is given by gather vectors (int32, ``-1`` for a hole): ``q_gather``
maps virtual rows to query rows, ``k_gather`` virtual columns to key positions; the kernels
gather through them in their loads (no copies of q, k, v). Each term's layout is a
``BlockLayout`` on its virtual grid, computed in O(tiles): the term's expression, with the
selector that defines its index space replaced by ``dense`` (true on every gathered pair),
is classified by interval arithmetic on each virtual tile's range of original positions (a
superset, so EMPTY and FULL are exact); undecided tiles are resolved against the exact
predicate on the gathered positions, and tiles holding holes are never FULL.

The plan is chosen by cost: tiles visited times tile area times the tile's assumed
per-pair cost, plus a fixed cost per launched term, against the single grid layout, so no
pattern is planned into more work than today's kernel does.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch

from ..ir import nodes as N
from .build import BlockLayout, band_pairs, diff_interval, from_tiles, sparse_states
from .classify import EMPTY, FULL, PARTIAL, Grid, candidates, classify_codes
from .pairs import allowed

TILES_PER_CHECK = 256
# Costs in pairs of one head: a (batch 2 x 16 heads, head_dim 128) problem multiplies ~18K
# pairs of a head per microsecond on an H100/H200, a launch costs about 5 us, and smaller tiles
# run fewer pairs per second. Calibrated on an H200 (benchmarks/RESULTS.md, issue 13): a term
# after the first re-reads and rewrites the fp32 output rows it touches (~150 pairs' worth per
# row), a multi-term plan copies its fp32 result out once more, and a term whose longest row
# is long is bound by that one program (~8 pairs' worth per pair of its longest row), which the
# grid kernel hides by starting its heaviest rows first among all the others.
LAUNCH_COST = 1 << 17
TILE_COST = {(128, 128): 1.0, (128, 64): 1.0, (64, 128): 1.0, (64, 64): 1.1}
SMALL_TILE_COST = 1.3
MERGE_COST_PER_ROW = 150
CRITICAL_PATH_COST = 8
# One loop over a row's tiles (``merged``) instead of a FULL and a PARTIAL loop: 3-10% faster
# on rows that are ranges of tiles, 1.19x on BigBird's lists, within 2% elsewhere, on the H200
# (benchmarks/RESULTS.md, second and third GPU sessions).
MERGED_TILE_COST = 0.95
MAX_SPECIAL = 4  # more structured disjuncts than this: greedy, not every subset


@dataclass
class Term:
    kind: str                       # grid | residue | columns | rows
    expr: object                    # the term's exact pair predicate on original positions
    layout: BlockLayout             # on the virtual grid (block_m x block_n tiles)
    q_gather: torch.Tensor | None   # int32 [m_q]: query row of each virtual row, -1 = hole
    k_gather: torch.Tensor | None   # int32 [m_k]: key position of each virtual column
    note: str = ""
    # residue terms: (step s, class length of rows, of keys); virtual index r * length + a is
    # position r + s * a, which the kernels compute instead of reading the gather vectors
    residue: tuple[int, int, int] | None = None

    @property
    def block_m(self) -> int:
        return self.layout.block_m

    @property
    def block_n(self) -> int:
        return self.layout.block_n

    @property
    def visited_tiles(self) -> int:
        return int(self.layout.visited_tiles().sum())

    @property
    def pairs_computed(self) -> int:
        return self.visited_tiles * self.block_m * self.block_n

    @property
    def longest_row_pairs(self) -> int:
        """Pairs computed by the busiest query tile (one program's serial work)."""
        counts = self.layout.full_counts + self.layout.partial_counts
        return int(counts.max()) * self.block_m * self.block_n if counts.numel() else 0

    @property
    def rows(self) -> int:
        """Query rows the term writes (holes excluded)."""
        if self.q_gather is None:
            return self.layout.n_q
        return int((self.q_gather >= 0).sum())

    @property
    def mergeable(self) -> bool:
        """Whether a ``merged`` kernel visits it in one loop (no gather vectors to read)."""
        return self.residue is not None or (self.q_gather is None and self.k_gather is None)

    def cost(self, merged: bool = False) -> float:
        per_pair = TILE_COST.get((self.block_m, self.block_n), SMALL_TILE_COST)
        if merged and self.mergeable:
            per_pair *= MERGED_TILE_COST
        work = max(self.pairs_computed, CRITICAL_PATH_COST * self.longest_row_pairs)
        return work * per_pair + LAUNCH_COST

    def describe(self) -> dict:
        from ..ir.printer import text
        return {"kind": self.kind, "expr": text(self.expr), "note": self.note,
                "block_m": self.block_m, "block_n": self.block_n,
                "virtual_grid": [self.layout.n_q, self.layout.n_k],
                "visited_tiles": self.visited_tiles, "pairs_computed": self.pairs_computed,
                "q_gather": self.q_gather is not None, "k_gather": self.k_gather is not None}


@dataclass
class CasePlan:
    """The terms of one head case (an empty pattern keeps one grid term, so that its rows
    are written as 0)."""

    case: int
    terms: list = field(default_factory=list)

    @property
    def pairs_computed(self) -> int:
        return sum(t.pairs_computed for t in self.terms)

    def cost(self, merged: bool = False) -> float:
        total = sum(t.cost(merged) for t in self.terms)
        if len(self.terms) > 1:  # merged in fp32: later terms read and rewrite their rows
            touched = sum(t.rows for t in self.terms[1:]) + self.terms[0].rows
            total += MERGE_COST_PER_ROW * touched
        return total


# ------------------------------------------------------------------ decomposition
def disjuncts(expr) -> list:
    """``expr`` as a union of parts (not yet disjoint): unions split, intersections
    distributed over them (while small), ``global`` split into its key columns and rows."""
    if isinstance(expr, N.Union):
        return disjuncts(expr.left) + disjuncts(expr.right)
    if isinstance(expr, N.Global):
        if expr.first <= 0:
            return [N.Empty()]
        return [N.Sink(expr.first), rows_below(expr.first)]
    if isinstance(expr, N.GlobalTokens):
        if not expr.tokens:
            return [N.Empty()]
        return [_any_of("k", expr.tokens), _any_of("q", expr.tokens)]
    if isinstance(expr, N.Intersect):
        left, right = disjuncts(expr.left), disjuncts(expr.right)
        if len(left) * len(right) <= 8:
            return [_and(a, b) for a in left for b in right]
    if isinstance(expr, N.Difference):  # (a | b) - c = (a - c) | (b - c)
        return [N.Difference(part, expr.right) for part in disjuncts(expr.left)]
    return [expr]


def rows_below(g: int):
    return N.Compare("<", N.Var("q"), N.Num(g))


def _any_of(side: str, tokens) -> object:
    out = None
    for t in sorted(set(tokens)):
        node = N.Compare("==", N.Var(side), N.Num(t))
        out = node if out is None else N.Union(out, node)
    return out


def _and(a, b):
    if isinstance(a, N.Dense):
        return b
    if isinstance(b, N.Dense):
        return a
    return N.Intersect(a, b)


def conjuncts(expr) -> list:
    """The factors of a conjunction (``a - b`` is ``a & !b``)."""
    if isinstance(expr, N.Intersect):
        return conjuncts(expr.left) + conjuncts(expr.right)
    if isinstance(expr, N.Difference):
        return conjuncts(expr.left) + [N.Complement(expr.right)]
    return [expr]


def _union_of(parts):
    out = None
    for p in parts:
        out = p if out is None else N.Union(out, p)
    return N.Empty() if out is None else out


def _minus(expr, prior: list):
    return expr if not prior else N.Difference(expr, _union_of(prior))


# ------------------------------------------------------------------ selectors
def key_set(node, n_k: int):
    """Sorted int64 key positions when ``node`` only depends on the key (a column selector)."""
    if isinstance(node, N.Sink):
        return torch.arange(min(node.g, n_k))
    if isinstance(node, N.Summary):
        pos = torch.arange(n_k)
        return pos[pos % node.l >= node.l - node.c]
    tokens = _tokens_of(node, "k")
    if tokens is not None:
        return torch.tensor([t for t in tokens if t < n_k], dtype=torch.int64)
    return None


def row_set(node, n_q: int, n_k: int):
    """Sorted int64 query ROWS (0..n_q-1) when ``node`` only depends on the query."""
    offset = n_k - n_q
    if isinstance(node, N.Compare) and node.op == "<" and node.left == N.Var("q") \
            and isinstance(node.right, N.Num):
        return torch.arange(max(offset, 0), max(offset, min(node.right.value, n_k))) - offset
    tokens = _tokens_of(node, "q")
    if tokens is not None:
        return torch.tensor([t - offset for t in tokens if offset <= t < n_k], dtype=torch.int64)
    return None


def _tokens_of(node, side: str):
    if isinstance(node, N.Compare) and node.op == "==" and node.left == N.Var(side) \
            and isinstance(node.right, N.Num):
        return [node.right.value]
    if isinstance(node, N.Union):
        a, b = _tokens_of(node.left, side), _tokens_of(node.right, side)
        return None if a is None or b is None else sorted(set(a + b))
    return None


def residue_of(node) -> int | None:
    """The period s when ``node`` only allows pairs with q = k (mod s), s > 1."""
    if isinstance(node, N.Stride) and node.s > 1:
        return node.s
    if isinstance(node, N.Dilated) and node.d > 1:
        return node.d
    return None


def structure(part, n_q: int, n_k: int):
    """(kind, selector node, extra) of one disjunct: how its index space can be shrunk."""
    for node in conjuncts(part):
        s = residue_of(node)
        if s is not None and s < n_k:
            return "residue", node, s
    for node in conjuncts(part):
        keys = key_set(node, n_k)
        if keys is not None:
            return "columns", node, keys
    for node in conjuncts(part):
        rows = row_set(node, n_q, n_k)
        if rows is not None:
            return "rows", node, rows
    return "grid", None, None


def replace(expr, old, new):
    """``expr`` with every sub-expression equal to ``old`` replaced by ``new``."""
    if expr == old:
        return new
    kids = N.children(expr)
    if not kids or isinstance(expr, N.Blocks):
        return expr
    if isinstance(expr, N.Complement):
        return N.Complement(replace(expr.operand, old, new))
    return type(expr)(replace(expr.left, old, new), replace(expr.right, old, new))


def same_class_form(expr, s: int):
    """``expr`` restricted to pairs with q = k (mod s): strides dividing s are true there,
    dilations by a divisor of s are windows."""
    if isinstance(expr, N.Stride) and s % expr.s == 0:
        return N.Dense()
    if isinstance(expr, N.Dilated) and s % expr.d == 0:
        return N.Window(expr.w * expr.d)
    if isinstance(expr, N.Complement):
        return N.Complement(same_class_form(expr.operand, s))
    if isinstance(expr, (N.Union, N.Intersect, N.Difference)):
        return type(expr)(same_class_form(expr.left, s), same_class_form(expr.right, s))
    return expr


# ------------------------------------------------------------------ index spaces
def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def _pad(index: torch.Tensor, multiple: int) -> torch.Tensor:
    out = torch.full((_round_up(max(len(index), 1), multiple),), -1, dtype=torch.int32)
    out[:len(index)] = index.to(torch.int32)
    return out


def residue_gathers(s: int, n_q: int, n_k: int, block_m: int, block_n: int):
    """(q_gather of query rows, k_gather of key positions, class length of rows, of keys):
    class r holds positions r, r + s, r + 2s, ...; each class padded to whole tiles."""
    offset = n_k - n_q
    length = -(-n_k // s)                         # a in [0, length): pos = r + s * a
    a0 = offset // s                              # first a any query row can have
    k_len = _round_up(length, block_n)
    q_len = _round_up(max(length - a0, 1), block_m)
    r = torch.arange(s)[:, None]
    kpos = r + s * torch.arange(k_len)[None, :]
    k_gather = torch.where(kpos < n_k, kpos, -1).flatten().to(torch.int32)
    qpos = r + s * (a0 + torch.arange(q_len))[None, :]
    q_gather = torch.where((qpos >= offset) & (qpos < n_k), qpos - offset, -1)
    return q_gather.flatten().to(torch.int32), k_gather, q_len, k_len


def _tile_ranges(positions: torch.Tensor, block: int):
    """Per tile of a gathered position vector (-1 = hole): (lo, hi, any hole, all holes)."""
    tiles = positions.view(-1, block).to(torch.int64)
    hole = tiles < 0
    big = 1 << 40
    lo = torch.where(hole, big, tiles).min(1).values
    hi = torch.where(hole, -1, tiles).max(1).values
    all_hole = hole.all(1)
    lo = torch.where(all_hole, 0, lo)
    hi = torch.where(all_hole, 0, hi)
    return lo, hi, hole.any(1), all_hole


def gathered_tiles(classify_expr, exact_expr, q_pos, k_pos, n_k: int, block_m: int,
                   block_n: int, q_class=None, k_class=None):
    """The non-EMPTY tiles (``build.Tiles``) of a term on a virtual grid whose rows have
    absolute query positions ``q_pos`` and columns key positions ``k_pos`` (-1 = hole); only
    candidate tiles are classified (O(visited tiles), no dense grid).

    ``classify_expr`` must equal ``exact_expr`` on every gathered pair of tiles of the same
    class (``q_class``/``k_class``: per tile; tiles of different classes are EMPTY)."""
    q_lo, q_hi, q_holes, q_void = _tile_ranges(q_pos, block_m)
    k_lo, k_hi, k_holes, k_void = _tile_ranges(k_pos, block_n)
    q_tag = torch.zeros(len(q_lo), dtype=torch.int64) if q_class is None else q_class.long()
    k_tag = torch.zeros(len(k_lo), dtype=torch.int64) if k_class is None else k_class.long()
    # tiles of holes only pair with nothing: tags no other tile has
    grid = Grid(q_lo, q_hi, k_lo, k_hi, n_k, torch.where(q_void, -1, q_tag),
                torch.where(k_void, -2, k_tag))
    t_k = len(k_lo)
    codes = candidates(classify_expr, grid)
    rows, cols = codes // t_k, codes % t_k
    same = grid.q_tag[rows] == grid.k_tag[cols]
    codes, rows, cols = codes[same], rows[same], cols[same]
    state, unsure = classify_codes(classify_expr, grid, codes)
    # an interval PARTIAL may be EMPTY or FULL on the gathered subset: check those too
    # (only when the tile's positions are not contiguous)
    q_gap = (q_hi - q_lo + 1) != (block_m - (q_pos.view(-1, block_m) < 0).sum(1))
    k_gap = (k_hi - k_lo + 1) != (block_n - (k_pos.view(-1, block_n) < 0).sum(1))
    unsure |= (state == PARTIAL) & (q_gap[rows] | k_gap[cols])
    if bool(unsure.any()):
        at = unsure.nonzero().squeeze(1)
        state[at] = _resolve(exact_expr, q_pos.view(-1, block_m), k_pos.view(-1, block_n),
                             rows[at], cols[at], n_k)
    state[(q_holes[rows] | k_holes[cols]) & (state == FULL)] = PARTIAL
    keep = state != EMPTY
    return codes[keep], state[keep]


def _resolve(expr, q_tiles, k_tiles, rows, cols, n_k) -> torch.Tensor:
    """Exact states of the listed tiles from the pair predicate on gathered positions (holes
    take the value of a real position of their tile, which changes neither EMPTY nor FULL)."""
    out = []
    for start in range(0, len(rows), TILES_PER_CHECK):
        q = _fill_holes(q_tiles[rows[start:start + TILES_PER_CHECK]])[:, :, None]
        k = _fill_holes(k_tiles[cols[start:start + TILES_PER_CHECK]])[:, None, :]
        hits = allowed(expr, q, k, n_k).expand(len(q), q.shape[1], k.shape[2]).flatten(1)
        out.append(torch.where(hits.all(1), FULL, torch.where(hits.any(1), PARTIAL, EMPTY))
                   .to(torch.int8))
    return torch.cat(out)


def _fill_holes(tiles: torch.Tensor) -> torch.Tensor:
    tiles = tiles.to(torch.int64)
    first = tiles.max(1, keepdim=True).values
    return torch.where(tiles < 0, first, tiles)


# ------------------------------------------------------------------ terms
def grid_layout(expr, n_q, n_k, block_m, block_n) -> BlockLayout:
    """The token-grid layout of one expression (``layout.build``)."""
    return from_tiles([sparse_states(expr, n_q, n_k, block_m, block_n)], n_q, n_k, block_m,
                      block_n)


def grid_term(expr, n_q, n_k, block_m, block_n, grid=grid_layout) -> Term:
    return Term("grid", expr, grid(expr, n_q, n_k, block_m, block_n), None, None,
                "the token grid")


def residue_term(expr, s, n_q, n_k, block_m, block_n) -> Term:
    q_gather, k_gather, q_len, k_len = residue_gathers(s, n_q, n_k, block_m, block_n)
    offset = n_k - n_q
    q_pos = torch.where(q_gather >= 0, q_gather + offset, -1)
    q_class = torch.arange(len(q_gather) // block_m) * block_m // q_len
    k_class = torch.arange(len(k_gather) // block_n) * block_n // k_len
    tiles = gathered_tiles(same_class_form(expr, s), expr, q_pos, k_gather, n_k, block_m,
                           block_n, q_class, k_class)
    layout = from_tiles([tiles], len(q_gather), len(k_gather), block_m, block_n)
    return Term("residue", expr, layout, q_gather, k_gather,
                f"positions reordered by (pos mod {s}, pos div {s})", (s, q_len, k_len))


def columns_term(expr, selector, keys, n_q, n_k, block_m, block_n) -> Term:
    k_gather = _pad(keys, block_n)
    q_pos = _pad(torch.arange(n_q) + (n_k - n_q), block_m)
    tiles = gathered_tiles(replace(expr, selector, N.Dense()), expr, q_pos, k_gather, n_k,
                           block_m, block_n)
    layout = from_tiles([tiles], n_q, len(k_gather), block_m, block_n)
    return Term("columns", expr, layout, None, k_gather, f"{len(keys)} gathered key columns")


def rows_term(expr, selector, rows, n_q, n_k, block_m, block_n) -> Term:
    q_gather = _pad(rows, block_m)
    offset = n_k - n_q
    q_pos = torch.where(q_gather >= 0, q_gather + offset, -1)
    k_pos = _pad(torch.arange(n_k), block_n)
    tiles = gathered_tiles(replace(expr, selector, N.Dense()), expr, q_pos, k_pos, n_k,
                           block_m, block_n)
    layout = from_tiles([tiles], len(q_gather), n_k, block_m, block_n)
    return Term("rows", expr, layout, q_gather, None, f"{len(rows)} gathered query rows")


def _small(count: int, block: int) -> int:
    """The narrowest power-of-two tile (>= 16, <= block) holding ``count`` entries."""
    size = 16
    while size < block and size < count:
        size *= 2
    return size


def build_terms(parts, specials, n_q, n_k, block_m, block_n, grid=grid_layout,
                memo: dict | None = None) -> list:
    """The terms of a plan: the grid term (every part not in ``specials``), then each special
    part minus everything before it. Empty terms are dropped (one grid term stays).
    ``memo`` keeps terms already built for other candidate plans."""
    memo = {} if memo is None else memo

    def make(key, build):
        if key not in memo:
            memo[key] = build()
        return memo[key]

    grid_parts = [p for i, p in enumerate(parts) if i not in specials]
    terms, prior = [], []
    if grid_parts:
        grid_expr = _union_of(grid_parts)
        terms.append(make(("grid", grid_expr), lambda: grid_term(grid_expr, n_q, n_k, block_m,
                                                                 block_n, grid)))
        prior.append(grid_expr)
    for i in sorted(specials, key=lambda i: _KIND_ORDER[structure(parts[i], n_q, n_k)[0]]):
        kind, selector, extra = structure(parts[i], n_q, n_k)
        expr = _minus(parts[i], prior)
        terms.append(make((kind, expr), lambda: _special_term(kind, expr, selector, extra, n_q,
                                                              n_k, block_m, block_n)))
        prior.append(parts[i])
    kept = [t for t in terms if t.visited_tiles > 0]
    return kept or terms[:1] or [grid_term(N.Empty(), n_q, n_k, block_m, block_n, grid)]


_KIND_ORDER = {"columns": 0, "residue": 1, "rows": 2}


def _special_term(kind, expr, selector, extra, n_q, n_k, block_m, block_n) -> Term:
    """A term on a shrunk index space; narrow tiles where the space is narrow."""
    if kind == "residue":  # short classes: tiles no longer than a class
        length = -(-n_k // extra)
        rows = length - (n_k - n_q) // extra
        return residue_term(expr, extra, n_q, n_k, _small(rows, block_m), _small(length, block_n))
    if kind == "columns":
        return columns_term(expr, selector, extra, n_q, n_k, block_m, _small(len(extra), block_n))
    return rows_term(expr, selector, extra, n_q, n_k, _small(len(extra), block_m), block_n)


def plan_case(expr, n_q: int, n_k: int, block_m: int, block_n: int, mode: str = "auto",
              case: int = 0, grid=grid_layout) -> CasePlan:
    """The cheapest plan of one head-selected concrete expression at one tile size.

    ``mode``: ``auto`` (by cost), ``grid`` (today's single layout) or ``terms`` (every
    structured part as its own term: what tests use to exercise the terms on small sizes).
    ``grid``: how token-grid layouts are built (a cache may stand in)."""
    if not 0 <= n_q <= n_k:
        raise ValueError(f"need 0 <= n_q <= n_k, got n_q = {n_q}, n_k = {n_k}")
    single = CasePlan(case, [grid_term(expr, n_q, n_k, block_m, block_n, grid)])
    if mode == "grid" or n_q == 0:
        return single
    parts = disjuncts(expr)
    special = [i for i, p in enumerate(parts) if structure(p, n_q, n_k)[0] != "grid"]
    if not special:
        return single
    if mode == "terms":
        return CasePlan(case, build_terms(parts, set(special), n_q, n_k, block_m, block_n,
                                                grid))
    best, memo = single, {}
    for chosen in _subsets(special):
        if not chosen:
            continue
        candidate = CasePlan(case, build_terms(parts, set(chosen), n_q, n_k, block_m, block_n,
                                               grid, memo))
        if candidate.cost() < best.cost():
            best = candidate
    return best


def _subsets(items):
    if len(items) > MAX_SPECIAL:
        return [items]
    return itertools.chain.from_iterable(itertools.combinations(items, r)
                                         for r in range(1, len(items) + 1))


def plan_pattern(concrete, n_q: int, n_k: int, tiles, mode: str = "auto",
                 grid=grid_layout) -> list:
    """One ``CasePlan`` per head case, each at the cheapest of the ``tiles`` sizes
    ((block_m, block_n) pairs)."""
    from ..ir.evaluate import head_count, select_head

    plans = []
    for c in range(head_count(concrete)):
        expr = select_head(concrete, c)
        candidates = [plan_case(expr, n_q, n_k, bm, bn, mode, c, grid) for bm, bn in tiles]
        plans.append(min(candidates, key=lambda p: p.cost()))
    return plans


def term_pairs(term: Term, n_q: int, n_k: int) -> int:
    """Pairs the term allows: closed form for a band on the token grid, else FULL tiles by
    area, PARTIAL tiles by the predicate on their gathered positions (holes excluded)."""
    layout = term.layout
    band = diff_interval(term.expr)
    if band is not None and term.q_gather is None and term.k_gather is None:
        return band_pairs(n_q, n_k, *band)
    t_q, t_k = layout.tiles
    offset = n_k - n_q
    q_rows = term.q_gather if term.q_gather is not None else _pad(torch.arange(n_q), layout.block_m)
    q_pos = torch.where(q_rows >= 0, q_rows + offset, -1).view(-1, layout.block_m)[:t_q]
    k_cols = term.k_gather if term.k_gather is not None else _pad(torch.arange(n_k), layout.block_n)
    k_pos = k_cols.view(-1, layout.block_n)[:t_k]
    real_rows = (q_pos >= 0).sum(1).to(torch.int64)          # per tile: rows that are not holes
    real_cols = (k_pos >= 0).sum(1).to(torch.int64)
    rows, cols = _listed(layout.full_counts, layout.full_indices)
    total = int((real_rows[rows] * real_cols[cols]).sum())
    rows, cols = _listed(layout.partial_counts, layout.partial_indices)
    for start in range(0, len(rows), TILES_PER_CHECK):
        q = q_pos[rows[start:start + TILES_PER_CHECK]].to(torch.int64)[:, :, None]
        k = k_pos[cols[start:start + TILES_PER_CHECK]].to(torch.int64)[:, None, :]
        ok = allowed(term.expr, q.clamp(min=0), k.clamp(min=0), n_k) & (q >= 0) & (k >= 0)
        total += int(ok.sum())
    return total


def _listed(counts, indices):
    """(rows, cols) int64 of the entries of one case's CSR lists."""
    counts, indices = counts[0].long(), indices[0]
    live = torch.arange(indices.shape[1])[None, :] < counts[:, None]
    rows = torch.arange(len(counts))[:, None].expand_as(live)[live]
    return rows, indices[live].long()
