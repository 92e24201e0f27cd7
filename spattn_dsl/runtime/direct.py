"""Launch a compiled Triton kernel without Triton's per-call argument binding.

``kernel[grid](*args, **constants)`` binds and specializes every argument on every call
(about 40 us of host time for our kernels' ~50 arguments on an H200 host, against 10-14 us
for the launch itself): a sparse pattern's step of 7 launches spends more time there than
on the GPU. ``launch`` goes through that path once per argument signature and keeps the
compiled kernel it returns; later calls with the same signature start that kernel directly,
through its launcher (``CompiledKernel.run``: Triton's runner would also look up the device
and stream again and build launch metadata for its empty hook chains), or through its
runner while launch hooks are set.

A signature holds everything Triton specializes on, or more: every argument's type, each
integer's exact value, each tensor's dtype and the low four bits of its address (floats are
never specialized), the constants, and the current device. Under the interpreter, with
pre-run hooks, or with ``SPATTN_DIRECT_LAUNCH=0`` every call takes Triton's own path.
"""
from __future__ import annotations

import operator
import os

import torch

try:
    from triton import knobs as _knobs
except ImportError:  # Triton before 3.4: its runner starts the compiled kernels
    _knobs = None

_MAX_ENTRIES = 4096  # signatures kept (decoding changes n_q every step); then start afresh
_compiled: dict = {}  # signature (id(kernel) first) -> (compiled kernel, constexpr tail)
_direct: dict = {}  # id(kernel) -> whether its launches may go direct (known after its first)
_kernels: list = []  # the kernels in _direct


def enabled() -> bool:
    return os.environ.get("SPATTN_DIRECT_LAUNCH", "1") != "0"


def launch(kernel, grid: tuple, *args, **constants) -> None:
    """``kernel[grid](*args, **constants)``, directly once this signature was launched."""
    direct = _direct.get(id(kernel))
    if direct is False or not enabled():
        kernel[grid](*args, **constants)
    elif direct is None:  # its first launch: Triton's path tells whether it may go direct
        compiled = kernel[grid](*args, **constants)
        # the interpreter returns no compiled kernel; pre-run hooks must run on every call
        _direct[id(kernel)] = hasattr(compiled, "function") and not getattr(kernel, "pre_run_hooks", None)
        _kernels.append(kernel)  # alive, so that its id is never another's
        if _direct[id(kernel)]:
            _remember(kernel, _key(kernel, args, constants), compiled, len(args), constants)
    else:
        key = _key(kernel, args, constants)
        entry = _compiled.get(key)
        if entry is None:
            _remember(kernel, key, kernel[grid](*args, **constants), len(args), constants)
        else:
            compiled, tail = entry
            grid = tuple(grid) + (1,) * (3 - len(grid))
            if _hooks_idle():  # Triton's runner would pass its (empty) hook chains
                compiled.run(*grid, _stream(key[-1]), compiled.function, compiled.packed_metadata,
                             None, None, None, *args, *tail)
            else:
                compiled[grid](*args, *tail)


def _hooks_idle() -> bool:
    """No launch hooks are set (Triton's are None or empty chains, depending on its version)."""
    if _knobs is None:
        return False
    runtime = _knobs.runtime
    return all(hook is None or getattr(hook, "calls", True) == []
               for hook in (runtime.launch_enter_hook, runtime.launch_exit_hook))


def _stream(device: int) -> int:
    """The current CUDA stream of ``device``, as Triton's runner finds it."""
    return torch._C._cuda_getCurrentRawStream(device)


def _key(kernel, args, constants) -> tuple:
    """The launch's signature, built by C-level maps over the arguments (a Python loop over
    ~50 of them cost ~15 us a launch): the argument types, the integers' values, the
    tensors' dtypes and the low four bits of their addresses."""
    types = tuple(map(type, args))
    split = _splits.get(types)
    if split is None:
        split = _splits[types] = _split(types)
    tensors, integers = split[0](args), split[1](args)
    return (id(kernel), types, integers, tuple(map(_DTYPE, tensors)),
            tuple(map(_LOW_BITS, map(torch.Tensor.data_ptr, tensors))),
            tuple(constants.items()), torch.cuda.current_device())


_DTYPE = operator.attrgetter("dtype")
_LOW_BITS = (15).__and__
_splits: dict = {}  # argument types -> (picker of the tensors, picker of the integers)


def _split(types: tuple) -> tuple:
    """Pickers of the tensor and the integer arguments of calls with these argument types
    (floats are never specialized; None and any other type count by type alone)."""
    tensors = [i for i, t in enumerate(types) if issubclass(t, torch.Tensor)]
    integers = [i for i, t in enumerate(types) if issubclass(t, int)]
    return _picker(tensors), _picker(integers)


def _picker(positions: list):
    """``args -> tuple of args[i] for i in positions`` (itemgetter returns a bare value for
    one position)."""
    if len(positions) > 1:
        return operator.itemgetter(*positions)
    return lambda args: tuple(args[i] for i in positions)


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
            _direct[id(kernel)] = False
            return
    if len(_compiled) >= _MAX_ENTRIES:
        _compiled.clear()
    _compiled[key] = (compiled, tail)


