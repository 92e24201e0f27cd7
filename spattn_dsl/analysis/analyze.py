"""``analyze(pattern_or_model, n, layers=None)``: docs/analysis.md at real sequence lengths.

Method, chosen per stack (every layer must fit the same one):
1. ``intervals`` -- every layer's rows are a prefix plus one interval (windows, bands, causal,
   chunks, sinks, global tokens, prefixes and their unions / intersections): exact, O(n) per
   layer, any length.
2. ``blocks(b)`` -- every head of every layer is ``blocks(b) { ... }`` (BigBird): exact, on the
   grid of ceil(n/b) blocks.
   Beyond GRID_MAX blocks, ``blocks(b) sources``: the block relation as terms (sparse rows),
   every block a source, as bits (BigBird at 1M tokens: 16384 blocks).
3. ``periodic`` -- causal stacks of terms (``terms.py``: strides, dilations, chunks, summaries,
   masks, ``where`` on q - k, q or k) whose masks are P-periodic from position H on: exact from
   the H + P sources 0 .. H + P - 1 (``sources.PeriodicSources`` says why).
4. ``token sources`` -- any term-form stack (bidirectional, random keys), every token a
   source, as bits: exact, n <= sources.ALL_SOURCES_MAX.
5. ``tokens`` -- the boolean token graph: exact, any pattern, n <= BRUTE_FORCE_MAX only.
6. ``bound`` -- what none of these fits: the stack without the parts that have no fast form
   (random keys, comparisons mixing q and k) -- a subset of every layer's pairs -- through the
   first method above that takes it. Receptive fields, coverage and densities are then lower
   bounds and hop distances upper bounds; the report lists them under ``bounds``.
7. ``sampled sources`` -- what even that misses, for n <= sources.SAMPLED_MAX: the full stack
   (term form) from sampled sources only (``_sample``). Reach to first is exact; receptive
   fields, coverage and hop distances are lower bounds, listed under ``bounds``.
Dynamic terms (docs/language.md §5, ``dynamic.py``): the stack of static parts goes through the
methods above; its receptive fields and coverage are lower bounds, its hop distances upper
bounds for every selection; densities come from the envelope (upper bounds), and the worst
case of keys per query is exact (``dynamic.worst_case``). Static layers of a model stay exact
up to the first dynamic layer.
``AnalysisError`` only when even that fails, or up front when the length or the random keys
would not fit in memory (``_check_size``). Whatever a method cannot represent after all is
answered by the token graph where n is small (``_fallback``), never by an internal error.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass

import numpy as np

from ..errors import AnalysisError, PatternError
from ..ir import nodes as N
from ..ir.program import Model, Pattern
from . import dynamic as D
from . import sources as S
from .engines import GridEngine, ResidueEngine, SpanEngine
from .masks import TermMask, block_size, layer_mask
from .propagate import (Powers, all_full, has_pair, layer_figures, least_depth, period,
                        stepped_depth)
from .report import PatternFigures, Report, annotate
from .rows import NotRepresentable, Rows
from .terms import block_terms, layer_terms, periodic_head, residue_spans, subset_expr
from .tiles import picture, tile_figures, visited_figures

BRUTE_FORCE_MAX = 2048
GRID_MAX = 1024  # dense block matrices up to here; sparse block rows (bits) beyond
DEFAULT_MAX_LAYERS = 32
MAX_MODEL_LAYERS = 1 << 16  # layers listed one by one
PICTURES = 4
GROWING_FIGURES = ("rf_min", "rf_mean", "rf_max", "rf_last", "reach", "span", "coverage")
HOP_FIGURES = ("diameter", "reach_to_first", "coverage_depth")
BOUND_FIGURES = GROWING_FIGURES + HOP_FIGURES
DENSITY_FIGURES = ("density", "admissible_density", "keys_per_query")
STEP_LIMIT_WORK = 1 << 34  # word operations a stepping engine may spend past the records
# Word operations per layer (``layer_work``) above which every token is not made a source
# (random(4096) at 4096 tokens: 2**30): the bound and sampled methods take the case instead
SOURCES_LAYER_WORK = 1 << 28
SAMPLED_WORK = 1 << 31  # word operations the sampled search may spend in all its layers
# Every method keeps a few int64 arrays per token (about 6 GB at 2**24, as the CLI says)
MAX_LENGTH = 1 << 24
RANDOM_KEYS_MAX = 1 << 24  # drawn keys held at once (n * min(r, n) per random term): 128 MiB
CAUSAL_CHECK_MAX = 1 << 14  # rows evaluated one block at a time to prove a bound causal


def analyze(pattern_or_model, n: int, layers: int | None = None, *, tile=(128, 128),
            method: str = "auto") -> Report:
    """The graph-diameter report of a pattern (a homogeneous stack) or a model (its schedule).

    ``layers``: how many layers to report (a model: default its depth, the schedule repeated
    beyond it; a pattern: default the depth that settles the diameter, at most 32).
    ``method``: "auto" or one of METHODS (see the module docstring); "block sources" forces
    the sparse block engine at any block count.
    """
    if n < 1:
        raise ValueError(f"the sequence length must be >= 1, got {n}")
    original, name, kind = _schedule(pattern_or_model, layers)
    # dynamic terms: the stack of static parts (lower bounds of every selection's stack)
    parts = {p: D.static_part(p) for p in dict.fromkeys(original)}
    schedule = [parts[p] for p in original]
    distinct = list(dict.fromkeys(schedule))
    _check_size(distinct, n)
    closed = _envelopes_causal(original, n)
    try:
        report = _analyze(schedule, distinct, name, kind, n, layers, tile, method, closed)
    except (NotRepresentable, MemoryError) as why:
        report = _fallback(why, schedule, distinct, name, kind, n, layers, tile, method, closed)
    return _finish(report, original, n, tile)


def _fallback(why, schedule, distinct, name, kind, n, layers, tile, method, closed):
    """A method that accepted the stack but could not finish it (a count with too many
    terms, two random draws intersected): the token graph at small n, else AnalysisError."""
    reason = "out of memory" if isinstance(why, MemoryError) else str(why)
    if method == "auto" and n <= BRUTE_FORCE_MAX:
        return _analyze(schedule, distinct, name, kind, n, layers, tile, "tokens", closed)
    raise AnalysisError(f"no analysis method finishes at n = {n} ({reason}); the token graph "
                        f"takes any pattern up to n = {BRUTE_FORCE_MAX}") from None


def _check_size(distinct, n: int):
    """Refuse up front what would not fit: the length, or the random keys to draw."""
    if n > MAX_LENGTH:
        raise AnalysisError(f"analysis keeps several arrays per token: n = {n} is past its "
                            f"limit of 2**{MAX_LENGTH.bit_length() - 1} = {MAX_LENGTH}")
    for pattern in distinct:
        for r, grid in _random_terms(pattern.at(n), n):
            if grid * min(r, grid) > RANDOM_KEYS_MAX:
                raise AnalysisError(
                    f"random({r}) at n = {n} draws {grid * min(r, grid):,} keys (n * r), more "
                    f"than the analysis holds ({RANDOM_KEYS_MAX:,}): use a shorter length or "
                    "fewer random keys")


def _random_terms(expr, n: int):
    """(r, grid length) of every random(...) in a concrete expression."""
    stack = [(expr, n)]
    while stack:
        node, size = stack.pop()
        if isinstance(node, N.Random):
            yield node.r, size
        inner = -(-size // node.size) if isinstance(node, N.Blocks) else size
        stack.extend((child, inner) for child in N.children(node))


def _analyze(schedule, distinct, name, kind, n, layers, tile, method, closed=True) -> Report:
    """``closed``: whether every selection keeps the stack causal (the envelopes are)."""
    chosen = _choose(distinct, n, method)
    masks, engine_name, exact = chosen.masks, chosen.name, chosen.exact
    causal = closed and all(m.is_causal() for m in masks.values())
    unproven = causal and chosen.partial and not _proven_causal(distinct, n)
    if unproven:  # all pairs admissible: every bound stays true whatever the truth is
        causal = False
    engine = chosen.engine(causal)
    relation_of = {p: _relation(engine, masks[p]) for p in distinct}
    relations = [relation_of[p] for p in schedule]
    admissible = n * (n + 1) // 2 if causal else n * n

    depth, records, found = _records(engine, relations, layers, kind, admissible, len(schedule))
    coverage_depth, reach_to_first = found.get("full"), found.get("first")
    capped = False
    if chosen.sampled:
        coverage_depth = reach_to_first = math.inf  # set by _sample
    elif getattr(engine, "stepping", False):
        if coverage_depth is None or reach_to_first is None:
            coverage_depth, reach_to_first, capped, last = stepped_depth(
                engine, relations, found["state"], len(records), coverage_depth,
                reach_to_first, _step_limit(engine, relations, n))
            if coverage_depth == math.inf or capped:
                found["uncovered"] = engine.missing(last)
    else:
        powers = None
        if coverage_depth is None or reach_to_first is None:
            whole = found["period"] if "period" in found else period(engine, relations)
            powers = Powers(engine, whole)
        if coverage_depth is None:
            coverage_depth = least_depth(engine, relations, all_full(engine), powers)
        if reach_to_first is None:
            reach_to_first = least_depth(engine, relations, has_pair(engine, n - 1, 0), powers)
    # a pair missing from a subset of the pairs is not proven missing
    uncovered = found.get("uncovered") if exact or chosen.sampled or capped else None
    bounds = {} if exact else _method_bounds(chosen)
    if capped:
        exact = False
        bounds.update(dict.fromkeys(HOP_FIGURES, "lower"))  # the search stopped: at least

    figures = [_pattern_figures(p, masks[p], schedule, n, causal, tile, admissible)
               for p in distinct]
    report = Report(
        name=name, kind=kind, n=n, depth=depth, causal=causal,
        method=engine_name, exact=exact, bounds=bounds,
        diameter=coverage_depth, reach_to_first=reach_to_first, coverage_depth=coverage_depth,
        coverage=records[-1].coverage if records else 1.0 / max(n, 1),
        uncovered_pair=uncovered, density=_mean(figures, "density", len(schedule)),
        admissible_density=_mean(figures, "admissible_density", len(schedule)),
        keys_per_query=_mean(figures, "keys_per_query", len(schedule)),
        tile=tuple(tile), tile_density=_mean(figures, "tile_density", len(schedule)),
        waste=_mean(figures, "waste", len(schedule)), layers=records, patterns=figures)
    if chosen.sampled:
        _sample(report, schedule, n, causal, upper=None)
    elif "random keys" in chosen.dropped:
        _sample(report, schedule, n, causal)
    report.notes.extend(_notes(report, chosen, capped))
    if unproven:
        report.notes.append(
            "not proven causal: parts were left out and the mask was too long to check pair "
            "by pair, so every pair counts as admissible (coverage is a lower bound over all "
            "pairs, hop distances upper bounds)")
    report.pictures.extend(_pictures(distinct, masks, n))
    return annotate(report, distinct)


def _method_bounds(chosen) -> dict:
    """Which figures an inexact method bounds, and from which side: a subset of the pairs
    (the bound method) gives lower receptive fields and upper hop distances; sampled sources
    give lower bounds of both."""
    bounds = dict.fromkeys(GROWING_FIGURES, "lower")
    bounds.update(dict.fromkeys(HOP_FIGURES, "lower" if chosen.sampled else "upper"))
    if chosen.partial:
        bounds.update(dict.fromkeys(DENSITY_FIGURES, "lower"))
    return bounds


# ---------------------------------------------------------------- dynamic terms
def _envelopes_causal(schedule, n: int) -> bool:
    """Whether every selection keeps every dynamic layer causal: its envelope is causal
    (else all pairs are admissible and every bound stays true)."""
    envelopes = list(dict.fromkeys(D.envelope(p) for p in schedule if p.dynamic))
    if not envelopes:
        return True
    try:
        chosen = _choose(envelopes, n, "auto")
    except (AnalysisError, NotRepresentable):
        return _proven_causal(envelopes, n)
    causal = all(m.is_causal() for m in chosen.masks.values())
    return causal and (not chosen.partial or _proven_causal(envelopes, n))


def _finish(report: Report, original, n: int, tile) -> Report:
    """The worst case of keys per query; for dynamic layers, the figures as bounds."""
    distinct = list(dict.fromkeys(original))
    counts = _row_counts(n)
    worst = {p: D.worst_case(p, n, counts) for p in distinct}
    report.patterns = [_layer_figures(p, report, original, n, tile, worst[p])
                       for p in distinct]
    known = [w.keys for w in worst.values() if w.keys is not None]
    report.max_keys_per_query = max(known) if len(known) == len(worst) else None
    if report.max_keys_per_query is not None and \
            not all(w.exact for w in worst.values() if w.keys == report.max_keys_per_query):
        report.bounds["max_keys_per_query"] = "upper"
    first = next((i for i, p in enumerate(original) if p.dynamic), None)
    if first is None:
        return report
    _dynamic_bounds(report, original, first)
    return report


def _row_counts(n: int):
    """``counts(expr)``: keys per row of a static expression by the fast masks (None where
    none applies exactly)."""
    def counts(expr):
        pattern = Pattern(expr)
        try:
            chosen = _choose([pattern], n, "auto")
            if chosen.partial:
                return None
            return np.asarray(chosen.masks[pattern].pairs_per_query())
        except (AnalysisError, NotRepresentable, MemoryError):
            return None
    return counts


def _layer_figures(pattern, report, original, n, tile, worst) -> PatternFigures:
    """Mask-level figures of one distinct layer: a dynamic one's from its envelope."""
    figures = next((f for f in report.patterns if f.name == pattern.name
                    and f.text == D.static_part(pattern).text), None)
    if pattern.dynamic or figures is None:
        figures = _envelope_figures(pattern, original, n, report, tile)
    return dataclasses.replace(figures, text=pattern.text, layers=original.count(pattern),
                               dynamic=pattern.dynamic, max_keys_per_query=worst.keys)


