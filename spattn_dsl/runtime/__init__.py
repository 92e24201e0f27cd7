"""Runtime: generated kernels written under a cache directory and imported from there,
layouts and tuning results cached, ``compile(pattern) -> attn(q, k, v, scale=None)``."""
from .attention import SparseAttention, check_inputs, compile, layout_for

__all__ = ["compile", "SparseAttention", "check_inputs", "layout_for"]
