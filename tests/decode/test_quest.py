"""Dynamic patterns in decoding (docs/language.md section 5, docs/python.md): ``attn(q, cache)`` selects among the cached units
as ``select`` does on the full history, and attends under that selection's mask. Oracle: float64
attention under ``pattern.mask(selection=select(pattern, q, k_all))``, per sequence (ragged
lengths). With a GPU every test runs the decode kernels on it. Without one, the Quest tests
run them under the interpreter (conftest sets ``TRITON_INTERPRET``); the others take the CPU
reference path (``reference_path``: the same selection, plan and mask, without the
interpreter's time)."""
from pathlib import Path

import pytest
import torch

import spattn_dsl

from .oracle import DEVICE, append

B, KVH, H, D, PS = 2, 2, 4, 16, 16
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
QUEST = "causal & (window(16) | topk(2, unit = 16, by = minmax))"


def load(body):
    return spattn_dsl.loads(f"pattern dyn {{ {body} }}").pattern("dyn")


def history(seed, n=140):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, heads, n, D, generator=g).to(DEVICE) for heads in (KVH, KVH, H)]


def queries(qs, lengths, counts):
    m = max(counts)
    q = torch.zeros(B, H, m, D, device=DEVICE)
    for b, c in enumerate(counts):
        q[b, :, m - c:] = qs[b, :, lengths[b] - c:lengths[b]]
    return q


