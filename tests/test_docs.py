"""The documentation in docs/ never lies: every code block runs.

- ``python`` blocks run in order, one namespace per page, from the repository root;
- ``spattn`` blocks are pattern files: they parse, and every pattern whose parameters have
  defaults and every model binds (``Program.check`` at n = 1024);
- ``sh`` blocks: each ``spattn ...`` command succeeds (exit status 0);
- ``console`` blocks: ``$ spattn ...`` followed by exactly what it prints (stdout, then stderr);
- ``text`` blocks are not run (output excerpts, multi-process sketches). Any other fence is an
  error, so that no block escapes the test.

Also: the README links every page, every relative link resolves, and no file of the project
refers to a document that users do not have.
"""
import os
import re
import shlex
from pathlib import Path

import pytest

import spattn_dsl as spattn
from spattn_dsl.cli import main

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", flags=re.S | re.M)
KINDS = {"python", "spattn", "sh", "console", "text"}


def blocks(page: Path, kind: str | None = None):
    """(language, code) of each fenced block; with ``kind``, the code of those blocks only,
    padded with blank lines so that tracebacks give the page's line numbers."""
    text = page.read_text()
    found = [(m[1], "\n" * text.count("\n", 0, m.start(2)) + m[2]) for m in FENCE.finditer(text)]
    return found if kind is None else [code for lang, code in found if lang == kind]


@pytest.fixture
def at_root():
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        yield
    finally:
        os.chdir(cwd)


def test_docs_exist_and_the_readme_links_every_page():
    readme = (ROOT / "README.md").read_text()
    assert len(PAGES) >= 5
    for page in PAGES:
        assert f"docs/{page.name}" in readme, page.name


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_block_has_a_known_kind(page):
    kinds = {lang for lang, _ in blocks(page)}
    assert kinds <= KINDS, (page.name, sorted(kinds - KINDS))
    assert page.name == "README.md" or "python" in kinds or "console" in kinds


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
        if "://" not in target:
            assert (page.parent / target).exists(), (page.name, target)


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p, "python")], ids=lambda p: p.name)
def test_python_blocks_run(page, at_root, capsys):
    namespace = {"__name__": f"docs_{page.stem}"}
    for code in blocks(page, "python"):
        exec(compile(code, str(page.relative_to(ROOT)), "exec"), namespace)


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p, "spattn")], ids=lambda p: p.name)
def test_pattern_blocks_parse_and_bind(page):
    for code in blocks(page, "spattn"):
        program = spattn.loads(code, f"{page.name} block")
        assert program.patterns or program.models
        assert program.check(1024) == []


def _commands():
    for page in PAGES:
        for code in blocks(page, "sh"):
            for line in code.splitlines():
                if line.strip().startswith("spattn "):
                    yield pytest.param(line.strip(), id=f"{page.name}: {line.strip()}")


@pytest.mark.parametrize("command", list(_commands()))
def test_sh_commands_succeed(command, at_root, capsys, tmp_path):
    args = [tmp_path / Path(a).name if a.startswith("build/") else a
            for a in shlex.split(command)[1:]]
    assert main([str(a) for a in args]) == 0


def _sessions():
    for page in PAGES:
        for code in blocks(page, "console"):
            code = code.lstrip("\n")
            yield pytest.param(code, id=f"{page.name}: {code.splitlines()[0]}")


@pytest.mark.parametrize("session", list(_sessions()))
def test_console_blocks_print_what_they_show(session, at_root, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")  # argparse's help width
    command, *expected = session.rstrip("\n").splitlines()
    assert command.startswith("$ spattn ")
    status = main(shlex.split(command[2:])[1:])
    out, err = capsys.readouterr()
    assert (out + err).rstrip("\n").splitlines() == expected
    assert status == (2 if "error:" in err else 0)


def test_no_file_refers_to_documents_users_do_not_have():
    """Users get the repository: the contract it implements is docs/, not a file elsewhere."""
    words = re.compile(r"\b" + "SP" + r"EC\b|" + "shared " + "folder|" + "/work/" + "shared")
    offenders = []
    for folder in ("spattn_dsl", "tests", "benchmarks", "examples", "docs"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".md", ".lark", ".spattn", ".toml") and path.is_file():
                offenders += [f"{path.relative_to(ROOT)}:{i}" for i, line in
                              enumerate(path.read_text(errors="replace").splitlines(), 1)
                              if words.search(line)]
    for name in ("README.md", "pyproject.toml"):
        offenders += [f"{name}:{i}" for i, line in
                      enumerate((ROOT / name).read_text().splitlines(), 1) if words.search(line)]
    assert offenders == []
