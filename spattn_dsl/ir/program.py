"""The checked program and its bound products: ``Program``, ``Pattern``, ``Model``."""
from __future__ import annotations

import hashlib
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import PatternError, SourceSpan
from . import nodes as N
from .evaluate import eval_int, head_count, instantiate
from .limits import INT_LIMIT, MAX_LENGTH
from .printer import text as expr_text
from .resolve import _Session, bind, bind_layer, check


# The largest mask ``Pattern.mask`` builds: 2**32 pairs is a 4 GiB bool tensor (n = 65536),
# before the evaluation's temporaries; past it a [n_q, n_k] tensor is not what anyone wants.
MASK_MAX_PAIRS = 1 << 32


def integer_argument(call: str, name: str, value, low: int | None = None,
                     high: int | None = None, high_text: str | None = None) -> int:
    """``value`` as an int, or a TypeError / ValueError naming ``call``'s argument ``name``
    (bool is refused: ``mask(True)`` is a mistake, not a length of 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{call}: {name} must be an integer, got {value!r} "
                        f"({type(value).__name__})")
    value = int(value)
    if low is not None and value < low:
        raise ValueError(f"{call}: {name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{call}: {name} must be <= {high_text or high}, got {value}")
    return value


def length_argument(call: str, name: str, value, low: int = 0) -> int:
    """A sequence length: an integer in [low, 2**48] (the documented limit)."""
    return integer_argument(call, name, value, low, MAX_LENGTH, "2**48")


class DynamicNotSupported(PatternError, NotImplementedError):
    """A pass that does not handle dynamic terms yet was given a pattern that has some.
    Located at the first dynamic term; a ``PatternError`` (so the CLI reports it on one line)
    and a ``NotImplementedError`` (so callers can tell it from a bad pattern)."""


def require_static(target, what: str):
    """Raise ``DynamicNotSupported`` when ``target`` (a Pattern, or a Model's layers) has
    dynamic terms: the entry-point guard of passes that cannot handle them yet."""
    patterns = target.distinct if isinstance(target, Model) else (target,)
    for pattern in patterns:
        terms = getattr(pattern, "dynamic_terms", ())
        if terms:
            raise DynamicNotSupported(f"dynamic terms are not supported by {what} yet "
                                      f"({expr_text(terms[0])})", terms[0].span)


@dataclass(frozen=True)
class Pattern:
    """A pattern with its parameters bound. ``expr`` may still mention ``n``.

    Equality and hashing follow the expression, so a Pattern is its own cache key.
    """

    expr: object
    name: str = field(default="<expr>", compare=False)
    params: tuple = field(default=(), compare=False)  # ((name, value), ...)
    span: SourceSpan | None = field(default=None, compare=False, repr=False)
    _concrete: dict = field(default_factory=dict, init=False, compare=False, hash=False,
                            repr=False)

    @property
    def text(self) -> str:
        """Canonical pattern text of the bound expression."""
        return expr_text(self.expr)

    @property
    def hash(self) -> str:
        """A short stable hash of the canonical text (cache keys, kernel names)."""
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]

    @property
    def dynamic(self) -> bool:
        """Whether the pattern has dynamic terms (topk, vertical, slash: docs/language.md §5)."""
        return bool(self.dynamic_terms)

    @property
    def dynamic_terms(self) -> tuple:
        """The distinct dynamic terms of the bound expression, in walk order: the order of a
        ``Selection``'s ``terms``. Equal terms are one term (one selection)."""
        return N.dynamic_terms(self.expr)

    @property
    def heads(self) -> int:
        """How many distinct heads the pattern cycles through (1 without ``heads``)."""
        return head_count(self.expr)

    def at(self, n: int):
        """The concrete expression at key length ``n``; raises PatternError on bad values.

        Cached on this Pattern (not on the bare expression, so that equal patterns from two
        files each keep their own spans)."""
        concrete = self._concrete.get(n)
        if concrete is None:
            concrete = instantiate(self.expr, n)
            if len(self._concrete) >= 8:
                self._concrete.pop(next(iter(self._concrete)))
            self._concrete[n] = concrete
        return concrete

    def live(self, t: int):
        """Bool ``[t]``: the positions ``0..t-1`` that a query at a position ``>= t`` may still
        attend, for any head (docs/python.md, KV cache); all True where that is not known exactly
        (``random``, ``where``, a parameter that mentions ``n``)."""
        from ..semantics.liveness import live

        return live(self, t)

    def mask(self, n_q: int, n_k: int | None = None, head: int = 0, documents=None,
             selection=None):
        """The exact ``[n_q, n_k]`` torch.bool mask (docs/language.md §2), queries bottom-right.

        ``documents``: None, or ``n_k`` non-decreasing integer ids, one per key position; each
        document is then its own sequence (docs/language.md §4).

        ``selection``: a ``Selection`` (``spattn_dsl.select``); then the mask of every batch
        row and query head under it, ``[batch, heads, n_q, n_k]`` (docs/language.md §5). A dynamic
        pattern needs one."""
        from ..semantics import documents as docs
        from ..semantics.reference import mask

        n_q, n_k, head = _mask_arguments(n_q, n_k, head)
        if selection is not None or self.dynamic:
            from ..semantics.select import selection_mask

            return selection_mask(self, n_q, n_k, head, documents, selection)
        try:
            if documents is not None:
                return docs.mask(self, n_q, n_k, head, documents)
            return mask(self.at(n_k), n_q, n_k, head)
        except (MemoryError, RuntimeError) as error:
            if isinstance(error, RuntimeError) and "alloc" not in str(error):
                raise  # torch's allocator fails with a RuntimeError; any other is not ours
            raise ValueError(f"mask: a [{n_q}, {n_k}] bool mask takes {n_q * n_k:,} bytes "
                             "(more while it is evaluated), more than this machine could "
                             "allocate") from None

    def __str__(self) -> str:
        text = self.text
        return text if self.name == text else f"{self.name}: {text}"


@dataclass(frozen=True)
class Run:
    """``count`` consecutive layers with one pattern."""

    pattern: Pattern
    count: int

    @property
    def depth(self) -> int:
        return self.count


@dataclass(frozen=True)
class Repeat:
    """``items`` (Runs and Repeats, first layer first) repeated ``count`` times."""

    count: int
    items: tuple
    depth: int = field(default=0, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "depth", self.count * sum(item.depth for item in self.items))


class Model:
    """A stack of layers, first layer first, each with its own bound pattern.

    The schedule is kept run-length encoded (``schedule``: ``Run`` and ``Repeat`` items as
    written), so a model of 10**9 layers is as small as one of a few. ``len(model)`` is the
    layer count, ``model.layers`` a lazy sequence of one Pattern per layer (indexing is
    cheap; iterating walks every layer), ``model.distinct`` the different patterns used and
    ``model.runs()`` the layers as (pattern, count) runs.
    """

    def __init__(self, name: str, layers=(), span: SourceSpan | None = None, *,
                 schedule: tuple | None = None):
        self.name = name
        self.span = span
        self.schedule = tuple(schedule) if schedule is not None else _runs_of(layers)
        self.depth = sum(item.depth for item in self.schedule)

    @property
    def layers(self) -> "Layers":
        return Layers(self)

    @property
    def distinct(self) -> tuple:
        """The different patterns of the stack, in order of first use."""
        seen = {}
        stack = list(reversed(self.schedule))
        while stack:
            item = stack.pop()
            if isinstance(item, Run):
                seen.setdefault(item.pattern, item.pattern)
            else:
                stack.extend(reversed(item.items))
        return tuple(seen)

    def runs(self):
        """(pattern, count) for each run of equal consecutive layers, first layer first.
        Lazy: a repeated schedule yields its runs once per repetition."""
        pending = None
        for pattern, count in _walk_runs(self.schedule):
            if pending and pending[0] == pattern:
                pending[1] += count
                continue
            if pending:
                yield tuple(pending)
            pending = [pattern, count]
        if pending:
            yield tuple(pending)

    def layer(self, index: int) -> Pattern:
        """The pattern of layer ``index`` (0-based; negative counts from the end)."""
        if index < 0:
            index += self.depth
        if not 0 <= index < self.depth:
            raise IndexError(f"layer {index} is outside model '{self.name}' ({self.depth} layers)")
        items = self.schedule
        while True:
            for item in items:
                if index < item.depth:
                    break
                index -= item.depth
            if isinstance(item, Run):
                return item.pattern
            index %= item.depth // item.count
            items = item.items

    def __len__(self) -> int:
        return self.depth

    def __getitem__(self, index):
        return self.layers[index]

    def __eq__(self, other):
        return isinstance(other, Model) and (self.name, self.schedule) == (other.name, other.schedule)

    def __hash__(self):
        return hash((self.name, self.schedule))

    def __repr__(self):
        return f"Model({self.name!r}, {self.depth} layers)"


class Layers(Sequence):
    """One Pattern per layer of a Model, computed on demand from its schedule."""

    def __init__(self, model: Model):
        self.model = model

    def __len__(self) -> int:
        return self.model.depth

    def __getitem__(self, index):
        if isinstance(index, slice):
            return tuple(self.model.layer(i) for i in range(*index.indices(len(self))))
        return self.model.layer(index)

    def __iter__(self):
        for pattern, count in _walk_runs(self.model.schedule):
            for _ in range(count):
                yield pattern


def _walk_runs(items):
    """(pattern, count) of every Run, repeats unrolled lazily, without recursion."""
    stack = [[items, 0, 1]]  # (items, next index, repetitions left)
    while stack:
        top = stack[-1]
        items, index, left = top
        if index == len(items):
            if left > 1:
                top[1], top[2] = 0, left - 1
            else:
                stack.pop()
            continue
        top[1] += 1
        item = items[index]
        if isinstance(item, Run):
            yield item.pattern, item.count
        else:
            stack.append([item.items, 0, item.count])


def _runs_of(layers) -> tuple:
    runs = []
    for pattern in layers:
        if runs and runs[-1].pattern == pattern:
            runs[-1] = Run(pattern, runs[-1].count + 1)
        else:
            runs.append(Run(pattern, 1))
    return tuple(runs)


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

    def check(self, n: int | None = None) -> list:
        """Every error binding would raise (docs/cli.md, ``spattn check``): each pattern whose
        parameters all have defaults and each model is bound, and, given ``n``, instantiated at
        that length. Returns the PatternErrors in source order (empty when all is well); raise
        them together with ``PatternError.combine(errors)``."""
        errors = []
        for name, decl in self.patterns.items():
            if all(p.default is not None for p in decl.params):
                errors.extend(self._try(lambda: [self.pattern(name)], n))
        for name in self.models:
            errors.extend(self._try(lambda: self.model(name).distinct, n))
        unique = {(e.filename, e.line, e.column, e.message): e for e in errors}
        return sorted(unique.values(), key=lambda e: (e.line, e.column))

    @staticmethod
    def _try(patterns, n) -> list:
        try:
            for pattern in patterns():
                if n is not None:
                    pattern.at(n)
        except PatternError as error:
            return error.errors
        return []

    def model(self, name: str) -> Model:
        """The model ``name`` with its schedule bound, run-length encoded (see ``Model``)."""
        decl = self.models.get(name)
        if decl is None:
            raise PatternError(f"no model named '{name}'{_choices(self.models)}",
                               filename=self.filename)
        schedule = self._schedule(decl.items, _Session())
        depth = sum(item.depth for item in schedule)
        if not depth:
            raise PatternError(f"model '{name}' has no layers", decl.span)
        if depth > INT_LIMIT:
            raise PatternError(f"model '{name}' has {depth} layers, more than the documented "
                               "limit of 2**63 - 1", decl.span)
        return Model(name, span=decl.span, schedule=schedule)

    def _schedule(self, items, session) -> tuple:
        """Schedule items of a model body: each layer body bound once, however often used."""
        out = []
        for item in items:
            count = eval_int(item.count)
            if count < 1:
                raise PatternError(f"a layer count must be >= 1, got {count}", item.count.span)
            if isinstance(item, N.RepeatItem):
                inner = self._schedule(item.items, session)
                if inner:
                    out.append(Repeat(count, inner))
            else:
                expr, values = bind_layer(item.body, self.declarations, session)
                name = item.body.name if isinstance(item.body, N.Ref) else expr_text(expr)
                out.append(Run(Pattern(expr, name, tuple(values.items()), item.span), count))
            if sum(x.depth for x in out) > INT_LIMIT:
                raise PatternError("a model has at most 2**63 - 1 layers (the documented limit)",
                                   item.count.span)
        return tuple(out)


def _mask_arguments(n_q, n_k, head) -> tuple:
    """``mask``'s arguments checked: lengths within the documented limit, n_q <= n_k, a
    head >= 0, and a mask small enough to allocate (MASK_MAX_PAIRS)."""
    n_q = length_argument("mask", "n_q", n_q)
    n_k = n_q if n_k is None else length_argument("mask", "n_k", n_k)
    head = integer_argument("mask", "head", head, 0)
    if n_q > n_k:
        raise ValueError(f"mask: need n_q <= n_k (queries are the last n_q of the n_k "
                         f"positions), got n_q = {n_q}, n_k = {n_k}")
    if n_q * n_k > MASK_MAX_PAIRS:
        raise ValueError(f"mask: a [{n_q}, {n_k}] bool mask would take {n_q * n_k:,} bytes, "
                         f"past the limit of 2**32 pairs (4 GiB); analyze() and the "
                         "kernels take longer sequences")
    return n_q, n_k, head


def _choices(table: dict) -> str:
    return f" (have: {', '.join(table)})" if table else " (the file declares none)"
