"""Loading pattern files and pattern text."""
from __future__ import annotations

from pathlib import Path

from .errors import PatternError
from .frontend.parser import parse, parse_expr
from .ir.program import Model, Pattern, Program
from .ir.resolve import bind_expr, check_body


def loads(text: str, filename: str = "<string>") -> Program:
    """Parse and check pattern-file text. A file with errors raises one ``PatternError``
    carrying all of them (``.errors``; ``str()`` shows each with its caret)."""
    return Program(parse(text, filename), filename)


def load(path) -> Program:
    """Parse and check a ``.spattn`` file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise PatternError(f"cannot read {path}: {getattr(error, 'strerror', None) or error}",
                           filename=str(path), line=1, column=1) from None
    return loads(text, str(path))


def target_from(spec):
    """A Pattern or Model from an object, ``"file.spattn:name"`` (either kind), or pattern text."""
    if isinstance(spec, (Pattern, Model)):
        return spec
    if isinstance(spec, str):
        path, sep, name = spec.rpartition(":")
        if sep and path.endswith(".spattn"):
            program = load(path)
            return program.model(name) if name in program.models else program.pattern(name)
    return pattern_from(spec)


def pattern_from(spec) -> Pattern:
    """A Pattern from a Pattern, ``"file.spattn:name"``, or pattern text (``causal & window(8)``)."""
    if isinstance(spec, Pattern):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"expected a Pattern, 'file.spattn:name' or pattern text, got {type(spec).__name__}")
    path, sep, name = spec.rpartition(":")
    if sep and path.endswith(".spattn"):
        return load(path).pattern(name)
    body = parse_expr(spec)
    check_body(body)
    return Pattern(bind_expr(body, {}), spec)
