"""``spattn compile``'s products: the generated kernel, the layout and a manifest (no GPU)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..codegen.render import TileConfig, render
from ..ir import nodes as N
from ..layout.build import lower

DTYPE_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def default_config(pattern, head_dim: int) -> TileConfig:
    """A config for when no tuning result exists: 64-wide tiles for block patterns whose block
    is not a multiple of 128, and for wide heads; otherwise 128 x 64."""
    sizes = [node.size for node in N.walk(pattern.expr)
             if isinstance(node, N.Blocks) and isinstance(node.size, int)]
    sizes += [node.size.value for node in N.walk(pattern.expr)
              if isinstance(node, N.Blocks) and isinstance(node.size, N.Num)]
    if head_dim > 128 or any(s % 128 for s in sizes):
        return TileConfig(64, 64, 4, 3)
    return TileConfig(128, 64, 4, 3)


def write_artifacts(pattern, seq_len: int, head_dim: int, dtype: str, out_dir,
                    config: TileConfig | None = None) -> list:
    """Write ``kernel.py``, ``layout.pt`` and ``manifest.json`` under ``out_dir``; their paths."""
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_NAMES)}, got {dtype!r}")
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    if not 16 <= head_dim <= 256:
        raise ValueError(f"head_dim must be between 16 and 256, got {head_dim}")
    config = config or default_config(pattern, head_dim)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rendered = render(pattern, seq_len)
    layout = lower(pattern.at(seq_len), seq_len, seq_len, config.block_m, config.block_n)
    kernel_path, layout_path, manifest_path = out / "kernel.py", out / "layout.pt", out / "manifest.json"
    kernel_path.write_text(rendered.source)
    torch.save(layout.tensors(), layout_path)
    manifest_path.write_text(json.dumps(_manifest(pattern, rendered, layout, seq_len, head_dim,
                                                  dtype, config), indent=2) + "\n")
    return [kernel_path, layout_path, manifest_path]


def _manifest(pattern, rendered, layout, seq_len, head_dim, dtype, config) -> dict:
    from .. import __version__

    states = layout.states
    per_case = []
    for c in range(layout.cases):
        visited = int((states[c] != 0).sum())
        per_case.append({"case": c, "full_tiles": int((states[c] == 2).sum()),
                         "partial_tiles": int((states[c] == 1).sum()),
                         "tile_density": visited / max(1, states[c].numel())})
    return {
        "pattern": pattern.name, "text": pattern.text, "hash": pattern.hash,
        "kernel": {"file": "kernel.py", "key": rendered.key, "function": rendered.kernel_name,
                   "random_tables": [[t.r, t.seed, list(t.divisors)] for t in rendered.tables]},
        "shapes": {"n_q": seq_len, "n_k": seq_len, "head_dim": head_dim, "dtype": dtype},
        "tiles": {"block_m": config.block_m, "block_n": config.block_n,
                  "num_warps": config.num_warps, "num_stages": config.num_stages,
                  "grid": list(layout.tiles), "full_range": layout.full_is_range,
                  "partial_range": layout.partial_is_range},
        "head_cases": per_case,
        "tile_density": layout.density(),
        "layout": {"file": "layout.pt", "tensors": sorted(layout.tensors())},
        "versions": _versions(__version__),
    }


def _versions(spattn_version: str) -> dict:
    versions = {"spattn": spattn_version, "torch": torch.__version__}
    try:
        import triton
        versions["triton"] = triton.__version__
    except ImportError:
        versions["triton"] = None
    return versions
