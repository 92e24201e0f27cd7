"""Warnings that point at the user's line, not at spattn's or torch's internals."""
from __future__ import annotations

import sys
import warnings

# frames of these packages are skipped: the warning names the first line outside them
_INTERNAL = ("spattn_dsl", "torch", "transformers")


def warn_at_caller(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` attributed to the first frame outside spattn, torch and transformers
    (the custom op and autograd add frames whose number differs between calls)."""
    frame, level = sys._getframe(1), 2
    while frame is not None and _internal(frame):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level if frame is not None else 2)


def _internal(frame) -> bool:
    name = frame.f_globals.get("__name__") or ""
    return name.split(".", 1)[0] in _INTERNAL
