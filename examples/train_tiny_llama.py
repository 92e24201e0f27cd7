"""Train a tiny Llama whose attention is a spattn pattern, through the Hugging Face backend.

The model is built from a config with random weights (nothing is downloaded). The data is
synthetic: each sequence repeats a random motif, so a model that attends to the previous copy
of the motif (within the pattern's window) can predict the rest, and the loss falls well below
log(vocab) = the loss of guessing.

    python examples/train_tiny_llama.py                    # 2-core CPU: about 15 s (150 steps)
    python examples/train_tiny_llama.py --pattern "causal & window(16)" --steps 100
    python examples/train_tiny_llama.py --packed           # several documents a row (CPU: 25 s)

``--packed`` packs documents of random lengths into each row, as DataCollatorWithFlattening
does (position ids restart at 0 in each document, the first label of each is -100): the
pattern then applies to every document on its own (spattn's ``documents``).

On a CUDA GPU it runs spattn's generated Triton kernels forward and backward; on a CPU it uses
the reference attention (or the kernels under the Triton interpreter if TRITON_INTERPRET=1).
"""
from __future__ import annotations

import argparse
import math
import os
import time
import warnings

import torch

from spattn_dsl import hf

DEFAULT_PATTERN = "causal & (window(32) | global(first = 2))"  # Longformer-style, causal


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pattern", default=DEFAULT_PATTERN,
                        help="pattern text or file.spattn:name (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--motif", type=int, default=16, help="length of the repeated motif")
    parser.add_argument("--vocab", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--packed", action="store_true",
                        help="pack documents of random lengths into each row")
    return parser.parse_args(argv)


def tiny_llama(vocab: int, seq_len: int, attn_implementation: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, hidden_size=128, intermediate_size=256,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=seq_len, attention_dropout=0.0)
    return LlamaForCausalLM._from_config(config, attn_implementation=attn_implementation)


def motif_batch(batch: int, seq_len: int, motif: int, vocab: int, generator) -> torch.Tensor:
    """Sequences that repeat a random motif: tokens after the first copy are predictable."""
    motifs = torch.randint(0, vocab, (batch, motif), generator=generator)
    return motifs.repeat(1, math.ceil(seq_len / motif))[:, :seq_len]


def packed_batch(batch: int, seq_len: int, motif: int, vocab: int, generator):
    """Rows packing motif documents of random lengths (2 to 4 motifs, the last one cut):
    (input_ids, position_ids restarting at 0 in each document, labels with -100 at each
    document's first token, so that no token is predicted across documents)."""
    ids, positions, labels = [], [], []
    for _ in range(batch):
        lengths = []
        while sum(lengths) < seq_len:
            lengths.append(int(torch.randint(2 * motif, 4 * motif + 1, (1,), generator=generator)))
        lengths[-1] -= sum(lengths) - seq_len
        docs = [motif_batch(1, n, motif, vocab, generator)[0] for n in lengths]
        row = torch.cat(docs)
        label = row.clone()
        label[torch.cumsum(torch.tensor([0] + lengths[:-1]), 0)] = -100
        ids.append(row)
        positions.append(torch.cat([torch.arange(n) for n in lengths]))
        labels.append(label)
    return torch.stack(ids), torch.stack(positions), torch.stack(labels)


def attention_path(device: str) -> str:
    if device == "cuda":
        return "generated Triton kernels (GPU)"
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return "generated Triton kernels under the interpreter (CPU)"
    return "reference attention (CPU, no GPU)"


def train(args) -> list[float]:
    """Train and return the loss of every step."""
    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = tiny_llama(args.vocab, args.seq_len, hf.register("spattn", args.pattern)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    generator = torch.Generator().manual_seed(args.seed)
    print(f"pattern: {args.pattern}   attention: {attention_path(device)}   "
          f"parameters: {sum(p.numel() for p in model.parameters()):,}")
    print(f"loss of guessing: log({args.vocab}) = {math.log(args.vocab):.3f}"
          + ("   rows: packed documents" if args.packed else ""))
    losses, start = [], time.perf_counter()
    for step in range(1, args.steps + 1):
        if args.packed:
            ids, positions, labels = (t.to(device) for t in packed_batch(
                args.batch, args.seq_len, args.motif, args.vocab, generator))
            loss = model(input_ids=ids, position_ids=positions, labels=labels).loss
        else:
            ids = motif_batch(args.batch, args.seq_len, args.motif, args.vocab, generator)
            ids = ids.to(device)
            loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step == 1 or step % 10 == 0 or step == args.steps:
            print(f"step {step:4d}  loss {loss.item():.3f}  ({time.perf_counter() - start:.1f} s)")
    return losses


def main(argv=None) -> int:
    args = parse_args(argv)
    with warnings.catch_warnings():  # the CPU fallback warns; attention_path() already said it
        warnings.simplefilter("ignore")
        losses = train(args)
    first, last = losses[0], sum(losses[-5:]) / len(losses[-5:])
    print(f"loss fell from {first:.3f} to {last:.3f} (mean of the last steps)" if last < first
          else f"loss did not fall: {first:.3f} -> {last:.3f}")
    return 0 if last < first else 1


if __name__ == "__main__":
    raise SystemExit(main())
