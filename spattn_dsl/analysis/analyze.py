"""``analyze(pattern_or_model, n, layers=None)``: SPEC section 4 at real sequence lengths.

Method, chosen per stack (every layer must fit the same one):
1. ``intervals`` -- every layer's rows are a prefix plus one interval (windows, bands, causal,
   chunks, sinks, global tokens, prefixes and their unions / intersections): exact, O(n) per
   layer, any length.
2. ``blocks(b)`` -- every head of every layer is ``blocks(b) { ... }`` (BigBird): exact, on the
   grid of ceil(n/b) blocks.
3. ``tokens`` -- the boolean token graph: exact, any pattern, n <= BRUTE_FORCE_MAX only.
4. ``intervals`` without the random keys, when only ``random`` keeps a stack out of (1): the
   receptive fields and coverage are then lower bounds and the hop distances upper bounds
   (random edges only add paths); the report lists those figures under ``bounds``.
Otherwise ``AnalysisError`` says what has no fast method and up to which n the exact one runs.
"""
from __future__ import annotations

import math

import numpy as np

from ..ir.program import Model, Pattern
from .engines import GridEngine, SpanEngine
from .masks import LayerMask, layer_mask
from .propagate import Powers, all_full, has_pair, layer_figures, least_depth, period
from .report import PatternFigures, Report, annotate
from .rows import NotRepresentable, Rows
from .tiles import picture, tile_figures

BRUTE_FORCE_MAX = 2048
GRID_MAX = 4096
DEFAULT_MAX_LAYERS = 32
PICTURES = 4
BOUND_FIGURES = ("rf_min", "rf_mean", "rf_max", "rf_last", "reach", "span", "coverage",
                 "diameter", "reach_to_first", "coverage_depth")


class AnalysisError(ValueError):
    """No exact method fits this pattern at this length."""


def analyze(pattern_or_model, n: int, layers: int | None = None, *, tile=(128, 128),
            method: str = "auto") -> Report:
    """The graph-diameter report of a pattern (a homogeneous stack) or a model (its schedule).

    ``layers``: how many layers to report (a model: default its depth, the schedule repeated
    beyond it; a pattern: default the depth that settles the diameter, at most 32).
    ``method``: "auto", "intervals", "blocks" or "tokens" (see the module docstring).
    """
    if n < 1:
        raise ValueError(f"the sequence length must be >= 1, got {n}")
    schedule, name, kind = _schedule(pattern_or_model)
    distinct = list(dict.fromkeys(schedule))
    masks, engine_name, exact = _masks(distinct, n, method)
    causal = all(m.is_causal() for m in masks.values())
    engine = _engine(engine_name, masks, n, causal)
    relation_of = {p: _relation(engine, masks[p]) for p in distinct}
    relations = [relation_of[p] for p in schedule]
    admissible = n * (n + 1) // 2 if causal else n * n

    depth, records, found = _records(engine, relations, layers, kind, admissible, len(schedule))
    powers = None
    if "full" not in found or "first" not in found:
        whole = found["period"] if "period" in found else period(engine, relations)
        powers = Powers(engine, whole)
    coverage_depth = found.get("full")
    if coverage_depth is None:
        coverage_depth = least_depth(engine, relations, all_full(engine), powers)
    reach_to_first = found.get("first")
    if reach_to_first is None:
        reach_to_first = least_depth(engine, relations, has_pair(engine, n - 1, 0), powers)
    uncovered = found.get("uncovered")

    figures = [_pattern_figures(p, masks[p], schedule, n, causal, tile, admissible)
               for p in distinct]
    report = Report(
        name=name, kind=kind, n=n, depth=depth, causal=causal,
        method=engine_name, exact=exact, bounds=() if exact else BOUND_FIGURES,
        diameter=coverage_depth, reach_to_first=reach_to_first, coverage_depth=coverage_depth,
        coverage=records[-1].coverage if records else 1.0 / max(n, 1),
        uncovered_pair=uncovered, density=_mean(figures, "density", len(schedule)),
        admissible_density=_mean(figures, "admissible_density", len(schedule)),
        keys_per_query=_mean(figures, "keys_per_query", len(schedule)),
        tile=tuple(tile), tile_density=_mean(figures, "tile_density", len(schedule)),
        waste=_mean(figures, "waste", len(schedule)), layers=records, patterns=figures)
    report.notes.extend(_notes(report, engine_name, exact))
    report.pictures.extend(_pictures(distinct, masks, n))
    return annotate(report, distinct)


# ---------------------------------------------------------------- the stack
def _schedule(obj):
    if isinstance(obj, Model):
        return list(obj.layers), obj.name, "model"
    if isinstance(obj, Pattern):
        return [obj], obj.name, "pattern"
    raise TypeError(f"analyze() takes a Pattern or a Model, got {type(obj).__name__}")


