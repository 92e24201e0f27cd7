"""From a pattern to launchable plans: the plan pass (``layout.plan``) per head case, each
term's kernel rendered and imported, and the tile size chosen by the plan's cost."""
from __future__ import annotations

from dataclasses import replace

from ..codegen.render import TileConfig, render_term, term_key
from ..ir.evaluate import head_count
from ..layout.classify import LayoutLimitError
from ..layout.plan import grid_layout, plan_pattern
from . import cache
from .launch import Plan, TermLaunch

MODES = ("auto", "grid", "terms")
_CASE_PLANS: dict = {}


def case_plans(pattern, n_q: int, n_k: int, block_m: int, block_n: int, mode: str = "auto"):
    """The plan pass's result (one ``CasePlan`` per head case), cached in memory."""
    from ..codegen.render import kernel_key

    if mode not in MODES:
        raise ValueError(f"lowering must be one of {', '.join(MODES)}, got {mode!r}")
    concrete = pattern.at(n_k)
    key = (kernel_key(concrete), n_q, n_k, block_m, block_n, mode)
    plans = _CASE_PLANS.get(key)
    if plans is None:
        plans = plan_pattern(concrete, n_q, n_k, [(block_m, block_n)], mode, cached_grid_layout)
        _CASE_PLANS[key] = plans
    return plans


def cached_grid_layout(expr, n_q: int, n_k: int, block_m: int, block_n: int):
    """A token-grid layout from memory, then disk (``runtime.cache``), else built."""
    name = f"{term_key(expr)}-q{n_q}-k{n_k}-m{block_m}-n{block_n}"
    return cache.layout(name, n_q, n_k, block_m, block_n,
                        lambda: grid_layout(expr, n_q, n_k, block_m, block_n), expr=expr)


def plan_cost(pattern, n_q: int, n_k: int, config: TileConfig, mode: str = "auto") -> float:
    return sum(p.cost(config.merged) for p in case_plans(pattern, n_q, n_k, config.block_m,
                                                         config.block_n, mode))


def cheapest(pattern, n_q: int, n_k: int, configs, mode: str = "auto") -> TileConfig:
    """The config whose plan costs least (the first of equals: the space's preference);
    configs whose layouts are too large to build are skipped (the first such error is
    raised when none fits)."""
    costs, refused = [], None
    for config in configs:
        try:
            costs.append((plan_cost(pattern, n_q, n_k, config, mode), config))
        except LayoutLimitError as error:
            refused = refused or error
    if not costs:
        if refused is None:
            raise ValueError("no tile configuration to choose from")
        raise refused
    return min(costs, key=lambda pair: pair[0])[1]


def launch_plan(pattern, n_q: int, n_k: int, config: TileConfig, device,
                mode: str = "auto") -> Plan:
    """A ``launch.Plan``: per head case its terms with kernels, layouts and gathers on the
    device; each term's tiles as the plan chose them, warps and stages from ``config``."""
    cases = []
    for case_plan in case_plans(pattern, n_q, n_k, config.block_m, config.block_n, mode):
        terms = []
        for term in case_plan.terms:
            rendered = render_term(pattern, term.expr, n_k)
            module = cache.import_source(rendered.key, rendered.source)
            term_config = replace(config, block_m=term.block_m, block_n=term.block_n)
            if term.block_m * term.block_n < 64 * 64:  # narrow tiles of gathered terms
                term_config = replace(term_config, num_warps=min(config.num_warps, 4))
            terms.append(TermLaunch(module, term.layout, term_config, device, term.q_gather,
                                    term.k_gather, term.kind, n_k, residue=term.residue))
        cases.append(terms)
    assert len(cases) == head_count(pattern.at(n_k))
    return Plan(cases, config)
