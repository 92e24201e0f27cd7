"""Context parallel on several GPUs: time, bytes moved per rank and pair balance, per layer.

    torchrun --nproc-per-node 8 benchmarks/bench_cp.py                 # NCCL, bf16
    torchrun --nproc-per-node 2 benchmarks/bench_cp.py --dry-run       # gloo on CPUs, tiny sizes

Methods, each forward and forward+backward of one attention layer:
- ``sequence``: ``ContextParallel(mode="sequence")``, only the K/V each rank's queries need;
- ``heads``: ``ContextParallel(mode="heads")`` (Ulysses all-to-all, one-device kernels);
- ``allgather``: every rank receives all K/V it does not hold (what torch's Flex context
  parallel moves; sent as one all-to-all), then the same local attention as ``sequence``;
- ``ring``: K/V blocks passed around the ring of ranks by point-to-point, W - 1 hops, then
  the same local attention (gradients go back to their owners in one all-to-all).
"""
import argparse
import os
import time

import torch
import torch.distributed as dist

import spattn_dsl as sp
from spattn_dsl.parallel.comm import ExchangeKV
from spattn_dsl.parallel.local import PairMask, masked_attention

PROGRAM = sp.loads("""
pattern sliding(w = 4096) { causal & window(w) }
pattern streaming(g = 4, w = 1020) { causal & (sink(g) | window(w)) }
pattern bigbird(b = 64) { blocks(b) { band(1, 1) | global(first = 2) | random(3) } }
pattern dense_causal() { causal }
""")
TINY = {"sliding": {"w": 64}, "streaming": {"w": 60}, "bigbird": {"b": 16}, "dense_causal": {}}


def pattern(name: str, tiny: bool):
    return PROGRAM.pattern(name, **(TINY[name] if tiny else {}))


def exchange_everything(cp, n, k, v):
    """All-gather volume: every position a rank does not hold, from its owner."""
    plan = cp.plan_for(n)
    a, b = plan.chunk(cp.rank)
    others = [torch.cat([torch.arange(0, x), torch.arange(y, n)])
              for x, y in zip(plan.bounds, plan.bounds[1:])]
    send = [torch.arange(0, b - a, device=k.device) if r != cp.rank else
            torch.arange(0, 0, device=k.device) for r in range(cp.world)]
    recv = [y - x if r != cp.rank else 0 for r, (x, y) in enumerate(zip(plan.bounds, plan.bounds[1:]))]
    k_recv, v_recv = ExchangeKV.apply(k, v, send, recv, cp.group)
    return others[cp.rank], k_recv, v_recv


class RingKV(torch.autograd.Function):
    """Forward: K/V blocks hop around the ring (W - 1 point-to-point steps); every rank ends
    with all blocks but its own, in rank order. Backward: one all-to-all back to the owners."""

    @staticmethod
    def forward(ctx, k, v, bounds):
        rank, world = dist.get_rank(), dist.get_world_size()
        kv = torch.cat([k, v], -1)
        longest = max(y - x for x, y in zip(bounds, bounds[1:]))
        block = kv.new_zeros(*kv.shape[:2], longest, kv.shape[3])
        block[:, :, :kv.shape[2]] = kv
        got = {}
        for step in range(1, world):
            incoming = torch.empty_like(block)
            ops = [dist.P2POp(dist.isend, block.contiguous(), (rank + 1) % world),
                   dist.P2POp(dist.irecv, incoming, (rank - 1) % world)]
            for req in dist.batch_isend_irecv(ops):
                req.wait()
            block = incoming
            owner = (rank - step) % world
            got[owner] = block[:, :, :bounds[owner + 1] - bounds[owner]]
        ctx.bounds, ctx.shape, ctx.d = bounds, kv.shape, k.shape[3]
        out = torch.cat([got[r] for r in sorted(got)], 2)
        return out[..., :ctx.d].contiguous(), out[..., ctx.d:].contiguous()

    @staticmethod
    def backward(ctx, dk, dv):
        from spattn_dsl.parallel.comm import all_to_all
        rank, world, bounds = dist.get_rank(), dist.get_world_size(), ctx.bounds
        sizes = [0 if r == rank else bounds[r + 1] - bounds[r] for r in range(world)]
        grads = list(torch.cat([dk, dv], -1).split(sizes, 2))
        back = all_to_all(grads, [(*ctx.shape[:2], 0 if r == rank else ctx.shape[2], ctx.shape[3])
                                  for r in range(world)])
        total = dk.new_zeros(ctx.shape)
        for r, got in enumerate(back):
            if r != rank:
                total += got
        return total[..., :ctx.d], total[..., ctx.d:], None


