"""``random(r, seed = s, fresh = 1)`` (docs/language.md 2.2.1): draws only among the keys of a
row where a draw adds a pair. The reference mask is checked against the definition written
out independently (envelope minus rest, Floyd over the candidates); layouts, kernels, the
analysis and documents against the reference; ``fresh = 0`` is plain ``random``."""
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import spattn_dsl as sp
from spattn_dsl import PatternError
from spattn_dsl.analysis.rows import rows_of
from spattn_dsl.analysis.terms import block_terms, layer_terms, pairs_per_query
from spattn_dsl.codegen import attention_reference
from spattn_dsl.ir import nodes as N
from spattn_dsl.layout.pairs import allowed
from spattn_dsl.runtime import compile
from spattn_dsl.semantics.random import mix, random_keys
from spattn_dsl.semantics.reference import mask as reference_mask

from ..runtime.test_attention import inputs, rel_err, run_poisoned
from ..runtime.test_backward import assert_close, grads, reference_grads

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TILES = dict(block_m=16, block_n=16, num_warps=1, num_stages=1)


def pattern(text: str):
    return sp.loads(f"pattern p {{ {text} }}").pattern("p")


def floyd(r, seed, q, m):
    """Floyd's draws of min(r, m) distinct indices in [0, m) for row q, one by one."""
    taken = []
    for j in range(m - min(r, m), m):
        t = int(mix(seed, np.array([q]), j)[0] % np.uint64(j + 1))
        taken.append(j if t in taken else t)
    return taken


def by_definition(rest: str, r: int, seed: int, n: int) -> torch.Tensor:
    """``rest | random(r, seed, fresh = 1)`` at the top level, from docs/language.md 2.2.1:
    candidates = not rest (the envelope is dense), draw i is the i-th candidate."""
    base = pattern(rest).mask(n)
    out = base.clone()
    for q in range(n):
        candidates = (~base[q]).nonzero().squeeze(1).tolist()
        for i in floyd(r, seed, q, len(candidates)):
            out[q, candidates[i]] = True
    return out


def test_bigbird_blocks_see_exactly_their_eight_blocks():
    bigbird = sp.load(EXAMPLES / "bigbird.spattn").pattern("bigbird")
    concrete = bigbird.at(4096)
    assert isinstance(concrete, N.Blocks) and concrete.size == 64
    grid = reference_mask(concrete.body, 64, 64)  # the block grid: 64 blocks of 64 tokens
    counts = grid.sum(1)
    # rows 0 and 1 are global; rows 3..62 (the 60 interior rows) have 3 window blocks apart
    # from the 2 global ones, so 3 + 2 + 3 distinct blocks; rows 2 and 63 have 4 static blocks
    assert counts[:2].tolist() == [64, 64]
    assert counts[3:63].tolist() == [3 + 2 + 3] * 60
    assert counts[2].item() == counts[63].item() == 4 + 3
    static = reference_mask(pattern("band(1, 1) | global(first = 2)").at(64), 64, 64)
    assert torch.equal(grid & static, static)
    # the token mask is the block grid expanded
    tokens = bigbird.mask(4096)
    assert torch.equal(tokens, grid.repeat_interleave(64, 0).repeat_interleave(64, 1))
    # plain random(3) (fresh = 0) draws from all blocks: 17 interior rows see fewer than 8
    plain = pattern("blocks(64) { band(1, 1) | global(first = 2) | random(3) }")
    plain_counts = plain.mask(4096)[::64, ::64].sum(1)
    assert int((plain_counts[3:63] < 8).sum()) == 17


@pytest.mark.parametrize("rest,r,seed,n", [("window(3)", 3, 1, 23), ("none", 4, 7, 9),
                                           ("stride(3) | sink(2)", 5, 2, 20),
                                           ("band(2, 0) | global(first = 1)", 30, 0, 17)])
