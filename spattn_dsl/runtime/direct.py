"""Launch a compiled Triton kernel without Triton's per-call argument binding.

``kernel[grid](*args, **constants)`` binds and specializes every argument on every call
(about 40 us of host time for our kernels' ~50 arguments on an H200 host, against 10-14 us
for the launch itself): a sparse pattern's step of 7 launches spends more time there than
on the GPU. ``launch`` goes through that path once per argument signature and keeps the
compiled kernel it returns; later calls with the same signature start that kernel directly.

A signature holds everything Triton specializes on, or more: each integer's exact value,
each tensor's dtype and 16-byte alignment, each other argument's type (floats are never
specialized), the constants, and the current device. Under the interpreter, with pre-run
hooks, or with ``SPATTN_DIRECT_LAUNCH=0`` every call takes Triton's own path.
"""
from __future__ import annotations

import os

import torch

_MAX_ENTRIES = 4096  # signatures kept (decoding changes n_q every step); then start afresh
_compiled: dict = {}  # (kernel, signature) -> (compiled kernel, constexpr values after args)
_direct: dict = {}  # kernel -> whether its launches may go direct (known after its first)


def enabled() -> bool:
    return os.environ.get("SPATTN_DIRECT_LAUNCH", "1") != "0"


def launch(kernel, grid: tuple, *args, **constants) -> None:
    """``kernel[grid](*args, **constants)``, directly once this signature was launched."""
    direct = _direct.get(kernel)
    if direct is False or not enabled():
        kernel[grid](*args, **constants)
    elif direct is None:  # its first launch: Triton's path tells whether it may go direct
        compiled = kernel[grid](*args, **constants)
        # the interpreter returns no compiled kernel; pre-run hooks must run on every call
        _direct[kernel] = hasattr(compiled, "function") and not getattr(kernel, "pre_run_hooks", None)
        if _direct[kernel]:
            _remember(kernel, _key(kernel, args, constants), compiled, len(args), constants)
    else:
        key = _key(kernel, args, constants)
        entry = _compiled.get(key)
        if entry is None:
            _remember(kernel, key, kernel[grid](*args, **constants), len(args), constants)
        else:
            compiled, tail = entry
            compiled[_grid3(grid)](*args, *tail)


def _key(kernel, args, constants) -> tuple:
    signature = tuple(a if type(a) is int or a is None else
                      (a.dtype, a.data_ptr() % 16 == 0) if isinstance(a, torch.Tensor) else type(a)
                      for a in args)
    return kernel, signature, tuple(constants.items()), torch.cuda.current_device()


def _remember(kernel, key, compiled, n_args: int, constants: dict) -> None:
    """Keep ``compiled`` under ``key`` with the constexpr values that follow the positional
    arguments (the compiled kernel takes every parameter, in order)."""
    tail = []
    for param in kernel.params[n_args:]:
        if param.name in constants:
            tail.append(constants[param.name])
        elif param.is_constexpr and param.has_default:
            tail.append(param.default)
        else:  # a runtime parameter left to its default: keep Triton's path
            _direct[kernel] = False
            return
    if len(_compiled) >= _MAX_ENTRIES:
        _compiled.clear()
    _compiled[key] = (compiled, tail)


def _grid3(grid: tuple) -> tuple:
    return tuple(grid) + (1,) * (3 - len(grid))
