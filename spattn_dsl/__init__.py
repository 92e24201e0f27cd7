"""spattn: a compiler for sparse attention patterns.

The API of docs/python.md: load a pattern file, bind a pattern, get its reference mask,
analyse it, and compile it into attention kernels.

Every name is imported on first use (``spattn.compile``, ``from spattn_dsl import analyze``),
so that importing the package, ``spattn check`` and ``spattn --help`` need neither torch nor
sympy.
"""
from importlib import import_module

__version__ = "0.1.0"

# the public name -> the module that defines it
_EXPORTS = {
    "load": ".api", "loads": ".api",
    "Program": ".ir.program", "Pattern": ".ir.program", "Model": ".ir.program",
    "PatternError": ".errors",
    "render": ".analysis", "Report": ".analysis",
    "compile": ".runtime",  # the documented name, shadows the builtin only inside this namespace
    "sparse_attention": ".decorator",
    "select": ".semantics.select", "Selection": ".semantics.select",  # docs/language.md §5
    "ContextParallel": ".parallel",
    "KVCache": ".decode",
}
__all__ = [*_EXPORTS, "analyze"]


def analyze(pattern_or_model, n, layers=None, **options):
    """The documented ``analyze`` (``analysis.analyze``: the graph-diameter report), its arguments
    checked first so that a wrong one is named: ``n`` an integer in [1, 2**48], ``layers``
    None or an integer >= 1."""
    from .analysis import analyze as run
    from .ir.program import integer_argument, length_argument

    n = length_argument("analyze", "n", n, low=1)
    if layers is not None:
        layers = integer_argument("analyze", "layers", layers, 1)
    return run(pattern_or_model, n, layers, **options)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value  # later look-ups no longer come here
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
