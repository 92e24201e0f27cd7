"""Documents (packed sequences, docs/language.md §4): checking ids, document bounds, the mask.

A row of ``n_k`` positions carries one document id per position; ids never decrease, so each
document is one contiguous run. Every document is its own sequence: a pair (q, k) is allowed
iff both lie in the same document and the pattern allows ``(q - start, k - start)`` with ``n``
equal to the document's length. Queries keep the bottom-right alignment of section 2.
"""
from __future__ import annotations

import numpy as np
import torch

from .random import mix


def check_documents(documents, n_k: int, batch: int | None = None) -> torch.Tensor:
    """``documents`` as an int64 tensor, checked: shape ``[n_k]`` (or ``[batch, n_k]`` when
    ``batch`` is given), an integer dtype, and ids that never decrease along the sequence.
    Raises ValueError naming ``documents`` otherwise. Stays on the ids' device."""
    ids = _as_ids(documents)
    shape = (n_k,) if batch is None else (batch, n_k)
    if tuple(ids.shape) != shape:
        want = "[n_k]" if batch is None else "[batch, n_k]"
        raise ValueError(f"documents must have shape {want} = {list(shape)} (one id per key "
                         f"position), got {list(ids.shape)}")
    if ids.shape[-1] > 1:
        drops = ids[..., 1:] < ids[..., :-1]
        if bool(drops.any()):
            *row, t = drops.nonzero()[0].tolist()
            before, after = int(ids[(*row, t)]), int(ids[(*row, t + 1)])
            where = f"row {row[0]}, position {t + 1}" if row else f"position {t + 1}"
            raise ValueError(f"documents ids must not decrease along the sequence (each document "
                             f"is one contiguous run), but at {where} the id goes from {before} "
                             f"to {after}")
    return ids


def _as_ids(documents) -> torch.Tensor:
    if isinstance(documents, torch.Tensor):
        ids = documents
    else:
        try:
            ids = torch.as_tensor(documents)
        except (TypeError, ValueError, RuntimeError) as error:
            raise ValueError(f"documents must be an integer tensor or sequence of ids: {error}") \
                from None
        if ids.numel() == 0:  # an empty list comes back as float32
            ids = ids.to(torch.int64)
    if ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
        raise ValueError(f"documents must hold integer ids, got dtype {ids.dtype}")
    return ids.to(torch.int64)


def document_bounds(ids: torch.Tensor):
    """(start, length) int64 tensors shaped like ``ids`` (``[..., n]``, checked ids): for every
    position, the first position of its document and that document's length. Vectorised on
    the ids' device: a running maximum of document starts and a running minimum of ends."""
    n = ids.shape[-1]
    pos = torch.arange(n, device=ids.device, dtype=torch.int64).expand_as(ids)
    if n == 0:
        return pos.clone(), pos.clone()
    changes = ids[..., 1:] != ids[..., :-1]
    edge = torch.ones_like(ids[..., :1], dtype=torch.bool)
    first = torch.cat([edge, changes], -1)  # position starts a document
    last = torch.cat([changes, edge], -1)  # position ends a document
    start = torch.cummax(torch.where(first, pos, 0), -1).values
    end = torch.cummin(torch.where(last, pos, n).flip(-1), -1).values.flip(-1)
    return start, end - start + 1


def document_runs(ids: torch.Tensor):
    """(starts, lengths) int64 1-D tensors of a checked 1-D id row, one entry per document."""
    _, lengths = torch.unique_consecutive(ids, return_counts=True)
    starts = torch.cumsum(lengths, 0) - lengths
    return starts, lengths


def document_lengths(documents) -> list:
    """Every document's length, in order, of a 1-D id row (checked)."""
    ids = check_documents(documents, len(documents))
    return document_runs(ids)[1].tolist()


def mask(pattern, n_q: int, n_k: int, head: int, documents) -> torch.Tensor:
    """The ``[n_q, n_k]`` reference mask with documents: the block diagonal of each document's
    own mask (its last queries, bottom-right aligned). One loop over documents, none over pairs;
    documents of the same length and query count share one mask."""
    ids = check_documents(documents, n_k).cpu()
    out = torch.zeros(n_q, n_k, dtype=torch.bool)
    offset = n_k - n_q  # query row i is position i + offset
    blocks = {}
    for start, length in zip(*(t.tolist() for t in document_runs(ids))):
        first_query = max(start, offset)
        rows = start + length - first_query
        if rows <= 0:
            continue
        if (rows, length) not in blocks:
            blocks[rows, length] = pattern.mask(rows, length, head)
        out[first_query - offset:start + length - offset, start:start + length] = \
            blocks[rows, length]
    return out


def document_random_keys(r: int, seed: int, rows, n) -> np.ndarray:
    """int64 ``[len(rows), r]``: ``random(r, seed)``'s draws for each row ``rows[i]`` on a grid of
    ``n[i]`` keys (document-relative rows and lengths, or block rows and block counts inside
    ``blocks(b)``), in draw order, padded with -1 past ``min(r, n[i])``. The same draws as
    ``random_keys`` row by row, vectorised over rows of different lengths (one step per draw,
    none per document): what a kernel needs for ``random`` under documents."""
    rows = np.asarray(rows, dtype=np.int64)
    n = np.broadcast_to(np.asarray(n, dtype=np.int64), rows.shape)
    count = np.minimum(r, n)
    keys = np.full((len(rows), r), -1, dtype=np.int64)
    for i in range(r):
        active = i < count
        j = n - count + i  # Floyd's j for this draw, per row
        with np.errstate(over="ignore"):
            t = (mix(seed, rows, j) % (j + 1).astype(np.uint64)).astype(np.int64)
        taken = (keys[:, :i] == t[:, None]).any(axis=1)
        keys[:, i] = np.where(active, np.where(taken, j, t), -1)
    return keys