def run_method(method, cp, n, q, k, v):
    if method in ("sequence", "heads"):
        return cp.attention(q, k, v)
    plan = cp.plan_for(n)
    a, b = plan.chunk(cp.rank)
    if method == "allgather":
        keys, k_recv, v_recv = exchange_everything(cp, n, k, v)
    else:
        k_recv, v_recv = RingKV.apply(k, v, plan.bounds)
        keys = torch.cat([torch.arange(0, a), torch.arange(b, n)])
    mask = PairMask(cp.pattern, n, torch.arange(a, b), torch.cat([torch.arange(a, b), keys]))
    return masked_attention(q, torch.cat([k, k_recv], 2), torch.cat([v, v_recv], 2), mask,
                            q.shape[3] ** -0.5)


def timed(fn, device, iters: int) -> float:
    fn()  # warm-up: plans, kernels
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    dist.barrier()
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - start) / iters * 1e3


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="gloo on CPUs at tiny sizes")
    parser.add_argument("--seq-lens", default="131072,524288")
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=32)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--patterns", default=",".join(TINY))
    parser.add_argument("--methods", default="sequence,heads,allgather,ring")
    parser.add_argument("--iters", type=int, default=5)
    args = parser.parse_args(argv)
    if args.dry_run:
        args.seq_lens, args.heads, args.kv_heads, args.head_dim, args.iters = "256", 4, 2, 16, 1
    dist.init_process_group("gloo" if args.dry_run else "nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.dry_run:
        device, dtype = torch.device("cpu"), torch.float32
    else:
        device, dtype = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))), torch.bfloat16
        torch.cuda.set_device(device)
    if rank == 0:
        print(f"{world} ranks, {args.heads} heads ({args.kv_heads} KV), head_dim {args.head_dim}, "
              f"{dtype}; ms per layer; MiB = K/V (heads mode: q, k, v, out) received per rank")
        print("| n | pattern | method | fwd ms | fwd+bwd ms | MiB recv max | pair balance |")
        print("|---|---|---|---|---|---|---|")
    for n in map(int, args.seq_lens.split(",")):
        for name in args.patterns.split(","):
            pat = pattern(name, args.dry_run)
            for method in args.methods.split(","):
                cp = sp.ContextParallel(pat, mode="heads" if method == "heads" else "sequence")
                gen = torch.Generator().manual_seed(0)
                full = [torch.randn(1, h, n, args.head_dim, generator=gen)
                        for h in (args.heads, args.kv_heads, args.kv_heads)]
                q, k, v = (cp.shard(t).to(device, dtype).requires_grad_() for t in full)
                fwd = timed(lambda: run_method(method, cp, n, q, k, v), device, args.iters)
                both = timed(lambda: run_method(method, cp, n, q, k, v).sum().backward(),
                             device, args.iters)
                mib, balance = _figures(cp, method, n, args, dtype)
                if rank == 0:
                    print(f"| {n} | {name} | {method} | {fwd:.2f} | {both:.2f} | {mib:.3f} | "
                          f"{balance:.3f} |", flush=True)
    dist.destroy_process_group()


def _figures(cp, method, n, args, dtype):
    """(MiB received by the busiest rank, allowed pairs of the busiest rank / mean)."""
    if method == "heads":
        plan = cp.plan_for(n, args.heads, args.kv_heads)
        received = plan.bytes(args.head_dim, dtype)["received"]
    else:
        plan = cp.plan_for(n)
        received = plan.bytes(args.kv_heads, args.head_dim, dtype)["received"] \
            if method == "sequence" else plan.allgather_bytes(args.kv_heads, args.head_dim, dtype)
    pairs = plan.pairs.double()
    return float(received.max()) / 2 ** 20, float(pairs.max() / pairs.mean())


if __name__ == "__main__":
    main()
