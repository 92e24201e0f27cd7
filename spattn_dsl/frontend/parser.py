"""Text -> declarations (IR nodes with unresolved ``Ref``/``Param``). The only lark user.

Syntax errors become ``PatternError`` with the offending token's location and a short list of
what was expected there. Semantic checks live in ``ir.resolve``; the tree -> IR pass only
refuses what no later pass could hold: an integer literal past the integer range and an
expression nested more than ``MAX_DEPTH`` deep (``ir.limits``). That pass walks the tree with
an explicit stack, so no input makes it recurse.
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources

import lark

from ..errors import PatternError, Source, SourceSpan
from ..ir import nodes as N
from ..ir.limits import INT_LIMIT, MAX_DEPTH, RANGE_TEXT

# how terminals read in "expected ..." messages
_TERMINALS = {
    "LPAR": "'('", "RPAR": "')'", "LBRACE": "'{'", "RBRACE": "'}'", "COMMA": "','",
    "SEMICOLON": "';'", "COLON": "':'", "EQUAL": "'='", "VBAR": "'|'", "AMPERSAND": "'&'",
    "BANG": "'!'", "MINUS": "'-'", "NAME": "a name", "INT": "an integer", "CMP": "a comparison",
    "ADD_OP": "an operator", "MUL_OP": "an operator", "PATTERN": "'pattern'",
    "MODEL": "'model'", "LAYERS": "'layers'", "REPEAT": "'repeat'", "HEADS": "'heads'",
    "BLOCKS": "'blocks'", "WHERE": "'where'", "$END": "end of file",
}


@lru_cache(maxsize=1)
def _parser() -> lark.Lark:
    grammar = resources.files("spattn_dsl.grammar").joinpath("spattn.lark").read_text()
    return lark.Lark(grammar, parser="lalr", start=["start", "body"], propagate_positions=True,
                     maybe_placeholders=True)


def parse(text: str, filename: str = "<string>", start: str = "start"):
    """Parse a pattern file into a list of ``PatternDecl`` / ``ModelDecl`` (``start="body"``:
    a bare pattern body into its expression)."""
    source = Source(filename, text)
    try:
        tree = _parser().parse(text, start=start)
    except lark.exceptions.UnexpectedInput as error:
        raise _syntax_error(error, source) from None
    return _ToIR(source).transform(tree)


def parse_expr(text: str, filename: str = "<string>"):
    """Parse a bare mask expression (or heads block) such as ``causal & window(128)``."""
    return parse(text, filename, start="body")


def _syntax_error(error, source: Source) -> PatternError:
    line, column = max(error.line, 1), max(error.column, 1)
    if isinstance(error, lark.exceptions.UnexpectedCharacters):
        char = source.text[error.pos_in_stream] if error.pos_in_stream < len(source.text) else ""
        message = f"unexpected character {char!r}"
    elif isinstance(error, lark.exceptions.UnexpectedToken) and error.token.type != "$END":
        message = f"unexpected {error.token.value!r}"
    else:
        message = "unexpected end of file"
        line, column = _end_position(source.text)
    expected = sorted({_TERMINALS.get(t, repr(t)) for t in (getattr(error, "expected", None) or getattr(error, "allowed", None) or ())
                       if not t.startswith("__")})
    if expected:
        message += "; expected " + (", ".join(expected[:-1]) + " or " + expected[-1]
                                    if len(expected) > 1 else expected[0])
    return PatternError(message, SourceSpan(source, line, column))


def _end_position(text: str) -> tuple[int, int]:
    lines = text.split("\n")
    return len(lines), len(lines[-1]) + 1


# rules that nest an expression one level deeper (the rest only wrap)
_NESTING = {"union", "difference", "intersect", "complement", "ref", "call", "blocks",
            "compare", "binop", "neg", "num", "name", "func", "repeat_item"}


class _ToIR:
    """Parse tree -> IR. Methods are named after grammar rules; every node gets its span.

    ``transform`` walks the tree with an explicit stack (no recursion, so any nesting the
    parser accepts is safe) and refuses expressions nested more than ``MAX_DEPTH`` deep.
    """

    def __init__(self, source: Source):
        self.source = source

    def transform(self, tree):
        results = []  # (value, depth) of finished subtrees, in order
        stack = [(tree, False)]
        while stack:
            node, expanded = stack.pop()
            if not isinstance(node, lark.Tree):
                results.append((node, 0))
                continue
            if not expanded:
                stack.append((node, True))
                stack.extend((child, False) for child in reversed(node.children))
                continue
            count = len(node.children)
            done = results[len(results) - count:] if count else []
            del results[len(results) - count:]
            depth = max((d for _, d in done), default=0) + (node.data in _NESTING)
            value = getattr(self, node.data)(node.meta, [v for v, _ in done])
            if depth > MAX_DEPTH:
                span = getattr(value, "span", None) or self._span(node.meta)
                raise PatternError(f"expression nested too deeply: more than {MAX_DEPTH} levels "
                                   "(the documented limit)", span)
            results.append((value, depth))
        return results[0][0]

    def _span(self, where) -> SourceSpan:
        """Span of a token or of a rule's meta (both carry the same position fields)."""
        return SourceSpan(self.source, where.line, where.column, where.end_line,
                          where.end_column)

    # declarations
    def start(self, meta, decls):
        return list(decls)

    def pattern_decl(self, meta, items):
        name, params, body = items
        return N.PatternDecl(str(name), tuple(params or ()), body, self._span(name))

    def param_list(self, meta, params):
        return tuple(p for p in params if p is not None)

    def param(self, meta, items):
        name, default = items
        return N.ParamDecl(str(name), default, self._span(name))

    def heads(self, meta, bodies):
        return N.Heads(tuple(bodies), self._span(meta))

    def model_decl(self, meta, items):
        name, *rest = items
        return N.ModelDecl(str(name), tuple(i for i in rest if i is not None), self._span(name))

    def layers_item(self, meta, items):
        count, body = items
        return N.LayersItem(count, body, self._span(meta))

    def repeat_item(self, meta, items):
        count, *rest = items
        return N.RepeatItem(count, tuple(i for i in rest if i is not None), self._span(meta))

    # mask expressions
    def union(self, meta, items):
        return N.Union(items[0], items[1], self._span(meta))

    def difference(self, meta, items):
        return N.Difference(items[0], items[1], self._span(meta))

    def intersect(self, meta, items):
        return N.Intersect(items[0], items[1], self._span(meta))

    def complement(self, meta, items):
        return N.Complement(items[0], self._span(meta))

    def ref(self, meta, items):
        (name,) = items
        return N.Ref(str(name), (), (), self._span(name))

    def call(self, meta, items):
        name, *args = items
        args = [a for a in args if a is not None]
        positional = tuple(a for a in args if not isinstance(a, tuple))
        keywords = tuple(a[:2] for a in args if isinstance(a, tuple))
        spans = tuple(a[2] for a in args if isinstance(a, tuple))
        return N.Ref(str(name), positional, keywords, self._span(name), spans)

    def kwarg(self, meta, items):
        name, value = items
        return (str(name), value, self._span(name))

    def blocks(self, meta, items):
        size, body = items
        return N.Blocks(size, body, self._span(meta))

    def where(self, meta, items):
        return items[0]

    def compare(self, meta, items):
        left, op, right = items
        return N.Compare(str(op), left, right, self._span(op))

    # integer expressions
    def binop(self, meta, items):
        left, op, right = items
        return N.BinOp(str(op), left, right, self._span(op))

    def neg(self, meta, items):
        return N.Neg(items[0], self._span(meta))

    def num(self, meta, items):
        (token,) = items
        digits = str(token).lstrip("0") or "0"
        if len(digits) > len(str(INT_LIMIT)) or int(digits) > INT_LIMIT:
            raise PatternError(f"integer literal too large: integers must lie in {RANGE_TEXT}",
                               self._span(token))
        return N.Num(int(digits), self._span(token))

    def name(self, meta, items):
        (token,) = items
        cls = N.Var if str(token) in ("n", "q", "k") else N.Param
        return cls(str(token), self._span(token))

    def func(self, meta, items):
        name, *args = items
        return N.Call(str(name), tuple(a for a in args if a is not None), self._span(name))