def check_step(p, attn, cache, ks, vs, qs, lengths, counts, scores=None):
    """One decode step against the float64 oracle; returns the per-sequence selections."""
    q = queries(qs, lengths, counts)
    m = q.shape[2]
    out, lse, chosen = attn.forward(q, cache, scores=scores)
    out, lse, qs, ks, vs = out.cpu(), lse.cpu(), qs.cpu(), ks.cpu(), vs.cpu()
    for b in range(B):
        n, c = lengths[b], counts[b]
        qb, kb, vb = qs[b:b + 1, :, n - c:n], ks[b:b + 1, :, :n], vs[b:b + 1, :, :n]
        sb = None if scores is None else scores[b:b + 1, :, m - c:, :-(-n // 16)].cpu()  # unit 16
        want = spattn_dsl.select(p, qb, kb, scores=sb)
        for got, ref in zip(chosen[b].terms, want.terms):
            assert got.indices.cpu().equal(ref.indices), (b, n, got.indices, ref.indices)
        mask = p.mask(c, n, selection=want)[0]
        k = kb[0].double().repeat_interleave(H // KVH, 0)
        v = vb[0].double().repeat_interleave(H // KVH, 0)
        s = (qb[0].double() @ k.transpose(-1, -2)) * D ** -0.5
        s = s.masked_fill(~mask, float("-inf"))
        ref_lse = torch.logsumexp(s, -1)
        ref = torch.softmax(s, -1).nan_to_num(0.0) @ v
        assert torch.allclose(out[b, :, m - c:].double(), ref, atol=1e-5), (b, n)
        assert torch.allclose(lse[b, :, m - c:].double(), ref_lse, atol=1e-5), (b, n)
        assert not out[b, :, :m - c].any()
    return chosen


@pytest.fixture
def interpret(monkeypatch):
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.fixture
def reference_path(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")


def test_quest_decode_steps_equal_float64_attention_under_the_selection(interpret):
    """The Quest-like pattern, page-sized units (the pages' key min / max), ragged lengths,
    GQA, several single steps and a ragged multi-query append, kernels under the interpreter."""
    p = load(QUEST)
    attn = spattn_dsl.compile(p)
    ks, vs, qs = history(0)
    cache = spattn_dsl.KVCache(p, B, KVH, D, page_size=PS, device=DEVICE)
    lengths = append(cache, ks, vs, [0, 0], [70, 101])
    picked = set()
    for _ in range(3):
        lengths = append(cache, ks, vs, lengths, [1, 1])
        chosen = check_step(p, attn, cache, ks, vs, qs, lengths, [1, 1])
        picked |= {tuple(s.terms[0].indices.flatten().tolist()) for s in chosen}
    assert len(picked) > 2  # the choice depends on the query and the head
    lengths = append(cache, ks, vs, lengths, [3, 2])
    check_step(p, attn, cache, ks, vs, qs, lengths, [3, 2])
    assert cache.held.tolist() == lengths  # a dynamic pattern keeps every position


def test_examples_quest(interpret):
    """examples/quest.spattn (chunk(page) | topk(pages, unit = page, by = minmax)) at a small
    budget, equal-length sequences, two steps."""
    p = spattn_dsl.load(EXAMPLES / "quest.spattn").pattern("quest", page=16, pages=2)
    attn = spattn_dsl.compile(p)
    ks, vs, qs = history(1)
    cache = spattn_dsl.KVCache(p, B, KVH, D, page_size=PS, device=DEVICE)
    lengths = append(cache, ks, vs, [0, 0], [90, 90])
    for _ in range(2):
        lengths = append(cache, ks, vs, lengths, [1, 1])
        check_step(p, attn, cache, ks, vs, qs, lengths, [1, 1])


@pytest.mark.parametrize("body", [
    "causal & (window(16) | topk(1, unit = 32, by = minmax))",  # two pages per unit
    "causal & (window(8) | topk(2, unit = 8, by = minmax, shared = group))",  # half pages
    "causal & (sink(2) | topk(3, unit = 16, rows = 2, by = mean_key))",
    "causal & (window(4) | vertical(3, probe = 2) | slash(2, probe = 2))",
])
def test_other_terms_read_the_cached_keys(reference_path, body):
    p = load(body)
    attn = spattn_dsl.compile(p)
    ks, vs, qs = history(2)
    cache = spattn_dsl.KVCache(p, B, KVH, D, page_size=PS, device=DEVICE)
    lengths = append(cache, ks, vs, [0, 0], [60, 77])
    lengths = append(cache, ks, vs, lengths, [1, 1])
    check_step(p, attn, cache, ks, vs, qs, lengths, [1, 1])
    lengths = append(cache, ks, vs, lengths, [3, 3])
    check_step(p, attn, cache, ks, vs, qs, lengths, [3, 3])


def test_scores_in_decoding(reference_path):
    """by = scores takes scores=[batch, heads or 1, m, units] (each sequence reads its own
    units)."""
    p = load("causal & (window(4) | topk(2, unit = 16, by = scores))")
    attn = spattn_dsl.compile(p)
    ks, vs, qs = history(3)
    cache = spattn_dsl.KVCache(p, B, KVH, D, page_size=PS, device=DEVICE)
    lengths = append(cache, ks, vs, [0, 0], [50, 80])
    lengths = append(cache, ks, vs, lengths, [2, 2])
    scores = torch.randn(B, 1, 2, 6, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    check_step(p, attn, cache, ks, vs, qs, lengths, [2, 2], scores=scores)
    q = queries(qs, lengths, [2, 2])
    out, chosen = attn(q, cache, scores=scores, return_selection=True)
    assert out.equal(attn.forward(q, cache, scores=scores)[0]) and len(chosen) == B
    with pytest.raises(ValueError, match="scores"):
        attn(queries(qs, lengths, [2, 2]), cache)
    with pytest.raises(ValueError, match="units"):
        attn(queries(qs, lengths, [2, 2]), cache, scores=scores[..., :5])


def test_prefill_through_the_cache_is_the_dynamic_attention(reference_path):
    """More than 64 new queries on a cache holding the whole history: the compiled dynamic
    attention on the gathered keys, its selection split per sequence."""
    p = load(QUEST)
    attn = spattn_dsl.compile(p)
    ks, vs, qs = history(5)
    cache = spattn_dsl.KVCache(p, B, KVH, D, page_size=PS, device=DEVICE)
    lengths = append(cache, ks, vs, [0, 0], [70, 70])
    check_step(p, attn, cache, ks, vs, qs, lengths, [70, 70])
