"""The ``spattn`` command line: ``main(argv) -> int`` (0 ok, 2 user error)."""
from __future__ import annotations

import argparse
import os
import sys
import traceback

from .errors import PatternError


class UsageError(Exception):
    """A bad flag or value: reported on one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would exit; we report like every other user error
        raise UsageError(f"{self.prog}: error: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="spattn", description="A compiler for sparse attention patterns.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    check = commands.add_parser("check", help="parse, resolve and bind every pattern and model")
    check.add_argument("file")
    check.add_argument("--seq-len", type=_positive, default=4096, metavar="N",
                       help="sequence length at which to bind patterns (default 4096)")

    show = commands.add_parser("show", help="draw a pattern's mask in the terminal")
    show.add_argument("file")
    show.add_argument("--pattern", required=True, metavar="NAME")
    show.add_argument("--seq-len", type=_positive, required=True, metavar="N")
    show.add_argument("--head", type=_natural, default=0, help="head index (default 0)")
    show.add_argument("--width", type=_positive, default=64, help="columns of the picture")
    show.add_argument("--plan", action="store_true",
                      help="draw which term of the lowering plan covers which pairs")

    report = commands.add_parser("report", help="receptive field, diameter and coverage report")
    report.add_argument("file")
    which = report.add_mutually_exclusive_group(required=True)
    which.add_argument("--pattern", metavar="NAME")
    which.add_argument("--model", metavar="NAME")
    report.add_argument("--seq-len", type=_positive, required=True, metavar="N")
    report.add_argument("--layers", type=_positive, default=None,
                        help="layers to stack for a pattern (default: until the diameter settles)")
    report.add_argument("-o", "--output", metavar="PATH",
                        help="write Markdown, HTML or JSON (by extension)")
    report.add_argument("--format", choices=["text", "json", "markdown", "html"], default=None)

    comp = commands.add_parser("compile", help="write the generated Triton kernel, layout, manifest")
    comp.add_argument("file")
    comp.add_argument("--pattern", metavar="NAME", help="default: the file's only pattern")
    comp.add_argument("--seq-len", type=_positive, required=True, metavar="N")
    comp.add_argument("--head-dim", type=_positive, required=True, metavar="D")
    comp.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    comp.add_argument("-o", "--output", metavar="DIR", default=None,
                      help="output folder (default: ./spattn_<pattern>)")
    return parser


def _positive(text: str) -> int:
    value = _natural(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _natural(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def main(argv=None) -> int:
    """Run the CLI; returns the exit status instead of exiting."""
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except PatternError as error:
        print(error.render(), file=sys.stderr)
        return 2
    except UsageError as error:
        print(error, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("spattn: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a bug of ours: say so briefly, keep the traceback on request
        if os.environ.get("SPATTN_DEBUG"):
            traceback.print_exc()
        print(f"spattn: internal error: {type(error).__name__}: {error} "
              "(set SPATTN_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


# ---------------------------------------------------------------- commands
def cmd_check(args) -> int:
    from .api import load

    program = load(args.file)
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
        except PatternError as error:
            print(f"{line}: ERROR")
            errors.append(error)
    for name in program.models:
        try:
            model = program.model(name)
            for layer in set(model.layers):
                layer.at(args.seq_len)
            print(f"  model {name}: {len(model)} layers: {_schedule(model)}")
        except PatternError as error:
            print(f"  model {name}: ERROR")
            errors.append(error)
    for error in errors:
        print(error.render(), file=sys.stderr)
    return 2 if errors else 0


def _int_text(expr) -> str:
    from .ir.printer import int_text
    return int_text(expr)


def _schedule(model) -> str:
    """Runs of equal layers: ``5 x causal & window(1024), 1 x causal, ...``."""
    runs = []
    for layer in model.layers:
        if runs and runs[-1][1] == layer:
            runs[-1][0] += 1
        else:
            runs.append([1, layer])
    text = ", ".join(f"{count} x {layer.name}" for count, layer in runs[:6])
    return text + (", ..." if len(runs) > 6 else "")


def cmd_show(args) -> int:
    from .api import load
    from .picture import draw

    pattern = load(args.file).pattern(args.pattern)
    if args.plan:  # drawn by the runtime's plan picture (needs torch)
        from .runtime.plan_picture import draw_plan
        print(draw_plan(pattern, args.seq_len, head=args.head, width=args.width))
        return 0
    print(draw(pattern, args.seq_len, head=args.head, width=args.width))
    return 0


def cmd_report(args) -> int:
    from .analysis import AnalysisError, analyze, render
    from .api import load

    program = load(args.file)
    target = program.model(args.model) if args.model else program.pattern(args.pattern)
    try:
        report = analyze(target, args.seq_len, layers=args.layers)
    except AnalysisError as error:
        raise UsageError(f"spattn report: error: {error}") from None
    fmt = args.format
    if args.output:
        render(report, path=args.output, fmt=fmt)
        print(f"wrote {args.output}")
    else:
        print(render(report, fmt=fmt or "text"))
    return 0


def cmd_compile(args) -> int:
    from .api import load
    from .runtime.artifacts import write_artifacts

    program = load(args.file)
    name = args.pattern
    if name is None:
        if len(program.patterns) != 1:
            raise UsageError(f"spattn compile: error: {args.file} has {len(program.patterns)} "
                             f"patterns; choose one with --pattern ({', '.join(program.patterns)})")
        (name,) = program.patterns
    pattern = program.pattern(name)
    out = args.output or f"spattn_{name}"
    for path in write_artifacts(pattern, args.seq_len, args.head_dim, args.dtype, out):
        print(f"wrote {path}")
    return 0


COMMANDS = {"check": cmd_check, "show": cmd_show, "report": cmd_report, "compile": cmd_compile}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
