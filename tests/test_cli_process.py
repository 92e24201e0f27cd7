"""The CLI as a process: what it imports at start-up, and how it leaves a closed pipe."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from spattn_dsl.cli import EXIT_BROKEN_PIPE

ROOT = Path(__file__).parent.parent
HEAVY = ("torch", "sympy", "networkx", "triton")

# runs main(argv) and reports which heavy packages it imported
PROBE = """
import json, sys
from spattn_dsl.cli import main
status = main(sys.argv[1:])
loaded = sorted({name.split(".")[0] for name in sys.modules} & set(json.loads(sys.stdin.read())))
print(json.dumps({"status": status, "loaded": loaded}), file=sys.stderr)
"""


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _probe(*argv):
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], input=json.dumps(HEAVY),
                          capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=120)
    return json.loads(done.stderr.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [
    ["check", "examples/gemma3.spattn"],
    ["check", "examples/bigbird.spattn", "--seq-len", "100"],
    ["--help"], ["--version"], ["check", "--help"], ["show", "--help"], ["report", "--help"],
    ["compile", "--help"],
], ids=lambda argv: "-".join(a.lstrip("-").replace("/", "_") for a in argv))
def test_check_and_help_import_neither_torch_nor_sympy(argv):
    result = _probe(*argv)
    assert result == {"status": 0, "loaded": []}


def test_check_with_errors_imports_neither_torch_nor_sympy(tmp_path):
    bad = tmp_path / "bad.spattn"
    bad.write_text("pattern a { causal & & window(3) }\n")
    assert _probe("check", str(bad)) == {"status": 2, "loaded": []}


def test_importing_the_package_is_light():
    code = ("import sys, spattn_dsl as s; assert 'compile' in dir(s) and 'analyze' in s.__all__; "
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("argv, status", [
    (["show", "examples/mistral.spattn", "--pattern", "mistral_swa", "--seq-len", "64"],
     EXIT_BROKEN_PIPE),
    (["check", "examples/gemma3.spattn"], EXIT_BROKEN_PIPE),
    (["--help"], 0),  # argparse itself ignores a failed write of the help text
], ids=["show", "check", "help"])
def test_closed_pipe_is_a_quiet_exit(argv, status):
    """`spattn show ... | head -1`, with the reader already gone: no message, and the status a
    shell reports for a tool stopped by SIGPIPE (128 + 13)."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write now fails with EPIPE
    try:
        done = subprocess.run([sys.executable, "-m", "spattn_dsl.cli", *argv], stdout=write_end,
                              stderr=subprocess.PIPE, env=_env(), cwd=ROOT, timeout=120)
    finally:
        os.close(write_end)
    assert done.stderr.decode() == ""
    assert done.returncode == status
    assert EXIT_BROKEN_PIPE == 141


def test_reader_that_stops_early_sees_the_first_line():
    """The same through a real reader that takes one line and leaves."""
    proc = subprocess.Popen([sys.executable, "-m", "spattn_dsl.cli", "show",
                             "examples/mistral.spattn", "--seq-len", "256"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), cwd=ROOT)
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    proc.wait(timeout=120)
    assert first.decode().startswith("mistral_swa: causal & window(4096)  (n = 256)")
    assert err.decode() == ""
    assert proc.returncode in (0, EXIT_BROKEN_PIPE)  # 0 when everything fit in the pipe first