def _envelope_figures(pattern, original, n, report, tile) -> PatternFigures:
    envelope = D.envelope(pattern)
    admissible = n * (n + 1) // 2 if report.causal else n * n
    try:
        chosen = _choose([envelope], n, "auto")
        if not chosen.partial:
            figures = _pattern_figures(envelope, chosen.masks[envelope], [], n,
                                       report.causal, tile, admissible)
            # pairs computed / allowed has no bound: it depends on the selection
            return dataclasses.replace(figures, waste=None)
    except (AnalysisError, NotRepresentable, MemoryError):
        pass
    return PatternFigures(pattern.name, pattern.text, original.count(pattern), None, None,
                          None, None, None)


def _dynamic_bounds(report: Report, original, first: int):
    """Relabel a report of the static parts as bounds over every selection."""
    total = len(original)
    for name in DENSITY_FIGURES + ("tile_density", "waste"):
        setattr(report, name, _mean(report.patterns, name, total))
    conflicting = []
    for name, side in [(f, "lower") for f in GROWING_FIGURES] + \
            [(f, "upper") for f in HOP_FIGURES] + \
            [(f, "upper") for f in DENSITY_FIGURES + ("tile_density",)]:
        if name in GROWING_FIGURES and first >= report.depth:
            continue  # every analysed layer is static
        if name in HOP_FIGURES and name not in report.bounds and getattr(report, name) <= first:
            continue  # reached within the static layers before the first dynamic one
        if report.bounds.get(name, side) != side:
            conflicting.append(name)
        report.bounds[name] = report.bounds.get(name, side)
    report.exact = False
    report.uncovered_pair = None  # missing from the static part only: a selection may add it
    report.layers = [dataclasses.replace(r, exact=r.exact and r.layer <= first)
                     for r in report.layers]
    report.notes.append(_dynamic_note(report, original, first))
    if report.diameter == math.inf:
        report.notes.append(
            "warning: the static part alone does not connect every admissible pair (the "
            "diameter bound is inf): no selection is guaranteed to connect it")
    if conflicting:
        report.notes.append(f"{', '.join(conflicting)}: bounds of the static part from the "
                            "other side, so no bound for the dynamic stack")
    report.notes.append("closed forms and the certificate are the static part's: a "
                        "certificate holds for every selection, a failed one proves nothing")


