"""Decoding with a KV cache (docs/python.md, KV cache): ``KVCache`` keeps only the positions the
pattern can still reach, in pages; ``attn(q, cache)`` reads only the allowed held pages."""
from .attend import attend
from .cache import KVCache

__all__ = ["KVCache", "attend"]
