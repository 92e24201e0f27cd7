"""The README never lies: its Python blocks run, its `spattn` lines succeed, and CI runs its
test command exactly."""
import os
import re
import shlex
from pathlib import Path

import pytest

from spattn_dsl.cli import main

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w*)\n(.*?)```", README, flags=re.S)


def test_python_blocks_run():
    blocks = [code for lang, code in BLOCKS if lang == "python"]
    assert blocks
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        for code in blocks:
            exec(compile(code, "README.md", "exec"), {})
    finally:
        os.chdir(cwd)


def _spattn_commands():
    for lang, code in BLOCKS:
        if lang != "sh":
            continue
        for line in code.splitlines():
            for part in line.split("&&"):
                part = part.strip()
                if part.startswith("spattn "):
                    yield part


@pytest.mark.parametrize("command", list(_spattn_commands()))
def test_spattn_commands_succeed(command, capsys):
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        assert main(shlex.split(command)[1:]) == 0
    finally:
        os.chdir(cwd)


def test_ci_runs_the_readme_test_command():
    ci_lines = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    test_command = next(line for lang, code in BLOCKS if lang == "sh"
                        for line in code.splitlines() if "pytest" in line)
    assert ci_lines[-1] == test_command


def test_console_error_example_is_what_the_cli_prints(tmp_path, capsys):
    block = next(code for lang, code in BLOCKS if lang == "console")
    command, *expected = block.strip().splitlines()
    (tmp_path / "bad.spattn").write_text("pattern p {\n    causal & wndow(3)\n}\n")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(shlex.split(command.lstrip("$ "))[1:]) == 2
    finally:
        os.chdir(cwd)
    assert capsys.readouterr().err.splitlines() == expected


def test_report_excerpt_is_what_the_main_job_prints(capsys):
    excerpt = next(code for lang, code in BLOCKS if lang == "text")
    main_job = next(part.strip() for lang, code in BLOCKS if lang == "sh"
                    for part in code.split("&&") if part.strip().startswith("spattn report"))
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        assert main(shlex.split(main_job)[1:]) == 0
    finally:
        os.chdir(cwd)
    printed = capsys.readouterr().out.splitlines()
    for line in filter(None, excerpt.splitlines()):
        assert line in printed
