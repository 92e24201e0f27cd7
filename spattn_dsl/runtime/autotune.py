"""Autotuning over tile configurations, each with its own layout; results persist on disk
per (pattern, kernel, shapes, dtype, GPU) so that a second process does not tune again."""
from __future__ import annotations

import sys

import torch

from ..codegen.render import TileConfig, kernel_key
from . import cache
from .launch import backward_delta, backward_dkdv, backward_dq, forward

TUNING_FILE = "autotune.json"


def _confirm(best, timings, attn, q, k, v, scale, configs):
    """Time the two fastest configs once more and keep the faster (one noisy run should not
    decide)."""
    import triton.testing

    ranked = sorted((ms, i) for i, (c, ms) in enumerate(timings.items()))[:2]
    by_name = {str(c): c for c in configs}
    names = list(timings)
    contenders = []
    for _, i in ranked:
        config = by_name[names[i]]
        plan = attn._make_plan(q.shape[2], k.shape[2], config, q.device)
        ms = triton.testing.do_bench(lambda: forward(plan, q, k, v, scale), warmup=25, rep=100,
                                     return_mode="median")
        timings[names[i]] = min(timings[names[i]], ms)
        contenders.append((ms, config, plan))
    return min(contenders, key=lambda c: c[0]) if contenders else best


def tuning_key(pattern, q, k) -> str:
    gpu = torch.cuda.get_device_name(q.device) if q.device.type == "cuda" else "cpu"
    batch, heads, n_q, head_dim = q.shape
    return "|".join(str(x) for x in (pattern.hash, kernel_key(pattern.at(k.shape[2])), batch,
                                      heads, k.shape[1], n_q, k.shape[2], head_dim,
                                      str(q.dtype).replace("torch.", ""), gpu))


def announce(attn, q, k, what: str, count: int) -> None:
    """One line on stderr before a tuning run (seconds to a minute, once per problem)."""
    print(f"spattn: tuning {what} tiles of pattern {attn.pattern.name!r} for q {list(q.shape)}, "
          f"k {list(k.shape)}, {str(q.dtype).replace('torch.', '')}: {count} configs, once per "
          f"problem and GPU (cached)", file=sys.stderr, flush=True)


def time_configs(attn, configs, plan_of, launch, label: str):
    """(best (ms, config, plan) or None, {config: ms}): each config's plan timed by
    ``do_bench``; configs that fail to compile or launch (shared memory, registers) are skipped."""
    import triton.testing

    best, timings = None, {}
    for config in configs:
        plan = plan_of(config)
        if plan is None:
            continue
        try:
            launch(plan)
            torch.cuda.synchronize()
            ms = triton.testing.do_bench(lambda: launch(plan), warmup=25, rep=100,
                                         return_mode="median")
        except Exception as error:  # out of shared memory or registers: skip this config
            if attn.verbose:
                print(f"spattn autotune {label}: {config} failed: {type(error).__name__}",
                      file=sys.stderr)
            continue
        timings[str(config)] = ms
        if attn.verbose:
            print(f"spattn autotune {label}: {config}: {ms:.3f} ms", file=sys.stderr)
        if best is None or ms < best[0]:
            best = (ms, config, plan)
    if best is None:
        raise RuntimeError(f"spattn: no {label} tile configuration compiled for {attn.pattern.text}")
    return best, timings


def _row(config: TileConfig) -> list:
    return [config.block_m, config.block_n, config.num_warps, config.num_stages, config.merged,
            config.descriptors]


def _config_of(row) -> TileConfig | None:
    """The TileConfig a stored row describes, or None when the row is not one ``_row`` writes
    (six values: power-of-two tiles >= 16, positive warps and stages, merged and descriptors
    flags)."""
    if not isinstance(row, list) or len(row) != 6:
        return None
    sizes, flags = row[:4], row[4:]
    if not all(type(x) is int and x > 0 for x in sizes) or any(type(f) is not bool for f in flags):
        return None
    block_m, block_n = sizes[:2]
    if any(b < 16 or b & (b - 1) for b in (block_m, block_n)):
        return None
    return TileConfig(*sizes, *flags)


def known_configs(key: str, parts: tuple) -> list | None:
    """The stored configs of a tuning entry (one per part), or None when there is none or it
    is malformed (warned about once; the problem is tuned again and the entry replaced)."""
    entry = cache.load_json(TUNING_FILE).get(key)
    if entry is None:
        return None
    configs = [_config_of(entry.get(part)) if isinstance(entry, dict) else None
               for part in parts]
    if None in configs:
        cache.warn_once(f"spattn: malformed tuning entry {key!r} in {TUNING_FILE}; tuning again")
        return None
    return configs


def tune(attn, q, k, v, scale, configs):
    """The fastest forward config's plan (read from the tuning file when this problem was
    tuned)."""
    key = tuning_key(attn.pattern, q, k)
    n_q, n_k = q.shape[2], k.shape[2]
    known = known_configs(key, ("config",))
    if known is not None:
        return attn._make_plan(n_q, n_k, known[0], q.device)
    announce(attn, q, k, "forward", len(configs))

    def plan_of(config):
        plan = attn._make_plan(n_q, n_k, config, q.device)
        return None if config.merged and not plan.merged else plan  # gathered: no one loop

    best, timings = time_configs(attn, configs, plan_of,
                                 lambda plan: forward(plan, q, k, v, scale), "forward")
    ms, config, plan = _confirm(best, timings, attn, q, k, v, scale, configs)
    cache.update_json(TUNING_FILE, key, {"config": _row(config), "ms": ms, "timings": timings})
    return plan


def tune_backward(attn, q, k, v, scale, dq_configs, dkdv_configs):
    """(dQ plan, dK/dV plan), each kernel's fastest config timed alone on random gradients
    (read from the tuning file when this problem was tuned)."""
    key = "backward|" + tuning_key(attn.pattern, q, k)
    n_q, n_k = q.shape[2], k.shape[2]
    known = known_configs(key, ("dq", "dkdv"))
    if known is not None:
        return tuple(attn._make_plan(n_q, n_k, config, q.device) for config in known)
    announce(attn, q, k, "backward", len(dq_configs) + len(dkdv_configs))
    out, lse = attn.run_forward(q, k, v, None, scale)
    grad_out = torch.randn_like(q)
    delta = backward_delta(attn._make_plan(n_q, n_k, dq_configs[0], q.device), grad_out, out)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    kernels = {
        "dq": (dq_configs, lambda plan: backward_dq(plan, grad_out, q, k, v, lse, delta, scale,
                                                    None, dq)),
        "dkdv": (dkdv_configs, lambda plan: backward_dkdv(plan, grad_out, q, k, v, lse, delta,
                                                          scale, None, dk, dv)),
    }
    chosen, entry = [], {}
    for part, (configs, launch) in kernels.items():
        (ms, config, plan), timings = time_configs(
            attn, configs, lambda c: attn._make_plan(n_q, n_k, c, q.device), launch, part)
        entry[part], entry[part + "_timings"] = _row(config), timings
        chosen.append(plan)
    cache.update_json(TUNING_FILE, key, entry)
    return tuple(chosen)
