"""Does dynamic sparsity beat static sparsity at equal budget? A key-value retrieval benchmark.

A tiny Llama is trained with dense causal attention (the model's own SDPA) on synthetic
associative recall, then evaluated on unseen sequences through ``spattn_dsl.hf.register`` with
dense attention, a static ``causal & (sink(4) | window(B - 4))`` and dynamic patterns of the
same worst-case budget of B keys per query (token top-k by ``mean_key``, top-k 64-token blocks,
vertical-slash), each with a 64-token local window so that the copy-the-previous-token head of
the first layer keeps working.

Task (fixed seed, fixed generator): a sequence of ``n / 2`` (key, value) pairs; key tokens
``0..keys-1``, value tokens ``keys..keys+values-1``; each sequence draws its own random map
key -> value, so a value is predictable only from an earlier pair with the same key. The last
pair queries a key that occurs exactly once before, at a uniformly random pair (anywhere in the
context). Training loss: every value whose key occurred earlier (dense supervision; the model
learns an induction head). Evaluation: the answer to the last pair (argmax over value tokens).

    python benchmarks/bench_needle.py                 # CPU: n = 1024, minutes
    python benchmarks/bench_needle.py --n 4096 --budget 256 --steps 1500   # larger (a GPU)

Keys per query is the exact worst case (``spattn_dsl.analyze(...).max_keys_per_query``: the
static keys plus the budget) at the evaluation length. "far" is the accuracy over the
sequences whose needle lies further back than the static window.
"""
from __future__ import annotations

import argparse
import math
import os
import time
import warnings

import torch

import spattn_dsl as spattn
from spattn_dsl import hf

WINDOW = 64  # the local window of the dynamic patterns


def patterns(budget: int, window: int = WINDOW, block: int = 64) -> list[tuple[str, str]]:
    """(label, pattern text) at a worst case of ``budget`` keys per query (dense aside)."""
    extra = budget - window
    if extra < 2 or extra % 2:
        raise ValueError(f"budget must exceed the window {window} by an even number >= 2")
    rows = [("dense", "causal"),
            ("static sink + window", f"causal & (sink(4) | window({budget - 4}))"),
            ("token top-k (mean_key)", f"causal & (window({window}) | topk({extra}))")]
    if extra % block == 0:
        rows.append((f"block top-k ({block}-blocks)",
                     f"causal & (window({window}) | topk({extra // block}, unit = {block}))"))
    rows.append(("vertical-slash", f"causal & (window({window}) | vertical({extra // 2}) "
                                   f"| slash({extra // 2}))"))
    return rows


def needle_batch(batch: int, n: int, generator, keys: int, values: int, query_rate: float):
    """(pair keys, pair values, labels, answer, distance) for ``batch`` sequences of ``n``
    positions.

    Position t holds a (key, value) pair (value ``values`` = none: a query). Each sequence draws
    its own map key -> value. A query (about ``query_rate`` of the positions) asks the key of a
    uniformly random earlier pair; labels: the answer at queries, -100 elsewhere. The last
    position queries the needle: a key held by exactly one earlier position, a uniformly random
    one (anywhere in the context). distance: from the last position back to the needle."""
    if keys <= n:
        raise ValueError(f"needle_batch: keys ({keys}) must exceed n ({n})")
    mapping = torch.randint(0, values, (batch, keys), generator=generator)
    needle_key = torch.randint(0, keys, (batch,), generator=generator)
    # pair keys: distinct within a sequence (keys >= n), none the needle's
    k = (needle_key[:, None] + 1 + torch.rand(batch, keys - 1, generator=generator)
         .argsort(-1)[:, :n]) % keys
    query = torch.rand(batch, n, generator=generator) < query_rate
    query[:, 0] = False
    query[:, -1] = True
    u = torch.rand(batch, n, generator=generator)
    needle = torch.empty(batch, dtype=torch.long)
    pick = torch.rand(batch, generator=generator)
    for b in range(batch):
        pairs = (~query[b]).nonzero()[:, 0]
        needle[b] = pairs[int(pick[b] * len(pairs))]
        before = (~query[b]).long().cumsum(0) - (~query[b]).long()  # pairs before t
        ref = pairs[(u[b] * before).long().clamp(max=len(pairs) - 1)]
        at = int((pairs == needle[b]).nonzero()[0, 0])
        if at > 0:
            ref[ref == needle[b]] = pairs[at - 1]  # the needle's key stays unique
        else:
            query[b, :-1] &= ref[:-1] != needle[b]  # (these stay pairs, of other keys)
        rows = query[b].nonzero()[:, 0]
        k[b, rows] = k[b, ref[rows]]
        k[b, needle[b]] = needle_key[b]
    k[:, -1] = needle_key
    v = mapping.gather(1, k)
    labels = torch.where(query, v, -100)
    value_in = torch.where(query, values, v)
    return k, value_in, labels, v[:, -1], (n - 1) - needle


