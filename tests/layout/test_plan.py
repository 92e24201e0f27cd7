"""The plan pass against the reference mask: every allowed pair in exactly one term, FULL
tiles fully allowed, the union of the terms the pattern; the examples' waste at n = 8192."""
import random
from pathlib import Path

import pytest
import torch

import spattn_dsl
from spattn_dsl.ir import nodes as N
from spattn_dsl.ir.evaluate import head_count, select_head
from spattn_dsl.layout import pairs
from spattn_dsl.layout.classify import PARTIAL
from spattn_dsl.layout.plan import disjuncts, plan_case, plan_pattern, term_pairs

from .patterns import PRIMITIVES, num, pattern, random_tree

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SHAPES = [(5, 5), (111, 111), (40, 130)]
TILES = {"terms": (16, 16), "auto": (32, 16)}


def coverage(term, n_q: int, n_k: int) -> torch.Tensor:
    """int ``[n_q, n_k]``: how often the kernels of one term count each pair (FULL tiles
    without a predicate, PARTIAL tiles with the term's predicate, holes never)."""
    layout = term.layout
    bm, bn = layout.block_m, layout.block_n
    t_q, t_k = layout.states.shape[1:]
    rows = term.q_gather if term.q_gather is not None else torch.arange(t_q * bm)
    cols = term.k_gather if term.k_gather is not None else torch.arange(t_k * bn)
    rows = torch.where(rows < n_q, rows, -1).to(torch.int64)[:t_q * bm].view(t_q, bm)
    cols = torch.where(cols < n_k, cols, -1).to(torch.int64)[:t_k * bn].view(t_k, bn)
    out = torch.zeros(n_q + 1, n_k + 1, dtype=torch.int64)  # the last row/column: holes
    offset = n_k - n_q
    for i, j in (layout.states[0] != 0).nonzero().tolist():
        r, c = rows[i][:, None], cols[j][None, :]
        real = (r >= 0) & (c >= 0)
        if int(layout.states[0, i, j]) == PARTIAL:
            real &= pairs.allowed(term.expr, r.clamp(min=0) + offset, c.clamp(min=0), n_k)
        out[torch.where(r >= 0, r, n_q).expand_as(real)[real],
            torch.where(c >= 0, c, n_k).expand_as(real)[real]] += 1
    return out[:n_q, :n_k]


def check_plan(plans, concrete, n_q, n_k):
    for case_plan in plans:
        expr = select_head(concrete, case_plan.case)
        mask = pattern(expr).mask(n_q, n_k).to(torch.int64)
        total = sum(coverage(t, n_q, n_k) for t in case_plan.terms)
        assert torch.equal(total, mask), f"case {case_plan.case}: terms do not tile the mask"
        for term in case_plan.terms:
            assert term_pairs(term, n_q, n_k) == int(coverage(term, n_q, n_k).sum())


STRUCTURED = {
    "stride7": N.Intersect(N.Causal(), N.Stride(num(7))),
    "stride16-window": N.Intersect(N.Window(num(40)), N.Stride(num(16))),
    "dilated4-3": N.Dilated(num(4), num(3)),
    "fixed": PRIMITIVES["fixed"],
    "longformer": PRIMITIVES["longformer"],
    "tokens": N.Union(N.Band(num(2), num(2)), PRIMITIVES["tokens"]),
    "sinks": N.Intersect(N.Causal(), N.Union(N.Sink(num(4)), N.Window(num(9)))),
    "difference": N.Difference(N.Union(N.Stride(num(5)), N.Summary(num(8), num(2))),
                               N.Window(num(6))),
    "heads": PRIMITIVES["heads"],
    "global-rows": N.Union(N.Causal(), N.Global(num(3))),
    "stride-random": N.Union(N.Intersect(N.Causal(), N.Stride(num(4))), N.Random(num(2), num(1))),
}


@pytest.mark.parametrize("name", list(STRUCTURED))
@pytest.mark.parametrize("n_q,n_k", SHAPES, ids=[f"nq{a}-nk{b}" for a, b in SHAPES])
@pytest.mark.parametrize("mode", ["terms", "auto"])
def test_plan_terms_tile_the_mask(name, n_q, n_k, mode):
    concrete = pattern(STRUCTURED[name]).at(n_k)
    check_plan(plan_pattern(concrete, n_q, n_k, [TILES[mode]], mode), concrete, n_q, n_k)


