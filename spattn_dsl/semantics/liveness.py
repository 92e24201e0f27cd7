"""Which cached key positions a later query may still attend (docs/python.md, KV cache).

A key ``p`` is dead at length ``t`` when no query at a position ``q >= t`` (at any later
length) may attend it. Dead stays dead, so a key's liveness is one number: ``last_query(p)``,
the largest query position that may attend it (``UNBOUNDED`` when queries attend it forever),
and ``p`` is live at ``t`` iff ``last_query(p) >= t``.

Why a few rows per key decide it exactly. For a fixed key ``k``, every closed-form primitive
is, as a function of the query ``q > k``, periodic between a few breakpoints: ``window(w)``
changes at ``k + w``, a band at ``k + before + 1``, ``dilated(w, d)`` at ``k + w * d`` (period
``d`` before it), ``chunk(l)`` at the end of ``k``'s chunk, ``global``, ``prefix`` and global
tokens at their position constants, ``stride(s)`` nowhere (period ``s``); causal, sinks and
summary columns are constant. Boolean combinations keep this with the union of the
breakpoints and the lcm ``P`` of the periods; ``blocks(b)`` scales both by ``b``. So the last
query of each stretch between breakpoints lies in its last ``P`` rows, and a query in the
``P`` rows after the last breakpoint means queries attend the key forever. Patterns outside
this family (``random``, ``where``, a parameter that mentions ``n``), and those needing more
than ``MAX_ROWS`` rows per key, keep every position live.
"""
from __future__ import annotations

import math
from dataclasses import fields, is_dataclass

import torch

from ..ir import nodes as N
from ..ir.evaluate import head_count, select_head
from ..ir.limits import MAX_LENGTH
from ..layout.pairs import allowed

UNBOUNDED = 2 ** 62  # last_query of a key that queries attend forever
MAX_ROWS = 1 << 16  # rows evaluated per key, at most
_CHUNK = 1 << 22  # pairs evaluated at once
LIVE_MAX_LENGTH = 1 << 32  # the longest ``live(t)`` result: a 4 GiB bool tensor (as Pattern.mask)


def period(expr) -> int | None:
    """The lcm of the periods in ``q`` of a concrete, head-free expression; None where
    liveness is not exact (random, where, anything new)."""
    t = type(expr)
    if t in (N.Dense, N.Empty, N.Causal, N.Summary, N.Sink, N.Window, N.Band, N.Chunk,
             N.Global, N.GlobalTokens, N.Prefix):
        return 1
    if t is N.Stride:
        return expr.s
    if t is N.Dilated:
        return expr.d
    if t in (N.Union, N.Intersect, N.Difference, N.Complement):
        parts = [period(child) for child in N.children(expr)]
        return None if None in parts else math.lcm(*parts)
    if t is N.Blocks:
        inner = period(expr.body)
        return None if inner is None else inner * expr.size
    return None


def breakpoints(expr, k: torch.Tensor) -> list:
    """Per key in ``k``, the query positions where some primitive's behaviour changes (int64
    tensors shaped like ``k``, or plain ints for position constants)."""
    t = type(expr)
    if t is N.Window:
        return [k + expr.w]
    if t is N.Band:
        return [k + expr.before + 1]
    if t is N.Dilated:
        return [k + expr.w * expr.d]
    if t is N.Chunk:
        return [(torch.div(k, expr.l, rounding_mode="floor") + 1) * expr.l]
    if t in (N.Global, N.Prefix):
        return [expr.first if t is N.Global else expr.p]
    if t is N.GlobalTokens:
        return sorted({x + d for x in expr.tokens for d in (0, 1)})
    if t is N.Blocks:
        inner = breakpoints(expr.body, torch.div(k, expr.size, rounding_mode="floor"))
        return [x * expr.size for x in inner]
    return [point for child in N.children(expr) for point in breakpoints(child, k)]


def mentions_n(expr, seen: set | None = None) -> bool:
    """Whether a bound expression's integer arguments mention the sequence length ``n``."""
    seen = set() if seen is None else seen
    if id(expr) in seen:
        return False
    seen.add(id(expr))
    if isinstance(expr, N.Var):
        return expr.name == "n"
    if isinstance(expr, tuple):
        return any(mentions_n(item, seen) for item in expr)
    if not is_dataclass(expr):
        return False
    return any(mentions_n(getattr(expr, f.name), seen) for f in fields(expr)
               if f.name != "span")


def exact_cases(pattern) -> list | None:
    """[(head case expression, its period)] of a pattern whose liveness is exact, else None."""
    closed_form = N.PRIMITIVES + N.COMBINATORS
    if mentions_n(pattern.expr) or any(isinstance(node, (N.Random, N.Compare))
                                       or not isinstance(node, closed_form)
                                       for node in N.walk(pattern.expr)):
        return None
    concrete = pattern.at(MAX_LENGTH)  # no n anywhere, and no argument clamped below 2**48
    cases = []
    for head in range(head_count(concrete)):
        case = select_head(concrete, head)
        found = period(case)
        if found is None:
            return None
        cases.append((case, found))
    return cases


