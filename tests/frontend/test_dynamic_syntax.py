"""Dynamic terms in the language (docs/language.md §5): parsing, defaults, printing, located errors,
``Pattern.dynamic``, guards of the passes that do not take them yet, and the CLI."""
import pytest

from spattn_dsl import PatternError, loads
from spattn_dsl.cli import main
from spattn_dsl.ir import nodes as N
from spattn_dsl.ir.program import DynamicNotSupported, require_static

SOURCE = """
pattern moba(b = 4, budget = 2) { causal & (window(b) | topk(budget, unit = b)) }
pattern quest { causal & topk(n // 4, unit = 2, rows = 3, by = minmax, shared = group) }
pattern indexer { causal & (sink(1) | topk(k = 8, by = scores, shared = all)) }
pattern vs { causal & (sink(1) | vertical(3) | slash(2, probe = 4, shared = all)) }
pattern same { topk(2) | causal & topk(2) }
pattern per_head { heads { causal & topk(1); window(2) | topk(1, shared = head) } }
pattern named(mean_key = 3) { topk(mean_key, by = mean_key) }
"""


def test_terms_bind_with_their_defaults():
    program = loads(SOURCE)
    moba = program.pattern("moba").expr.right.right
    assert moba == N.TopK(N.Num(2), N.Num(4), N.Num(1), "mean_key", "head")
    quest = program.pattern("quest").at(40).right
    assert quest == N.TopK(10, 2, 3, "minmax", "group")
    assert program.pattern("indexer").at(64).right.right == N.TopK(8, 1, 1, "scores", "all")
    vertical, slash = program.pattern("vs").at(100).right.left.right, \
        program.pattern("vs").at(100).right.right
    assert vertical == N.Vertical(3, 64, "head") and slash == N.Slash(2, 4, "all")
    # a parameter may be called like an estimator; by = takes the name, never the parameter
    assert program.pattern("named").at(10) == N.TopK(3, 1, 1, "mean_key", "head")


def test_dynamic_property_and_terms():
    program = loads(SOURCE)
    assert program.pattern("moba").dynamic and program.pattern("vs").dynamic
    assert not loads("pattern p { causal & window(3) }").pattern("p").dynamic
    assert len(program.pattern("vs").dynamic_terms) == 2
    assert len(program.pattern("same").dynamic_terms) == 1  # equal terms are one term
    assert len(program.pattern("per_head").dynamic_terms) == 1


def test_arguments_clamp_to_the_sequence():
    program = loads("pattern p { topk(1000, unit = 500, rows = 99) | vertical(99, probe = 99) "
                    "| slash(99) }")
    expr = program.pattern("p").at(10)
    assert expr.left.left == N.TopK(1, 10, 10, "mean_key", "head")
    assert expr.left.right == N.Vertical(10, 10, "head")
    assert expr.right == N.Slash(19, 10, "head")


def test_printer_round_trips():
    program = loads(SOURCE)
    for name in program.patterns:
        pattern = program.pattern(name)
        again = loads(f"pattern p {{ {pattern.text} }}").pattern("p")
        assert again.expr == pattern.expr
    assert program.pattern("moba").text == "causal & (window(4) | topk(2, unit = 4))"
    assert program.pattern("quest").text == \
        "causal & topk(n // 4, unit = 2, rows = 3, by = minmax, shared = group)"


