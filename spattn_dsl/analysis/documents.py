"""Analysis of packed documents (docs/language.md §4): one report per distinct document length.

With documents, every document is its own sequence, so information never crosses a boundary
and a row's figures are those of each document alone at its own length ``n``. A report per
distinct length (``analyze(pattern, n)``) says everything; ``longest=True`` keeps only the
longest document (the result says which it did).
"""
from __future__ import annotations

import operator
from collections import Counter

from .analyze import analyze


class DocumentReports(dict):
    """Reports keyed by document length, ascending.

    ``scope``: "each" (every distinct length) or "longest" (only the longest);
    ``counts``: how many documents of each length were given, for every length (analysed or not).
    """

    def __init__(self, reports: dict, scope: str, counts: dict):
        super().__init__(reports)
        self.scope = scope
        self.counts = counts

    def describe(self) -> str:
        """One line saying which lengths were analysed."""
        total = sum(self.counts.values())
        given = ", ".join(str(n) for n in self.counts)
        if self.scope == "longest":
            (longest,) = self
            return (f"the longest document only: {longest} tokens ({total} documents, "
                    f"distinct lengths {given})")
        return f"each distinct document length: {given} ({total} documents)"

    def to_dict(self) -> dict:
        return {"scope": self.scope, "counts": {str(n): c for n, c in self.counts.items()},
                "reports": {str(n): report.to_dict() for n, report in self.items()}}

    def to_markdown(self) -> str:
        parts = [f"Documents: {self.describe()}."]
        for n, report in self.items():
            parts.append(f"## Document length {n} ({self.counts[n]} documents)\n\n"
                         f"{report.to_markdown()}")
        return "\n\n".join(parts)


def analyze_documents(pattern_or_model, lengths=None, layers: int | None = None, *,
                      documents=None, longest: bool = False, **options) -> DocumentReports:
    """``analyze(pattern_or_model, n, layers, **options)`` for each distinct document length
    (or, with ``longest=True``, only the longest), keyed by length.

    Give the lengths (``lengths=[L1, L2, ...]``, positive integers, repeats allowed) or a 1-D
    id row (``documents=``, as ``Pattern.mask`` takes it).
    """
    if (lengths is None) == (documents is None):
        raise ValueError("give the document lengths or a documents id row (one of the two)")
    if documents is not None:
        from ..semantics.documents import document_lengths
        lengths = document_lengths(documents)
    lengths = [_length(n) for n in lengths]
    if not lengths:
        raise ValueError("no document lengths given")
    counts = dict(sorted(Counter(lengths).items()))
    chosen = [max(counts)] if longest else list(counts)
    reports = {n: analyze(pattern_or_model, n, layers, **options) for n in chosen}
    return DocumentReports(reports, "longest" if longest else "each", counts)


def _length(n) -> int:
    try:
        value = operator.index(n)
    except TypeError:
        value = None
    if value is None or isinstance(n, bool) or value < 1:
        raise ValueError(f"document lengths must be integers >= 1, got {n!r}")
    return value
