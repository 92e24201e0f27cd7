"""The autotuning space: (BLOCK_M, BLOCK_N, num_warps, num_stages), pruned per problem."""
from __future__ import annotations

from .render import TileConfig

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
