"""spattn: a compiler for sparse attention patterns.

The SPEC section 5 API: load a pattern file, bind a pattern, get its reference mask,
analyse it, and compile it into attention kernels.
"""
from .api import load, loads
from .errors import PatternError
from .ir.program import Model, Pattern, Program

__all__ = ["load", "loads", "Program", "Pattern", "Model", "PatternError"]
__version__ = "0.1.0"
