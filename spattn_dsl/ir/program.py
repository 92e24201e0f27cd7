"""The checked program and its bound products: ``Program``, ``Pattern``, ``Model``."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from ..errors import SourceSpan
from . import nodes as N
from .evaluate import head_count, instantiate
from .printer import text as expr_text


@dataclass(frozen=True)
class Pattern:
    """A pattern with its parameters bound. ``expr`` may still mention ``n``.

    Equality and hashing follow the expression, so a Pattern is its own cache key.
    """

    expr: object
    name: str = field(default="<expr>", compare=False)
    params: tuple = field(default=(), compare=False)  # ((name, value), ...)
    span: SourceSpan | None = field(default=None, compare=False, repr=False)

    @property
    def text(self) -> str:
        """Canonical pattern text of the bound expression."""
        return expr_text(self.expr)

    @property
    def hash(self) -> str:
        """A short stable hash of the canonical text (cache keys, kernel names)."""
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]

    @property
    def heads(self) -> int:
        """How many distinct heads the pattern cycles through (1 without ``heads``)."""
        return head_count(self.expr)

    def at(self, n: int):
        """The concrete expression at key length ``n``; raises PatternError on bad values."""
        return instantiate(self.expr, n)

    def mask(self, n_q: int, n_k: int | None = None, head: int = 0):
        """The exact ``[n_q, n_k]`` torch.bool mask (SPEC section 2), queries bottom-right."""
        from ..semantics.reference import mask

        n_k = n_q if n_k is None else n_k
        if not 0 <= n_q <= n_k:
            raise ValueError(f"need 0 <= n_q <= n_k, got n_q = {n_q}, n_k = {n_k}")
        return mask(self.at(n_k), n_q, n_k, head)

    def __str__(self) -> str:
        return f"{self.name}: {self.text}"


@dataclass(frozen=True)
class Model:
    """A stack of layers, first layer first, each with its own bound pattern."""

    name: str
    layers: tuple  # of Pattern
    span: SourceSpan | None = field(default=None, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index: int) -> Pattern:
        return self.layers[index]



__all__ = ["Pattern", "Model", "N"]
