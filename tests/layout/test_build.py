"""Analytic block layouts against layouts read off the dense reference mask."""
import random

import pytest
import torch

from spattn_dsl.ir import nodes as N
from spattn_dsl.ir.evaluate import select_head
from spattn_dsl.layout import EMPTY, FULL, PARTIAL, lower, pair_count, states_from_mask, \
    tile_states
from spattn_dsl.layout.classify import _RULES, _sorted_order, classify

from .patterns import PRIMITIVES, pattern, random_tree

SHAPES = [(1, 1), (7, 7), (63, 63), (111, 111), (232, 232), (40, 111), (5, 232)]
TILES = [(16, 16), (16, 32), (64, 16)]


def assert_layout_exact(p, n_q, n_k, bm, bn):
    concrete = p.at(n_k)
    for head in range(p.heads):
        got = tile_states(select_head(concrete, head), n_q, n_k, bm, bn)
        want = states_from_mask(p.mask(n_q, n_k, head), bm, bn)
        assert torch.equal(got, want), f"{p.text} n_q={n_q} n_k={n_k} tiles={bm}x{bn} head={head}"


@pytest.mark.parametrize("name", sorted(PRIMITIVES))
@pytest.mark.parametrize("n_q,n_k", SHAPES, ids=[f"nq{a}-nk{b}" for a, b in SHAPES])
def test_tile_states_match_reference_mask(name, n_q, n_k):
    for bm, bn in TILES:
        assert_layout_exact(pattern(name), n_q, n_k, bm, bn)


@pytest.mark.parametrize("seed", range(60))
def test_tile_states_random_trees(seed):
    rng = random.Random(seed)
    p = pattern(random_tree(rng))
    n_k = rng.choice([63, 111, 232])
    n_q = rng.choice([n_k, rng.randint(1, n_k)])
    bm, bn = rng.choice([(8, 8), (16, 32), (32, 16)])
    assert_layout_exact(p, n_q, n_k, bm, bn)


