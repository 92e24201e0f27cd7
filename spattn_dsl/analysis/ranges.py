"""Minimum / maximum of ``values[a[i] .. b[i]]`` for many ranges at once, in O(n) numpy passes.

Ranges that start at 0 or end at the last element use running minima (maxima). The rest are
mostly one width ``W`` (a sliding window): those use the van Herk / Gil-Werman trick, running
minima inside blocks of ``W`` from the left and from the right, so a range of width ``W`` is
one suffix of a block and one prefix of the next. Any other range falls back to
``ufunc.reduceat``, which costs its width.
"""
from __future__ import annotations

import numpy as np


def range_min(values: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return _range_reduce(values, a, b, np.minimum, np.iinfo(np.int64).max)


def range_max(values: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return _range_reduce(values, a, b, np.maximum, np.iinfo(np.int64).min)


def _range_reduce(values, a, b, ufunc, neutral) -> np.ndarray:
    """``ufunc`` over ``values[a:b+1]`` per range; every range must be non-empty and in bounds."""
    fast = _sliding_rows(values, a, b, ufunc, neutral)
    return fast if fast is not None else _general(values, a, b, ufunc, neutral)


def _sliding_rows(values, a, b, ufunc, neutral):
    """The common case without any gather: ranges that start at 0 for the first rows, end at
    the last element for the last rows, and in between slide by one with a fixed width."""
    n, rows = len(values), len(a)
    first = _leading(a == 0)  # rows [0, first) start at 0
    last = max(rows - _leading((b == n - 1)[::-1]), first)  # rows [last, rows) end at n - 1
    middle = slice(first, last)
    out = np.empty(rows, dtype=values.dtype)
    if first:
        out[:first] = ufunc.accumulate(values[: b[:first].max() + 1])[b[:first]]
    if last < rows:
        start = a[last:].min()
        out[last:] = ufunc.accumulate(values[start:][::-1])[::-1][a[last:] - start]
    if first < last:
        starts = a[middle]
        width = int(b[first] - a[first] + 1)
        if (b[middle] - starts + 1 != width).any() or (np.diff(starts) != 1).any():
            return None
        s0 = int(starts[0])
        from_left, from_right = _blockwise(values, width, ufunc, neutral)
        out[middle] = ufunc(from_right[s0:s0 + last - first],
                            from_left[s0 + width - 1:s0 + width - 1 + last - first])
    return out


def _leading(flags: np.ndarray) -> int:
    """How many leading entries are True."""
    return len(flags) if flags.all() else int(np.argmin(flags))


def _general(values, a, b, ufunc, neutral) -> np.ndarray:
    n = len(values)
    out = np.empty(len(a), dtype=values.dtype)
    from_start = a == 0
    if from_start.any():
        ends = b[from_start]
        out[from_start] = ufunc.accumulate(values[: ends.max() + 1])[ends]
    to_end = ~from_start & (b == n - 1)
    if to_end.any():
        starts = a[to_end]
        first = starts.min()
        out[to_end] = ufunc.accumulate(values[first:][::-1])[::-1][starts - first]
    rest = np.flatnonzero(~from_start & ~to_end)
    if len(rest):
        width = b[rest] - a[rest] + 1
        common = int(np.bincount(width).argmax())
        sliding = width == common
        out[rest[sliding]] = _sliding(values, a[rest[sliding]], common, ufunc, neutral)
        odd = rest[~sliding]
        if len(odd):
            out[odd] = _reduceat(values, a[odd], b[odd], ufunc, neutral)
    return out


def _sliding(values, a, width, ufunc, neutral):
    """Reduce ``values[a : a + width]`` (van Herk / Gil-Werman, blocks of ``width``)."""
    from_left, from_right = _blockwise(values, width, ufunc, neutral)
    return ufunc(from_right[a], from_left[a + width - 1])


def _blockwise(values, width, ufunc, neutral):
    """Running reductions inside blocks of ``width``, from the left and from the right."""
    n = len(values)
    blocks = -(-n // width) + 1
    padded = np.full(blocks * width, neutral, dtype=values.dtype)
    padded[:n] = values
    from_left = ufunc.accumulate(padded.reshape(blocks, width), axis=1).ravel()
    # the reversed array, cut in the same blocks, gives running values from the right
    from_right = ufunc.accumulate(padded[::-1].reshape(blocks, width), axis=1).ravel()[::-1]
    return from_left, from_right


def _reduceat(values, a, b, ufunc, neutral):
    order = np.argsort(a, kind="stable")
    extended = np.append(values, np.array([neutral], dtype=values.dtype))
    cuts = np.empty(2 * len(a), dtype=np.int64)
    cuts[0::2] = a[order]
    cuts[1::2] = b[order] + 1
    result = np.empty(len(a), dtype=values.dtype)
    result[order] = ufunc.reduceat(extended, cuts)[0::2]
    return result
