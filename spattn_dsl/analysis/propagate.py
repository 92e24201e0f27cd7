"""Layer-by-layer composition and hop-distance search, for any engine (see ``engines.py``).

``schedule`` is the list of layer relations of one period (a pattern: one; a model: its
layers); stacking repeats it. Because every relation holds the identity, ``D_L`` only grows
with ``L``, so "the least L with some property" is found by binary lifting over powers of
one period ``T`` (``T, T^2, T^4, ...``), then stepping through the layers of one period:
O(log depth) compositions even when the diameter is a million layers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MAX_POWERS = 64


@dataclass(frozen=True)
class LayerFigures:
    """Receptive-field figures after one layer (see Report)."""

    layer: int
    rf_min: int
    rf_mean: float
    rf_max: int
    rf_last: int
    reach: int
    span: int
    span_middle: int
    coverage: float
    full_rows: float
    exact: bool = True  # False from a stack's first dynamic layer on (figures are bounds)


def layer_figures(engine, state, layer: int, admissible_pairs: int) -> LayerFigures:
    f = engine.rows(state)
    q = np.arange(engine.n)
    if engine.causal:
        reach = q - f.low
    else:
        reach = np.maximum(q - f.low, f.high - q)
    span = f.high - f.low + 1
    middle = engine.n // 2
    return LayerFigures(
        layer=layer, rf_min=int(f.size.min()), rf_mean=float(f.size.mean()),
        rf_max=int(f.size.max()), rf_last=int(f.size[-1]), reach=int(reach.max()),
        span=int(span.max()), span_middle=int(span[middle]),
        coverage=float(f.size.sum()) / admissible_pairs, full_rows=float(f.full.mean()))


def all_full(engine):
    return lambda state: bool(engine.rows(state).full.all())


def has_pair(engine, q: int, k: int):
    return lambda state: engine.has(state, q, k)


def period(engine, schedule):
    """The relation of one whole period of the schedule."""
    state = engine.identity()
    for relation in schedule:
        state = engine.compose(relation, state)
    return state


class Powers:
    """``T, T^2, T^4, ...`` of one period ``T``, computed once and shared between searches."""

    def __init__(self, engine, whole_period):
        self.engine, self.items, self.fixpoint = engine, [whole_period], False

    def extend(self) -> bool:
        """Append the next power; False when T^(2^i) stopped changing (a fixpoint)."""
        if self.fixpoint or len(self.items) >= MAX_POWERS:
            return False
        doubled = self.engine.compose(self.items[-1], self.items[-1])
        if self.engine.same(doubled, self.items[-1]):
            self.fixpoint = True
            return False
        self.items.append(doubled)
        return True


def least_depth(engine, schedule, holds, powers: Powers):
    """The least number of layers L with ``holds(D_L)``; math.inf if it never holds."""
    state = engine.identity()
    if holds(state):
        return 0
    top = 0
    while not holds(powers.items[top]):
        if top + 1 == len(powers.items) and not powers.extend():
            return math.inf
        top += 1
    periods = 0  # largest count of whole periods after which it does not hold yet
    for exponent in range(top - 1, -1, -1):
        candidate = engine.compose(powers.items[exponent], state)
        if not holds(candidate):
            state, periods = candidate, periods + 2 ** exponent
    for step, relation in enumerate(schedule, start=1):
        state = engine.compose(relation, state)
        if holds(state):
            return periods * len(schedule) + step
    raise AssertionError("a whole period more must make it hold")


def stepped_depth(engine, schedule, state, layer: int, full_at, first_at, limit: int):
    """Layer-by-layer search for engines without ``compose(state, state)``.

    Continues from ``state`` = D_layer until every row is full and the pair (n-1, 0) is in,
    or a whole period changes nothing (then math.inf), or ``limit`` more layers pass (then
    the depths not found are returned as ``layer`` reached, a lower bound, with
    ``capped = True``). Returns (coverage depth, reach to first, capped, last state).
    """
    n = engine.n
    period_start = state if layer % len(schedule) == 0 else None
    for step in range(1, limit + 1):
        if full_at is not None and first_at is not None:
            return full_at, first_at, False, state
        layer += 1
        state = engine.compose(schedule[(layer - 1) % len(schedule)], state)
        if full_at is None and bool(engine.rows(state).full.all()):
            full_at = layer
        if first_at is None and engine.has(state, n - 1, 0):
            first_at = layer
        if layer % len(schedule) == 0:
            if period_start is not None and engine.same(state, period_start):
                break
            period_start = state
    else:
        if full_at is None or first_at is None:
            return (full_at if full_at is not None else layer,
                    first_at if first_at is not None else layer, True, state)
    return (math.inf if full_at is None else full_at,
            math.inf if first_at is None else first_at, False, state)