class NeedleModel(torch.nn.Module):
    """A tiny Llama whose input at a position is the sum of the embeddings of its key's two
    tokens and its value token (or the query marker); its head predicts value tokens."""

    def __init__(self, args, attn_implementation: str):
        super().__init__()
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(vocab_size=args.values, hidden_size=args.hidden,
                             intermediate_size=2 * args.hidden, num_hidden_layers=args.layers,
                             num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                             head_dim=args.head_dim,
                             max_position_embeddings=max(args.n, args.train_n),
                             attention_dropout=0.0, tie_word_embeddings=False)
        self.key_tokens = args.key_tokens
        self.keys = torch.nn.Embedding(2 * args.key_tokens, args.hidden)
        self.values = torch.nn.Embedding(args.values + 1, args.hidden)
        self.llama = LlamaForCausalLM._from_config(config, attn_implementation=attn_implementation)

    def forward(self, k, v):
        first, second = k // self.key_tokens, k % self.key_tokens + self.key_tokens
        embeds = self.keys(first) + self.keys(second) + self.values(v)
        return self.llama(inputs_embeds=embeds).logits


def curriculum(args) -> list[tuple[int, int, int]]:
    """(length, batch, steps) per stage: lengths double from 32 to ``train_n`` (retrieval is
    learnt in a few hundred steps at 32 positions, and then carried to longer contexts), each
    stage ``args.steps`` steps (the last twice as many) of about ``args.tokens`` positions."""
    lengths = [32]
    while lengths[-1] < args.train_n:
        lengths.append(min(2 * lengths[-1], args.train_n))
    return [(n, max(1, args.tokens // n), args.steps * (2 if n == lengths[-1] else 1))
            for n in lengths]


def train(args, device: str, log=print):
    """The dense model, trained with SDPA; returns it in eval mode."""
    torch.manual_seed(args.seed)
    model = NeedleModel(args, "sdpa").to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    for n, batch, steps in curriculum(args):
        for group in optimizer.param_groups:
            group["lr"] = args.lr
        for step in range(1, steps + 1):
            k, v, labels, _, _ = needle_batch(batch, n, generator, args.keys, args.values,
                                              args.query_rate)
            logits = model(k.to(device), v.to(device))
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(),
                                                     labels.to(device).flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            for group in optimizer.param_groups:  # a linear decay within each stage
                group["lr"] = args.lr * (1 - step / (steps + 1))
        log(f"n {n:5d}  batch {batch:3d}  {steps} steps  loss {loss.item():.3f}  "
            f"({time.perf_counter() - start:.0f} s)")
    return model.eval()


def eval_set(args):
    """The unseen evaluation sequences (their own seed, never drawn in training)."""
    generator = torch.Generator().manual_seed(args.seed + 1_000_003)
    k, v, _, answer, distance = needle_batch(args.eval, args.n, generator, args.keys, args.values,
                                             args.query_rate)
    return k, v, answer, distance


@torch.no_grad()
def accuracy(model, k, v, answer, args, device: str) -> torch.Tensor:
    """Bool per sequence: the argmax at the last position (the needle query) is the answer."""
    hits = []
    for i in range(0, len(k), args.eval_batch):
        part = slice(i, i + args.eval_batch)
        logits = model(k[part].to(device), v[part].to(device))[:, -1]
        hits.append(logits.argmax(-1).cpu() == answer[part])
    return torch.cat(hits)


def evaluate(args, model, device: str, log=print) -> list[dict]:
    k, v, answer, distance = eval_set(args)
    state = model.state_dict()
    rows = []
    for label, text in patterns(args.budget, args.window, args.block):
        name = hf.register(f"needle_{abs(hash(text))}", text)
        sparse = NeedleModel(args, name).to(device).eval()
        sparse.load_state_dict(state)
        start = time.perf_counter()
        with warnings.catch_warnings():  # the CPU path's one-time warning
            warnings.simplefilter("ignore")
            hit = accuracy(sparse, k, v, answer, args, device)
        far = distance > args.budget - 4
        pattern = spattn.loads(f"pattern p {{ {text} }}").pattern("p")
        keys = spattn.analyze(pattern, args.n).max_keys_per_query
        rows.append(dict(label=label, pattern=text, keys=int(keys),
                         accuracy=float(hit.float().mean()),
                         far=float(hit[far].float().mean()) if far.any() else float("nan"),
                         seconds=time.perf_counter() - start))
        log(f"{label:26s} keys {rows[-1]['keys']:5d}  accuracy {rows[-1]['accuracy']:.3f}  "
            f"far {rows[-1]['far']:.3f}  ({rows[-1]['seconds']:.0f} s)")
    return rows


def table(rows: list[dict], args) -> str:
    dense = rows[0]["accuracy"]
    far = sum(1 for d in eval_set(args)[3] if d > args.budget - 4)
    lines = [f"n = {args.n}, {args.eval} unseen sequences ({far} with the needle beyond the "
             f"static window), budget B = {args.budget}",
             "",
             "| attention | pattern | keys per query (worst case) | accuracy | far | of dense |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        text = r["pattern"].replace("|", "\\|")
        share = f"{r['accuracy'] / dense:.0%}" if dense else "-"
        lines.append(f"| {r['label']} | `{text}` | {r['keys']} | {r['accuracy']:.3f} | "
                     f"{r['far']:.3f} | {share} |")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1024,
                        help="evaluation length (default %(default)s)")
    parser.add_argument("--train-n", type=int, default=None, help="training length (default: --n)")
    parser.add_argument("--budget", type=int, default=128, help="keys per query B")
    parser.add_argument("--window", type=int, default=WINDOW,
                        help="the local window of the dynamic patterns")
    parser.add_argument("--block", type=int, default=64, help="the block top-k's unit")
    parser.add_argument("--steps", type=int, default=150, help="training steps per length")
    parser.add_argument("--tokens", type=int, default=2048, help="positions per training batch")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--key-tokens", type=int, default=64,
                        help="a key is two key tokens: key-tokens ** 2 keys (more than n)")
    parser.add_argument("--query-rate", type=float, default=0.125)
    parser.add_argument("--values", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--eval", type=int, default=128, help="evaluation sequences")
    parser.add_argument("--eval-batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: these matrices are small)")
    parser.add_argument("--min-dense", type=float, default=0.9,
                        help="fail (exit 1) when the dense model's accuracy is below this")
    args = parser.parse_args(argv)
    args.train_n = args.train_n or args.n
    args.keys = args.key_tokens ** 2
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(args.threads)
    path = ("Triton kernels (GPU)" if device == "cuda" else
            "Triton interpreter (CPU)" if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
            else "CPU path (reference select + masked attention)")
    print(f"device {device}, spattn attention: {path}, threads {torch.get_num_threads()}")
    start = time.perf_counter()
    model = train(args, device)
    print(f"trained in {time.perf_counter() - start:.0f} s")
    rows = evaluate(args, model, device)
    print()
    print(table(rows, args))
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    if rows[0]["accuracy"] < args.min_dense:
        print(f"dense accuracy {rows[0]['accuracy']:.3f} < {args.min_dense}: the model did not "
              "learn the task; the sparse rows mean nothing")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
