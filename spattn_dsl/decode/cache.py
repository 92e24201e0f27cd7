"""``KVCache``: the paged keys and values of one layer, holding only live positions
(docs/python.md, KV cache).

Storage is a pool of pages (``[pages, kv_heads, page_size, head_dim]`` for keys and values);
each sequence has a page table: its held pages, in position order. A page holds the positions
``[j * page_size, (j + 1) * page_size)`` of its sequence (its logical index ``j``), so a
position's slot is ``position % page_size`` and no per-slot position is stored.

Freeing. Each held slot keeps its key's ``last_query`` (``semantics.liveness``; int64, on the
host, so freeing never waits for the device). The queries that may still come are those of
the newest append, so at the start of an append to a sequence of length ``L`` every page whose
slots all have ``last_query < L`` is freed and goes back to the pool for later appends. Slots
not yet written count as live, so the page being filled is never freed. After a one-position
append a ``causal & window(w)`` sequence holds the positions ``t - w .. t - 1``: at most
``ceil(w / page_size) + 1`` pages. An append of ``c`` positions holds what its ``c`` queries
may attend (``w - 1 + c`` positions for that window) until the next append.

Ragged appends: ``append(k, v, counts=None)`` with ``k`` ``[batch, kv_heads, m, head_dim]``;
``counts`` (``[batch]`` ints, default all ``m``) says how many positions each sequence adds:
its LAST ``counts[b]`` rows (left padding), so that every sequence's newest position is the
last row, as the queries of ``attn(q, cache)`` are bottom-right aligned.

Per page and KV head the cache also keeps each key dimension's minimum and maximum
(``key_min`` / ``key_max``, fp32), updated on append: what a ``minmax`` (Quest-like) dynamic
selection scores pages by.
"""
from __future__ import annotations

import torch

from ..semantics.liveness import UNBOUNDED, last_query

DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class KVCache:
    """The cached keys and values of one attention layer under ``pattern``
    (docs/python.md, KV cache)."""

    is_spattn_kv_cache = True  # how compile()'s attention recognises ``attn(q, cache)``

    def __init__(self, pattern, batch: int, kv_heads: int, head_dim: int,
                 dtype=torch.float32, device="cpu", page_size: int = 64):
        if not hasattr(pattern, "at") or not hasattr(pattern, "live"):
            raise TypeError(f"KVCache: pattern must be a Pattern, got {type(pattern).__name__}")
        for name, value in (("batch", batch), ("kv_heads", kv_heads), ("head_dim", head_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"KVCache: {name} must be an integer >= 1, got {value!r}")
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 16 \
                or page_size > 256 or page_size & (page_size - 1):
            raise ValueError(f"KVCache: page_size must be a power of two from 16 to 256, "
                             f"got {page_size!r}")
        if dtype not in DTYPES:
            raise TypeError(f"KVCache: dtype must be float16, bfloat16 or float32, got {dtype}")
        self.pattern = pattern
        self.batch, self.kv_heads, self.head_dim = batch, kv_heads, head_dim
        self.dtype, self.page_size = dtype, page_size
        self.device = torch.empty(0, device=device).device  # "cuda" -> "cuda:0", as tensors say
        self._lengths = [0] * batch
        self._last_counts = [0] * batch  # positions added by the newest append
        self._pages = [[] for _ in range(batch)]  # page ids, in position order
        self._logical = [[] for _ in range(batch)]  # their logical indices
        self._free: list[int] = []
        self._tables = None  # the page tables as device tensors, rebuilt when pages change
        self._grow(0)

    # ------------------------------------------------------------------ state
    @property
    def length(self) -> torch.Tensor:
        """int64 ``[batch]``: positions appended so far per sequence."""
        return torch.tensor(self._lengths, dtype=torch.int64)

    @property
    def held(self) -> torch.Tensor:
        """int64 ``[batch]``: positions stored now per sequence (written slots of held pages)."""
        ps = self.page_size
        return torch.tensor([sum(min(ps, n - j * ps) for j in logical)
                             for logical, n in zip(self._logical, self._lengths)],
                            dtype=torch.int64)

    @property
    def pages_held(self) -> torch.Tensor:
        """int64 ``[batch]``: pages in each sequence's page table."""
        return torch.tensor([len(p) for p in self._pages], dtype=torch.int64)

    @property
    def capacity(self) -> int:
        """Pages in the pool (held or free): what the cache's memory grows with."""
        return self.k_pages.shape[0]

    @property
    def last_counts(self) -> list:
        return list(self._last_counts)

    def lengths_list(self) -> list:
        return list(self._lengths)

    def tables(self):
        """(page ids int32 ``[batch, P]``, logical indices int64 ``[batch, P]``) on the device,
        P the most pages any sequence holds (at least 1); padding: page 0, logical -1."""
        if self._tables is None:
            width = max(1, max(len(p) for p in self._pages))
            ids = torch.zeros(self.batch, width, dtype=torch.int32)
            logical = torch.full((self.batch, width), -1, dtype=torch.int64)
            for b, (pages, js) in enumerate(zip(self._pages, self._logical)):
                ids[b, :len(pages)] = torch.tensor(pages, dtype=torch.int32)
                logical[b, :len(js)] = torch.tensor(js, dtype=torch.int64)
            self._tables = (ids.to(self.device), logical.to(self.device))
        return self._tables

    # ----------------------------------------------------------------- append
    def append(self, k, v, counts=None) -> None:
        """Add the next positions: ``k``, ``v`` ``[batch, kv_heads, m, head_dim]``; ``counts``
        (optional ``[batch]`` ints in ``0..m``): sequence ``b`` adds its last ``counts[b]``
        rows."""
        self._check(k, "k")
        self._check(v, "v")
        if k.shape != v.shape:
            raise ValueError(f"KVCache.append: k and v must have the same shape, got "
                             f"{tuple(k.shape)} and {tuple(v.shape)}")
        m = k.shape[2]
        counts = self._check_counts(counts, m)
        for b in range(self.batch):
            self._free_dead(b, self._lengths[b])
        positions = [torch.arange(n, n + c) for n, c in zip(self._lengths, counts)]
        pos = torch.cat(positions)
        if len(pos):
            batch_of = torch.cat([torch.full((c,), b) for b, c in enumerate(counts)])
            rows = torch.cat([torch.arange(m - c, m) for c in counts])
            page = torch.cat([self._place(b, p) for b, p in enumerate(positions)])
            self._write(page, pos % self.page_size, batch_of, rows, k, v)
            unique, inverse = torch.unique(pos, return_inverse=True)  # sequences repeat
            self._last[page, pos % self.page_size] = last_query(self.pattern, unique)[inverse]
        self._lengths = [n + c for n, c in zip(self._lengths, counts)]
        self._last_counts = counts

    def _check(self, t, name: str) -> None:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"KVCache.append: {name} must be a torch.Tensor, got "
                            f"{type(t).__name__}")
        expected = (self.batch, self.kv_heads, "m", self.head_dim)
        if t.dim() != 4 or t.shape[0] != self.batch or t.shape[1] != self.kv_heads or \
                t.shape[3] != self.head_dim:
            raise ValueError(f"KVCache.append: {name} must be [batch, kv_heads, m, head_dim] = "
                             f"{list(expected)}, got {list(t.shape)}")
        if t.dtype != self.dtype:
            raise TypeError(f"KVCache.append: {name} has dtype {t.dtype}, the cache holds "
                            f"{self.dtype}")
        if t.device != self.device:
            raise ValueError(f"KVCache.append: {name} is on {t.device}, the cache on "
                             f"{self.device}")

    def _check_counts(self, counts, m: int) -> list:
        if counts is None:
            return [m] * self.batch
        if isinstance(counts, torch.Tensor):
            if counts.dtype == torch.bool or counts.is_floating_point():
                raise TypeError(f"KVCache.append: counts must be integers, got {counts.dtype}")
            counts = counts.tolist()
        counts = list(counts)
        if len(counts) != self.batch or any(isinstance(c, bool) or not isinstance(c, int)
                                            or not 0 <= c <= m for c in counts):
            raise ValueError(f"KVCache.append: counts must be {self.batch} integers from 0 to "
                             f"m = {m}, got {counts}")
        return counts

    def _free_dead(self, b: int, length: int) -> None:
        """Free sequence ``b``'s pages whose every slot is dead for queries at >= length."""
        pages = self._pages[b]
        if not pages:
            return
        dead = (self._last[pages].amax(dim=1) < length).tolist()
        if not any(dead):
            return
        self._free += [p for p, d in zip(pages, dead) if d]
        self._pages[b] = [p for p, d in zip(pages, dead) if not d]
        self._logical[b] = [j for j, d in zip(self._logical[b], dead) if not d]
        self._tables = None

    def _place(self, b: int, positions: torch.Tensor) -> torch.Tensor:
        """The page id of each new position of sequence ``b``, taking pages as needed."""
        if not len(positions):
            return positions
        first, last = int(positions[0]) // self.page_size, int(positions[-1]) // self.page_size
        held = self._logical[b]
        start = first + 1 if held and held[-1] == first else first  # the page being filled
        for j in range(start, last + 1):
            self._pages[b].append(self._take())
            self._logical[b].append(j)
        if start <= last:
            self._tables = None
        span = self._pages[b][len(self._pages[b]) - (last - first + 1):]
        return torch.tensor(span, dtype=torch.int64)[positions // self.page_size - first]

    def _take(self) -> int:
        if not self._free:
            self._grow(max(self.batch, self.capacity))  # doubling: amortised O(1) per page
        page = self._free.pop()
        self._last[page] = UNBOUNDED  # unwritten slots count as live
        self.key_min[page] = float("inf")
        self.key_max[page] = float("-inf")
        return page

    def _grow(self, extra: int) -> None:
        shape = (extra, self.kv_heads, self.page_size, self.head_dim)
        new = torch.zeros(shape, dtype=self.dtype, device=self.device)
        old = getattr(self, "k_pages", None)
        self.k_pages = new if old is None else torch.cat([old, new])
        self.v_pages = new.clone() if old is None else torch.cat([self.v_pages, new])
        bounds = torch.zeros(extra, self.kv_heads, self.head_dim, device=self.device)
        self.key_min = bounds if old is None else torch.cat([self.key_min, bounds])
        self.key_max = bounds.clone() if old is None else torch.cat([self.key_max, bounds])
        last = torch.full((extra, self.page_size), UNBOUNDED, dtype=torch.int64)
        self._last = last if old is None else torch.cat([self._last, last])
        start = 0 if old is None else old.shape[0]
        self._free += list(range(start + extra - 1, start - 1, -1))  # lowest ids first

    def _write(self, page, slot, batch_of, rows, k, v) -> None:
        page_d, slot_d = page.to(self.device), slot.to(self.device)
        keys = k[batch_of.to(self.device), :, rows.to(self.device)]  # [N, kv_heads, head_dim]
        self.k_pages[page_d, :, slot_d] = keys
        self.v_pages[page_d, :, slot_d] = v[batch_of.to(self.device), :, rows.to(self.device)]
        index = page_d[:, None, None].expand(keys.shape).contiguous()  # (expanded: a slow path)
        self.key_min.scatter_reduce_(0, index, keys.float(), "amin")
        self.key_max.scatter_reduce_(0, index, keys.float(), "amax")

    # ------------------------------------------------------------------ misc
    def gather(self):
        """(keys, values, positions): every held slot, ``[batch, kv_heads, P * page_size,
        head_dim]`` and int64 ``[batch, P * page_size]`` (-1 where a slot holds no position)."""
        ids, logical = self.tables()
        ps = self.page_size
        k = self.k_pages[ids.long()].permute(0, 2, 1, 3, 4).flatten(2, 3)
        v = self.v_pages[ids.long()].permute(0, 2, 1, 3, 4).flatten(2, 3)
        pos = logical[:, :, None] * ps + torch.arange(ps, device=self.device)
        lengths = torch.tensor(self._lengths, device=self.device)[:, None, None]
        pos = torch.where((logical[:, :, None] >= 0) & (pos < lengths), pos, -1)
        return k, v, pos.flatten(1)

    def __repr__(self) -> str:
        return (f"KVCache('{self.pattern.name}', batch={self.batch}, kv_heads={self.kv_heads}, "
                f"head_dim={self.head_dim}, {self.dtype}, page_size={self.page_size}, "
                f"length={self._lengths}, pages held={[len(p) for p in self._pages]})")
