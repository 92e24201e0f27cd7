"""Code generation: pattern predicate -> Triton expression, kernel source, reference attention."""
from .predicate import TableSpec, emit
from .reference import attention_reference, attention_reference_backward
from .render import Rendered, TileConfig, kernel_key, render
from .space import candidate_configs

__all__ = ["emit", "TableSpec", "render", "Rendered", "TileConfig", "kernel_key",
           "attention_reference", "attention_reference_backward", "candidate_configs"]
