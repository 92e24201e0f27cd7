"""``sparse_attention``: run spattn in place of a model's attention function."""
from __future__ import annotations

import functools
import os

import torch

from .api import load, target_from
from .ir.program import Model


class LayerPatterns:
    """Compiled attention per layer: a Pattern gives every layer the same one, a Model its own."""

    def __init__(self, pattern_or_model, **compile_hints):
        self.target = _target(pattern_or_model)
        self.hints = compile_hints
        self._compiled = {}

    def pattern(self, layer: int | None):
        if not isinstance(self.target, Model):
            return self.target
        if layer is None:
            raise ValueError(f"model '{self.target.name}' has a pattern per layer: pass layer_idx= "
                             "or give the module a 'layer_idx' attribute")
        if not 0 <= layer < len(self.target):
            raise ValueError(f"layer {layer} is outside model '{self.target.name}' "
                             f"({len(self.target)} layers)")
        return self.target.layers[layer]

    def attention(self, layer: int | None):
        """The compiled ``attn(q, k, v, scale=None)`` for a layer (compiled once per pattern)."""
        from .runtime import compile as compile_pattern

        pattern = self.pattern(layer)
        if pattern not in self._compiled:
            self._compiled[pattern] = compile_pattern(pattern, **self.hints)
        return self._compiled[pattern]


def _target(spec):
    """``target_from``, and a path to a ``.spattn`` file without ``:name`` (a string or a
    path object): the file's only pattern, as the CLI takes it (or its only model when it
    declares no pattern)."""
    if isinstance(spec, os.PathLike) or (isinstance(spec, str) and spec.endswith(".spattn")):
        program = load(spec)
        for names, get in ((list(program.patterns), program.pattern),
                           ([] if program.patterns else list(program.models), program.model)):
            if len(names) == 1:
                return get(names[0])
        kinds = " and ".join(f"{len(table)} {kind}{'' if len(table) == 1 else 's'}"
                             for kind, table in (("pattern", program.patterns),
                                                 ("model", program.models)))
        raise ValueError(f"{os.fspath(spec)} declares {kinds}; name one as "
                         f"'{os.fspath(spec)}:NAME' ("
                         f"{', '.join([*program.patterns, *program.models]) or 'none here'})")
    return target_from(spec)


def sparse_attention(pattern_or_path, **compile_hints):
    """Decorate an attention function ``(q, k, v, ...) -> out`` to run spattn instead.

    ``pattern_or_path``: a Pattern or Model, ``"file.spattn:name"`` (a pattern or a model),
    ``"file.spattn"`` (its only pattern, or its only model if it declares no pattern), or
    pattern text such as ``"causal & window(256)"``. Tensors are ``[batch, heads, seq, dim]``.
    The function may be a module's method (``forward(self, q, k, v)``): for a Model, the layer is
    ``self.layer_idx``, or pass ``layer_idx=`` in the call. ``scale=``, ``key_padding=`` and
    ``documents=`` keywords are honoured (see ``compile``); other arguments of the original
    function are accepted and ignored. With fewer key/value heads
    than query heads (grouped-query attention), keys and values are shared across query groups.
    """
    layers = LayerPatterns(pattern_or_path, **compile_hints)

    def decorate(function):
        @functools.wraps(function)
        def run(*args, layer_idx=None, scale=None, key_padding=None, documents=None,
                **_ignored):
            owner = args[0] if isinstance(args[0], torch.nn.Module) else None
            q, k, v = args[1:4] if owner is not None else args[:3]
            if layer_idx is None and owner is not None:
                layer_idx = getattr(owner, "layer_idx", None)
            return layers.attention(layer_idx)(q, k, v, scale=scale, key_padding=key_padding,
                                               documents=documents)

        run.spattn = layers
        return run

    return decorate
