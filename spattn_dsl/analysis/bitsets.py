"""One layer applied to bit-parallel reach: ``state[x]`` is a row of bits, one per source.

``apply(terms, state)`` is ``R = M | id`` applied to every source at once:
``out[q] = state[q] | OR over terms of OR_{k allowed for q} state[k]``. Each offset piece
(one residue class, one run) is a sliding OR along that class, computed with running ORs in
blocks of the window's width (van Herk / Gil-Werman), so a piece costs O(n) word operations
whatever its width; a chunk restricts the same scan to the positions of each chunk; masks
zero rows; random keys are a gather. Nothing here is n x n.
"""
from __future__ import annotations

import numpy as np

from .terms import Piece, Term

SHIFTS_MAX = 4


def apply(terms: list, state: np.ndarray) -> np.ndarray:
    out = state.copy()
    for term in terms:
        out |= image(term, state)
    return out


def image(term: Term, state: np.ndarray) -> np.ndarray:
    """``out[q] = OR of state[k]`` over the keys k the term allows for query q."""
    if _every_offset(term):  # a global row or column: one OR over the allowed keys
        keys = state if term.kmask is None else state[term.kmask]
        total = np.bitwise_or.reduce(keys, axis=0) if len(keys) else np.zeros_like(state[0])
        out = np.zeros_like(state)
        out[slice(None) if term.qmask is None else term.qmask] = total
        return out
    source = state if term.kmask is None else state * term.kmask[:, None].astype(state.dtype)
    if term.random is not None:
        out = _gather(source, term.keys())
    else:
        out = np.zeros_like(state)
        for piece in term.cover():
            out |= _chunked(source, piece, term.chunk)
    if term.qmask is not None:
        out *= term.qmask[:, None].astype(out.dtype)
    return out


def _every_offset(term: Term) -> bool:
    return term.random is None and term.chunk is None and bool(term.offsets.all())


def _gather(source, keys):
    padded = np.concatenate([source, np.zeros_like(source[:1])])
    picked = np.where(keys >= 0, keys, len(source))
    out = np.zeros_like(source)
    for j in range(keys.shape[1]):
        out |= padded[picked[:, j]]
    return out