@pytest.mark.parametrize("seed", range(16))
def test_plan_random_patterns_tile_the_mask(seed):
    rng = random.Random(seed)
    expr = random_tree(rng)
    n_k = rng.choice([5, 37, 64, 111, 130])
    n_q = rng.choice([n_k, max(1, n_k // 3)])
    concrete = pattern(expr).at(n_k)
    check_plan(plan_pattern(concrete, n_q, n_k, [(16, 16)], "terms"), concrete, n_q, n_k)


def test_plan_splits_structure_into_kinds():
    concrete = pattern(STRUCTURED["longformer"]).at(200)
    kinds = [t.kind for t in plan_case(concrete, 200, 200, 16, 16, "terms").terms]
    assert kinds == ["grid", "columns", "rows"]
    stride = pattern(STRUCTURED["stride7"]).at(200)
    assert [t.kind for t in plan_case(stride, 200, 200, 16, 16, "terms").terms] == ["residue"]
    assert len(disjuncts(PRIMITIVES["fixed"])) == 2


def test_plan_auto_never_costs_more_than_the_grid():
    for name in STRUCTURED:
        concrete = pattern(STRUCTURED[name]).at(130)
        for case in range(head_count(concrete)):
            expr = select_head(concrete, case)
            auto = plan_case(expr, 130, 130, 16, 16, "auto")
            grid = plan_case(expr, 130, 130, 16, 16, "grid")
            assert auto.cost() <= grid.cost()


def test_merged_costs_less_exactly_where_one_loop_visits_every_row():
    """The one-loop kernel is cheaper on terms without gather vectors to read (rows that are
    ranges of tiles or lists, residue classes), the same on gathered columns and rows."""
    for text, mergeable in (("causal & window(40)", True), ("causal", True),
                            ("causal & (window(20) | sink(4))", True)):
        concrete = spattn_dsl.loads(f"pattern p {{ {text} }}").pattern("p").at(300)
        plan = plan_case(select_head(concrete, 0), 300, 300, 16, 16, "grid")
        assert [t.mergeable for t in plan.terms] == [mergeable]
        assert (plan.cost(merged=True) < plan.cost()) is mergeable
        assert plan.cost(merged=True) <= plan.cost()
    stride = plan_case(pattern(STRUCTURED["stride7"]).at(200), 200, 200, 16, 16, "terms")
    assert [t.kind for t in stride.terms] == ["residue"] and stride.terms[0].mergeable
    assert stride.cost(merged=True) < stride.cost()
    tokens = plan_case(pattern(STRUCTURED["tokens"]).at(200), 200, 200, 16, 16, "terms")
    gathered = [t for t in tokens.terms if t.kind in ("columns", "rows")]
    assert gathered and not any(t.mergeable for t in gathered)
    assert all(t.cost(merged=True) == t.cost() for t in gathered)


# Acceptance (issue 11): pairs computed / pairs allowed at n = 8192, the tiles the cost model
# picks among the GPU space's sizes for head_dim 128. Longformer's bound was 1.35, met only by a
# plan of terms that measured 1.9x slower on an H200 than the grid kept here (waste 1.36;
# benchmarks/RESULTS.md, issue 13).
WASTE = [("sparse_transformer", "strided", 2.0), ("sparse_transformer", "fixed", 1.5),
         ("longformer", "longformer_dilated", 1.4), ("longformer", "longformer", 1.37),
         ("streaming_llm", "streaming", 1.2), ("gemma3", "gemma_local", 1.2),
         ("bigbird", "bigbird", 1.05), ("mistral", "mistral_swa", 1.05),
         ("prefix_lm", "prefix_lm", 1.05)]


@pytest.mark.parametrize("file,name,bound", WASTE, ids=[w[1] for w in WASTE])
def test_plan_waste_of_examples(file, name, bound):
    from spattn_dsl.runtime.artifacts import plan_summary

    p = spattn_dsl.load(EXAMPLES / f"{file}.spattn").pattern(name)
    summary = plan_summary(p, 8192, 128)
    in_terms = sum(t["pairs_allowed"] for case in summary["cases"] for t in case["terms"])
    assert summary["pairs_allowed"] == in_terms  # the plan is exact at full size too
    assert summary["pairs_computed"] / summary["pairs_allowed"] <= bound


@pytest.mark.parametrize("file,name", [("sparse_transformer", "strided"),
                                       ("sparse_transformer", "fixed"),
                                       ("longformer", "longformer_dilated")])
def test_plan_pass_checks_few_pairs(monkeypatch, file, name):
    """No n x n work: the exact predicate is evaluated on O(n * tile) pairs (the undecided
    tiles along boundaries), counted at n = 8192 (the bound, 8 x n x 64 pairs per head case,
    is 1/16 of n x n)."""
    import spattn_dsl.layout.build as build
    import spattn_dsl.layout.plan as plan

    evaluated = []

    def counting(expr, q, k, n, tables=None):
        result = pairs.allowed(expr, q, k, n, tables)
        evaluated.append(torch.broadcast_shapes(q.shape, k.shape).numel())
        return result

    monkeypatch.setattr(plan, "allowed", counting)
    monkeypatch.setattr(build, "allowed", counting)
    n = 8192
    p = spattn_dsl.load(EXAMPLES / f"{file}.spattn").pattern(name)
    plans = plan_pattern(p.at(n), n, n, [(64, 64)])
    assert any(t.kind != "grid" for case in plans for t in case.terms)
    assert sum(evaluated) <= 8 * n * 64 * len(plans)
