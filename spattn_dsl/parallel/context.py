"""``ContextParallel``: attention over a sequence split across the ranks of a process group
(docs/python.md, context parallel).

``mode="sequence"``: every rank holds one contiguous chunk of positions (queries, keys and
values), chunks balanced by allowed pairs (``plan.exchange_plan``). Each rank receives exactly
the keys and values its queries may attend (``plan.needs``) in one all-to-all, attends its
queries to its own plus the received keys (``local.masked_attention``: exact, on global
positions), and in the backward sends dK/dV back along the same lists.

``mode="heads"`` (DeepSpeed Ulysses): chunks of equal token counts; one all-to-all trades the
sequence split for a head split, the one-device kernels (``spattn_dsl.compile``) run on the
whole sequence of the rank's heads, and one all-to-all trades back. Key/value heads (whole
GQA groups) are dealt to ranks by their allowed pairs, each rank the same number.

``documents`` (int64 ``[batch, n]``) and ``key_padding`` (bool ``[batch, n]``, False =
padding) are given for the *whole* sequence, the same on every rank (they are small). With
documents, sequence mode exchanges the keys of the documents each rank's queries lie in (a
document is its own sequence, so the pattern's plan does not apply across boundaries).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from .comm import ExchangeKV, HeadsToSeq, SeqToHeads
from .local import PairMask, masked_attention
from .plan import Chunks, ExchangePlan, document_needs, even_bounds, exchange_plan, row_pairs

MODES = ("sequence", "heads")


@dataclass
class HeadsPlan(Chunks):
    """Heads mode's split: ``bounds`` (equal token chunks), ``heads[r]`` / ``kv_heads[r]``
    (the global query and key/value heads rank r attends), ``pairs`` (allowed pairs rank r
    computes, over its heads)."""

    heads: list
    kv_heads: list
    pairs: torch.Tensor

    @property
    def received(self) -> torch.Tensor:
        """Positions (of the rank's own heads) rank i receives from rank j."""
        out = self.held.expand(self.world, self.world).clone()
        return out.fill_diagonal_(0)

    def bytes(self, head_dim: int, dtype=torch.bfloat16, batch: int = 1) -> dict:
        """Forward bytes per rank: q, k, v of its heads from every peer, the output back."""
        size = batch * head_dim * torch.empty((), dtype=dtype).element_size()
        held = self.held
        inbound = torch.tensor([len(h) + 2 * len(kv) for h, kv in zip(self.heads, self.kv_heads)])
        out_heads = torch.tensor([len(h) for h in self.heads])
        others = held.sum() - held
        received = others * inbound * size + held * (out_heads.sum() - out_heads) * size
        return {"sent": received.clone(), "received": received}  # the exchange is symmetric


class ContextParallel:
    """Attention over a sequence split across the ranks of ``group`` (default: the world)."""

    def __init__(self, pattern, group=None, mode: str = "sequence", seq_len: int | None = None):
        if not hasattr(pattern, "at") or not hasattr(pattern, "heads"):
            raise TypeError(f"ContextParallel needs a Pattern, got {type(pattern).__name__}")
        if getattr(pattern, "dynamic", False):
            raise ValueError(f"pattern '{pattern.name}' has dynamic terms (docs/language.md §5): "
                             "context parallel does not take them yet")
        if mode not in MODES:
            raise ValueError(f"mode must be 'sequence' or 'heads', got {mode!r}")
        if not dist.is_initialized():
            raise RuntimeError("ContextParallel needs torch.distributed.init_process_group() first")
        self.pattern, self.group, self.mode = pattern, group, mode
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self.n = seq_len
        self._plans: dict = {}
        self._compiled: dict = {}

    # ----------------------------------------------------------------- the split
    def plan_for(self, n: int, heads: int | None = None, kv_heads: int | None = None):
        """The sequence mode's ``ExchangePlan`` at length n, or heads mode's ``HeadsPlan``
        (for ``heads`` query and ``kv_heads`` key/value heads; default one per head case)."""
        if self.mode == "sequence":
            key = ("sequence", n)
            if key not in self._plans:
                self._plans[key] = exchange_plan(self.pattern, n, self.world)
            return self._plans[key]
        heads = heads or self.pattern.heads * self.world
        kv_heads = kv_heads or heads
        key = ("heads", n, heads, kv_heads)
        if key not in self._plans:
            self._plans[key] = self._heads_plan(n, heads, kv_heads)
        return self._plans[key]

    @property
    def plan(self):
        """The plan at the current length (set by ``shard``, ``seq_len`` or ``attention``)."""
        if self.n is None:
            raise ValueError("the sequence length is not known yet: pass seq_len= or call shard()")
        return self.plan_for(self.n, *self._last_heads()) if self.mode == "heads" else \
            self.plan_for(self.n)

    def _last_heads(self):
        return getattr(self, "_heads_seen", (None, None))

    def _bounds(self, n: int) -> list:
        return self.plan_for(n).bounds if self.mode == "sequence" else even_bounds(n, self.world)

    @property
    def positions(self) -> torch.Tensor:
        """The global positions this rank holds (int64, ascending)."""
        bounds = self._bounds(self.plan.n)
        return torch.arange(bounds[self.rank], bounds[self.rank + 1])

    def shard(self, x: torch.Tensor, dim: int = 2) -> torch.Tensor:
        """This rank's positions of a full tensor (a view along ``dim``)."""
        self.n = x.shape[dim]
        bounds = self._bounds(self.n)
        return x.narrow(dim, bounds[self.rank], bounds[self.rank + 1] - bounds[self.rank])

    def unshard(self, x_local: torch.Tensor, dim: int = 2) -> torch.Tensor:
        """The full tensor from every rank's part (all-gather; not differentiable)."""
        if self.n is None:
            self.n = self._total_length(x_local.shape[dim])
        bounds = self._bounds(self.n)
        longest = max(b - a for a, b in zip(bounds, bounds[1:]))
        x = x_local.detach().movedim(dim, 0)
        padded = x.new_zeros((longest, *x.shape[1:]))
        padded[:x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded.contiguous(), group=self.group)
        sizes = np.diff(bounds)
        return torch.cat([p[:s] for p, s in zip(parts, sizes)]).movedim(0, dim)

    def _total_length(self, local: int) -> int:
        total = torch.tensor([local])
        dist.all_reduce(total, group=self.group)
        return int(total)

    # ----------------------------------------------------------------- attention
    def attention(self, q_local, k_local, v_local, scale=None, key_padding=None, documents=None):
        """This rank's rows of the attention output (``[B, H, n_local, D]``), differentiable;
        equal to one-device attention on the gathered tensors."""
        from ..runtime.attention import check_inputs

        scale = check_inputs(q_local, k_local, v_local, scale)
        if not q_local.shape[2] == k_local.shape[2]:
            raise ValueError("q_local and k_local must hold the same positions")
        if self.n is None:
            self.n = self._total_length(q_local.shape[2])
        n = self.n
        bounds = self._bounds(n)
        a, b = bounds[self.rank], bounds[self.rank + 1]
        if q_local.shape[2] != b - a:
            raise ValueError(f"rank {self.rank} holds positions {a}..{b - 1} ({b - a}) of "
                             f"n = {n}, but q_local has {q_local.shape[2]} (use cp.shard)")
        documents, key_padding = self._whole(documents, key_padding, q_local, n)
        if self.mode == "heads":
            return self._heads_attention(q_local, k_local, v_local, scale, key_padding, documents)
        return self._sequence_attention(q_local, k_local, v_local, scale, key_padding, documents)

    def _whole(self, documents, key_padding, q, n):
        from ..semantics.documents import check_documents

        if documents is not None:
            documents = check_documents(documents, n, batch=q.shape[0]).to(torch.int64)
        if key_padding is not None:
            if tuple(key_padding.shape) != (q.shape[0], n) or key_padding.dtype != torch.bool:
                raise ValueError(f"key_padding must be a bool [batch, n] = [{q.shape[0]}, {n}] "
                                 "tensor for the whole sequence (False = padding)")
        return documents, key_padding

    def _sequence_attention(self, q, k, v, scale, key_padding, documents):
        plan: ExchangePlan = self.plan_for(self.n)
        a, b = plan.chunk(self.rank)
        needs = plan.needs if documents is None else document_needs(documents, plan.bounds)
        edges = torch.tensor(plan.bounds[1:-1])
        mine = needs[self.rank]
        recv_counts = torch.bincount(torch.bucketize(mine, edges, right=True),
                                     minlength=self.world).tolist()
        send = [(keys[(keys >= a) & (keys < b)] - a).to(k.device) for keys in needs]
        send[self.rank] = send[self.rank][:0]
        k_recv, v_recv = ExchangeKV.apply(k, v, send, recv_counts, self.group)
        keys = torch.cat([torch.arange(a, b), mine])
        mask = PairMask(self.pattern, self.n, torch.arange(a, b), keys, documents, key_padding)
        return masked_attention(q, torch.cat([k, k_recv], 2), torch.cat([v, v_recv], 2), mask,
                                scale)

    def _heads_attention(self, q, k, v, scale, key_padding, documents):
        self._heads_seen = (q.shape[1], k.shape[1])
        plan: HeadsPlan = self.plan_for(self.n, q.shape[1], k.shape[1])
        lengths = np.diff(plan.bounds).tolist()
        q_h = SeqToHeads.apply(q, plan.heads, lengths, self.group)
        k_h = SeqToHeads.apply(k, plan.kv_heads, lengths, self.group)
        v_h = SeqToHeads.apply(v, plan.kv_heads, lengths, self.group)
        out = self._local_heads(q_h, k_h, v_h, plan.heads[self.rank], q.shape[1] // k.shape[1],
                                scale, key_padding, documents)
        return HeadsToSeq.apply(out, plan.heads, lengths, q.shape[1], self.group)

    def _local_heads(self, q, k, v, heads, group, scale, key_padding, documents):
        """One-device attention of the rank's heads; a head keeps its case in the pattern
        (global head h uses case h mod cases), so per-head patterns run case by case."""
        cases = self.pattern.heads
        kw = dict(scale=scale, key_padding=key_padding, documents=documents)
        if cases == 1:
            return self._compiled_case(None)(q, k, v, **kw)
        out = torch.zeros_like(q)
        for c in range(cases):
            rows = [i for i, h in enumerate(heads) if h % cases == c]
            if rows:
                kv = [i // group for i in rows]  # local query head i reads local KV head i // group
                out[:, rows] = self._compiled_case(c)(q[:, rows], k[:, kv], v[:, kv], **kw)
        return out

    def _compiled_case(self, case):
        if case not in self._compiled:
            from ..ir.evaluate import select_head
            from ..ir.program import Pattern
            from ..runtime import compile as compile_pattern

            pattern = self.pattern if case is None else Pattern(
                select_head(self.pattern.expr, case), name=f"{self.pattern.name}[case {case}]")
            self._compiled[case] = compile_pattern(pattern)
        return self._compiled[case]

    def _heads_plan(self, n: int, heads: int, kv_heads: int) -> HeadsPlan:
        if heads % kv_heads:
            raise ValueError(f"query heads ({heads}) must be a multiple of key/value heads "
                             f"({kv_heads})")
        if kv_heads % self.world:
            raise ValueError(f"heads mode splits the {kv_heads} key/value heads among "
                             f"{self.world} ranks: they must divide evenly (use "
                             "mode='sequence', or a world size that divides the heads)")
        group = heads // kv_heads
        per_case = row_pairs(self.pattern, n).sum(1)
        cost = [sum(int(per_case[(j * group + g) % self.pattern.heads]) for g in range(group))
                for j in range(kv_heads)]
        kv_lists = deal(cost, self.world)
        q_lists = [[j * group + g for j in kv for g in range(group)] for kv in kv_lists]
        pairs = torch.tensor([sum(cost[j] for j in kv) for kv in kv_lists])
        return HeadsPlan(n, even_bounds(n, self.world), q_lists, kv_lists, pairs)


def deal(cost: list, world: int) -> list:
    """Item indices dealt to ``world`` ranks, the same number each: heaviest first, each to
    the lightest rank with room (equal costs go round-robin)."""
    per_rank = len(cost) // world
    loads, lists = [0] * world, [[] for _ in range(world)]
    for j in sorted(range(len(cost)), key=lambda j: -cost[j]):
        r = min((r for r in range(world) if len(lists[r]) < per_rank), key=lambda r: loads[r])
        lists[r].append(j)
        loads[r] += cost[j]
    return [sorted(items) for items in lists]
