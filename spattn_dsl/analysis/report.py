"""The ``Report``: every figure of docs/analysis.md, and its dict / JSON / Markdown forms."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

from .certificate import Certificate, certify
from .formulas import closed_forms, curves, derive
from .propagate import LayerFigures


@dataclass(frozen=True)
class PatternFigures:
    """Mask-level figures of one distinct layer pattern (heads unioned)."""

    name: str
    text: str
    layers: int  # how many layers of the analysed stack use it
    density: float  # allowed pairs / (n * n)
    admissible_density: float  # allowed pairs / admissible pairs
    keys_per_query: float
    tile_density: float | None  # visited tiles / admissible tiles
    waste: float | None  # pairs computed in visited tiles / pairs allowed
    dynamic: bool = False  # densities from the envelope (upper bounds)
    max_keys_per_query: int | None = None  # one query in one head, worst selection


@dataclass
class Report:
    name: str
    kind: str  # "pattern" or "model"
    n: int
    depth: int  # analysed layers
    causal: bool  # admissible pairs are k <= q
    method: str
    exact: bool
    bounds: dict  # name of every figure that is a bound -> "upper" or "lower"
    diameter: float
    reach_to_first: float
    coverage_depth: float
    coverage: float
    uncovered_pair: tuple | None
    density: float
    admissible_density: float
    keys_per_query: float
    tile: tuple
    tile_density: float | None
    waste: float | None
    layers: list
    patterns: list
    formulas: dict = field(default_factory=dict)
    formula_values: dict = field(default_factory=dict)
    formula_curves: dict = field(default_factory=dict)  # name -> values at L = 1 .. depth
    formula_conditions: list = field(default_factory=list)  # where the formulas were derived
    certificate: Certificate | None = None  # Yun et al. 2020, see certificate.py
    notes: list = field(default_factory=list)
    sampled: dict = field(default_factory=dict)  # bounds from exact search from sampled sources
    pictures: list = field(default_factory=list, repr=False)  # (name, grid, tile size)
    # the largest number of keys one query attends in one head, every selection (docs/language.md §5)
    max_keys_per_query: int | None = None

    @property
    def model_depth(self) -> int:
        return self.depth

    def to_dict(self) -> dict:
        out = {name: _plain(getattr(self, name)) for name in _DICT_FIELDS}
        out["layers"] = [_plain(dataclasses.asdict(x)) for x in self.layers]
        out["patterns"] = [_plain(dataclasses.asdict(x)) for x in self.patterns]
        out["formulas"] = {name: str(expr) for name, expr in self.formulas.items()}
        out["formula_values"] = _plain(self.formula_values)
        out["formula_curves"] = _plain(self.formula_curves)
        out["formula_conditions"] = list(self.formula_conditions)
        out["certificate"] = self.certificate.to_dict() if self.certificate else None
        return out

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_markdown(self) -> str:
        from .render import markdown
        return markdown(self)

    def __str__(self) -> str:
        from .render import text
        return text(self)


def annotate(report: Report, patterns) -> Report:
    """Attach the closed forms (a stack of one distinct pattern) and the certificate.

    ``patterns``: the distinct layer patterns of the analysed stack."""
    if len(patterns) == 1:
        pattern = patterns[0]
        report.formulas, report.formula_values = closed_forms(
            pattern, report.n, report.depth, report.causal)
        report.formula_conditions = derive(pattern, report.n, report.causal)[1]
        report.formula_curves = curves(pattern, report.formulas, report.n, report.depth)
    # the sampled method's coverage depth is a lower bound: it proves no reach within p
    lower_only = report.method.startswith("sampled") and "coverage_depth" in report.bounds
    depth = None if lower_only else report.coverage_depth
    report.certificate = certify(patterns, report.n, report.causal, depth, report.exact)
    _kernel_tile_figures(report, patterns)
    return report


# Token-grid tiles up to which the report builds the kernels' plan (at 128-token tiles:
# n = 131072, a few seconds for a strided pattern); beyond, the mask's tiles stand in.
# where(...), complements and random links are classified tile by tile, some pair by pair
# (a where(...) at 65536 tokens took minutes): a smaller grid for them.
PLAN_TILES_MAX = 1 << 20
PLAN_TILES_MAX_GENERIC = 1 << 12


def _plan_tiles_max(pattern) -> int:
    from ..ir import nodes as N

    generic = (N.Compare, N.Complement, N.Difference, N.Random)
    return PLAN_TILES_MAX_GENERIC if any(isinstance(node, generic)
                                         for node in N.walk(pattern.expr)) else PLAN_TILES_MAX


def plan_tile_figures(pattern, n: int, tile, causal: bool):
    """(tile density, waste) of the plan the kernels run on ``pattern`` at ``n`` tokens and
    ``tile = (bm, bn)`` (``runtime.lowering.case_plans``: per head case, its terms, each on
    its own grid: a stride's residue classes, gathered columns, ...).

    Waste: pairs computed (the visited tiles of every term, whole tiles) / pairs allowed, over
    all head cases. Tile density: pairs computed / the area of the token grid's admissible
    tiles, the mean over head cases (for a plan of one grid term, visited tiles / admissible
    tiles). None when the grid has more than ``PLAN_TILES_MAX`` tiles (``_plan_tiles_max``)."""
    from ..layout.plan import term_pairs
    from ..runtime.lowering import case_plans

    bm, bn = tile
    rows, cols = -(-n // bm), -(-n // bn)
    if rows * cols > _plan_tiles_max(pattern):
        return None
    if causal:  # tile row r holds queries up to min(n, (r + 1) * bm) - 1
        last = [min(n, (r + 1) * bm) - 1 for r in range(rows)]
        admissible = sum(min(cols, q // bn + 1) for q in last)
    else:
        admissible = rows * cols
    densities, computed, allowed = [], 0, 0
    for plan in case_plans(pattern, n, n, bm, bn):
        densities.append(plan.pairs_computed / (admissible * bm * bn))
        computed += plan.pairs_computed
        allowed += sum(term_pairs(term, n, n) for term in plan.terms)
    return sum(densities) / len(densities), (computed / allowed if allowed else None)


def _kernel_tile_figures(report: Report, patterns):
    """Tile density and waste of every pattern from the kernels' plan; where the plan is not
    built, the mask's tiles (all heads on one grid) stay, and a note says so."""
    if report.tile_density is None:
        return  # no tile figures at this length (a note says so)
    figures, reason = {}, None
    for pattern in patterns:
        try:
            found = plan_tile_figures(pattern, report.n, report.tile, report.causal)
        except Exception as why:  # noqa: BLE001 - a plan the kernels refuse: keep the mask's
            found, reason = None, f"{type(why).__name__}: {why}"
        if found is None:
            reason = reason or (f"the report builds it up to {_plan_tiles_max(pattern):,} "
                                f"tiles of {report.tile[0]}x{report.tile[1]} for this pattern")
            report.notes.append(
                "tile density and waste count the tiles of the mask (all heads on one grid), "
                f"not those of the kernels' plan ({reason})")
            return
        figures[pattern.name, pattern.text] = found
    report.patterns = [dataclasses.replace(f, tile_density=figures[f.name, f.text][0],
                                           waste=figures[f.name, f.text][1])
                       if (f.name, f.text) in figures else f for f in report.patterns]
    total = sum(f.layers for f in report.patterns)
    for name in ("tile_density", "waste"):
        values = [(getattr(f, name), f.layers) for f in report.patterns]
        if total and all(v is not None for v, _ in values):
            setattr(report, name, sum(v * c for v, c in values) / total)


_DICT_FIELDS = ("name", "kind", "n", "depth", "causal", "method", "exact", "bounds", "diameter",
                "reach_to_first", "coverage_depth", "coverage", "uncovered_pair", "density",
                "admissible_density", "keys_per_query", "max_keys_per_query", "tile",
                "tile_density", "waste", "notes", "sampled")


def _plain(value):
    """JSON-ready: inf as "inf", tuples as lists, numpy scalars as Python numbers."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if hasattr(value, "item"):
        return _plain(value.item())
    return value


__all__ = ["Report", "PatternFigures", "LayerFigures", "Certificate", "annotate"]
