"""Time building the tile layout of packed documents from their ids, against FlexAttention's
``create_block_mask`` for the same document mask, on one device.

Each row of ``n`` tokens is cut into D documents at seeded random boundaries. spattn builds
its per-call layout (``layout.documents.document_layout``, rules prepared once per pattern);
Flex builds a BlockMask from a ``mask_mod`` written as a Flex user would (same document, then
the pattern on document-relative positions), with ``torch.compile(create_block_mask)`` (eager
``create_block_mask`` materialises the n x n mask: 17 GB at n = 131072). Times are medians of
``--repeats`` calls after one warm-up call (Flex's first call, which compiles, is reported
apart), wall-clock and this process's CPU time (steadier on a shared machine). The last
column gives the tiles each side visits, which should agree.

Run: python benchmarks/bench_documents.py [--n 131072] [--docs 1,100,2000] [--device cpu] [--threads 1]
"""
import argparse
import platform
import statistics
import time

import torch

from spattn_dsl.api import pattern_from
from spattn_dsl.layout.documents import DocumentRules, document_layout

# pattern text -> its Flex mask_mod on document-relative positions (qr, kr)
PATTERNS = {
    "causal": lambda qr, kr: kr <= qr,
    "causal & window(1024)": lambda qr, kr: (kr <= qr) & (qr - kr < 1024),
    "band(256, 256) | global(first = 1)":
        lambda qr, kr: ((kr >= qr - 256) & (kr <= qr + 256)) | (qr < 1) | (kr < 1),
}


def boundaries(n: int, documents: int, seed: int, device) -> torch.Tensor:
    """``[1, n]`` ids of ``documents`` documents with random (seeded) boundaries."""
    gen = torch.Generator().manual_seed(seed)
    cuts = torch.randperm(n - 1, generator=gen)[:documents - 1] + 1
    starts = torch.zeros(n, dtype=torch.int64)
    starts[cuts] = 1
    return torch.cumsum(starts, 0)[None].to(device)


def timed(function, repeats: int):
    """(median wall seconds, median CPU seconds of this process, last result)."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = function()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus), result


def flex_builder(relative, ids, start):
    """A compiled create_block_mask over one captured id row (updated in place between runs,
    so that new boundaries do not recompile)."""
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q, k):
        same = ids[q] == ids[k]
        return same & relative(q - start[q], k - start[k])

    build = torch.compile(create_block_mask)
    n = ids.shape[0]
    return lambda: build(mask_mod, 1, 1, n, n, device=ids.device, BLOCK_SIZE=128)


def flex_tiles(block_mask) -> int:
    visited = block_mask.kv_num_blocks
    if block_mask.full_kv_num_blocks is not None:
        visited = visited + block_mask.full_kv_num_blocks
    return int(visited.sum())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=131072)
    parser.add_argument("--docs", default="1,100,2000")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-flex", action="store_true")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for both sides (1: steady on a shared machine)")
    parser.add_argument("--patterns", default=None, help="indices into PATTERNS, e.g. 0,2 (default all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n, device = args.n, torch.device(args.device)
    chosen = list(PATTERNS)
    if args.patterns:
        chosen = [chosen[int(i)] for i in args.patterns.split(",")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, device {device}, n = {n}, tiles 128 x 128, "
          f"median of {args.repeats}", flush=True)
    print("| pattern | documents | spattn layout s (CPU s) | Flex create_block_mask s (CPU s) "
          "| Flex first call s | visited tiles (spattn / Flex) |\n|---|---|---|---|---|---|",
          flush=True)
    for text in chosen:
        rules = DocumentRules(pattern_from(text))
        ids_row = torch.zeros(n, dtype=torch.int64, device=device)
        start_row = torch.zeros(n, dtype=torch.int64, device=device)
        build_flex = None if args.no_flex else flex_builder(PATTERNS[text], ids_row, start_row)
        for count in (int(d) for d in args.docs.split(",")):
            ids = boundaries(n, count, seed=count, device=device)
            document_layout(rules, ids, n, 128, 128)  # warm-up
            wall, cpu, layout = timed(lambda: document_layout(rules, ids, n, 128, 128),
                                      args.repeats)
            ours = f"{wall:.3f} ({cpu:.3f})"
            tiles = int((layout.states != 0).sum())
            flex, first, flex_visited = "-", "-", "-"
            if build_flex is not None:
                ids_row.copy_(ids[0])
                start_row.copy_(layout.doc_start[0].long())
                began = time.perf_counter()
                build_flex()
                first = f"{time.perf_counter() - began:.2f}"
                wall, cpu, block_mask = timed(build_flex, args.repeats)
                flex, flex_visited = f"{wall:.3f} ({cpu:.3f})", flex_tiles(block_mask)
            cell = text.replace("|", "\\|")  # a table cell
            print(f"| `{cell}` | {count} | {ours} | {flex} | {first} | {tiles} / {flex_visited} |",
                  flush=True)


if __name__ == "__main__":
    main()
