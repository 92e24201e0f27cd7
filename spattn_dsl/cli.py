"""The ``spattn`` command line: ``main(argv) -> int`` (0 ok, 2 user error).

Start-up imports only the standard library and the torch-free front end; each command imports
what it needs (torch, sympy, triton) when it runs, so ``check`` and ``--help`` start fast.
"""
from __future__ import annotations

import argparse
import errno
import os
import signal
import stat
import sys
import traceback
from pathlib import Path

from . import __version__, picture
from .errors import PatternError
from .ir.program import require_static

# Shown in --help without importing the modules that define them; tests/test_cli.py checks
# that they agree with runtime.attention.HEAD_DIMS and analysis.render.FORMATS.
HEAD_DIMS = (16, 256)
REPORT_FORMATS = ("text", "markdown", "html", "json")
REPORT_EXTENSIONS = ".md, .html, .json or .txt"
# The analysis keeps a few int64 arrays per token and layer (about 6 GB at 2**24 tokens):
# past this the report would run out of memory. Method-specific limits (the token graph, the
# block grid) come from the analysis itself, as AnalysisError messages.
REPORT_MAX_SEQ_LEN = 1 << 24
REPORT_MAX_LAYERS = 1024
COMPILE_MAX_SEQ_LEN = 1 << 30  # the layout's tile bounds are int32 (layout/classify.py)
EXIT_USER_ERROR = 2
# A pattern file is a few KB; a larger input is a mistake (``spattn check /dev/zero``), and
# reading it whole would take the machine's memory.
MAX_SOURCE_BYTES = 8 << 20
# errors of a write to stdout (`> /dev/full`, a full disk, a broken terminal): reported, exit 2
_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EIO, errno.EBADF, errno.EFBIG, errno.EDQUOT}
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # what a shell reports for a tool stopped by SIGPIPE