def test_reference_follows_the_definition(rest, r, seed, n):
    got = pattern(f"{rest} | random({r}, seed = {seed}, fresh = 1)").mask(n)
    assert torch.equal(got, by_definition(rest, r, seed, n))


def test_only_candidates_and_all_of_them_when_fewer():
    n = 24
    mask = pattern("causal & (window(4) | random(3, seed = 2, fresh = 1))").mask(n)
    window = pattern("causal & window(4)").mask(n)
    assert [int(row.sum()) for row in mask] == [min(q + 1, 4 + 3) for q in range(n)]
    assert not torch.triu(mask, 1).any()  # never a future key: the envelope is causal
    assert torch.equal(mask & window, window)
    assert mask[5, :2].all()  # row 5: only keys 0 and 1 remain, both taken


def test_with_every_key_a_candidate_the_draws_are_randoms():
    for r, seed, n in [(3, 0, 40), (5, 11, 17), (20, 3, 12)]:
        fresh = pattern(f"random({r}, seed = {seed}, fresh = 1)").mask(n)
        assert torch.equal(fresh, pattern(f"random({r}, seed = {seed})").mask(n))
    keys = random_keys(3, 0, np.arange(10), 10)
    assert keys.shape == (10, 3)  # fresh = 0: the generator itself is unchanged


def test_fresh_zero_is_plain_random_text_and_masks():
    plain = pattern("blocks(64) { band(1, 1) | global(first = 2) | random(3, seed = 5) }")
    zero = pattern("blocks(64) { band(1, 1) | global(first = 2) | random(3, seed = 5, fresh = 0) }")
    assert plain.text == zero.text == \
        "blocks(64) { band(1, 1) | global(first = 2) | random(3, seed = 5) }"
    assert plain.hash == zero.hash and torch.equal(plain.mask(640), zero.mask(640))
    fresh = pattern("random(3, fresh = 1)")
    assert fresh.text == "random(3, seed = 0, fresh = 1)" and fresh.hash != pattern("random(3)").hash
    assert pattern(fresh.text).text == fresh.text


def test_contexts_are_the_innermost_blocks_or_heads_body():
    n = 32
    # one term twice in a context: one set of draws
    twice = pattern("window(2) | random(3, fresh = 1) | random(3, fresh = 1)").mask(n)
    assert torch.equal(twice, pattern("window(2) | random(3, fresh = 1)").mask(n))
    # each heads body is its own context
    heads = pattern("heads { window(3) | random(2, fresh = 1); random(2, fresh = 1) }")
    assert torch.equal(heads.mask(n, head=0), pattern("window(3) | random(2, fresh = 1)").mask(n))
    assert torch.equal(heads.mask(n, head=1), pattern("random(2)").mask(n))
    # a term inside blocks does not see the outer causal: its candidates are on the block grid
    outer = pattern("causal & blocks(4) { band(1, 0) | random(2, fresh = 1) }").mask(n)
    inner = pattern("blocks(4) { band(1, 0) | random(2, fresh = 1) }").mask(n)
    assert torch.equal(outer, inner & pattern("causal").mask(n))
    # the other fresh terms are none in the rest: a second term does not avoid the first
    two = pattern("window(2) | random(1, seed = 1, fresh = 1) | random(1, seed = 2, fresh = 1)")
    one = pattern("window(2) | random(1, seed = 1, fresh = 1)").mask(n)
    other = pattern("window(2) | random(1, seed = 2, fresh = 1)").mask(n)
    assert torch.equal(two.mask(n), one | other)


def test_errors():
    with pytest.raises(PatternError, match="fresh must be 0 or 1"):
        pattern("random(3, fresh = 2)")
    with pytest.raises(PatternError, match="heads"):
        pattern("heads { causal; dense } & (window(2) | random(3, fresh = 1))").mask(8)


FRESH = ["blocks(8) { band(1, 1) | global(first = 2) | random(3, seed = 5, fresh = 1) }",
         "causal & (window(4) | random(3, seed = 2, fresh = 1))",
         "causal & (window(3) | random(2, fresh = 1)) | blocks(8) { random(1, fresh = 1) }"]


