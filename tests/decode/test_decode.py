"""attn(q, cache) against float64 attention over the full history: 1, 3 and 16 new queries,
ragged lengths and ragged appends, GQA, head cases; the kernels on the GPU when there is one,
else under the interpreter."""
import pytest
import torch

import spattn_dsl
from spattn_dsl.decode.attend import reference

from .oracle import DEVICE, append, full_history

B, KVH, H, D, PS = 2, 2, 4, 16, 16
PATTERNS = {
    "window|sink|stride": "pattern p { causal & (window(20) | sink(3) | stride(16)) }",
    "heads: window; dilated": "pattern p { heads { causal & window(9); causal & dilated(6, 3) } }",
    "blocks": "pattern p { causal & blocks(8) { window(2) | global(first = 1) } }",
}


def pattern(name):
    return spattn_dsl.loads(PATTERNS[name]).pattern("p")


def history(seed, n=120):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, heads, n, D, generator=g).to(DEVICE) for heads in (KVH, KVH, H)]


def check(p, out, lse, qs, ks, vs, lengths, counts, m):
    out, lse = out.cpu(), lse.cpu()
    for b in range(B):
        n, real = lengths[b], min(counts[b], m)
        want, want_lse = full_history(p, qs[b, :, n - real:n], ks[b], vs[b], n, D ** -0.5)
        assert torch.allclose(out[b, :, m - real:].double(), want, atol=1e-5), (b, n)
        assert torch.allclose(lse[b, :, m - real:].double(), want_lse, atol=1e-5), (b, n)
        assert not out[b, :, :m - real].any()  # padding rows of a ragged append: 0


@pytest.mark.parametrize("name", PATTERNS)
@pytest.mark.parametrize("m", [1, 3, 16])
def test_decode_equals_float64_attention_on_the_full_history(name, m):
    p = pattern(name)
    ks, vs, qs = history(m)
    cache = spattn_dsl.KVCache(p, B, KVH, D, page_size=PS, device=DEVICE)
    lengths = append(cache, ks, vs, [0, 0], [37, 52])  # ragged prompts
    for _ in range(5):  # single steps, so that pages are freed before the checked step
        lengths = append(cache, ks, vs, lengths, [1, 1])
    counts = [m, max(1, m // 2)]  # a ragged append where m > 1
    lengths = append(cache, ks, vs, lengths, counts)
    q = torch.zeros(B, H, m, D, device=DEVICE)
    for b, c in enumerate(counts):
        q[b, :, m - c:] = qs[b, :, lengths[b] - c:lengths[b]]
    out, lse = spattn_dsl.compile(p).forward(q, cache)
    check(p, out, lse, qs, ks, vs, lengths, counts, m)


def test_sequences_that_append_nothing_get_zero_rows():
    p = pattern("window|sink|stride")
    ks, vs, qs = history(5)
    cache = spattn_dsl.KVCache(p, B, KVH, D, page_size=PS, device=DEVICE)
    lengths = append(cache, ks, vs, [0, 0], [20, 9])
    lengths = append(cache, ks, vs, lengths, [0, 2])
    q = torch.cat([torch.zeros(1, H, 2, D, device=DEVICE), qs[1:, :, lengths[1] - 2:lengths[1]]])
    out, lse = spattn_dsl.compile(p).forward(q, cache)
    check(p, out, lse, qs, ks, vs, lengths, [0, 2], 2)
    assert torch.isneginf(lse[0]).all()


def test_prefill_of_many_queries_uses_the_full_history():
    p = pattern("window|sink|stride")
    ks, vs, qs = history(6, n=80)
    cache = spattn_dsl.KVCache(p, B, KVH, D, page_size=PS, device=DEVICE)
    lengths = append(cache, ks, vs, [0, 0], [70, 70])
    out, lse = spattn_dsl.compile(p).forward(qs[:, :, :70], cache)
    check(p, out, lse, qs, ks, vs, lengths, [70, 70], 70)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_caches(dtype):
    p = pattern("window|sink|stride")
    ks, vs, qs = history(7, n=60)
    cache = spattn_dsl.KVCache(p, B, KVH, D, dtype=dtype, page_size=PS, device=DEVICE)
    cache.append(ks[:, :, :50].to(dtype), vs[:, :, :50].to(dtype))
    cache.append(ks[:, :, 50:51].to(dtype), vs[:, :, 50:51].to(dtype))
    out, lse = spattn_dsl.compile(p).forward(qs[:, :, 50:51].to(dtype), cache)
    assert out.dtype == dtype
    for b in range(B):
        want, want_lse = full_history(p, qs[b, :, 50:51].to(dtype), ks[b].to(dtype),
                                      vs[b].to(dtype), 51, D ** -0.5)
        assert torch.allclose(out[b].cpu().double(), want, atol=2e-2)
        assert torch.allclose(lse[b].cpu().double(), want_lse, atol=2e-2)


def test_long_decode_never_frees_a_live_key():
    """Several hundred single-position steps, ragged lengths: every step against float64 over
    the full history (the torch path over the held slots; the kernel every 100 steps)."""
    p = spattn_dsl.loads("pattern p { causal & (window(24) | sink(2) | "
                         "chunk(40) | dilated(5, 7)) }").pattern("p")
    attn = spattn_dsl.compile(p)
    steps = 300
    ks, vs, qs = history(8, n=steps + 40)
    cache = spattn_dsl.KVCache(p, B, KVH, D, page_size=PS, device=DEVICE)
    lengths = append(cache, ks, vs, [0, 0], [3, 30])
    for step in range(steps):
        lengths = append(cache, ks, vs, lengths, [1, 1])
        q = torch.stack([qs[b, :, n - 1:n] for b, n in enumerate(lengths)])
        run = attn.forward if step % 100 == 99 else (lambda q, c: reference(q, c, D ** -0.5))
        out, lse = run(q, cache)
        check(p, out, lse, qs, ks, vs, lengths, [1, 1], 1)
    # and the cache did free: sinks' page, the chunk's, the window's and the dilation's
    assert cache.held.max() < 120 and cache.pages_held.max() <= 7


def test_a_freed_live_key_would_be_caught():
    """The oracle check fails when a held live page is dropped (the test can fail)."""
    p = pattern("window|sink|stride")
    ks, vs, qs = history(9)
    cache = spattn_dsl.KVCache(p, B, KVH, D, page_size=PS, device=DEVICE)
    lengths = append(cache, ks, vs, [0, 0], [40, 40])
    lengths = append(cache, ks, vs, lengths, [1, 1])
    cache._pages[0].pop(0), cache._logical[0].pop(0)  # drop the sinks' page
    cache._tables = None
    out, lse = reference(qs[:, :, 40:41], cache, D ** -0.5)
    with pytest.raises(AssertionError):
        check(p, out, lse, qs, ks, vs, lengths, [1, 1], 1)
