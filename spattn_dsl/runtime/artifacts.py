"""``spattn compile``'s products: the generated kernels, the layout, the plan and a manifest
(no GPU)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..codegen.render import TileConfig, render, render_term
from ..codegen.space import candidate_configs
from ..ir import nodes as N
from ..layout.build import lower, pair_count
from ..layout.plan import term_pairs
from .lowering import case_plans, cheapest

DTYPE_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def default_config(pattern, head_dim: int, seq_len: int | None = None) -> TileConfig:
    """The config for when no tuning result exists: the GPU space's config whose plan costs
    least at ``seq_len`` (``layout.plan``'s cost: tiles visited times their area, per term);
    without a length, 64-wide tiles for block patterns whose block is not a multiple of 128
    and for wide heads, otherwise 128 x 64."""
    if seq_len is not None:
        return cheapest(pattern, seq_len, seq_len, candidate_configs(head_dim, seq_len, seq_len))
    sizes = [node.size for node in N.walk(pattern.expr)
             if isinstance(node, N.Blocks) and isinstance(node.size, int)]
    sizes += [node.size.value for node in N.walk(pattern.expr)
              if isinstance(node, N.Blocks) and isinstance(node.size, N.Num)]
    if head_dim > 128 or any(s % 128 for s in sizes):
        return TileConfig(64, 64, 4, 3)
    return TileConfig(128, 64, 4, 3)


def plan_summary(pattern, seq_len: int, head_dim: int, config: TileConfig | None = None) -> dict:
    """The plan at ``n_q = n_k = seq_len``: per head case its terms, and over all cases
    ``pairs_allowed`` (the pattern's pairs, counted per tile without an n x n mask) and
    ``pairs_computed`` (pairs the kernels multiply: visited tiles times their area)."""
    config = config or default_config(pattern, head_dim, seq_len)
    concrete = pattern.at(seq_len)
    plans = case_plans(pattern, seq_len, seq_len, config.block_m, config.block_n)
    cases = []
    for plan in plans:
        terms = []
        for term in plan.terms:
            entry = term.describe()
            entry["pairs_allowed"] = term_pairs(term, seq_len, seq_len)
            terms.append(entry)
        cases.append({"case": plan.case, "pairs_computed": plan.pairs_computed, "terms": terms})
    allowed = sum(pair_count(concrete, seq_len, seq_len, c) for c in range(len(plans)))
    return {"config": config, "cases": cases, "pairs_allowed": allowed,
            "pairs_computed": sum(p.pairs_computed for p in plans)}


def write_artifacts(pattern, seq_len: int, head_dim: int, dtype: str, out_dir,
                    config: TileConfig | None = None) -> list:
    """Write ``kernel.py`` (every head case on one grid), ``layout.pt`` (its layout),
    ``plan.json`` and ``plan.pt`` (the plan: terms, gathers, term layouts), one kernel per
    term (``term_c<case>_<i>.py``) and ``manifest.json`` under ``out_dir``; their paths."""
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_NAMES)}, got {dtype!r}")
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    if not 16 <= head_dim <= 256:
        raise ValueError(f"head_dim must be between 16 and 256, got {head_dim}")
    config = config or default_config(pattern, head_dim, seq_len)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rendered = render(pattern, seq_len)
    layout = lower(pattern.at(seq_len), seq_len, seq_len, config.block_m, config.block_n)
    summary = plan_summary(pattern, seq_len, head_dim, config)
    plans = case_plans(pattern, seq_len, seq_len, config.block_m, config.block_n)
    kernel_path, layout_path = out / "kernel.py", out / "layout.pt"
    plan_json, plan_pt, manifest_path = out / "plan.json", out / "plan.pt", out / "manifest.json"
    kernel_path.write_text(rendered.source)
    torch.save(layout.tensors(), layout_path)
    term_paths, tensors = [], {}
    for plan, case in zip(plans, summary["cases"]):
        for i, (term, entry) in enumerate(zip(plan.terms, case["terms"])):
            prefix = f"case{plan.case}.term{i}."
            tensors.update({prefix + name: t for name, t in term.layout.tensors().items()})
            for name in ("q_gather", "k_gather"):
                if getattr(term, name) is not None:
                    tensors[prefix + name] = getattr(term, name)
            path = out / f"term_c{plan.case}_{i}.py"
            path.write_text(render_term(pattern, term.expr, seq_len).source)
            entry["kernel"], entry["tensors"] = path.name, prefix + "*"
            term_paths.append(path)
    torch.save(tensors, plan_pt)
    plan_json.write_text(json.dumps({"cases": summary["cases"]}, indent=2) + "\n")
    manifest_path.write_text(json.dumps(_manifest(pattern, rendered, layout, seq_len, head_dim,
                                                  dtype, config, summary), indent=2) + "\n")
    return [kernel_path, layout_path, plan_json, plan_pt, *term_paths, manifest_path]


def _manifest(pattern, rendered, layout, seq_len, head_dim, dtype, config, summary) -> dict:
    from .. import __version__

    full, partial = layout.tile_counts()  # as the kernels visit them; no dense tile grid
    grid = max(1, layout.tiles[0] * layout.tiles[1])
    per_case = []
    for c in range(layout.cases):
        per_case.append({"case": c, "full_tiles": int(full[c]), "partial_tiles": int(partial[c]),
                         "tile_density": int(full[c] + partial[c]) / grid,
                         "plan_terms": [t["kind"] for t in summary["cases"][c]["terms"]]})
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
        "plan": {"file": "plan.json", "tensors": "plan.pt"},
        "pairs_allowed": summary["pairs_allowed"],
        "pairs_computed": summary["pairs_computed"],
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