def _shuffled_intervals(gen, n, kind):
    """Tile ranges out of order: ``overlapping`` ones like a residue term's (class r, tile t:
    [r + 4 * 8t, r + 4 * (8t + 7)]), or ``nested`` ones of random lengths."""
    if kind == "overlapping":
        lo = torch.tensor([r + 32 * t for t in range(n // 32 + 1) for r in range(4)])
        hi = (lo + 28).clamp(max=n - 1)
    else:
        lo = torch.randint(0, n, (40,), generator=gen)
        hi = (lo + torch.randint(0, 30, (40,), generator=gen)).clamp(max=n - 1)
    keep = lo < n
    order = torch.randperm(int(keep.sum()), generator=gen)
    return lo[keep][order], hi[keep][order]


@pytest.mark.parametrize("kind", ["overlapping", "nested"])
@pytest.mark.parametrize("seed", range(3))
def test_random_links_on_intervals_in_any_order(kind, seed):
    """The random classifier counts draws per rectangle: intervals out of order, overlapping
    (what the residue terms' tiles are) or nested, give the reference mask's states."""
    n = 97
    p = pattern(N.Random(N.Num(3), N.Num(seed)))
    mask = p.mask(n, n)
    gen = torch.Generator().manual_seed(seed)
    q_lo, q_hi = _shuffled_intervals(gen, n, kind)
    k_lo, k_hi = _shuffled_intervals(gen, n, kind)
    assert _sorted_order(q_lo, q_hi)[1] == (kind == "overlapping")  # both counting paths
    got, _ = classify(p.at(n), q_lo[:, None], q_hi[:, None], k_lo[None, :], k_hi[None, :], n)
    for i in range(len(q_lo)):
        for j in range(len(k_lo)):
            block = mask[q_lo[i]:q_hi[i] + 1, k_lo[j]:k_hi[j] + 1]
            want = FULL if block.all() else PARTIAL if block.any() else EMPTY
            assert int(got[i, j]) == want, (i, j)


def test_every_primitive_has_a_classifier():
    for node in N.PRIMITIVES + (N.Union, N.Intersect, N.Difference, N.Complement, N.Blocks):
        assert node in _RULES, node.__name__


def test_lists_match_states():
    p = pattern("heads")
    layout = lower(p.at(111), 100, 111, 16, 16)
    assert layout.cases == 2
    for c in range(2):
        for row in range(layout.tiles[0]):
            states = layout.states[c, row]
            full = layout.full_indices[c, row, :layout.full_counts[c, row]].tolist()
            part = layout.partial_indices[c, row, :layout.partial_counts[c, row]].tolist()
            ragged = layout.tiles[1] - 1  # 111 % 16 != 0: a FULL last tile is listed PARTIAL
            assert full == [j for j in range(layout.tiles[1]) if states[j] == FULL and j != ragged]
            assert sorted(part) == part
            assert set(part) == {j for j in range(layout.tiles[1]) if states[j] == PARTIAL or
                                 (states[j] == FULL and j == ragged)}
            for j in full + part:
                assert states[j] != EMPTY
        # the transpose lists the same tiles
        pairs = {(r, int(j)) for r in range(layout.tiles[0])
                 for j in layout.full_indices[c, r, :layout.full_counts[c, r]]}
        pairs_t = {(int(i), col) for col in range(layout.tiles[1])
                   for i in layout.full_q_indices[c, col, :layout.full_q_counts[c, col]]}
        assert pairs == pairs_t


def test_pair_count_matches_mask():
    for name in ["bigbird", "longformer", "where-mod", "heads"]:
        p = pattern(name)
        for head in range(p.heads):
            assert pair_count(p.at(232), 200, 232, head, block=32) == \
                int(p.mask(200, 232, head).sum())


class _Counting:
    """Wraps a function of the layout builder and records the elements it is handed."""

    def __init__(self, fn):
        self.fn, self.calls, self.elements = fn, 0, 0

    def __call__(self, expr, *args):
        self.calls += 1
        shapes = [a.shape for a in args if isinstance(a, torch.Tensor)]
        self.elements += torch.broadcast_shapes(*shapes).numel()
        return self.fn(expr, *args)


def _lower_counted(monkeypatch, p, n, block):
    """(layout, tile classifier counter, pair predicate counter) of ``lower`` at n x n; the
    dense reference mask is patched to fail, so no n x n mask can be built."""
    import spattn_dsl.layout.build as build
    import spattn_dsl.semantics.reference as reference

    def no_dense_mask(*args, **kwargs):
        raise AssertionError("lower built the dense reference mask")

    classify_count, allowed_count = _Counting(build.classify), _Counting(build.allowed)
    monkeypatch.setattr(build, "classify", classify_count)
    monkeypatch.setattr(build, "allowed", allowed_count)
    monkeypatch.setattr(reference, "mask", no_dense_mask)
    monkeypatch.setattr(reference, "evaluate", no_dense_mask)
    return lower(p.at(n), n, n, block, block), classify_count, allowed_count


def test_window_layout_at_131072_works_per_tile_not_per_pair(monkeypatch):
    # Speed belongs in benchmarks; here the work is counted: the classifier sees only the
    # tiles near the band (candidates from interval bounds, not the T x T grid, not n x n
    # pairs) and the exact predicate runs on no pair.
    n, block = 131072, 64
    p = pattern(N.Intersect(N.Causal(), N.Window(N.Num(1024))))
    layout, classified, checked = _lower_counted(monkeypatch, p, n, block)
    assert classified.elements <= 18 * (n // block)
    assert checked.elements == 0
    assert layout.full_is_range
    assert int(layout.full_counts.max()) == 15 and int(layout.partial_counts.max()) == 2


def test_exact_predicate_runs_on_unsure_tiles_only(monkeypatch):
    # A `where` with a modulus is not resolved by interval arithmetic: its unsure tiles are
    # checked pair by pair, at most block x block pairs per PARTIAL tile; inside a window the
    # count doubles from n to 2n, where a dense check would quadruple.
    p = pattern(N.Intersect(N.Window(N.Num(100)), pattern("where-mod").expr))
    counts = []
    for n in (2048, 4096):
        layout, _, checked = _lower_counted(monkeypatch, p, n, 64)
        partial = int((layout.states == PARTIAL).sum())
        assert 0 < checked.elements <= partial * 64 * 64 < n * n // 4
        counts.append(checked.elements)
    assert counts[1] <= 2.2 * counts[0]
