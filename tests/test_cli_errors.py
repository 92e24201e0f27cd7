"""The CLI's user-error paths in-process: exit status 2, one clear message, no traceback, and
nothing written or computed before the error."""
import json
import os
from pathlib import Path

import pytest

from spattn_dsl import __version__, picture
from spattn_dsl.cli import (COMPILE_MAX_SEQ_LEN, REPORT_MAX_LAYERS, REPORT_MAX_SEQ_LEN,
                            build_parser, main)

TWO_KINDS = "pattern swa(w = 8) { causal & window(w) }\nmodel m { layers 2: swa }\n"


@pytest.fixture
def write(tmp_path):
    def _write(text=TWO_KINDS, name="p.spattn"):
        path = tmp_path / name
        path.write_text(text)
        return str(path)
    return _write


needs_permissions = pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                                       reason="needs POSIX permissions, which root ignores")


@pytest.fixture
def read_only(tmp_path):
    """A directory nobody may write into (writable again afterwards, for cleanup)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    yield folder
    folder.chmod(0o700)


def flag_error(capsys) -> str:
    """The single stderr line of a flag error (and no stdout)."""
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("spattn") and ": error: " in lines[0]
    assert "internal error" not in err and "Traceback" not in err
    return lines[0]


def report(path, *extra):
    return main(["report", path, "--pattern", "swa", "--seq-len", "32", *extra])


# ---------------------------------------------------------------- report -o
def test_report_output_in_a_missing_directory(write, tmp_path, capsys):
    target = tmp_path / "nope" / "r.md"
    assert report(write(), "-o", str(target)) == 2
    assert f"no such directory: {target.parent}" in flag_error(capsys)
    assert not target.parent.exists()


def test_report_output_that_is_a_directory(write, tmp_path, capsys):
    (tmp_path / "out.md").mkdir()
    assert report(write(), "-o", str(tmp_path / "out.md")) == 2
    assert "out.md is a directory; name a file" in flag_error(capsys)
    assert report(write(), "-o", str(tmp_path), "--format", "json") == 2
    assert "is a directory" in flag_error(capsys)


def test_report_output_under_a_file(write, tmp_path, capsys):
    (tmp_path / "plain").write_text("x")
    assert report(write(), "-o", str(tmp_path / "plain" / "r.md")) == 2
    assert "plain is not a directory" in flag_error(capsys)


@needs_permissions
def test_report_output_in_a_read_only_directory(write, read_only, capsys):
    assert report(write(), "-o", str(read_only / "r.md")) == 2
    assert "permission denied" in flag_error(capsys)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_report_output_that_cannot_be_written(write, tmp_path, capsys):
    full = tmp_path / "full.md"  # every write fails, for root too: no space left on device
    full.symlink_to("/dev/full")
    assert report(write(), "-o", str(full)) == 2
    assert flag_error(capsys).startswith(f"spattn report: error: cannot write {full}: ")


def test_report_unknown_extension_writes_nothing(write, tmp_path, capsys):
    target = tmp_path / "r.pdf"
    assert report(write(), "-o", str(target)) == 2
    message = flag_error(capsys)
    assert "unknown extension '.pdf'" in message and ".md, .html, .json or .txt" in message
    assert not target.exists()


def test_report_output_without_extension_needs_format(write, tmp_path, capsys):
    target = tmp_path / "report"
    assert report(write(), "-o", str(target)) == 2
    assert "has no extension" in flag_error(capsys) and not target.exists()
    assert report(write(), "-o", str(target), "--format", "json") == 0
    assert json.loads(target.read_text())["n"] == 32


def test_report_format_that_disagrees_with_the_extension(write, tmp_path, capsys):
    target = tmp_path / "r.md"
    assert report(write(), "-o", str(target), "--format", "json") == 2
    assert "--format: json disagrees with -o" in flag_error(capsys) and not target.exists()
    assert report(write(), "-o", str(target), "--format", "markdown") == 0
    assert target.read_text().startswith("#")


@pytest.mark.parametrize("name, check", [
    ("r.json", lambda text: json.loads(text)["kind"] == "pattern"),
    ("r.html", lambda text: text.lstrip().lower().startswith("<!doctype html")),
    ("r.txt", lambda text: text.startswith("pattern swa, n = 32")),
])
def test_report_format_follows_the_extension(write, tmp_path, capsys, name, check):
    assert report(write(), "-o", str(tmp_path / name)) == 0
    assert check((tmp_path / name).read_text())


# ---------------------------------------------------------------- compile
@pytest.mark.parametrize("head_dim", ["3", "15", "257", "300"])
def test_compile_head_dim_outside_the_kernels_range(write, tmp_path, capsys, head_dim):
    out = tmp_path / "build"
    argv = ["compile", write(), "--pattern", "swa", "--seq-len", "64", "--head-dim", head_dim,
            "-o", str(out)]
    assert main(argv) == 2
    assert f"--head-dim: the kernels take 16 to 256, got {head_dim}" in flag_error(capsys)
    assert not out.exists()


def test_compile_output_that_is_a_file(write, tmp_path, capsys):
    (tmp_path / "plain").write_text("x")
    base = ["compile", write(), "--seq-len", "64", "--head-dim", "64", "-o"]
    assert main(base + [str(tmp_path / "plain")]) == 2
    assert "plain is not a directory" in flag_error(capsys)
    assert main(base + [str(tmp_path / "plain" / "deeper")]) == 2
    assert f"cannot be made: {tmp_path / 'plain'} is a file" in flag_error(capsys)


@needs_permissions
def test_compile_output_in_a_read_only_directory(write, read_only, capsys):
    assert main(["compile", write(), "--seq-len", "64", "--head-dim", "64",
                 "-o", str(read_only / "out")]) == 2
    assert "permission denied" in flag_error(capsys)


# ---------------------------------------------------------------- limits
def test_show_sequence_too_long_names_the_limit(write, capsys):
    too_long = picture.MAX_SEQ_LEN + 1
    assert main(["show", write(), "--pattern", "swa", "--seq-len", str(too_long)]) == 2
    assert f"the limit is {picture.MAX_SEQ_LEN}" in flag_error(capsys)
    assert main(["show", write(), "--seq-len", "8", "--width", str(picture.MAX_WIDTH + 1)]) == 2
    assert f"--width: {picture.MAX_WIDTH + 1} is too large" in flag_error(capsys)


def test_report_sequence_or_depth_too_large_names_the_limit(write, capsys):
    assert main(["report", write(), "--model", "m", "--seq-len", str(10**30)]) == 2
    assert f"the limit is {REPORT_MAX_SEQ_LEN}" in flag_error(capsys)
    assert main(["report", write(), "--model", "m", "--seq-len", "8",
                 "--layers", str(REPORT_MAX_LAYERS + 1)]) == 2
    assert f"--layers: {REPORT_MAX_LAYERS + 1} is too large" in flag_error(capsys)


def test_compile_sequence_too_long_names_the_limit(write, tmp_path, capsys):
    out = tmp_path / "build"
    assert main(["compile", write(), "--seq-len", str(10**20), "--head-dim", "64",
                 "-o", str(out)]) == 2
    assert f"the limit is {COMPILE_MAX_SEQ_LEN}" in flag_error(capsys) and not out.exists()


def test_limits_in_help_agree_with_the_code():
    from spattn_dsl import cli
    from spattn_dsl.analysis.render import FORMATS
    from spattn_dsl.runtime.attention import HEAD_DIMS

    assert cli.HEAD_DIMS == HEAD_DIMS
    assert set(cli.REPORT_FORMATS) == set(FORMATS.values())
    listed = cli.REPORT_EXTENSIONS.replace(" or ", ", ").split(", ")
    assert all(ext in FORMATS for ext in listed)


# ---------------------------------------------------------------- choosing what to show
def test_show_and_report_take_the_only_pattern(write, capsys):
    path = write("pattern only { causal & window(2) }")
    assert main(["show", path, "--seq-len", "3"]) == 0
    assert capsys.readouterr().out.startswith("only: causal & window(2)")
    assert main(["report", path, "--seq-len", "16"]) == 0
    assert capsys.readouterr().out.startswith("pattern only, n = 16")


def test_report_takes_the_only_model(write, capsys):
    path = write("model m { layers 3: causal & window(4) }")
    assert main(["report", path, "--seq-len", "16"]) == 0
    assert capsys.readouterr().out.startswith("model m, n = 16, 3 layers")
    assert main(["show", path, "--seq-len", "16"]) == 2
    assert "declares no pattern" in flag_error(capsys)


def test_ambiguous_file_lists_the_names(write, capsys):
    path = write("pattern a { causal }\npattern b { dense }\nmodel m { layers 1: a }")
    assert main(["show", path, "--seq-len", "8"]) == 2
    assert "declares 2 patterns; choose one with --pattern: a, b" in flag_error(capsys)
    assert main(["compile", path, "--seq-len", "8", "--head-dim", "64"]) == 2
    assert "choose one with --pattern: a, b" in flag_error(capsys)
    # report prefers the file's only model, saying so; two models are ambiguous
    assert main(["report", path, "--seq-len", "8"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("model m, n = 8")
    assert err == f"spattn report: analysing model m ({path} also declares 2 patterns: a, b; " \
                  "choose one with --pattern NAME)\n"
    path = write("pattern a { causal }\nmodel m { layers 1: a }\nmodel m2 { layers 2: a }")
    assert main(["report", path, "--seq-len", "8"]) == 2
    assert ("declares 1 pattern and 2 models; choose one with --pattern (a) or --model (m, m2)"
            in flag_error(capsys))


def test_a_model_given_to_pattern_is_named_as_a_model(write, capsys):
    path = write()
    assert main(["report", path, "--pattern", "m", "--seq-len", "8"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"{path}:2:7: error: 'm' is a model, not a pattern; use --model m"
    assert err[1:] == ["model m { layers 2: swa }", "      ^"]
    assert main(["show", path, "--pattern", "m", "--seq-len", "8"]) == 2
    assert "'m' is a model, not a pattern; spattn show takes a pattern (patterns here: swa)" \
        in capsys.readouterr().err


def test_a_pattern_given_to_model_is_named_as_a_pattern(write, capsys):
    path = write()
    assert main(["report", path, "--model", "swa", "--seq-len", "8"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"{path}:1:9: error: 'swa' is a pattern, not a model; use --pattern swa"
    assert err[2] == "        ^^^"


# ---------------------------------------------------------------- version, help, diagnostics
def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"spattn {__version__}\n"


def _subparsers():
    parser = build_parser()
    (commands,) = [a for a in parser._actions if a.dest == "command"]
    return parser, commands.choices


def test_every_flag_of_every_command_has_help():
    parser, commands = _subparsers()
    assert set(commands) == {"check", "show", "report", "compile"}
    for name, command in [("spattn", parser), *commands.items()]:
        for action in command._actions:
            where = f"{name} {action.option_strings or action.dest}"
            assert action.help and action.help.strip(), where


@pytest.mark.parametrize("command", ["check", "show", "report", "compile"])
def test_help_of_each_command_shows_every_flag(command, capsys):
    _, commands = _subparsers()
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    for action in commands[command]._actions:
        for flag in action.option_strings:
            assert flag in out
        assert action.help.split("(")[0].strip()[:20] in " ".join(out.split())


def test_every_diagnostic_of_a_collected_error_is_printed(monkeypatch, write, capsys):
    """Loading may gather several resolve errors into one PatternError (``.errors``)."""
    from spattn_dsl import api
    from spattn_dsl.errors import PatternError, Source, SourceSpan

    path = write("pattern a { wndow(3) }\npattern b { causl }\n")
    source = Source(path, Path(path).read_text())
    first = PatternError("unknown pattern or primitive 'wndow'", SourceSpan(source, 1, 13, 1, 18))
    second = PatternError("unknown pattern or primitive 'causl'", SourceSpan(source, 2, 13, 2, 18))
    collected = PatternError(first.message, first.span)
    collected.errors = [first, second]

    def failing_load(_path):
        raise collected
    monkeypatch.setattr(api, "load", failing_load)
    assert main(["check", path]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"{path}:1:13: error: unknown pattern or primitive 'wndow'",
                   "pattern a { wndow(3) }", "            ^^^^^",
                   f"{path}:2:13: error: unknown pattern or primitive 'causl'",
                   "pattern b { causl }", "            ^^^^^"]
