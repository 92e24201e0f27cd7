"""KVCache bookkeeping: memory as page counts, page reuse, key bounds, clear errors."""
import math

import pytest
import torch

import spattn_dsl


def pattern(text):
    return spattn_dsl.loads(f"pattern p {{ {text} }}").pattern("p")


@pytest.mark.parametrize("w, page_size", [(100, 16), (4096, 64)])
def test_a_window_cache_holds_at_most_its_window_in_pages(w, page_size):
    """Appending N positions (big chunks, then single steps) to ``causal & window(w)``:
    after each single step every sequence holds <= ceil(w / page_size) + 1 pages (its w
    newest positions and the rest of their first page), and the pool stops growing."""
    cache = spattn_dsl.KVCache(pattern(f"causal & window({w})"), 2, 1, 16, page_size=page_size)
    chunk = torch.zeros(2, 1, 8192, 16)
    bound = math.ceil(w / page_size) + 1
    for _ in range(12):  # 98,304 positions
        cache.append(chunk, chunk, counts=[8192, 8000])  # ragged
        one = torch.zeros(2, 1, 1, 16)
        capacity = cache.capacity
        for step in range(3):
            cache.append(one, one)
            assert cache.pages_held.max() <= bound
            assert all(w <= h < w + page_size for h in cache.held.tolist())
        assert cache.capacity == capacity  # freed pages are reused
    assert cache.length.tolist() == [12 * 8195, 12 * 8003]
    assert cache.capacity <= 2 * 2 * (math.ceil((w + 8191) / page_size) + 1)  # pool doubling


def test_sinks_and_a_window_keep_the_sink_page():
    cache = spattn_dsl.KVCache(pattern("causal & (sink(4) | window(40))"), 1, 1, 16, page_size=16)
    k = torch.arange(1000.0).reshape(1, 1, 1000, 1).expand(1, 1, 1000, 16)
    cache.append(k[:, :, :999], k[:, :, :999])
    cache.append(k[:, :, 999:], k[:, :, 999:])
    assert cache._logical[0][0] == 0 and cache.pages_held[0] <= 2 + 4
    _, v, positions = cache.gather()
    held = positions[0] >= 0
    assert set(positions[0][held].tolist()) >= set(range(4)) | set(range(960, 1000))
    assert torch.equal(v[0, 0, held, 0], positions[0][held].float())  # values at their slots


def test_key_bounds_are_kept_per_page():
    cache = spattn_dsl.KVCache(pattern("causal"), 1, 2, 16, page_size=16)
    k = torch.randn(1, 2, 40, 16)
    cache.append(k[:, :, :30], k[:, :, :30])
    cache.append(k[:, :, 30:], k[:, :, 30:])
    for page, j in zip(cache._pages[0], cache._logical[0]):
        keys = k[0, :, j * 16:(j + 1) * 16]
        assert torch.equal(cache.key_min[page], keys.amin(dim=1))
        assert torch.equal(cache.key_max[page], keys.amax(dim=1))


def test_clear_errors():
    p = pattern("causal & window(8)")
    cache = spattn_dsl.KVCache(p, 2, 2, 16, page_size=16)
    good = torch.zeros(2, 2, 3, 16)
    with pytest.raises(ValueError, match="k must be"):
        cache.append(torch.zeros(2, 1, 3, 16), good)
    with pytest.raises(TypeError, match="v has dtype"):
        cache.append(good, good.double())
    with pytest.raises(ValueError, match="on meta"):
        cache.append(good, torch.zeros(2, 2, 3, 16, device="meta"))
    with pytest.raises(ValueError, match="counts"):
        cache.append(good, good, counts=[1, 4])
    with pytest.raises(ValueError, match="page_size"):
        spattn_dsl.KVCache(p, 2, 2, 16, page_size=24)
    with pytest.raises(ValueError, match="kv_heads"):
        spattn_dsl.KVCache(p, 2, 0, 16)
    cache.append(good, good)
    q = torch.zeros(2, 4, 1, 16)
    with pytest.raises(ValueError, match="made for pattern"):
        spattn_dsl.compile(pattern("causal"))(q, cache)
    attn = spattn_dsl.compile(p)
    with pytest.raises(ValueError, match="4 query rows"):
        attn(torch.zeros(2, 4, 4, 16), cache)
    with pytest.raises(ValueError, match="heads a multiple"):
        attn(torch.zeros(2, 3, 1, 16), cache)
    with pytest.raises(TypeError, match="takes no v"):
        attn(q, cache, q)
    assert cache.length.tolist() == [3, 3] and cache.held.tolist() == [3, 3]