class UsageError(Exception):
    """A bad flag or value: reported on one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would exit; we report like every other user error
        raise UsageError(f"{self.prog}: error: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="spattn", description="A compiler for sparse attention patterns.")
    parser.add_argument("--version", action="version", version=f"spattn {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser,
                                     metavar="COMMAND",
                                     help="one of the commands below; spattn COMMAND --help "
                                     "lists its flags")
    _add_check(commands)
    _add_show(commands)
    _add_report(commands)
    _add_compile(commands)
    return parser


def _add_file(command):
    command.add_argument("file", metavar="FILE", help="the .spattn pattern file")


def _add_check(commands):
    check = commands.add_parser("check", help="parse, resolve and bind every pattern and model",
                                description="Parse, resolve and bind every pattern whose "
                                "parameters all have defaults; report every error.")
    _add_file(check)
    check.add_argument("--seq-len", type=_positive, default=4096, metavar="N",
                       help="sequence length at which to bind patterns (default 4096)")


def _add_show(commands):
    show = commands.add_parser("show", help="draw a pattern's mask in the terminal",
                               description="Draw a pattern's mask: one cell per pair for "
                               "short sequences, shaded tiles otherwise.")
    _add_file(show)
    show.add_argument("--pattern", metavar="NAME",
                      help="the pattern to draw (default: the file's only pattern)")
    show.add_argument("--seq-len", type=_positive, required=True, metavar="N",
                      help=f"sequence length, at most {picture.MAX_SEQ_LEN}")
    show.add_argument("--head", type=_natural, default=0, metavar="H",
                      help="head index, for patterns with a heads block (default 0)")
    show.add_argument("--width", type=_positive, default=64, metavar="COLUMNS",
                      help=f"cells across the picture (default 64, at most {picture.MAX_WIDTH})")
    show.add_argument("--plan", action="store_true",
                      help="draw which term of the lowering plan covers which pairs")
    show.add_argument("--sample-selection", type=_natural, default=None, metavar="SEED",
                      help="dynamic patterns: draw the mask under one selection on random "
                      f"inputs drawn from SEED (at most {picture.MAX_SELECTION_SEQ_LEN} tokens); "
                      f"by default the static part is drawn, '{picture.CANDIDATE}' marking "
                      "where the budget may go")


def _add_report(commands):
    report = commands.add_parser("report", help="receptive field, diameter and coverage report",
                                 description="Receptive field, diameter and coverage of a "
                                 "stack of layers (docs/analysis.md).")
    _add_file(report)
    which = report.add_mutually_exclusive_group()
    which.add_argument("--pattern", metavar="NAME",
                       help="analyse this pattern stacked on itself (default: the file's only "
                       "model, else its only pattern)")
    which.add_argument("--model", metavar="NAME", help="analyse this model's layer schedule")
    size = report.add_mutually_exclusive_group(required=True)
    size.add_argument("--seq-len", type=_positive, metavar="N",
                      help=f"sequence length, at most {REPORT_MAX_SEQ_LEN}")
    size.add_argument("--documents", type=_lengths, metavar="L1,L2,...",
                      help="packed documents of these lengths: one report per distinct length "
                      "(each document is its own sequence)")
    report.add_argument("--documents-longest", action="store_true",
                        help="with --documents: report only the longest document")
    report.add_argument("--layers", type=_positive, default=None, metavar="L",
                        help="layers to analyse (default: a model's depth; for a pattern, "
                        f"until the diameter settles); at most {REPORT_MAX_LAYERS}")
    report.add_argument("-o", "--output", metavar="PATH",
                        help=f"write the report to PATH, in the format of its extension "
                        f"({REPORT_EXTENSIONS})")
    report.add_argument("--format", choices=REPORT_FORMATS, default=None,
                        help="output format (default: from -o's extension, else text)")


def _add_compile(commands):
    comp = commands.add_parser("compile",
                               help="write the generated Triton kernel, layout, manifest",
                               description="Write the generated Triton kernel source, the "
                               "block layout and a manifest (no GPU needed).")
    _add_file(comp)
    comp.add_argument("--pattern", metavar="NAME",
                      help="the pattern to compile (default: the file's only pattern)")
    comp.add_argument("--seq-len", type=_positive, required=True, metavar="N",
                      help="sequence length of the block layout, "
                      f"at most {COMPILE_MAX_SEQ_LEN}")
    comp.add_argument("--head-dim", type=_positive, required=True, metavar="D",
                      help=f"head dimension, {HEAD_DIMS[0]} to {HEAD_DIMS[1]}")
    comp.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16",
                      help="element type of q, k, v (default bf16)")
    comp.add_argument("-o", "--output", metavar="DIR", default=None,
                      help="output folder, created if needed (default: ./spattn_<pattern>)")


def _positive(text: str) -> int:
    value = _natural(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _lengths(text: str) -> list:
    try:
        return [_positive(part) for part in text.split(",")]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive lengths, "
                                         f"got {text!r}") from None


def _natural(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


# ---------------------------------------------------------------- running
def main(argv=None) -> int:
    """Run the CLI; returns the exit status instead of exiting."""
    if sys.stdout is None:  # `spattn ... >&-`: refuse before any work, whose output would be lost
        _say("spattn: error: standard output is closed; redirect it (to a file or /dev/null)")
        return EXIT_USER_ERROR
    try:
        status = _run(argv)
        sys.stdout.flush()  # a closed pipe or a full device shows up here, not at exit
        return status
    except PatternError as error:
        _say(_diagnostics(error))
        return EXIT_USER_ERROR
    except UsageError as error:
        _say(error)
        return EXIT_USER_ERROR
    except BrokenPipeError:  # `spattn show ... | head -1`: the reader left, nothing to say
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        _say("spattn: interrupted")
        return 130
    except OSError as error:
        if not _is_output_error(error):
            return _internal_error(error)
        _silence_stdout()  # the unwritten rest would fail again at interpreter exit
        _say(f"spattn: error: cannot write to standard output: {error.strerror}")
        return EXIT_USER_ERROR
    except ValueError as error:  # a value the library refused (AnalysisError and the like)
        _say(f"spattn{_command(argv)}: error: {error}")
        return EXIT_USER_ERROR
    except Exception as error:  # a bug of ours: say so briefly, keep the traceback on request
        return _internal_error(error)


def _internal_error(error: Exception) -> int:
    if os.environ.get("SPATTN_DEBUG"):
        traceback.print_exc()
    _say(f"spattn: internal error: {type(error).__name__}: {error} "
         "(set SPATTN_DEBUG=1 for the traceback)")
    return 1


def _is_output_error(error: OSError) -> bool:
    """A failed write to stdout: no file name (commands report their own files' errors)."""
    return error.filename is None and error.errno in _OUTPUT_ERRNOS


def _command(argv) -> str:
    args = sys.argv[1:] if argv is None else argv
    return f" {args[0]}" if args and args[0] in COMMANDS else ""


def _say(message) -> None:
    """A line on stderr, if there is one (``2>&-`` closes it)."""
    if sys.stderr is not None:
        print(message, file=sys.stderr)


def _run(argv) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help or --version: printed, argparse wants to exit
        return done.code or 0
    return COMMANDS[args.command](args)


def _diagnostics(error: PatternError) -> str:
    """Every diagnostic an error carries (``.errors`` when loading collected several), each
    as ``file:line:col: error: ...``, the source line and a caret."""
    parts = [e for e in getattr(error, "errors", None) or () if isinstance(e, PatternError)]
    return "\n".join(e.render() for e in parts) if len(parts) > 1 else error.render()


def _silence_stdout():
    """Point stdout at /dev/null so that the interpreter's last flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout is not a real file (tests)
        pass


def _load(path: str):
    """``api.load``, after refusing what is not a pattern file: a FIFO or device (reading one
    may hang or never end) or a file larger than MAX_SOURCE_BYTES."""
    from .api import load

    problem = _source_problem(path)
    if problem:
        raise PatternError(f"cannot read {path}: {problem}", filename=path)
    return load(path)


def _source_problem(path: str) -> str | None:
    try:
        info = os.stat(path)  # not opened: opening a FIFO without a writer blocks
    except (OSError, ValueError):
        return None  # load reports it in its own words
    if stat.S_ISDIR(info.st_mode):
        return None
    if not stat.S_ISREG(info.st_mode):
        return (f"not a regular file (a {_file_kind(info.st_mode)}); spattn reads pattern "
                "files only (save the text to a file first)")
    if info.st_size > MAX_SOURCE_BYTES:
        return (f"{info.st_size} bytes, more than the {MAX_SOURCE_BYTES >> 20} MiB a pattern "
                "file may have")
    return None


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
             (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"))
    return next((name for test, name in kinds if test(mode)), "special file")


def _usage(args, message: str) -> UsageError:
    return UsageError(f"spattn {args.command}: error: {message}")


# ---------------------------------------------------------------- choosing a pattern or model
def _only_pattern(program, args):
    """``--pattern NAME`` (refusing a model's name), or the file's only pattern."""
    if args.pattern is not None:
        _refuse_other_kind(program, args.pattern, "pattern", args)
        return program.pattern(args.pattern)
    names = list(program.patterns)
    if len(names) == 1:
        return program.pattern(names[0])
    if not names:
        raise _usage(args, f"{args.file} declares no pattern")
    raise _usage(args, f"{args.file} declares {len(names)} patterns; choose one with "
                 f"--pattern: {', '.join(names)}")


def _report_target(program, args):
    """``--pattern`` or ``--model`` (refusing the other kind's name), or the only one there is."""
    if args.model is not None:
        _refuse_other_kind(program, args.model, "model", args)
        return program.model(args.model)
    if args.pattern is not None or program.models == {}:
        return _only_pattern(program, args)
    if len(program.models) == 1:  # a model is the whole network: preferred to its patterns
        return program.model(next(iter(program.models)))
    raise _usage(args, f"{args.file} declares {_count(program.patterns, 'pattern')} and "
                 f"{_count(program.models, 'model')}; choose one with "
                 + " or ".join(f"--{kind} ({', '.join(names)})" for kind, names in
                               (("pattern", program.patterns), ("model", program.models))
                               if names))


def _refuse_other_kind(program, name: str, wanted: str, args):
    """A clear, located error when ``--pattern`` names a model or ``--model`` a pattern."""
    other, table = ("model", program.models) if wanted == "pattern" else \
        ("pattern", program.patterns)
    decl = table.get(name)
    if decl is None:
        return
    if args.command == "report":
        advice = f"use --{other} {name}"
    else:
        have = ", ".join(program.patterns) or "none"
        advice = f"spattn {args.command} takes a pattern (patterns here: {have})"
    raise PatternError(f"'{name}' is a {other}, not a {wanted}; {advice}", decl.span,
                       filename=program.filename)


def _count(table, noun: str) -> str:
    return f"{len(table)} {noun}" + ("" if len(table) == 1 else "s")


# ---------------------------------------------------------------- output paths
def _check_output_file(args, path: Path):
    """Refuse, before any work, an output file that could not be written."""
    try:
        _check_output_file_at(args, path)
    except OSError as error:  # a name too long for the file system, a loop of links
        raise _write_error(args, path, error) from None


def _check_output_file_at(args, path: Path):
    if path.is_dir():
        raise _usage(args, f"argument -o: {path} is a directory; name a file")
    folder = path.parent
    if not folder.exists():
        raise _usage(args, f"argument -o: no such directory: {folder}")
    if not folder.is_dir():
        raise _usage(args, f"argument -o: {folder} is not a directory")
    writable = os.access(folder, os.W_OK | os.X_OK)
    if not writable or (path.exists() and not os.access(path, os.W_OK)):
        raise _usage(args, f"argument -o: cannot write {path}: permission denied")


def _check_output_dir(args, path: Path):
    """Refuse, before any work, an output folder that could not be made or written."""
    try:
        _check_output_dir_at(args, path)
    except OSError as error:  # a name too long for the file system, a loop of links
        raise _write_error(args, path, error) from None


def _check_output_dir_at(args, path: Path):
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        why = "is not a directory" if existing == path else f"cannot be made: {existing} is a file"
        raise _usage(args, f"argument -o: {path} {why}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise _usage(args, f"argument -o: cannot write in {existing}: permission denied")


def _write_error(args, path, error: OSError) -> UsageError:
    return _usage(args, f"cannot write {_short(path)}: {error.strerror or error}")


def _short(path) -> str:
    """A path for a message: a name too long for the file system is cut in the middle."""
    text = str(path)
    return text if len(text) <= 120 else f"{text[:60]}...{text[-40:]}"


def _report_format(args) -> str:
    """The format of ``-o``'s extension, checked against ``--format``."""
    from .analysis.render import FORMATS

    if args.output is None:
        return args.format or "text"
    suffix = Path(args.output).suffix.lower()
    implied = FORMATS.get(suffix)
    if implied is None and suffix:
        raise _usage(args, f"argument -o: unknown extension '{suffix}' in {args.output}; "
                     f"use {REPORT_EXTENSIONS}")
    if implied is None and args.format is None:
        raise _usage(args, f"argument -o: {args.output} has no extension; use "
                     f"{REPORT_EXTENSIONS}, or name the format with --format")
    if implied and args.format and args.format != implied:
        raise _usage(args, f"argument --format: {args.format} disagrees with -o {args.output} "
                     f"({implied}); drop one of them")
    return args.format or implied


def _check_at_most(args, flag: str, value: int, limit: int, why: str = ""):
    if value > limit:
        raise _usage(args, f"argument {flag}: {value} is too large for spattn {args.command}; "
                     f"the limit is {limit}{why}")


# ---------------------------------------------------------------- commands
def cmd_check(args) -> int:
    program = _load(args.file)
    errors = []
    print(f"{args.file}: {len(program.patterns)} pattern(s), {len(program.models)} model(s)")
    for name, decl in program.patterns.items():
        params = ", ".join(p.name if p.default is None else f"{p.name} = {_int_text(p.default)}"
                           for p in decl.params)
        line = f"  pattern {name}({params})"
        if any(p.default is None for p in decl.params):
            print(f"{line}  [not bound: a parameter has no default]")
            continue
        try:
            pattern = program.pattern(name)
            pattern.at(args.seq_len)
            heads = f"  [{pattern.heads} heads]" if pattern.heads > 1 else ""
            print(f"{line}: {pattern.text}{heads}")
            _print_dynamic(pattern.dynamic_terms)
        except PatternError as error:
            print(f"{line}: ERROR")
            errors.append(error)
    for name in program.models:
        try:
            model = program.model(name)
            for layer in model.distinct:  # the schedule stays run-length encoded
                layer.at(args.seq_len)
            print(f"  model {name}: {len(model)} layers: {_schedule(model)}")
            _print_dynamic(tuple(dict.fromkeys(t for p in model.distinct
                                               for t in p.dynamic_terms)))
        except PatternError as error:
            print(f"  model {name}: ERROR")
            errors.append(error)
    sys.stdout.flush()  # the listing first, then the diagnostics
    for error in errors:
        print(_diagnostics(error), file=sys.stderr)
    return EXIT_USER_ERROR if errors else 0


def _print_dynamic(terms):
    """The dynamic terms of a pattern or model, one line (nothing for a static one)."""
    if terms:
        from .ir.printer import text
        print(f"    dynamic terms (chosen from the inputs at run time): "
              f"{'; '.join(text(t) for t in terms)}")


def _int_text(expr) -> str:
    from .ir.printer import int_text
    return int_text(expr)


def _schedule(model) -> str:
    """Runs of equal layers: ``5 x causal & window(1024), 1 x causal, ...``."""
    import itertools

    runs = list(itertools.islice(model.runs(), 7))
    text = ", ".join(f"{count} x {layer.name}" for layer, count in runs[:6])
    return text + (", ..." if len(runs) > 6 else "")


def cmd_show(args) -> int:
    _check_at_most(args, "--seq-len", args.seq_len, picture.MAX_SEQ_LEN)
    _check_at_most(args, "--width", args.width, picture.MAX_WIDTH)
    pattern = _only_pattern(_load(args.file), args)
    if args.sample_selection is not None:
        if not pattern.dynamic:
            raise _usage(args, f"argument --sample-selection: {pattern.name} has no dynamic "
                         "terms (it has no selection to sample)")
        _check_at_most(args, "--seq-len", args.seq_len, picture.MAX_SELECTION_SEQ_LEN,
                       " with --sample-selection")
        print(picture.draw_selection(pattern, args.seq_len, args.sample_selection,
                                     head=args.head, width=args.width))
        return 0
    if args.plan:  # drawn by the runtime's plan picture (needs torch)
        require_static(pattern, "spattn show --plan")
        from .runtime.plan_picture import draw_plan
        print(draw_plan(pattern, args.seq_len, head=args.head, width=args.width))
        return 0
    print(picture.draw(pattern, args.seq_len, head=args.head, width=args.width))
    return 0


def cmd_report(args) -> int:
    if args.documents is None:
        if args.documents_longest:
            raise _usage(args, "argument --documents-longest: needs --documents L1,L2,...")
        _check_at_most(args, "--seq-len", args.seq_len, REPORT_MAX_SEQ_LEN,
                       " (the analysis needs memory in proportion to it)")
    else:
        _check_at_most(args, "--documents", max(args.documents), REPORT_MAX_SEQ_LEN,
                       " (the analysis needs memory in proportion to a document's length)")
    if args.layers is not None:
        _check_at_most(args, "--layers", args.layers, REPORT_MAX_LAYERS)
    output = Path(args.output) if args.output else None
    if output is not None:
        _check_output_file(args, output)
    # the file is parsed and the target chosen before torch is imported: errors come at once
    program = _load(args.file)
    target = _report_target(program, args)
    fmt = _report_format(args)
    if args.documents is not None and fmt == "html":
        raise _usage(args, "argument --documents: reports of documents come as text, "
                     "markdown or json, not html")
    if args.model is None and args.pattern is None and program.models and program.patterns:
        _say(f"spattn report: analysing model {target.name} ({args.file} also declares "
             f"{_count(program.patterns, 'pattern')}: {', '.join(program.patterns)}; "
             "choose one with --pattern NAME)")

    from .analysis import AnalysisError, analyze, render

    try:
        if args.documents is None:
            text = render(analyze(target, args.seq_len, layers=args.layers), fmt=fmt)
        else:
            text = _document_reports(target, args, fmt)
    except AnalysisError as error:
        raise _usage(args, str(error)) from None
    if output is None:
        print(text)
        return 0
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as error:
        raise _write_error(args, output, error) from None
    print(f"wrote {output}")
    return 0


def _document_reports(target, args, fmt: str) -> str:
    """The reports of each distinct document length (or the longest), saying which."""
    import json

    from .analysis import render
    from .analysis.documents import analyze_documents

    reports = analyze_documents(target, args.documents, args.layers,
                                longest=args.documents_longest)
    if fmt == "json":
        return json.dumps(reports.to_dict(), indent=2)
    heading = "## " if fmt in ("markdown", "md") else "== "
    parts = [f"Documents: {reports.describe()}."]
    for n, report in reports.items():
        count = reports.counts[n]
        plural = "" if count == 1 else "s"
        parts.append(f"{heading}document length {n} ({count} document{plural})\n\n"
                     + render(report, fmt=fmt))
    return "\n\n".join(parts)


def cmd_compile(args) -> int:
    _check_at_most(args, "--seq-len", args.seq_len, COMPILE_MAX_SEQ_LEN)
    low, high = HEAD_DIMS  # runtime.attention's, without importing torch (tests/test_cli.py)
    if not low <= args.head_dim <= high:
        raise _usage(args, f"argument --head-dim: the kernels take {low} to {high}, "
                     f"got {args.head_dim}")
    pattern = _only_pattern(_load(args.file), args)  # before torch: errors come at once
    require_static(pattern, "spattn compile")

    from .runtime.artifacts import write_artifacts

    out = Path(args.output or f"spattn_{pattern.name}")
    _check_output_dir(args, out)
    try:
        written = write_artifacts(pattern, args.seq_len, args.head_dim, args.dtype, out)
    except OSError as error:
        if error.filename is None or not str(error.filename).startswith(str(out)):
            raise  # not about our output: a bug, reported as one
        raise _write_error(args, error.filename, error) from None
    for path in written:
        print(f"wrote {path}")
    return 0


COMMANDS = {"check": cmd_check, "show": cmd_show, "report": cmd_report, "compile": cmd_compile}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
