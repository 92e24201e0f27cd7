"""Issue 26 item 6: a file path in the decorator, report's model preference, errors in a
pattern file before torch is imported, and the CPU warning pointing at the caller's line."""
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import spattn_dsl as spattn
from spattn_dsl.runtime import attention

ROOT = Path(__file__).parent.parent


def test_decorator_takes_the_only_pattern_of_a_file():
    for spec in ("examples/mistral.spattn", ROOT / "examples" / "mistral.spattn"):
        run = spattn.sparse_attention(str(ROOT / spec) if isinstance(spec, str) else spec)(
            lambda q, k, v: None)
        assert run.spattn.target.name == "mistral_swa"


def test_decorator_names_the_choices_of_an_ambiguous_file(tmp_path):
    path = tmp_path / "two.spattn"
    path.write_text("pattern a { causal }\npattern b { dense }\n")
    with pytest.raises(ValueError, match=r"declares 2 patterns and 0 models; name one as .*two"
                                         r"\.spattn:NAME' \(a, b\)"):
        spattn.sparse_attention(str(path))
    only_model = tmp_path / "m.spattn"
    only_model.write_text("model m { layers 2: causal }\n")
    assert spattn.sparse_attention(str(only_model))(lambda q, k, v: None).spattn.target.name == "m"
    with pytest.raises(spattn.PatternError, match="cannot read"):
        spattn.sparse_attention(str(tmp_path / "missing.spattn"))


@pytest.mark.parametrize("command", [["check"], ["show", "--seq-len", "8"],
                                     ["report", "--seq-len", "8"],
                                     ["compile", "--seq-len", "8", "--head-dim", "64"]])
def test_a_bad_file_is_reported_before_torch_is_imported(tmp_path, command):
    bad = tmp_path / "bad.spattn"
    bad.write_text("pattern p {\n    causal & wndow(3)\n}\n")
    probe = ("import sys; from spattn_dsl.cli import main; "
             f"status = main({[command[0], str(bad), *command[1:]]!r}); "
             "print(status, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=ROOT)
    assert done.stdout.split() == ["2", "False"], done.stderr
    assert "unknown pattern or primitive 'wndow'" in done.stderr


def test_the_cpu_warning_points_at_the_callers_line(monkeypatch):
    monkeypatch.setattr(attention, "_WARNED", set())
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    attn = spattn.compile(spattn.loads("pattern p { causal & window(4) }").pattern("p"))
    q = torch.randn(1, 1, 8, 16, requires_grad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = attn(q, q, q); line = sys._getframe().f_lineno  # noqa: E702
        out.sum().backward()
    cpu = [w for w in caught if "TRITON_INTERPRET is not set" in str(w.message)]
    assert [(w.filename, w.lineno) for w in cpu] == [(__file__, line)]
