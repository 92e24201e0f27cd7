"""Errors point into their own file, at the right line, with the caret under the token."""
import pytest

from spattn_dsl import PatternError, loads


def test_equal_patterns_in_two_files_report_their_own_file():
    one = loads("pattern p(w = n - 8) { window(w) }", "one.spattn").pattern("p")
    two = loads("# two\n\n  pattern p(w = n - 8) {\n window(w) }", "two.spattn").pattern("p")
    assert one == two  # equal patterns (spans are not part of equality) ...
    for pattern in (one, two, one):  # ... and each one's errors still point into its own file
        pattern.mask(9)
        with pytest.raises(PatternError) as info:
            pattern.mask(8)
        error = info.value
        if pattern is one:
            assert (error.filename, error.line, error.column) == ("one.spattn", 1, 24)
        else:
            assert (error.filename, error.line, error.column) == ("two.spattn", 4, 2)
            assert str(error).splitlines()[1:] == [" window(w) }", " ^^^^^^"]


def test_where_errors_after_a_cached_twin_point_into_their_own_file():
    text = "pattern p {{{pad} where(q // (k - 2) == 0) }}"
    first = loads(text.format(pad=""), "a.spattn").pattern("p")
    second = loads(text.format(pad="\n\n   "), "b.spattn").pattern("p")
    for pattern, where in ((first, ("a.spattn", 1)), (second, ("b.spattn", 3))):
        with pytest.raises(PatternError) as info:
            pattern.mask(5)
        assert (info.value.filename, info.value.line) == where


@pytest.mark.parametrize("separator", ["\f", "\r", "\t", "\n\f", "\r\n", "\r\r"])
def test_caret_is_under_the_token_after_unusual_whitespace(separator):
    source = f"pattern a {{ causal }}{separator}pattern p {{ causal &{separator} wndow(3) }}"
    with pytest.raises(PatternError) as info:
        loads(source, "f.spattn")
    error = info.value
    lines = source.split("\n")  # the parser counts lines by "\n" only
    assert lines[error.line - 1][error.column - 1:].startswith("wndow")
    shown, caret = str(error).splitlines()[1:]
    assert caret.index("^") == error.column - 1 and shown[caret.index("^"):].startswith("wndow")
    assert caret.count("^") == len("wndow")


def test_caret_line_with_a_line_separator_character():
    source = "pattern a { causal }\npattern p { causal \u2028 & window(3) }"
    with pytest.raises(PatternError) as info:
        loads(source, "f.spattn")
    error = info.value
    assert (error.line, error.column) == (2, 20) and "unexpected character" in error.message
    shown, caret = str(error).splitlines()[1:]
    assert shown == "pattern p { causal   & window(3) }" and caret == " " * 19 + "^"


def test_every_check_error_of_a_file_is_reported_in_source_order():
    source = ("pattern r { p & foo(2) }\n"
              "pattern p { wndow(3) | stride(x) }\n"
              "pattern p { dense }\n"
              "model m { layers n: causal; layers 2: nothing }\n")
    with pytest.raises(PatternError) as info:
        loads(source, "f.spattn")
    error = info.value
    where = [(e.line, e.column) for e in error.errors]
    assert where == [(1, 17), (2, 13), (2, 31), (3, 9), (4, 18), (4, 39)], error
    assert (error.filename, error.line, error.column) == ("f.spattn", 1, 17)
    assert error.message == error.errors[0].message == "unknown pattern or primitive 'foo'"
    text = str(error)
    assert text.startswith("f.spattn:1:17: error: unknown pattern or primitive 'foo'\n")
    assert text.count("f.spattn:") == 6 and text.count("^") >= 6
    for e in error.errors:
        assert e.render() in text and e.errors == [e]


def test_a_single_error_is_its_own_list_and_renders_with_a_caret():
    with pytest.raises(PatternError) as info:
        loads("pattern p { wndow(3) }", "f.spattn")
    error = info.value
    assert error.errors == [error]
    assert str(error) == error.render() == ("f.spattn:1:13: error: unknown pattern or primitive "
                                            "'wndow'\npattern p { wndow(3) }\n            ^^^^^")


def test_recursion_is_reported_with_other_errors():
    with pytest.raises(PatternError) as info:
        loads("pattern a { b }\npattern b { a & window(0 // 0) }\npattern c { nope }", "f.spattn")
    messages = [e.message for e in info.value.errors]
    assert any("recursive pattern" in m for m in messages)
    assert any("unknown pattern or primitive 'nope'" in m for m in messages)


def test_program_check_binds_everything_and_returns_every_error():
    program = loads("pattern a { window(0) }\n"
                    "pattern b(w = n - 8) { window(w) }\n"
                    "pattern c(t) { window(t) }\n"
                    "pattern d { causal }\n"
                    "model m { layers 2: a; layers 1: b }\n"
                    "model ok { layers 3: d }", "f.spattn")
    assert [(e.line, e.column) for e in program.check()] == [(1, 13)]  # a, once (m repeats it)
    errors = program.check(n=8)
    assert [(e.line, e.column) for e in errors] == [(1, 13), (2, 24)]
    assert "w must be >= 1, got 0" in str(PatternError.combine(errors)).splitlines()[3]
    assert loads("pattern d { causal }").check(4096) == []
