"""What each spawned rank runs: every case against a dense single-process oracle.

Importable by the spawned processes (``torch.multiprocessing.spawn`` pickles the function by
name); each rank writes its relative errors to ``out/rank{r}.pt`` for the test to check."""
import os
import socket
import warnings

import torch
import torch.distributed as dist

import spattn_dsl as sp

EXAMPLES = "examples"
# small parameters so that n of about a hundred tokens covers each pattern's structure
SMALL = {"bigbird": dict(b=8, r=2), "gemma_local": dict(w=16), "longformer": dict(half=6, g=2),
         "longformer_dilated": dict(w=5, d=2), "mistral_swa": dict(w=16), "prefix_lm": {},
         "strided": dict(l=8), "fixed": dict(l=16, c=4), "streaming": dict(sinks=2, recent=12)}


FOUR_RANKS = ["causal", "bigbird", "longformer", "strided", "streaming"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def example_patterns() -> dict:
    """Every static example pattern (context parallel refuses dynamic ones)."""
    out = {"causal": sp.loads("pattern causal_only() { causal }").pattern("causal_only")}
    for path in sorted(os.listdir(EXAMPLES)):
        if path.endswith(".spattn"):
            program = sp.load(os.path.join(EXAMPLES, path))
            for name in program.patterns:
                pattern = program.pattern(name, **SMALL.get(name, {}))
                if not pattern.dynamic:
                    out[name] = pattern
    return out


def dense_oracle(pattern, q, k, v, key_padding=None, documents=None):
    """fp32 softmax attention under the reference mask (rows with no key give 0)."""
    n, heads, group = q.shape[2], q.shape[1], q.shape[1] // k.shape[1]
    out = torch.zeros_like(q)
    for b in range(q.shape[0]):
        for h in range(heads):
            docs = None if documents is None else documents[b]
            allowed = pattern.mask(n, n, h % pattern.heads, documents=docs)
            if key_padding is not None:
                allowed = allowed & key_padding[b][None, :]
            s = (q[b, h] @ k[b, h // group].T * q.shape[3] ** -0.5).masked_fill(~allowed, -torch.inf)
            p = torch.softmax(s, -1).nan_to_num(0.0)
            out[b, h] = p @ v[b, h // group]
    return out


def cases(world: int) -> list:
    """(label, pattern name, mode, n, heads, kv_heads, documents?, key padding?)."""
    n = {2: 67, 3: 100, 4: 90}[world]
    names = list(example_patterns()) if world < 4 else FOUR_RANKS  # CI has 2 cores
    out = [(f"{name} sequence", name, "sequence", n, 4, 2, False, False) for name in names]
    out += [(f"{name} heads", name, "heads", n, 2 * world, world, False, False)
            for name in ("mistral_swa", "strided", "bigbird")]
    out += [("streaming documents sequence", "streaming", "sequence", n, 4, 2, True, False),
            ("longformer documents sequence", "longformer", "sequence", n, 2, 2, True, True),
            ("bigbird documents heads", "bigbird", "heads", n, world, world, True, False),
            ("fixed padding sequence", "fixed", "sequence", n, 2, 1, False, True)]
    if world == 2:  # the heavier document cases once
        out += [("bigbird documents sequence", "bigbird", "sequence", n, 2, 1, True, False),
                ("strided documents heads", "strided", "heads", n, 4, 2, True, True)]
    return out


def relative(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def run_case(pattern, mode, n, heads, kv_heads, with_docs, with_padding, seed):
    gen = torch.Generator().manual_seed(seed)
    q, g = (torch.randn(2, heads, n, 16, generator=gen) for _ in range(2))
    k, v = (torch.randn(2, kv_heads, n, 16, generator=gen) for _ in range(2))
    documents = torch.stack([torch.arange(n) * 4 // n, torch.arange(n) * 3 // n + 7]) \
        if with_docs else None
    padding = torch.rand(2, n, generator=gen) > 0.2 if with_padding else None
    full = [t.clone().requires_grad_() for t in (q, k, v)]
    want = dense_oracle(pattern, *full, padding, documents)
    want_grads = torch.autograd.grad(want, full, g)

    cp = sp.ContextParallel(pattern, mode=mode)
    local = [cp.shard(t).clone().requires_grad_() for t in (q, k, v)]
    out = cp.attention(*local, key_padding=padding, documents=documents)
    grads = torch.autograd.grad(out, local, cp.shard(g))
    errors = [relative(out, cp.shard(want))]
    errors += [relative(got, cp.shard(ref)) for got, ref in zip(grads, want_grads)]
    errors.append(relative(cp.unshard(out), want))
    return errors


def worker(rank: int, world: int, port: int, out_dir: str):
    os.environ.pop("TRITON_INTERPRET", None)  # heads mode: the one-device CPU reference path
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    patterns = example_patterns()
    results = {}
    try:
        for i, (label, name, *rest) in enumerate(cases(world)):
            results[label] = run_case(patterns[name], *rest, seed=i)
    finally:
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.destroy_process_group()