@pytest.mark.parametrize("text", FRESH)
def test_pair_predicate_equals_reference(text):
    p = pattern(text)
    n = 50
    expr = p.at(n)
    q = torch.arange(n)[:, None]
    k = torch.arange(n)[None, :]
    assert torch.equal(allowed(expr, q, k, n), p.mask(n))


@pytest.mark.parametrize("text", FRESH)
def test_kernels_equal_reference(text):
    p = pattern(text)
    attn = compile(p, **TILES)
    q, k, v = inputs(1, 2, 40, 111, 16, seed=0)  # n_q < n_k: bottom-right aligned rows
    out, _ = run_poisoned(attn, q, k, v)
    ref, _ = attention_reference(p, q.cpu(), k.cpu(), v.cpu())
    assert rel_err(out, ref) < 1e-5


def test_kernels_gradients_equal_reference():
    p = pattern(FRESH[0])
    attn = compile(p, **TILES)
    q, k, v = inputs(1, 2, 33, 70, 16, seed=3)
    grad_out = torch.randn_like(q)
    assert_close(grads(attn, q, k, v, grad_out), reference_grads(p, q, k, v, grad_out), 1e-4)


ANALYSED = ["causal & (window(4) | random(3, seed = 2, fresh = 1))",
            "window(3) | random(2, seed = 1, fresh = 1) | sink(2)",
            "band(1, 1) | global(first = 2) | random(3, seed = 5, fresh = 1)"]


@pytest.mark.parametrize("text", ANALYSED)
def test_analysis_draws_equal_reference(text):
    """The analysis's own forms of the layer (terms, and rows of intervals plus extra keys)
    hold exactly the reference's pairs; in blocks(8), on the block grid."""
    n = 48
    p = pattern(text)
    want = p.mask(n).numpy()
    expr = p.at(n)
    q, k = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    got = np.zeros((n, n), dtype=bool)
    terms = layer_terms(expr, n)
    for term in terms:
        got |= term.contains(q, k)
    assert (got == want).all()
    assert (pairs_per_query(terms, n) == want.sum(1)).all()
    rows = rows_of(expr, n)
    dense = (k < rows.pre[:, None]) | ((k >= rows.lo[:, None]) & (k <= rows.hi[:, None]))
    if rows.extra is not None:
        for j in range(rows.extra.shape[1]):
            dense |= k == rows.extra[:, j:j + 1]
    assert (dense == want).all()
    blocked = pattern(f"blocks(8) {{ {text} }}")
    grid = reference_mask(blocked.at(8 * n).body, n, n).numpy()
    assert (pairs_per_query(block_terms(blocked.at(8 * n), 8 * n), n) == grid.sum(1)).all()


def test_analysis_of_bigbird_at_4096():
    bigbird = sp.load(EXAMPLES / "bigbird.spattn").pattern("bigbird")
    report = sp.analyze(bigbird, 4096)
    assert report.exact and report.diameter == 2
    assert report.density == pytest.approx(float(bigbird.mask(4096).double().mean()))


def test_documents_draw_per_document():
    p = pattern(FRESH[1])
    ids = torch.tensor([0] * 20 + [1] * 13 + [2] * 30)
    got = p.mask(63, documents=ids)
    want = torch.zeros(63, 63, dtype=torch.bool)
    start = 0
    for length in (20, 13, 30):
        want[start:start + length, start:start + length] = p.mask(length)
        start += length
    assert torch.equal(got, want)
    attn = compile(p, **TILES)
    q, k, v = inputs(1, 2, 63, 63, 16, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fresh draws per document: the reference path
        out = attn(q, k, v, documents=ids[None].to(q.device))
    ref, _ = attention_reference(p, q.cpu(), k.cpu(), v.cpu(), documents=ids[None])
    assert rel_err(out, ref) < 1e-5
