"""``render``: a pattern at a sequence length and a tile configuration -> Triton source.

The source depends on the concrete expression of each head case (``Pattern.at(n_k)``): a
pattern that does not mention ``n`` renders the same file at every length. Its header names
the generator, the canonical pattern text, where it came from, its hash and the tile
configuration. ``kernel_key`` is the file's identity (the cache key of ``runtime.cache``).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ..ir import nodes as N
from ..ir.evaluate import head_count, select_head
from ..ir.printer import text as expr_text
from .predicate import Emitter, TableSpec
from .template import BACKWARD, BACKWARD_HELPERS, HELPERS, KERNEL

GENERATOR_VERSION = "20"


@dataclass(frozen=True)
class TileConfig:
    block_m: int = 64
    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 2
    merged: bool = False  # one loop over a range of key tiles, predicate on its end tiles only
    descriptors: bool = False  # visited tiles by tensor descriptors (Hopper's bulk copies)
    head_major: bool = False  # programs ordered head by head (tiles of one head together)

    def __str__(self) -> str:
        return f"BLOCK_M={self.block_m} BLOCK_N={self.block_n} num_warps={self.num_warps} " \
               f"num_stages={self.num_stages}" + (" merged" if self.merged else "") \
               + (" descriptors" if self.descriptors else "") \
               + (" head-major" if self.head_major else "")


@dataclass(frozen=True)
class Rendered:
    source: str
    key: str              # hash of everything the source depends on
    kernel_name: str
    tables: tuple         # TableSpec per random node, in kernel argument order
    cases: int


def case_texts(concrete) -> list[str]:
    return [expr_text(select_head(concrete, c)) for c in range(head_count(concrete))]


def fresh_texts(expr) -> list[str]:
    """The candidates of every ``random(..., fresh = 1)`` of a term, which its text does not
    show (they come from the whole pattern; a plan term may hold the node alone): part of the
    term's identity. Empty without such terms (keys unchanged)."""
    return [f"among {expr_text(x.among)}" for x in N.walk(expr)
            if isinstance(x, N.Random) and x.fresh and x.among is not None]


def kernel_key(concrete) -> str:
    """The source's identity: generator version and each head case's concrete text.

    Tile sizes are launch-time constants (constexpr), so one file serves every config."""
    blob = "\n".join([GENERATOR_VERSION] + case_texts(concrete))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def render(pattern, n_k: int) -> Rendered:
    """The kernel source (forward, backward dQ, backward dK/dV) for ``pattern`` (a ``Pattern``)
    at key length ``n_k``, every head case in one file (``case`` selects the predicate)."""
    concrete = pattern.at(n_k)
    cases = [select_head(concrete, c) for c in range(head_count(concrete))]
    return _render(pattern, cases, kernel_key(concrete), n_k)


def term_key(expr, documents: bool = False) -> str:
    """The identity of a term's kernel source: generator version, the term's text, and
    whether it is the documents form (random links read per-call draws)."""
    blob = "\n".join([GENERATOR_VERSION, "documents" if documents else "term", expr_text(expr)]
                     + fresh_texts(expr))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def render_term(pattern, expr, n_k: int, documents: bool = False) -> Rendered:
    """The kernels of one term of a plan (``layout.plan``): a single case whose predicate is
    the term's exact expression over original positions (``documents``: the form for packed
    documents, whose random links read each call's draws)."""
    return _render(pattern, [expr], term_key(expr, documents), n_k, term=True,
                   documents=documents)


def _render(pattern, exprs, key, n_k, term=False, documents=False) -> Rendered:
    from .. import __version__

    cases = len(exprs)
    emitter = Emitter(documents)
    predicates = [emitter.emit(e) for e in exprs]
    name = f"spattn_fwd_{key}"
    params = "".join(f", RT{i}, rt{i}_rows" + (f", RR{i}" if documents else "")
                     for i in range(len(emitter.tables)))
    source = _header(pattern, exprs, key, n_k, __version__, term) + "import triton\n" \
        "import triton.language as tl\n\n" + HELPERS + BACKWARD_HELPERS + KERNEL.substitute(
            name=name, table_params=params, table_args=params,
            predicate_body=_body(predicates)) + BACKWARD.substitute(name=name, table_params=params,
                                                                   table_args=params)
    source += _footer(name, emitter.tables, cases)
    return Rendered(source, key, name, tuple(emitter.tables), cases)


def _body(predicates: list[str]) -> str:
    if len(predicates) == 1:
        return f"    return {predicates[0]}"
    lines = [f"    allowed = {predicates[-1]}"]
    for c in range(len(predicates) - 2, -1, -1):
        lines.append(f"    allowed = tl.where(case == {c}, {predicates[c]}, allowed)")
    return "\n".join(lines + ["    return allowed"])


def _header(pattern, exprs, key, n_k, version, term=False) -> str:
    where = ""
    if pattern.span is not None and getattr(pattern.span, "line", None) is not None:
        where = f"# from: {getattr(pattern.span, 'filename', '<string>')}:{pattern.span.line}\n"
    lines = [
        f"# Generated by spattn {version} (codegen v{GENERATOR_VERSION}); do not edit.",
        f"# pattern: {pattern.name}",
        f"# text: {pattern.text}",
        f"# pattern hash: {pattern.hash}",
        f"# kernel key: {key}",
    ]
    for c, expr in enumerate(exprs):
        what = "plan term" if term else f"head case {c}"
        lines.append(f"# {what} at n_k = {n_k}: {expr_text(expr)}")
    lines.append("# tile sizes (BLOCK_M, BLOCK_N), num_warps, num_stages: chosen at launch")
    return "\n".join(lines) + "\n" + where + '"""Sparse attention kernels (forward and backward) generated by spattn."""\n'


def _footer(name: str, tables: list[TableSpec], cases: int) -> str:
    specs = ", ".join(f"({t.r}, {t.seed}, {t.divisors!r}" + (")" if t.among is None else
                                                            f", {repr(t.among)!r})")
                      for t in tables)
    return (f"\n\nFORWARD = {name}\nBACKWARD_DQ = {name}_dq\nBACKWARD_DKDV = {name}_dkdv\n"
            f"BACKWARD_DELTA = _backward_delta\n"
            f"CASES = {cases}\n"
            f"# random tables (r, seed, block divisors[, fresh draws' candidates]), in argument "
            f"order\nTABLES = [{specs}]\n")
