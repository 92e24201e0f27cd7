"""Train a tiny Llama with its sequence split across ranks (context parallel), on CPUs.

    torchrun --nproc-per-node 2 examples/train_context_parallel.py            # gloo on CPUs
    torchrun --nproc-per-node 2 examples/train_context_parallel.py --mode heads

Every rank holds the same model and one chunk of every sequence (``cp.shard``): its tokens,
their global positions (for RoPE) and their next-token targets. The attention runs through
transformers' attention interface as ``spattn_dsl.ContextParallel(pattern).attention``, which
fetches the keys and values each rank's queries may attend from the other ranks (sequence
mode) or trades the sequence split for a head split (heads mode). Gradients of the weights
are summed over ranks, as data parallelism would; the data and the loss are those of
``train_tiny_llama.py`` (a repeated random motif: the loss falls well below log(vocab)).
"""
from __future__ import annotations

import argparse
import math
import warnings

import torch
import torch.distributed as dist

import spattn_dsl as sp
from spattn_dsl import hf

DEFAULT_PATTERN = "causal & (window(32) | global(first = 2))"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pattern", default=DEFAULT_PATTERN, help="pattern text")
    parser.add_argument("--mode", choices=("sequence", "heads"), default="sequence")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--motif", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    return parser.parse_args(argv)


def register_context_parallel(name: str, cp) -> str:
    """transformers' attention interface -> ``cp.attention`` on this rank's chunk."""
    from transformers import AttentionInterface, AttentionMaskInterface

    def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kw):
        out = cp.attention(query, key, value, scale=scaling, key_padding=attention_mask)
        return out.transpose(1, 2).contiguous(), None

    AttentionInterface.register(name, attention)
    AttentionMaskInterface.register(name, hf.key_padding_mask)  # no 4D mask: the pattern rules
    return name


def tiny_llama(vocab: int, seq_len: int, attn_implementation: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, hidden_size=128, intermediate_size=256,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=seq_len, attention_dropout=0.0)
    return LlamaForCausalLM._from_config(config, attn_implementation=attn_implementation)


def train(args) -> list[float]:
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same initial weights on every rank
    pattern = sp.loads(f"pattern p() {{ {args.pattern} }}").pattern("p")
    cp = sp.ContextParallel(pattern, mode=args.mode, seq_len=args.seq_len)
    model = tiny_llama(args.vocab, args.seq_len, register_context_parallel("spattn_cp", cp))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    generator = torch.Generator().manual_seed(1)  # the same batches on every rank
    if rank == 0:
        print(f"pattern: {args.pattern}   mode: {args.mode}   ranks: {world}   positions held: "
              f"{cp.plan.held.tolist()}   loss of guessing: {math.log(args.vocab):.3f}")
    losses = []
    for step in range(1, args.steps + 1):
        motifs = torch.randint(0, args.vocab, (args.batch, args.motif), generator=generator)
        ids = motifs.repeat(1, math.ceil(args.seq_len / args.motif))[:, :args.seq_len]
        targets = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -100)], 1)
        positions = torch.arange(args.seq_len).expand_as(ids)
        logits = model(input_ids=cp.shard(ids, 1), position_ids=cp.shard(positions, 1)).logits
        total = (targets != -100).sum()
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), cp.shard(targets, 1).flatten(),
                                                 ignore_index=-100, reduction="sum") / total
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for p in model.parameters():  # every rank's share of the loss reaches every weight
            dist.all_reduce(p.grad)
        optimizer.step()
        whole = loss.detach().clone()
        dist.all_reduce(whole)
        losses.append(whole.item())
        if rank == 0 and (step == 1 or step % 10 == 0):
            print(f"step {step:4d}  loss {whole.item():.3f}", flush=True)
    return losses


def main(argv=None):
    warnings.filterwarnings("ignore", message="spattn: tensors on the CPU")
    args = parse_args(argv)
    dist.init_process_group("gloo")  # CPUs; on GPUs: NCCL and .cuda() tensors (not wired here)
    try:
        losses = train(args)
        if dist.get_rank() == 0:
            print(f"loss: first {losses[0]:.3f}, last {losses[-1]:.3f}")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
