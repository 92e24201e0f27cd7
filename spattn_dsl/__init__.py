"""spattn: a compiler for sparse attention patterns.

The SPEC section 5 API: load a pattern file, bind a pattern, get its reference mask,
analyse it, and compile it into attention kernels.
"""
from .analysis import Report, analyze, render
from .api import load, loads
from .decorator import sparse_attention
from .errors import PatternError
from .ir.program import Model, Pattern, Program
from .runtime import compile  # noqa: A004  (SPEC's name)

__all__ = ["load", "loads", "Program", "Pattern", "Model", "PatternError",
           "analyze", "render", "Report", "compile", "sparse_attention"]
__version__ = "0.1.0"