def _chunked(source, piece: Piece, chunk):
    if chunk is None:
        return shifted_or(source, piece)
    n, words = source.shape
    chunks = -(-n // chunk)
    padded = np.zeros((chunks * chunk, words), dtype=source.dtype)
    padded[:n] = source
    inner = np.ascontiguousarray(padded.reshape(chunks, chunk, words).transpose(1, 0, 2))
    out = shifted_or(inner, piece)  # along the position inside each chunk
    return out.transpose(1, 0, 2).reshape(chunks * chunk, words)[:n]


def shifted_or(values: np.ndarray, piece: Piece) -> np.ndarray:
    """Along axis 0: ``out[x] = OR values[x - d]`` for d in the piece (zero outside)."""
    length, step = values.shape[0], piece.step
    lo = piece.lo + step * max(0, -(-(-(length - 1) - piece.lo) // step))  # d >= -(length-1)
    hi = piece.hi - step * max(0, -(-(piece.hi - (length - 1)) // step))  # d <= length - 1
    out = np.zeros_like(values)
    if lo > hi:
        return out
    width = (hi - lo) // step + 1
    if width <= SHIFTS_MAX:  # a few offsets: one shift each
        for d in range(lo, hi + 1, step):
            if d >= 0:
                out[d:] |= values[:length - d]
            else:
                out[:length + d] |= values[-d:]
        return out
    # out[x] = OR_{t < width} values[x - hi + step t]: a forward window along x's class
    before = max(hi, 0)
    before += (-before) % step
    total = before + length + max(-lo, 0)
    total += (-total) % step
    ext = np.zeros((total,) + values.shape[1:], dtype=values.dtype)
    ext[before:before + length] = values
    window = _forward_window(ext.reshape((total // step, step) + values.shape[1:]), width)
    window = window.reshape(ext.shape)
    start = before - hi
    return window[start:start + length]


def _forward_window(rows: np.ndarray, width: int) -> np.ndarray:
    """``out[i] = OR rows[i : i + width]`` along axis 0 (zero past the end)."""
    count = rows.shape[0]
    if width >= count:
        return np.bitwise_or.accumulate(rows[::-1], axis=0)[::-1]
    blocks = -(-count // width) + 1
    padded = np.zeros((blocks * width,) + rows.shape[1:], dtype=rows.dtype)
    padded[:count] = rows
    shaped = padded.reshape((blocks, width) + rows.shape[1:])
    from_left = np.bitwise_or.accumulate(shaped, axis=1).reshape(padded.shape)
    from_right = np.bitwise_or.accumulate(shaped[:, ::-1], axis=1)[:, ::-1].reshape(padded.shape)
    # a window starting at i is a suffix of i's block and a prefix of the next one
    return from_right[:count] | from_left[width - 1:width - 1 + count]


# ---------------------------------------------------------------- bit helpers
def unit_rows(sources: np.ndarray, n: int, words: int) -> np.ndarray:
    """State with bit j set at position sources[j] (each source reaches itself)."""
    state = np.zeros((n, words), dtype=np.uint64)
    j = np.arange(len(sources))
    np.bitwise_or.at(state, (sources, j // 64), np.uint64(1) << (j % 64).astype(np.uint64))
    return state


def popcount(state: np.ndarray) -> np.ndarray:
    return np.bitwise_count(state).sum(axis=1, dtype=np.int64)


def bit(state: np.ndarray, rows, j) -> np.ndarray:
    """Bit j of each listed row (j an int or an array like rows)."""
    j = np.asarray(j)
    word = state[rows, j // 64]
    return ((word >> (j % 64).astype(np.uint64)) & np.uint64(1)).astype(bool)


def lowest_bit(state: np.ndarray) -> np.ndarray:
    """Index of each row's lowest set bit, -1 for an empty row."""
    nonzero = state != 0
    has = nonzero.any(axis=1)
    word = np.argmax(nonzero, axis=1)
    w = state[np.arange(len(state)), word]
    low = np.bitwise_count((w & (~w + np.uint64(1))) - np.uint64(1)).astype(np.int64)
    return np.where(has, word * 64 + low, -1)


def highest_bit(state: np.ndarray) -> np.ndarray:
    """Index of each row's highest set bit, -1 for an empty row."""
    nonzero = state != 0
    has = nonzero.any(axis=1)
    words = state.shape[1]
    word = words - 1 - np.argmax(nonzero[:, ::-1], axis=1)
    w = state[np.arange(len(state)), word]
    high = np.zeros(len(state), dtype=np.int64)
    for shift in (32, 16, 8, 4, 2, 1):  # floor(log2(w)) by halving
        s = np.uint64(shift)
        up = (w >> s) != 0
        high += np.where(up, shift, 0)
        w = np.where(up, w >> s, w)
    return np.where(has, word * 64 + high, -1)


def count_below(state: np.ndarray, limit: np.ndarray) -> np.ndarray:
    """Per row i: how many bits below ``limit[i]`` are set."""
    counts = np.bitwise_count(state).astype(np.int64)
    before = np.concatenate([np.zeros((len(state), 1), np.int64), counts.cumsum(axis=1)], axis=1)
    word, offset = limit // 64, (limit % 64).astype(np.uint64)
    rows = np.arange(len(state))
    whole = before[rows, np.minimum(word, state.shape[1])]
    partial_word = state[rows, np.minimum(word, state.shape[1] - 1)]
    partial = np.bitwise_count(partial_word & ((np.uint64(1) << offset) - np.uint64(1)))
    return whole + np.where(word < state.shape[1], partial.astype(np.int64), 0)