@pytest.mark.parametrize("body, column, message", [
    ("topk(-1)", 13, "k must be >= 0, got -1"),
    ("topk(0 - 3, unit = 2)", 13, "k must be >= 0"),
    ("topk(7 / 2)", 20, "'/' is exact"),
    ("topk(2, unit = 0)", 13, "unit must be >= 1"),
    ("topk(2, rows = 1 - 1)", 13, "rows must be >= 1"),
    ("vertical(2, probe = 0)", 13, "probe must be >= 1"),
    ("slash(-2)", 13, "slash: k must be >= 0"),
    ("topk(2, by = dot)", 26, "unknown estimator 'dot'"),
    ("topk(2, shared = heads)", 30, "unknown sharing 'heads'"),
    ("topk(mean_key)", 18, "k must be an integer, but 'mean_key' is an estimator name"),
    ("topk(4, unit = group)", 28, "unit must be an integer, but 'group' is a sharing name"),
    ("vertical(2, probe = minmax)", 33, "probe must be an integer"),
    ("window(scores)", 20, "'scores' is an estimator name"),
    ("topk(2, by = 3)", 26, "by takes an estimator name"),
    ("topk(2, by = n)", 26, "by takes an estimator name"),
    ("topk(2, shared = 1 + 1)", 32, "shared takes a sharing name"),
    ("topk(2, by = head)", 26, "unknown estimator 'head'"),
    ("topk(2, seed = 1)", 21, "topk has no parameter 'seed'"),
    ("topk(unit = 4)", 13, "topk needs a value for 'k'"),
    ("topk(1, 2, 3, mean_key, head, 6)", 43, "takes 5 arguments"),
    ("slash(2, by = minmax)", 22, "slash has no parameter 'by'"),
    ("blocks(4) { topk(2) }", 25, "cannot stand inside blocks"),
    ("heads { topk(2, shared = all); causal }", 21, "must stand in every case"),
    ("topk(2.5)", 19, "unexpected character '.'"),
])
def test_bad_uses_are_located_errors(body, column, message):
    with pytest.raises(PatternError) as info:
        loads(f"pattern p {{ {body} }}", "f.spattn").pattern("p").at(16)
    error = info.value
    assert (error.filename, error.line, error.column) == ("f.spattn", 1, column), str(error)
    assert message in str(error) and "^" in str(error)


def test_budget_from_n_is_checked_at_each_length():
    pattern = loads("pattern p { topk(n - 5) }", "f.spattn").pattern("p")
    assert pattern.at(9).k == 4
    with pytest.raises(PatternError, match="k must be >= 0, got -1"):
        pattern.at(4)


def test_term_names_cannot_be_redeclared():
    with pytest.raises(PatternError, match="built-in name"):
        loads("pattern topk { causal }")


def test_static_passes_refuse_dynamic_patterns_clearly():
    program = loads(SOURCE, "f.spattn")
    with pytest.raises(DynamicNotSupported) as info:
        require_static(program.pattern("moba"), "compile()")
    assert isinstance(info.value, (PatternError, NotImplementedError))
    assert "not supported by compile() yet" in str(info.value) and info.value.line == 2
    require_static(loads("pattern p { causal }").pattern("p"), "compile()")  # no error


def test_analyze_takes_dynamic_patterns_as_bounds():  # tests/analysis/test_dynamic_bounds.py
    import spattn_dsl

    program = loads(SOURCE + "model m { layers 1: causal; layers 1: vs }", "f.spattn")
    for subject in (program.pattern("vs"), program.model("m")):
        report = spattn_dsl.analyze(subject, 16)
        assert report.bounds["reach"] == "lower" and report.max_keys_per_query >= 1


def test_cli_check_lists_dynamic_terms(tmp_path, capsys):
    path = tmp_path / "d.spattn"
    path.write_text(SOURCE + "model m { layers 2: causal; layers 1: vs }\n")
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "dynamic terms (chosen from the inputs at run time): topk(2, unit = 4)" in out
    assert "vertical(3); slash(2, probe = 4, shared = all)" in out
    assert out.count("dynamic terms") == 8  # 7 patterns and the model


def test_cli_show_marks_candidates_and_samples_a_selection(tmp_path, capsys):
    path = tmp_path / "d.spattn"
    path.write_text(SOURCE)
    assert main(["show", str(path), "--pattern", "moba", "--seq-len", "12"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[5] == "|++████████" + "· " * 7 + "|"  # q = 4: key 0 a candidate, 1..4 the window
    assert lines[-1].startswith("+ candidates")
    assert main(["show", str(path), "--pattern", "moba", "--seq-len", "12",
                 "--sample-selection", "1"]) == 0
    picture = capsys.readouterr().out
    assert "one selection on random inputs, seed 1" in picture and "+" not in picture
    assert main(["show", str(path), "--pattern", "moba", "--seq-len", "12", "--plan"]) == 2
    assert "not supported by spattn show --plan yet" in capsys.readouterr().err
    assert main(["compile", str(path), "--pattern", "moba", "--seq-len", "64",
                 "--head-dim", "64", "-o", str(tmp_path / "out")]) == 2
    assert "not supported by spattn compile yet" in capsys.readouterr().err


def test_cli_sample_selection_needs_a_dynamic_pattern(tmp_path, capsys):
    path = tmp_path / "s.spattn"
    path.write_text("pattern p { causal }")
    assert main(["show", str(path), "--seq-len", "8", "--sample-selection", "0"]) == 2
    assert "has no dynamic terms" in capsys.readouterr().err
