"""The autotuning space: (BLOCK_M, BLOCK_N, num_warps, num_stages, merged, descriptors),
pruned per problem."""
from __future__ import annotations

from .render import TileConfig

# Tensor-descriptor loads (the last four forward configs): on the H200 at N = 8192 the fastest
# forward of dense causal (128 x 64), Mistral (128 x 128) and causal & window(1024) (64 x 64
# merged), 3-5% ahead of the same tiles without (benchmarks/RESULTS.md, third GPU session);
# 5-10% slower on BigBird and Longformer. Gathered terms (the dilated band) keep plain loads.
GPU_SPACE = (
    TileConfig(128, 128, 8, 3),
    TileConfig(128, 64, 8, 3),
    TileConfig(128, 64, 8, 4),
    TileConfig(64, 64, 4, 3),
    TileConfig(64, 64, 4, 4),
    TileConfig(64, 64, 4, 2),
    TileConfig(128, 128, 8, 3, merged=True),
    TileConfig(128, 64, 8, 3, merged=True),
    TileConfig(64, 64, 4, 3, merged=True),
    TileConfig(128, 64, 8, 3, descriptors=True),
    TileConfig(128, 128, 8, 3, descriptors=True),
    TileConfig(64, 64, 4, 3, descriptors=True),
    TileConfig(64, 64, 4, 3, merged=True, descriptors=True),
)
INTERPRETER_CONFIG = TileConfig(16, 16, 1, 1)


def candidate_configs(head_dim: int, n_q: int, n_k: int, interpreter: bool = False):
    """Configs worth timing: one under the interpreter; on a GPU the space above, without
    tiles far larger than the problem and with smaller tiles for wide heads."""
    if interpreter:
        return [INTERPRETER_CONFIG]
    out = []
    for config in GPU_SPACE:
        if head_dim > 128 and config.block_m * config.block_n > 128 * 64:
            continue
        if config.block_m > max(64, n_q) or config.block_n > max(64, n_k):
            continue
        out.append(config)
    return out or [TileConfig(64, 64, 4, 2)]


# With documents each call has new tile lists and is not tuned, so its tiles are fixed: on the
# H200 at N = 8192 (benchmarks/RESULTS.md, second GPU session) 64 x 64 tiles with 4 warps and
# 3 stages were the fastest unmerged tiles for windows, bands, BigBird and dilations, and within
# 8% of the fastest on Mistral's window(4096); 128 x 128 was 16-63% slower on the sparse ones.
# Document boundaries shorten every row further.
DOCUMENTS_CONFIG = TileConfig(64, 64, 4, 3)


def documents_config(interpreter: bool = False) -> TileConfig:
    """The tiles of a call with documents (no autotuning: the lists change every call)."""
    return INTERPRETER_CONFIG if interpreter else DOCUMENTS_CONFIG


# The backward kernels hold more per program (dQ: the dO tile and the dQ accumulator; dK/dV:
# K, V and two accumulators), so their best tiles differ from the forward's. Measured on an
# H100 at head_dim 128 (benchmarks/RESULTS.md): dQ is fastest with 64- or 128-row query tiles,
# dK/dV with 32-row query tiles under a 64-key tile; 8 warps on 64 x 64 or 4 warps on
# 128-wide tiles spill.
DQ_SPACE = (
    TileConfig(64, 64, 4, 2),
    TileConfig(128, 64, 8, 3),
    TileConfig(64, 32, 4, 2),
    TileConfig(64, 32, 4, 3),
    TileConfig(128, 128, 8, 2),
)
DKDV_SPACE = (
    TileConfig(32, 64, 4, 3),
    TileConfig(32, 64, 4, 4),
    TileConfig(64, 64, 4, 2),
    TileConfig(64, 128, 8, 2),
    TileConfig(32, 128, 8, 3),
    TileConfig(64, 64, 4, 2, descriptors=True),  # Mistral's dK/dV 10% faster than without
)


def backward_candidates(head_dim: int, n_q: int, n_k: int) -> tuple[list, list]:
    """(dQ configs, dK/dV configs) worth timing on a GPU, pruned like the forward's."""
    def keep(config):
        if head_dim > 128 and config.block_m * config.block_n > 64 * 64:
            return False
        return config.block_m <= max(64, n_q) and config.block_n <= max(64, n_k)

    fallback = [TileConfig(64, 32, 4, 2) if head_dim > 128 else TileConfig(64, 64, 4, 2)]
    return ([c for c in DQ_SPACE if keep(c)] or fallback,
            [c for c in DKDV_SPACE if keep(c)] or fallback)
