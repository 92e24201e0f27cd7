"""Layouts and plans at long sequences: work and memory in proportion to the visited tiles
(counted, never timed), the closed-form pair count, and the stated size limit."""
import sys

import pytest
import torch

import spattn_dsl.layout.build as build
import spattn_dsl.layout.plan as plan
from spattn_dsl.ir import nodes as N
from spattn_dsl.layout import lower, pair_count
from spattn_dsl.layout.classify import LayoutLimitError

from .patterns import PRIMITIVES, num, pattern

classify = sys.modules["spattn_dsl.layout.classify"]  # the package's name is the function


class _Tiles:
    """Wraps ``classify_codes`` and counts the tiles it is asked to classify."""

    def __init__(self, fn):
        self.fn, self.tiles = fn, 0

    def __call__(self, expr, grid, codes, *args):
        self.tiles += len(codes)
        return self.fn(expr, grid, codes, *args)


@pytest.fixture
def counted(monkeypatch):
    counter = _Tiles(build.classify_codes)
    monkeypatch.setattr(build, "classify_codes", counter)
    monkeypatch.setattr(plan, "classify_codes", counter)
    return counter


def test_window_layout_at_2_20_classifies_only_its_band(counted):
    n, block = 1 << 20, 128
    p = pattern(N.Intersect(N.Causal(), N.Window(num(16))))
    layout = lower(p.at(n), n, n, block, block)
    t = n // block
    assert counted.tiles <= 2 * t                       # the band, not the t x t grid
    assert layout.states is None                        # no dense grid kept at this size
    assert int(layout.visited_tiles().sum()) == 2 * t - 1
    assert layout.full_indices.shape[-1] == 1 and layout.partial_indices.shape[-1] <= 2
    assert pair_count(p.at(n), n, n) == 16 * n - 120


STRUCTURED = {
    "longformer": PRIMITIVES["longformer"],
    "bigbird64": N.Blocks(num(64), N.Union(N.Union(N.Band(num(1), num(1)), N.Global(num(2))),
                                           N.Random(num(3), num(0)))),
    "sinks-window": N.Intersect(N.Causal(), N.Union(N.Sink(num(4)), N.Window(num(256)))),
    "random2-window": N.Union(N.Intersect(N.Causal(), N.Window(num(64))), N.Random(num(2), num(1))),
    "chunk": N.Intersect(N.Causal(), N.Chunk(num(512))),
}


@pytest.mark.parametrize("name", list(STRUCTURED))
def test_plan_at_2_18_classifies_in_proportion_to_visited_tiles(counted, name):
    # no dense [query tiles x key tiles] grid on the way: the classified candidates stay
    # within a small factor of the tiles the chosen and rejected plans visit (a stride is
    # left out: on the token grid it visits a quarter of the causal triangle, genuinely)
    n, block = 1 << 18, 64
    expr = pattern(STRUCTURED[name]).at(n)
    case = plan.plan_case(expr, n, n, block, block, mode="terms")
    grid = plan.plan_case(expr, n, n, block, block, mode="grid")
    visited = sum(t.visited_tiles for t in case.terms) + grid.terms[0].visited_tiles
    rows = n // block
    assert counted.tiles <= 4 * visited + 4 * rows, (counted.tiles, visited)
    assert counted.tiles < rows * rows // 8


@pytest.mark.parametrize("lo,hi", [(0, 15), (-3, 7), (-40, -2), (5, 200), (-(1 << 60), 1 << 60)])
@pytest.mark.parametrize("n_q,n_k", [(63, 63), (40, 111), (1, 17)])
def test_band_pairs_match_the_reference_mask(lo, hi, n_q, n_k):
    q = torch.arange(n_k - n_q, n_k)[:, None]
    k = torch.arange(n_k)[None, :]
    want = int(((q - k >= lo) & (q - k <= hi)).sum())
    assert build.band_pairs(n_q, n_k, lo, hi) == want


def test_too_many_tiles_is_refused_before_any_work(monkeypatch):
    monkeypatch.setattr(classify, "MAX_TILES_PER_SIDE", 64)
    p = pattern(N.Intersect(N.Causal(), N.Window(num(16))))
    with pytest.raises(LayoutLimitError, match="more than 64 query or key tiles"):
        lower(p.at(65 * 16), 65 * 16, 65 * 16, 16, 16)
    assert lower(p.at(64 * 16), 64 * 16, 64 * 16, 16, 16).tiles == (64, 64)


def test_cheapest_skips_configs_too_large_to_build(monkeypatch):
    from spattn_dsl.codegen.render import TileConfig
    from spattn_dsl.runtime.lowering import cheapest

    monkeypatch.setattr(classify, "MAX_TILES_PER_SIDE", 64)
    p = pattern(N.Intersect(N.Causal(), N.Window(num(16))))
    small, wide = TileConfig(16, 16, 4, 3), TileConfig(32, 32, 4, 3)
    n = 64 * 32
    assert cheapest(p, n, n, [small, wide]) == wide
    with pytest.raises(LayoutLimitError):
        cheapest(p, n, n, [small])