def last_query(pattern, keys) -> torch.Tensor:
    """int64, per key position: the largest query position that may attend it (any head),
    ``UNBOUNDED`` if queries attend it forever (or liveness is not known exactly), or the key
    itself if no later query does."""
    keys = torch.as_tensor(keys, dtype=torch.int64).reshape(-1)
    cases = exact_cases(pattern)
    if cases is None:
        return torch.full_like(keys, UNBOUNDED)
    result = keys.clone()
    for case, case_period in cases:
        result = torch.maximum(result, _last_query_of_case(case, case_period, keys))
    return result


def _last_query_of_case(case, case_period: int, keys: torch.Tensor) -> torch.Tensor:
    """The module docstring's rows: the last ``P`` before each breakpoint and the ``P`` after
    the last one (the stretches start after the key itself)."""
    count = len(breakpoints(case, keys[:1])) + 1
    if count * case_period > MAX_ROWS:
        return torch.full_like(keys, UNBOUNDED)
    phase = torch.arange(case_period, dtype=torch.int64)
    result = keys.clone()
    step = max(1, _CHUNK // (case_period * (count + 1)))
    for first in range(0, len(keys), step):
        k = keys[first:first + step]
        points = torch.stack([torch.broadcast_to(torch.as_tensor(x), k.shape)
                              for x in breakpoints(case, k)] + [k + 1], dim=1)
        ends = points.max(dim=1).values
        rows = torch.cat([(points[:, :, None] - case_period + phase).flatten(1),
                          ends[:, None] + phase], dim=1)
        hit = allowed(case, rows, k[:, None], int(rows.max()) + 1) & (rows > k[:, None])
        forever = hit[:, -case_period:].any(dim=1)
        last = torch.where(hit, rows, k[:, None]).amax(dim=1)
        result[first:first + step] = torch.where(forever, UNBOUNDED, last)
    return result


def live(pattern, t: int) -> torch.Tensor:
    """Bool ``[t]``: the positions ``0..t-1`` that some query at a position ``>= t`` may
    attend; all True where liveness is not known exactly."""
    if isinstance(t, bool) or not isinstance(t, int) or t < 0:
        raise ValueError(f"live(t): t must be an integer >= 0, got {t!r}")
    if t > MAX_LENGTH:
        raise ValueError(f"live(t): t = {t} is past the documented sequence length limit "
                         f"2**48 = {MAX_LENGTH}")
    if t > LIVE_MAX_LENGTH:
        raise ValueError(f"live(t): the result is a bool [t] tensor of {t:,} bytes, past the "
                         f"limit of 2**32 positions (4 GiB); last_query() answers for chosen "
                         "key positions at any length")
    try:
        return _live(pattern, t)
    except (MemoryError, RuntimeError) as error:
        if isinstance(error, RuntimeError) and "alloc" not in str(error):
            raise  # torch's allocator fails with a RuntimeError; any other is not ours
        raise ValueError(f"live(t): a bool [{t}] result takes {t:,} bytes (more while it is "
                         "evaluated), more than this machine could allocate") from None


def _live(pattern, t: int) -> torch.Tensor:
    cases = exact_cases(pattern)
    if cases is None:
        return torch.ones(t, dtype=torch.bool)
    keys = torch.arange(t, dtype=torch.int64)
    result = torch.zeros(t, dtype=torch.bool)
    for case, case_period in cases:
        # keys whose every breakpoint is behind t are periodic from t on: the rows
        # t .. t + P - 1 decide them all at once; the others go key by key
        far = _last_breakpoint(case, keys) <= t
        result |= far & _any_row(case, t, case_period)
        near = keys[~far]
        result[near] |= _last_query_of_case(case, case_period, near) >= t
    return result


def _last_breakpoint(case, keys: torch.Tensor) -> torch.Tensor:
    points = [torch.broadcast_to(torch.as_tensor(x), keys.shape) for x in breakpoints(case, keys)]
    return torch.stack(points, dim=1).amax(dim=1) if points else torch.zeros_like(keys)


def _any_row(case, t: int, rows: int) -> torch.Tensor:
    """Bool ``[t]``: keys ``0..t-1`` attended by some query in ``t .. t + rows - 1``."""
    from .reference import evaluate

    found = torch.zeros(t, dtype=torch.bool)
    step = max(1, _CHUNK // max(t, 1))
    for first in range(t, t + rows, step):
        q = torch.arange(first, min(first + step, t + rows), dtype=torch.int64)
        found |= evaluate(case, q, t).expand(len(q), t).any(dim=0)
    return found
