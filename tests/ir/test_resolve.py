"""Every semantic error of docs/language.md §2, each with the location of the offending token."""
import pytest

from spattn_dsl import PatternError, loads


@pytest.mark.parametrize("source, line, column, message", [
    ("pattern p { wndow(3) }", 1, 13, "unknown pattern or primitive 'wndow'"),
    ("pattern p { window(3, 4) }", 1, 23, "window takes 1 argument, got 2"),
    ("pattern p { band(3) }", 1, 13, "band needs a value for 'after'"),
    ("pattern p { window(x = 3) }", 1, 20, "window has no parameter 'x'"),
    ("pattern p { window(3, w = 4) }", 1, 23, "window: parameter 'w' given twice"),
    ("pattern p(w) { window(w) }\npattern r { p(v = 2) }", 2, 15, "pattern 'p' has no parameter 'v'"),
    ("pattern p(w) { window(w) }\npattern r { p }", 2, 13, "pattern 'p' needs a value for 'w'"),
    ("pattern p { window(u) }", 1, 20, "unknown parameter 'u'"),
    ("pattern p(a = b, b = 1) { window(a) }", 1, 15, "unknown parameter 'b'"),
    ("pattern p { r }\npattern r { causal & p }", 2, 22, "recursive pattern: p -> r -> p"),
    ("pattern p { p }", 1, 13, "recursive pattern: p -> p"),
    ("pattern p(w = 7 / 2) { window(w) }", 1, 17, "'/' is exact: 7 / 2 is not an integer"),
    ("pattern p { window(0) }", 1, 13, "window: w must be >= 1, got 0"),
    ("pattern p { band(-1, 2) }", 1, 13, "band: before must be >= 0, got -1"),
    ("pattern p { summary(4, 5) }", 1, 13, "summary: c must be <= l"),
    ("pattern p { blocks(0) { causal } }", 1, 13, "blocks: size must be >= 1"),
    ("pattern p { window(q) }", 1, 20, "'q' is only defined inside where"),
    ("pattern p { where(q / 2 < k) }", 1, 21, "'/' is exact and not defined on q or k"),
    ("pattern p { window(foo(3)) }", 1, 20, "unknown function 'foo'"),
    ("pattern p { window(min(3)) }", 1, 20, "min() takes 2 arguments, got 1"),
    ("pattern p { causal }\npattern p { dense }", 2, 9, "'p' is already declared at line 1"),
    ("pattern window { causal }", 1, 9, "'window' is a built-in name"),
    ("pattern p(n = 3) { causal }", 1, 11, "'n' is reserved"),
    ("pattern p(a, a) { causal }", 1, 14, "duplicate parameter 'a'"),
    ("pattern p { global(first = 1, 2) }", 1, 13, "global takes either"),
    ("pattern p { global() }", 1, 13, "global needs"),
    ("model m { layers 2: causal }\npattern p { m }", 2, 13, "'m' is a model, not a pattern"),
    ("model m { layers n: causal }", 1, 18, "a layer count cannot depend on n"),
    ("pattern p { window(3 // 0) }", 1, 22, "division by zero"),
    ("pattern p { window(isqrt(0 - 4)) }", 1, 20, "isqrt() needs an argument >= 0"),
])
def test_semantic_errors_are_located(source, line, column, message):
    with pytest.raises(PatternError) as info:
        program = loads(source, "f.spattn")
        for name in program.patterns:
            program.pattern(name).mask(4)
    error = info.value
    assert message in error.message, error
    assert (error.filename, error.line, error.column) == ("f.spattn", line, column), error


def test_values_depending_on_n_are_checked_at_the_sequence_length():
    pattern = loads("pattern p(w = n - 8) { window(w) }", "f.spattn").pattern("p")
    assert pattern.mask(9).sum() > 0
    with pytest.raises(PatternError, match="window: w must be >= 1, got 0") as info:
        pattern.mask(8)
    assert (info.value.line, info.value.column) == (1, 24)


def test_binding_from_python_checks_names_and_types():
    program = loads("pattern p(w = 4) { window(w) }\nmodel m { layers 0: p }")
    assert program.pattern("p", w=2).text == "window(2)"
    with pytest.raises(PatternError, match="no parameter 'x'"):
        program.pattern("p", x=2)
    with pytest.raises(PatternError, match="must be an integer"):
        program.pattern("p", w=2.5)
    with pytest.raises(PatternError, match="no pattern named 'nope'"):
        program.pattern("nope")
    with pytest.raises(PatternError, match="layer count must be >= 1"):
        program.model("m")


def test_rendered_error_has_a_caret_under_the_token():
    with pytest.raises(PatternError) as info:
        loads("pattern p {\n    causal & wndow(3)\n}", "f.spattn")
    assert info.value.render() == ("f.spattn:2:14: error: unknown pattern or primitive 'wndow'\n"
                                   "    causal & wndow(3)\n"
                                   "             ^^^^^")


def test_model_expands_its_schedule_first_layer_first():
    program = loads("model g { repeat 2 { layers 2: causal & window(4); layers 1: causal } }")
    names = [layer.text for layer in program.model("g").layers]
    assert names == ["causal & window(4)"] * 2 + ["causal"] + ["causal & window(4)"] * 2 + ["causal"]
