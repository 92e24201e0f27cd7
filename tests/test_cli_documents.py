"""``spattn report FILE --documents L1,L2,...``: one report per distinct document length (or
the longest, ``--documents-longest``), the same figures as ``--seq-len`` at that length."""
import json

import pytest

from spattn_dsl.cli import main

TEXT = "pattern swa(w = 4) { causal & window(w) }\n"


@pytest.fixture
def path(tmp_path):
    file = tmp_path / "p.spattn"
    file.write_text(TEXT)
    return str(file)


def report_json(capsys, argv) -> dict:
    assert main(argv + ["--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_each_distinct_length_equals_its_own_report(path, capsys):
    got = report_json(capsys, ["report", path, "--documents", "13,1,7,13,20", "--layers", "3"])
    assert got["scope"] == "each"
    assert got["counts"] == {"1": 1, "7": 1, "13": 2, "20": 1}
    assert list(got["reports"]) == ["1", "7", "13", "20"]
    for n in (7, 20):
        alone = report_json(capsys, ["report", path, "--seq-len", str(n), "--layers", "3"])
        assert got["reports"][str(n)] == alone


def test_longest_only_and_says_so(path, capsys):
    got = report_json(capsys, ["report", path, "--documents", "5,30,9", "--documents-longest"])
    assert got["scope"] == "longest" and list(got["reports"]) == ["30"]
    assert main(["report", path, "--documents", "5,30,9", "--documents-longest"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Documents: the longest document only: 30 tokens (3 documents")
    assert "== document length 30 (1 document)" in out and "length 5 " not in out


def test_markdown_names_each_length(path, capsys):
    assert main(["report", path, "--documents", "6,6,11", "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    assert "Documents: each distinct document length: 6, 11 (3 documents)." in out
    assert "## document length 6 (2 documents)" in out and "## document length 11" in out


@pytest.mark.parametrize("argv, message", [
    (["--documents", "4,x"], "argument --documents: expected comma-separated positive lengths"),
    (["--documents", "4,0"], "argument --documents: expected comma-separated positive lengths"),
    (["--documents", "4", "--seq-len", "8"], "not allowed with argument"),
    (["--seq-len", "8", "--documents-longest"], "--documents-longest: needs --documents"),
    ([], "one of the arguments --seq-len --documents is required"),
    (["--documents", "4", "--format", "html"], "not html"),
    (["--documents", "4,100000000"], "argument --documents: 100000000 is too large"),
])
def test_errors_exit_2_on_one_line(path, capsys, argv, message):
    assert main(["report", path] + argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