def _dynamic_note(report, original, first) -> str:
    dynamic = sorted({i + 1 for i, p in enumerate(original) if p.dynamic})
    where = "" if report.kind == "pattern" else \
        f" (dynamic layers: {_layer_ranges(dynamic)}; layers before {first + 1} are exact)"
    return ("dynamic terms: figures hold for every selection" + where + ": receptive "
            "fields, reach and coverage are lower bounds and hop distances (diameter, reach "
            "to first, coverage depth) upper bounds, from the static part (every dynamic term "
            "replaced by none); densities are upper bounds, from the envelope (replaced by "
            "dense); max keys per query is the exact worst case (static keys plus budget, "
            "capped by the candidates) unless marked as a bound")


def _layer_ranges(layers) -> str:
    runs, start = [], None
    for i, layer in enumerate(layers):
        if start is None:
            start = layer
        if i + 1 == len(layers) or layers[i + 1] != layer + 1:
            runs.append(str(start) if start == layer else f"{start}-{layer}")
            start = None
    return ", ".join(runs)


# ---------------------------------------------------------------- the stack
def _schedule(obj, layers=None):
    """(the layers to analyse, name, kind). A model deeper than MAX_MODEL_LAYERS is analysed
    only up to ``layers`` (its schedule is run-length encoded, its layers are not listed)."""
    if isinstance(obj, Model):
        if obj.depth <= MAX_MODEL_LAYERS:
            return list(obj.layers), obj.name, "model"
        if layers is not None and layers <= MAX_MODEL_LAYERS:
            return list(itertools.islice(obj.layers, layers)), obj.name, "model"
        raise PatternError(f"model '{obj.name}' has {obj.depth} layers; analysis follows at "
                           f"most {MAX_MODEL_LAYERS} (ask for fewer layers)", obj.span)
    if isinstance(obj, Pattern):
        return [obj], obj.name, "pattern"
    raise TypeError(f"analyze() takes a Pattern or a Model, got {type(obj).__name__}")


