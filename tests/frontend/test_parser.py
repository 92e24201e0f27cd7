"""Parsing: every construct, precedence, printer round trip, and robustness."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spattn_dsl import PatternError, loads
from spattn_dsl.frontend.parser import parse, parse_expr
from spattn_dsl.ir import nodes as N
from spattn_dsl.ir.printer import text

EVERYTHING = """
# a comment
pattern uses_later { later(3) }               # a name may be used before it is declared
pattern later(a, b = a * 2 + 1) { window(b) }
pattern noparens { dense | none }
pattern arith(x = max(min(7, 9), isqrt(17)) - log2(8) // 2 % 5 + -1) { stride(x) }
pattern all_prims(s = 4) {
    causal & (window(3) | band(1, 2) | dilated(2, 2) | stride(s) | chunk(8) | summary(8, 2)
    | global(first = 1) | global(3, 5) | sink(2) | prefix(4) | random(2, seed = 9) | none)
}
pattern ops { causal & !window(4) - stride(3) | dense }
pattern grid(b = 16) { causal & blocks(b) { band(1, 1) | where(q * 2 > k + n // 2 & !(q == k)) } }
pattern per_head { heads { causal; window(2); } }
pattern kw { later(b = 5, a = 1) }
model stack { layers 2: causal; repeat 3 { layers 1: per_head; layers 2: later(1) }; }
"""


def test_every_construct_parses_and_binds():
    program = loads(EVERYTHING)
    assert list(program.patterns) == ["uses_later", "later", "noparens", "arith", "all_prims",
                                      "ops", "grid", "per_head", "kw"]
    assert program.pattern("uses_later").text == "window(7)"
    assert program.pattern("kw").text == "window(5)"
    assert program.pattern("arith").text == "stride(5)"  # 7 - (3 // 2 % 5) + -1
    assert program.pattern("per_head").heads == 2
    assert len(program.model("stack")) == 2 + 3 * 3
    for name in program.patterns:
        if name != "later":
            program.pattern(name).mask(20)


@pytest.mark.parametrize("source, expected", [
    ("a | b & c", "Union(a, Intersect(b, c))"),
    ("a & b | c", "Union(Intersect(a, b), c)"),
    ("a - b & c", "Difference(a, Intersect(b, c))"),
    ("a - b | c", "Union(Difference(a, b), c)"),
    ("a | b - c", "Difference(Union(a, b), c)"),
    ("!a & b", "Intersect(Complement(a), b)"),
    ("!(a | b)", "Complement(Union(a, b))"),
])
def test_operator_precedence(source, expected):
    assert _shape(parse_expr(source)) == expected


def _shape(e) -> str:
    if isinstance(e, N.Ref):
        return e.name
    kids = ", ".join(_shape(c) for c in N.children(e))
    return f"{type(e).__name__}({kids})"


def test_where_comparisons_bind_tighter_than_mask_operators():
    e = parse_expr("where(q - k < 2 * 3 | !(k >= q) & q == 1)")
    assert isinstance(e, N.Union) and isinstance(e.right, N.Intersect)
    assert isinstance(e.left, N.Compare) and e.left.left.op == "-" and e.left.right.op == "*"


def test_printer_round_trips():
    program = loads(EVERYTHING)
    for name in program.patterns:
        if name == "later":
            continue
        pattern = program.pattern(name)
        assert loads(f"pattern p {{ {pattern.text} }}").pattern("p").expr == pattern.expr


def test_spans_point_at_tokens_and_are_ignored_by_equality():
    (decl,) = parse("pattern p {\n  causal & window(3)\n}")
    assert decl.body.right.span.line == 2 and decl.body.right.span.column == 12
    (other,) = parse("pattern p { causal &   window(3) }")
    assert decl == other and hash(decl) == hash(other)


@pytest.mark.parametrize("source, line, column, message", [
    ("pattern p { causal & }", 1, 22, "unexpected '}'"),
    ("pattern p { window(3) ", 1, 23, "unexpected end of file"),
    ("pattern p { wind@w }", 1, 17, "unexpected character '@'"),
    ("model m {\n  layers 3 causal }", 2, 12, "unexpected 'causal'"),
    ("pattern p(w =) { dense }", 1, 14, "unexpected ')'"),
    ("pattern { dense }", 1, 9, "unexpected '{'"),
])
def test_syntax_errors_are_located(source, line, column, message):
    with pytest.raises(PatternError) as info:
        loads(source, "f.spattn")
    error = info.value
    assert (error.filename, error.line, error.column) == ("f.spattn", line, column)
    assert message in str(error) and str(error).startswith(f"f.spattn:{line}:{column}:")


VOCABULARY = ["pattern", "model", "layers", "repeat", "heads", "blocks", "where", "p", "q", "k",
              "n", "window", "causal", "global", "first", "random", "seed", "x", "(", ")", "{",
              "}", ";", ",", ":", "=", "|", "&", "-", "!", "+", "*", "/", "//", "%", "<", "==",
              "0", "3", "12", "#c\n", "\n", "@", "min", "isqrt"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(VOCABULARY), max_size=25))
def test_token_soup_parses_or_raises_a_located_error(tokens):
    _parse_or_located_error(" ".join(tokens))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_arbitrary_text_parses_or_raises_a_located_error(source):
    _parse_or_located_error(source)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(VOCABULARY), max_size=14))
def test_arbitrary_bodies_parse_or_raise_a_located_error(tokens):
    _parse_or_located_error("pattern p(x = 2) { " + " ".join(tokens) + " }\nmodel m { layers 2: p }")


def _parse_or_located_error(source):
    try:
        program = loads(source, "fuzz.spattn")
        for name, decl in program.patterns.items():
            if all(p.default is not None for p in decl.params):
                program.pattern(name).mask(9)
        for name in program.models:
            program.model(name)
    except PatternError as error:
        assert error.filename == "fuzz.spattn" and error.line >= 1 and error.column >= 1
        assert str(error).startswith(f"fuzz.spattn:{error.line}:{error.column}:")
        error.render()


def test_bare_pattern_text_errors_point_into_that_text():
    from spattn_dsl.api import pattern_from

    with pytest.raises(PatternError) as info:
        pattern_from("causal & wndow(3)")
    assert info.value.render().splitlines() == [
        "<string>:1:10: error: unknown pattern or primitive 'wndow'",
        "causal & wndow(3)",
        "         ^^^^^",
    ]
