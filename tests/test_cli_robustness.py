"""The CLI where the world is hostile (issue 25, item 8): output names too long for the file
system, a closed or full stdout, inputs that are devices, FIFOs or too large. Exit status 2
with one clear line, never 1 and never a traceback."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from spattn_dsl import cli
from spattn_dsl.cli import main

ROOT = Path(__file__).parent.parent
PATTERN = "pattern a { causal & window(4) }\n"
TOO_LONG = "x" * 300  # one component over NAME_MAX (255) on every common file system


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "p.spattn"
    path.write_text(PATTERN)
    return str(path)


def _error(capsys) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "internal error" not in captured.err
    return captured.err


@pytest.mark.parametrize("argv", [
    ["report", "--seq-len", "16", "-o"],
    ["compile", "--seq-len", "16", "--head-dim", "64", "-o"],
], ids=["report", "compile"])
@pytest.mark.parametrize("name", [TOO_LONG + ".json", TOO_LONG + "/sub.json"],
                         ids=["name", "folder"])
def test_output_name_too_long(source, tmp_path, capsys, argv, name):
    command, *flags = argv
    assert main([command, source, *flags, str(tmp_path / name)]) == 2
    err = _error(capsys)
    assert err.startswith(f"spattn {command}: error: cannot write ")
    assert err.rstrip().endswith("File name too long")


def test_file_over_the_size_limit_is_refused(tmp_path, capsys):
    big = tmp_path / "big.spattn"
    with open(big, "wb") as handle:  # sparse: no disk used
        handle.truncate(cli.MAX_SOURCE_BYTES + 1)
    assert main(["check", str(big)]) == 2
    err = _error(capsys)
    assert f"{cli.MAX_SOURCE_BYTES + 1} bytes, more than the 8 MiB" in err


def test_a_value_error_from_the_library_is_a_user_error(source, monkeypatch, capsys):
    """Errors such as the analysis's AnalysisError (a ValueError) exit 2, not 1."""
    import spattn_dsl.analysis as analysis

    def refuse(*_args, **_kwargs):
        raise ValueError("no method fits at n = 16")
    monkeypatch.setattr(analysis, "analyze", refuse)
    assert main(["report", source, "--seq-len", "16"]) == 2
    assert _error(capsys) == "spattn report: error: no method fits at n = 16\n"


# ------------------------------------------------------------------ as a process
def _spattn(*argv, **kwargs):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "spattn_dsl.cli", *argv], env=env,
                          stderr=subprocess.PIPE, text=True, timeout=60, **kwargs)


def test_closed_stdout(source):
    # close_fds does not close 0-2; a preexec closes stdout as `>&-` does
    done = _spattn("check", source, preexec_fn=lambda: os.close(1))
    assert done.returncode == 2
    assert done.stderr == ("spattn: error: standard output is closed; redirect it (to a file "
                           "or /dev/null)\n")


def test_full_stdout(source):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    with open("/dev/full", "w") as full:
        done = _spattn("check", source, stdout=full)
    assert done.returncode == 2
    assert done.stderr == "spattn: error: cannot write to standard output: No space left on device\n"


def _memory_cap():
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null"])
def test_device_is_refused_before_reading(device):
    if not os.path.exists(device):
        pytest.skip(f"no {device}")
    # a process with capped memory: /dev/zero was read whole, without end
    done = _spattn("check", device, stdout=subprocess.DEVNULL, preexec_fn=_memory_cap)
    assert done.returncode == 2
    assert "not a regular file (a character device)" in done.stderr


def test_fifo_without_a_writer_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "pipe.spattn"
    os.mkfifo(fifo)
    done = _spattn("check", str(fifo), stdout=subprocess.DEVNULL)  # hung here before
    assert done.returncode == 2
    assert "not a regular file (a FIFO)" in done.stderr