@dataclass
class Choice:
    """The method picked for a stack: its layer masks and how to build its engine."""

    name: str
    masks: dict
    engine: object  # causal -> engine
    exact: bool = True
    partial: bool = False  # the masks are a subset of the pattern's pairs (densities bound)
    dropped: tuple = ()
    sampled: bool = False  # sampled sources only: hop distances come from ``_sample``


METHODS = ("intervals", "blocks", "residues", "periodic", "sources", "tokens")
FORCED = ("block sources", "sampled")  # only when asked for: the sparse grid at any block count


def _choose(distinct, n: int, method: str) -> Choice:
    """The first method that fits (see the module docstring); AnalysisError if none."""
    if method != "auto" and method not in METHODS + FORCED:
        raise ValueError(f"unknown method {method!r}: use auto or one of "
                         f"{', '.join(METHODS + FORCED)}")
    concrete = {p: p.at(n) for p in distinct}
    order = METHODS + ("bound", "sampled") if method == "auto" else (method,)
    tried = []
    for kind in order:
        try:
            choice = _TRY[kind](concrete, n, method != "auto")
        except NotRepresentable as why:
            tried.append(f"{kind}: {why}")
            continue
        return choice
    raise AnalysisError(f"no exact analysis method fits at n = {n}, nor a bound: "
                        + "; ".join(tried))


