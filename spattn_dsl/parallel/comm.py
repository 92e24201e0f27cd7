"""The differentiable exchanges, each one ``all_to_all_single`` with split sizes (NCCL and gloo
both have it). Every backward is the same exchange reversed: gradients go back to the rank
that sent the values and are summed into the positions (or heads) they came from."""
from __future__ import annotations

import math

import torch
import torch.distributed as dist


def all_to_all(pieces: list, shapes: list, group=None) -> list:
    """Send ``pieces[j]`` to rank j; receive from rank j a tensor of ``shapes[j]``."""
    send = torch.cat([p.reshape(-1) for p in pieces]) if pieces else torch.empty(0)
    sizes = [math.prod(s) for s in shapes]
    recv = send.new_empty(sum(sizes))
    dist.all_to_all_single(recv, send.contiguous(), sizes, [p.numel() for p in pieces],
                           group=group)
    return [chunk.view(s) for chunk, s in zip(recv.split(sizes), shapes)]


class ExchangeKV(torch.autograd.Function):
    """Sequence mode: send positions ``send[j]`` (local indices) of K and V to each rank j and
    receive ``recv_counts[j]`` positions from it, concatenated in rank order."""

    @staticmethod
    def forward(ctx, k, v, send, recv_counts, group):
        kv = torch.cat([k, v], -1)
        shape = kv.shape[:2]
        pieces = [kv[:, :, idx] for idx in send]
        got = all_to_all(pieces, [(*shape, c, kv.shape[3]) for c in recv_counts], group)
        ctx.send, ctx.recv_counts, ctx.group = send, recv_counts, group
        ctx.kv_shape, ctx.d = kv.shape, k.shape[3]
        kv_recv = torch.cat(got, 2)
        return kv_recv[..., :ctx.d].contiguous(), kv_recv[..., ctx.d:].contiguous()

    @staticmethod
    def backward(ctx, dk, dv):
        grad = torch.cat([dk, dv], -1)
        shape = ctx.kv_shape
        pieces = list(grad.split(ctx.recv_counts, 2))
        back = all_to_all(pieces, [(*shape[:2], len(idx), shape[3]) for idx in ctx.send],
                          ctx.group)
        total = grad.new_zeros(shape)
        for idx, g in zip(ctx.send, back):
            total.index_add_(2, idx.to(total.device), g)
        return total[..., :ctx.d], total[..., ctx.d:], None, None, None


def _seq_to_heads(x, heads: list, lengths: list, group):
    """``[B, H, n_local, D]`` -> ``[B, len(heads[me]), n, D]``: rank j gets heads ``heads[j]``
    of every position; ``lengths[j]``: positions rank j holds."""
    me = dist.get_rank(group)
    pieces = [x[:, idx] for idx in heads]
    shapes = [(x.shape[0], len(heads[me]), c, x.shape[3]) for c in lengths]
    return torch.cat(all_to_all(pieces, shapes, group), 2)


def _heads_to_seq(y, heads: list, lengths: list, total_heads: int, group):
    """The inverse: ``[B, len(heads[me]), n, D]`` -> ``[B, total_heads, n_local, D]``."""
    me = dist.get_rank(group)
    pieces = list(y.split(lengths, 2))
    shapes = [(y.shape[0], len(idx), lengths[me], y.shape[3]) for idx in heads]
    out = y.new_empty(y.shape[0], total_heads, lengths[me], y.shape[3])
    for idx, got in zip(heads, all_to_all(pieces, shapes, group)):
        out[:, idx] = got
    return out


class SeqToHeads(torch.autograd.Function):
    """Heads mode (Ulysses): trade the sequence split for a head split."""

    @staticmethod
    def forward(ctx, x, heads, lengths, group):
        ctx.heads, ctx.lengths, ctx.group, ctx.total = heads, lengths, group, x.shape[1]
        return _seq_to_heads(x, heads, lengths, group)

    @staticmethod
    def backward(ctx, grad):
        return _heads_to_seq(grad.contiguous(), ctx.heads, ctx.lengths, ctx.total,
                             ctx.group), None, None, None


class HeadsToSeq(torch.autograd.Function):
    """And back: the local heads of the whole sequence -> every head of the local positions."""

    @staticmethod
    def forward(ctx, y, heads, lengths, total_heads, group):
        ctx.heads, ctx.lengths, ctx.group = heads, lengths, group
        return _heads_to_seq(y, heads, lengths, total_heads, group)

    @staticmethod
    def backward(ctx, grad):
        return _seq_to_heads(grad.contiguous(), ctx.heads, ctx.lengths, ctx.group), \
            None, None, None, None
