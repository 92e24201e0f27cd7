"""The checked program and its bound products: ``Program``, ``Pattern``, ``Model``."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from ..errors import PatternError, SourceSpan
from . import nodes as N
from .evaluate import eval_int, head_count, instantiate
from .resolve import bind, bind_layer, check
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

    def mask(self, n_q: int, n_k: int | None = None, head: int = 0, documents=None):
        """The exact ``[n_q, n_k]`` torch.bool mask (SPEC section 2), queries bottom-right.

        ``documents``: None, or ``n_k`` non-decreasing integer ids, one per key position; each
        document is then its own sequence (SPEC section 7)."""
        from ..semantics import documents as docs
        from ..semantics.reference import mask

        n_k = n_q if n_k is None else n_k
        if not 0 <= n_q <= n_k:
            raise ValueError(f"need 0 <= n_q <= n_k, got n_q = {n_q}, n_k = {n_k}")
        if documents is not None:
            return docs.mask(self, n_q, n_k, head, documents)
        return mask(self.at(n_k), n_q, n_k, head)

    def __str__(self) -> str:
        text = self.text
        return text if self.name == text else f"{self.name}: {text}"


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


class Program:
    """A parsed and checked pattern file: its pattern and model declarations by name."""

    def __init__(self, decls: list, filename: str = "<string>"):
        self.filename = filename
        self.declarations = check(decls)

    @property
    def patterns(self) -> dict:
        """Pattern declarations by name, in file order."""
        return {k: d for k, d in self.declarations.items() if isinstance(d, N.PatternDecl)}

    @property
    def models(self) -> dict:
        """Model declarations by name, in file order."""
        return {k: d for k, d in self.declarations.items() if isinstance(d, N.ModelDecl)}

    def pattern(self, name: str, **params) -> Pattern:
        """The pattern ``name`` with parameters bound (defaults for those not given)."""
        decl = self.patterns.get(name)
        if decl is None:
            raise PatternError(f"no pattern named '{name}'{_choices(self.patterns)}",
                               filename=self.filename)
        expr, values = bind(name, params, self.declarations)
        return Pattern(expr, name, tuple(values.items()), decl.span)

    def model(self, name: str) -> Model:
        """The model ``name`` with its schedule expanded, one Pattern per layer."""
        decl = self.models.get(name)
        if decl is None:
            raise PatternError(f"no model named '{name}'{_choices(self.models)}",
                               filename=self.filename)
        layers = tuple(self._expand(decl.items))
        if not layers:
            raise PatternError(f"model '{name}' has no layers", decl.span)
        return Model(name, layers, decl.span)

    def _expand(self, items):
        for item in items:
            count = eval_int(item.count)
            if count < 1:
                raise PatternError(f"a layer count must be >= 1, got {count}", item.count.span)
            if isinstance(item, N.RepeatItem):
                block = list(self._expand(item.items))
                for _ in range(count):
                    yield from block
            else:
                expr, values = bind_layer(item.body, self.declarations)
                name = item.body.name if isinstance(item.body, N.Ref) else expr_text(expr)
                yield from [Pattern(expr, name, tuple(values.items()), item.span)] * count


def _choices(table: dict) -> str:
    return f" (have: {', '.join(table)})" if table else " (the file declares none)"