def _try_intervals(concrete, n, explicit, drop_random=False):
    masks = {p: layer_mask(e, n, "rows") for p, e in concrete.items()}
    for mask in masks.values():  # raises when a relation's interval misses its query
        _relation(SpanEngine(n, causal=False), mask)
    if not drop_random and any(m.rows.extra is not None for m in masks.values()):
        raise NotRepresentable("random keys are not intervals")
    return Choice("intervals", masks, lambda causal: SpanEngine(n, causal))


def _try_blocks(concrete, n, explicit, sparse=False):
    sizes = {block_size(e) for e in concrete.values()}
    if len(sizes) != 1 or None in sizes:
        raise NotRepresentable("not every head of every layer is blocks(b) of one size b")
    b = sizes.pop()
    blocks = -(-n // b)
    if blocks <= GRID_MAX and not sparse:
        masks = {p: layer_mask(e, n, "blocks") for p, e in concrete.items()}
        return Choice(f"blocks({b})", masks, lambda causal: GridEngine(n, b, causal))
    if blocks > S.ALL_SOURCES_MAX:
        raise NotRepresentable(f"more than {S.ALL_SOURCES_MAX} blocks")
    masks = {p: TermMask(n, block_terms(e, n), e, b) for p, e in concrete.items()}
    return Choice(f"blocks({b}) sources", masks, lambda causal: S.BlockSources(n, b, causal))


def _token_terms(concrete, n):
    return {p: TermMask(n, layer_terms(e, n), e) for p, e in concrete.items()}


def _try_residues(concrete, n, explicit):
    masks = _token_terms(concrete, n)
    s, spans = residue_spans([m.terms for m in masks.values()], n)
    for mask, span in zip(masks.values(), spans):
        mask.relation_rows = span
    return Choice(f"residues mod {s}", masks, lambda causal: ResidueEngine(n, s, causal))


def _try_periodic(concrete, n, explicit):
    masks = _token_terms(concrete, n)
    found = periodic_head([m.terms for m in masks.values()], n)
    if found is None:
        raise NotRepresentable("random keys are not periodic")
    head, period = found
    if not all(m.is_causal() for m in masks.values()):
        raise NotRepresentable("only causal stacks are exact from one source per phase")
    if not S.fits_periodic(n, head, period):
        raise NotRepresentable(f"{head + period} sources do not fit at n = {n}")
    count = min(head + period, n)
    return Choice(f"periodic ({count} sources: head {head}, period {period})", masks,
                  lambda causal: S.PeriodicSources(n, head, period))


def _try_sources(concrete, n, explicit):
    if not S.fits_all_sources(n):
        raise NotRepresentable(f"every token a source only for n <= {S.ALL_SOURCES_MAX}")
    masks = _token_terms(concrete, n)
    work = max(layer_work(m.terms, n, -(-n // 64)) for m in masks.values())
    if work > SOURCES_LAYER_WORK and not explicit:
        raise NotRepresentable(f"every token a source costs {work:,} word operations per layer "
                               f"here, past the work limit of {SOURCES_LAYER_WORK:,}")
    return Choice("token sources", masks, lambda causal: S.TokenSources(n, causal))


def layer_work(terms, n: int, words: int) -> int:
    """Word operations of one layer on bit-parallel states of ``words`` words per token
    (``bitsets.apply``): a gather per random key (``n * min(r, n) * words``), a few scans per
    offset piece of the others."""
    work = 0
    for term in terms:
        if term.random is not None:
            work += n * min(term.random[0], n) * words
        else:
            try:
                pieces = len(term.cover())
            except NotRepresentable:
                pieces = 1
            work += 4 * (pieces + 1) * n * words
    return work


def _try_tokens(concrete, n, explicit):
    if n > BRUTE_FORCE_MAX and not explicit:
        raise NotRepresentable(f"the token graph is only built for n <= {BRUTE_FORCE_MAX}")
    masks = {p: layer_mask(e, n, "tokens") for p, e in concrete.items()}
    return Choice("tokens", masks, lambda causal: GridEngine(n, 1, causal))


def _try_bound(concrete, n, explicit):
    """A subset of the pairs through an exact method: labelled bounds."""
    try:
        choice = _try_intervals(concrete, n, explicit, drop_random=True)
        choice.name, choice.exact, choice.dropped = "bound (intervals)", False, ("random keys",)
        return choice
    except NotRepresentable:
        pass
    dropped = []
    subset = {p: subset_expr(e, n, dropped) for p, e in concrete.items()}
    if subset == concrete:
        raise NotRepresentable("nothing to leave out for a bound")
    for kind in ("intervals", "blocks", "residues", "periodic", "sources"):
        try:
            choice = _TRY[kind](subset, n, explicit)
        except NotRepresentable:
            continue
        choice.name = f"bound ({choice.name})"
        choice.exact, choice.partial, choice.dropped = False, True, tuple(dropped)
        return choice
    raise NotRepresentable("no exact method takes even the pattern without its random keys "
                           "and mixed comparisons")


def _try_sampled(concrete, n, explicit):
    """The whole stack from sampled sources only: lower bounds, exact reach to first."""
    if n > S.SAMPLED_MAX:
        raise NotRepresentable(f"sampled sources only for n <= {S.SAMPLED_MAX}")
    choice = Choice("", _token_terms(concrete, n), lambda causal: S.SampledSources(n, causal),
                    exact=False, sampled=True)
    choice.name = f"sampled sources ({len(S.sample_sources(n))} of {n})"
    return choice


_TRY = {"intervals": _try_intervals, "blocks": _try_blocks, "residues": _try_residues,
        "periodic": _try_periodic, "sources": _try_sources, "tokens": _try_tokens,
        "bound": _try_bound, "sampled": _try_sampled,
        "block sources": lambda concrete, n, explicit: _try_blocks(concrete, n, explicit, True)}


def _relation(engine, mask):
    if isinstance(engine, ResidueEngine):
        return engine.relation(mask.relation_rows)
    if isinstance(mask, TermMask):
        return engine.relation(mask.terms)
    if isinstance(engine, SpanEngine):
        r = mask.rows
        return engine.relation(Rows(r.pre, r.lo, r.hi))  # random keys dropped (a bound)
    return engine.relation(mask.grid)


def _step_limit(engine, relations, n):
    """How many more layers a stepping engine may run (a budget of word operations)."""
    words = getattr(engine, "words", 1)
    pieces = max(1.0, sum(len(term.cover()) + 1 for rel in relations for term in rel)
                 / len(relations))
    return max(64, int(STEP_LIMIT_WORK // (n * words * pieces * 8)))


def _proven_causal(distinct, n: int) -> bool:
    """Whether every layer's full mask (not the subset a bound propagates) is causal: by the
    terms of a superset (what has no term form replaced so as to allow more pairs:
    ``causal & where(...)`` is causal whatever the comparison), else row block by row
    block up to CAUSAL_CHECK_MAX tokens."""
    from .terms import is_causal
    try:
        supersets = [subset_expr(p.at(n), n, [], negated=True) for p in distinct]
        if is_causal([layer_terms(e, n) for e in supersets], n):
            return True
    except NotRepresentable:
        pass
    if n > CAUSAL_CHECK_MAX:
        return False
    import torch

    from ..ir.evaluate import head_count, select_head
    from ..semantics.reference import evaluate
    keys = torch.arange(n, dtype=torch.int64)
    rows = max(1, (1 << 22) // n)
    for pattern in distinct:
        expr = pattern.at(n)
        for start in range(0, n, rows):
            q = torch.arange(start, min(start + rows, n), dtype=torch.int64)
            for head in range(head_count(expr)):
                ahead = evaluate(select_head(expr, head), q, n) & (keys[None, :] > q[:, None])
                if bool(ahead.any()):
                    return False
    return True


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
    found["state"] = state
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
        found["state"] = state
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
    if isinstance(mask, TermMask):
        tile_density, waste = visited_figures(mask.visited(bm, bn), allowed, n, bm, bn, causal)
    else:
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
        mask = masks[pattern]
        if isinstance(mask, TermMask):
            tile = max(1, -(-n // 256))
            grid = mask.visited(tile, tile)
        else:
            grid, tile = picture(mask.rectangles(), n)
        if grid is not None:
            shown.append((pattern.name, np.asarray(grid), tile))
    return shown


SAMPLED_LAYER_LIMIT = 4096  # layers searched from the sampled sources without an upper bound


def _sample(report: Report, schedule, n: int, causal: bool, upper="diameter"):
    """Exact search from sampled sources through the full stack: tightens the bounds of the
    random-keys bound path, or (``upper=None``, the sampled method) gives the hop distances
    as lower bounds (``inf`` is exact: a fixpoint came first) and reach to first exactly."""
    try:
        terms = {p: layer_terms(p.at(n), n) for p in dict.fromkeys(schedule)}
    except NotRepresentable:
        return
    upper = report.diameter if upper else None
    limit = upper if upper not in (None, math.inf) else SAMPLED_LAYER_LIMIT
    per_layer = max(1, max(layer_work(t, n, 1) for t in terms.values()))
    limit = max(1, min(int(limit), SAMPLED_WORK // per_layer))  # the work limit: fewer layers
    sources, ecc, first = S.sampled_search([terms[p] for p in schedule], n, causal, int(limit))
    known = [e for e in ecc if e is not None]
    if upper is None:  # no upper bound: past the limit, the distance is at least limit + 1
        lower = max(known + [limit + 1] * (len(known) < len(ecc)))
        report.diameter = report.coverage_depth = lower
        report.reach_to_first = limit + 1 if first is None else first
    elif len(known) == len(ecc):
        lower = max(known)
    elif upper != math.inf and limit < upper:  # the work limit stopped it first: > limit
        lower = max(known + [limit + 1])
    else:
        lower = upper if upper != math.inf else None
    report.sampled = {"sources": len(sources), "diameter_at_least": lower,
                      "reach_to_first": first}
    exact_now = []
    if first is not None:
        report.reach_to_first = first
        exact_now.append("reach_to_first")
    if lower is not None and (lower == upper or lower == math.inf):
        report.diameter = report.coverage_depth = lower
        exact_now += ["diameter", "coverage_depth"]
    report.bounds = {b: d for b, d in report.bounds.items() if b not in exact_now}
    shown = "inf" if lower == math.inf else lower
    upper_text = "none known" if upper is None else "inf" if upper == math.inf else upper
    with_what = "the whole stack" if upper is None else "the random keys"
    report.notes.append(
        f"sampled: exact search with {with_what} from {len(sources)} sources (token 0 and "
        f"evenly spaced ones): the diameter is at least {shown} (upper bound: {upper_text})"
        + (f"; reach to first is exact: {first}" if first is not None else ""))


def _notes(report: Report, chosen: Choice, capped: bool):
    notes = []
    if report.causal:
        notes.append("every layer is causal: admissible pairs are k <= q and the diameter "
                     "is the causal diameter")
    if chosen.name.startswith("periodic"):
        notes.append("periodic: a causal path from k to q stays inside [k, q], and past the "
                     "head the stack repeats with the period, so one source per phase (and "
                     "each head token) gives every pair exactly")
    if chosen.sampled:
        notes.append("sampled sources: no exact method fits, so reach is followed from the "
                     "sampled sources only: receptive fields, coverage and hop distances "
                     "(diameter, coverage depth) are lower bounds unless listed as exact; "
                     "densities are exact")
    elif not chosen.exact:
        left_out = ", ".join(dict.fromkeys(chosen.dropped)) or "parts without a fast form"
        densities = "densities are lower bounds too" if chosen.partial else \
            "densities are exact"
        notes.append(f"bound: {left_out} left out of the propagation, so every layer has a "
                     "subset of its pairs: receptive fields and coverage are lower bounds, hop "
                     "distances (diameter, reach to first, coverage depth) upper bounds unless "
                     "listed as exact; "
                     f"{densities}")
    if capped:
        notes.append("the layer-by-layer search stopped at its work limit: diameter, reach "
                     "to first and coverage depth are lower bounds (at least the value shown)")
    if report.tile_density is None:
        notes.append(f"tile figures skipped at this length for tiles of {report.tile}")
    if report.kind == "model" and report.depth != len(report.layers):
        notes.append("layer records stop early")
    return notes