def _masks(distinct, n: int, method: str):
    """The layer masks and the method name; raises AnalysisError if none fits."""
    concrete = {p: p.at(n) for p in distinct}
    tried = []
    order = {"auto": ["intervals", "blocks", "tokens", "bounded"], "intervals": ["intervals"],
             "blocks": ["blocks"], "tokens": ["tokens"]}.get(method)
    if order is None:
        raise ValueError(f"unknown method {method!r}: use auto, intervals, blocks or tokens")
    for kind in order:
        try:
            masks = _try(kind, concrete, n, explicit=method != "auto")
        except NotRepresentable as why:
            tried.append(f"{kind}: {why}")
            continue
        if kind == "intervals" and any(m.rows.extra is not None for m in masks.values()):
            tried.append("intervals: random keys are not intervals")
            continue
        if kind == "bounded":
            return masks, "intervals", False
        if kind == "blocks":
            return masks, f"blocks({next(iter(masks.values())).b})", True
        return masks, kind, True
    raise AnalysisError(f"no exact analysis method fits at n = {n}: " + "; ".join(tried))


def _try(kind, concrete, n, explicit):
    if kind in ("intervals", "bounded"):
        masks = {p: layer_mask(e, n, "rows") for p, e in concrete.items()}
        for mask in masks.values():  # raises when a relation's interval misses its query
            _relation(SpanEngine(n, causal=False), mask)
        return masks
    if kind == "blocks":
        masks = {p: layer_mask(e, n, "blocks") for p, e in concrete.items()}
        sizes = {m.b for m in masks.values()}
        if len(sizes) != 1 or -(-n // sizes.pop()) > GRID_MAX:
            raise NotRepresentable(f"needs one block size with at most {GRID_MAX} blocks")
        return masks
    if n > BRUTE_FORCE_MAX and not explicit:
        raise NotRepresentable(f"the token graph is only built for n <= {BRUTE_FORCE_MAX}")
    return {p: layer_mask(e, n, "tokens") for p, e in concrete.items()}


def _engine(name, masks, n, causal):
    if name == "intervals":
        return SpanEngine(n, causal)
    return GridEngine(n, next(iter(masks.values())).b, causal)


def _relation(engine, mask: LayerMask):
    if isinstance(engine, SpanEngine):
        r = mask.rows
        return engine.relation(Rows(r.pre, r.lo, r.hi))  # random keys dropped (a bound)
    return engine.relation(mask.grid)


def _records(engine, relations, layers, kind, admissible, period_length):
    """Per-layer figures; also the depths found on the way (full coverage, pair (n-1, 0))."""
    if layers is None:
        layers = period_length if kind == "model" else None
    limit = layers if layers is not None else DEFAULT_MAX_LAYERS
    state, records, found = engine.identity(), [], {}
    if all_full(engine)(state):
        found["full"] = 0
    if engine.has(state, engine.n - 1, 0):
        found["first"] = 0
    for layer in range(1, limit + 1):
        previous = state
        state = engine.compose(relations[(layer - 1) % period_length], state)
        records.append(layer_figures(engine, state, layer, admissible))
        if layer == period_length:
            found["period"] = state
        if "full" not in found and records[-1].full_rows == 1.0:
            found["full"] = layer
        if "first" not in found and engine.has(state, engine.n - 1, 0):
            found["first"] = layer
        settled = "full" in found or (period_length == 1 and engine.same(state, previous))
        if layers is None and settled:
            if "full" not in found:
                found["full"] = math.inf
            break
    if "full" not in found or found["full"] == math.inf:
        found["uncovered"] = engine.missing(state)
    return len(records), records, found


# ---------------------------------------------------------------- mask-level figures
def _pattern_figures(pattern, mask, schedule, n, causal, tile, admissible):
    per_query = mask.pairs_per_query()
    allowed = int(per_query.sum())
    bm, bn = tile
    tile_density, waste = tile_figures(mask.rectangles(), allowed, n, bm, bn, causal)
    return PatternFigures(
        name=pattern.name, text=pattern.text, layers=schedule.count(pattern),
        density=allowed / (n * n), admissible_density=allowed / admissible,
        keys_per_query=allowed / n, tile_density=tile_density, waste=waste)


def _mean(figures, name, total_layers):
    values = [(getattr(f, name), f.layers) for f in figures]
    if any(v is None for v, _ in values):
        return None
    return sum(v * count for v, count in values) / total_layers


def _pictures(distinct, masks, n):
    shown = []
    for pattern in distinct[:PICTURES]:
        grid, tile = picture(masks[pattern].rectangles(), n)
        if grid is not None:
            shown.append((pattern.name, np.asarray(grid), tile))
    return shown


def _notes(report: Report, engine_name: str, exact: bool):
    notes = []
    if report.causal:
        notes.append("every layer is causal: admissible pairs are k <= q and the diameter "
                     "is the causal diameter")
    if not exact:
        notes.append("random keys were left out of the propagation: receptive fields and "
                     "coverage are lower bounds, hop distances (diameter, reach to first, "
                     "coverage depth) upper bounds; densities are exact")
    if report.tile_density is None:
        notes.append(f"tile figures skipped: more than {1 << 24} tiles of {report.tile}")
    if report.kind == "model" and report.depth != len(report.layers):
        notes.append("layer records stop early")
    return notes
