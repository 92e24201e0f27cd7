"""The CLI in-process: success paths and every error path (exit code, message, caret)."""
import pytest

from spattn_dsl.cli import main


@pytest.fixture
def write(tmp_path):
    def _write(text, name="p.spattn"):
        path = tmp_path / name
        path.write_text(text)
        return str(path)
    return _write


def test_check_lists_patterns_and_models(write, capsys):
    path = write("pattern a(w = 8) { causal & window(w) }\npattern b(t) { window(t) }\n"
                 "model m { repeat 2 { layers 3: a; layers 1: causal } }")
    assert main(["check", path]) == 0
    out = capsys.readouterr().out
    assert "pattern a(w = 8): causal & window(8)" in out
    assert "pattern b(t)  [not bound" in out
    assert "model m: 8 layers: 3 x a, 1 x causal, 3 x a, 1 x causal" in out


def test_check_reports_every_binding_error(write, capsys):
    path = write("pattern a(w = n - 10) { window(w) }\npattern b { summary(4, 5) }\n")
    assert main(["check", path, "--seq-len", "10"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 2
    assert ":1:25: error: window: w must be >= 1, got 0" in err
    assert ":2:13: error: summary: c must be <= l" in err


def test_syntax_error_is_one_line_source_and_caret(write, capsys):
    path = write("pattern a {\n  causal & & window(3)\n}")
    assert main(["check", path]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"{path}:2:12: error: unexpected '&'; expected '!', '(' or a name"
    assert err[1] == "  causal & & window(3)"
    assert err[2] == "           ^"
    assert "Traceback" not in "\n".join(err)


def test_missing_file(capsys, tmp_path):
    assert main(["check", str(tmp_path / "nope.spattn")]) == 2
    assert "nope.spattn:1:1: error: cannot read" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["check"], "the following arguments are required: FILE"),
    (["frobnicate"], "invalid choice"),
    (["show", "x.spattn", "--pattern", "a", "--seq-len", "-3"], "expected a non-negative integer"),
    (["show", "x.spattn", "--pattern", "a", "--seq-len", "0"], "expected a positive integer"),
    (["show", "x.spattn", "--pattern", "a", "--seq-len", "ten"], "expected an integer"),
    (["report", "x.spattn", "--pattern", "a", "--model", "m", "--seq-len", "8"],
     "argument --model: not allowed with argument --pattern"),
    (["compile", "x.spattn", "--seq-len", "8", "--head-dim", "64", "--dtype", "fp8"],
     "argument --dtype: invalid choice: 'fp8'"),
])
def test_bad_flags_exit_2_with_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_show_small_and_tiled(write, capsys):
    path = write("pattern a { causal & window(2) }\npattern h { heads { causal; dense } }")
    assert main(["show", path, "--pattern", "a", "--seq-len", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:4] == ["|██· · |", "|████· |", "|· ████|"]
    assert main(["show", path, "--pattern", "a", "--seq-len", "1000", "--width", "10"]) == 0
    out = capsys.readouterr().out
    assert "each cell is 100 x 100 tokens" in out and len(out.splitlines()) == 12
    assert main(["show", path, "--pattern", "h", "--seq-len", "2", "--head", "1"]) == 0
    assert "████" in capsys.readouterr().out


def test_show_unknown_pattern(write, capsys):
    path = write("pattern a { causal }")
    assert main(["show", path, "--pattern", "b", "--seq-len", "8"]) == 2
    assert "error: no pattern named 'b' (have: a)" in capsys.readouterr().err


def test_show_value_error_points_into_the_file(write, capsys):
    path = write("pattern a(w = n - 8) {\n  window(w)\n}")
    assert main(["show", path, "--pattern", "a", "--seq-len", "8"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].endswith(":2:3: error: window: w must be >= 1, got 0")
    assert err[2] == "  ^^^^^^"


def test_report_text_and_model_formulas_keep_parameter_names(write, capsys):
    path = write("pattern swa(w = 16) { causal & window(w) }\nmodel m { layers 4: swa(w = 8) }")
    assert main(["report", path, "--model", "m", "--seq-len", "64"]) == 0
    out = capsys.readouterr().out
    assert "causal diameter" in out and "  9" in out  # ceil(63 / 7) = 9
    assert "reach = Min(L*(w - 1), n - 1)   [28]" in out  # 4 layers x 7


def test_report_without_an_exact_method_is_a_labelled_bound(write, capsys):
    # bidirectional, neither intervals nor residue classes, beyond the all-sources limit
    path = write("pattern s { stride(64) | window(3) }")
    assert main(["report", path, "--pattern", "s", "--seq-len", "65536"]) == 0
    out = capsys.readouterr().out
    assert "method sampled sources (64 of 65536) (bounds where marked)" in out
    assert "diameter (lower bound)" in out and "reach to first token  " in out


def test_report_beyond_the_sampled_limit_is_a_user_error(write, capsys):
    path = write("pattern s { stride(64) | window(3) }")
    assert main(["report", path, "--pattern", "s", "--seq-len", str((1 << 20) + 1)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("spattn report: error: no exact analysis method")


def test_report_never_rounds_an_incomplete_coverage_to_100_percent():
    from spattn_dsl.analysis.render import fmt_percent
    assert fmt_percent(0.99999) == "<100%" and fmt_percent(1.0) == "100%"
    assert fmt_percent(1e-6) == "0.0001%"
