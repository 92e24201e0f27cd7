"""A ``transformers`` Cache whose layers are spattn ``KVCache``s (used through ``spattn_dsl.hf``).

``update`` appends the step's keys and values to the layer's ``KVCache`` and returns the cache
itself in place of the key and value tensors; spattn's registered attention function sees it
and runs ``attn(q, cache)``. So generation holds only the live positions of each layer's
pattern. ``get_seq_length`` and ``get_mask_sizes`` report the logical length (every token so
far, offset 0), which is how spattn's positions count.
"""
from __future__ import annotations

from transformers.cache_utils import Cache, CacheLayerMixin

from .cache import KVCache


class SpattnLayer(CacheLayerMixin):
    """One decoder layer's cache: a ``KVCache`` made on the first ``update``."""

    is_sliding = False

    def __init__(self, pattern, page_size: int = 64):
        super().__init__()
        self.pattern = pattern
        self.page_size = page_size
        self.cache: KVCache | None = None

    def lazy_initialization(self, key_states, value_states) -> None:
        batch, kv_heads, _, head_dim = key_states.shape
        self.cache = KVCache(self.pattern, batch, kv_heads, head_dim, dtype=key_states.dtype,
                             device=key_states.device, page_size=self.page_size)
        self.device = key_states.device
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.cache.append(key_states, value_states)
        return self.cache, self.cache

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_seq_length(self) -> int:
        return 0 if self.cache is None else int(self.cache.length[0])

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.cache = None
        self.is_initialized = False

    def offload(self):
        pass

    def prefetch(self):
        pass

    def reorder_cache(self, beam_idx) -> None:
        raise NotImplementedError("the spattn KV cache does not reorder sequences (beam "
                                  "search); use greedy or sampling")


class SpattnCache(Cache):
    """Per-layer spattn caches: ``patterns`` one Pattern per decoder layer."""

    def __init__(self, patterns, page_size: int = 64):
        super().__init__(layers=[SpattnLayer(p, page_size) for p in patterns])

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("the spattn KV cache cannot crop (it frees dead positions)")
