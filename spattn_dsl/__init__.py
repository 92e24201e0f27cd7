"""spattn: a compiler for sparse attention patterns.

The SPEC section 5 API: load a pattern file, bind a pattern, get its reference mask,
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
    "analyze": ".analysis", "render": ".analysis", "Report": ".analysis",
    "compile": ".runtime",  # SPEC's name, shadows the builtin only inside this namespace
    "sparse_attention": ".decorator",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value  # later look-ups no longer come here
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
