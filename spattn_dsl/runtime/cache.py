"""On-disk caches: generated kernel sources (imported from their files), layouts, autotune
results. The root is ``$SPATTN_CACHE`` or ``~/.cache/spattn``."""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

import torch


def root() -> Path:
    path = Path(os.environ.get("SPATTN_CACHE") or Path.home() / ".cache" / "spattn")
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_atomic(path: Path, data: bytes) -> None:
    """Write a file so that concurrent readers see either nothing or all of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


_MODULES: dict = {}


def import_source(key: str, source: str):
    """Write a generated kernel under ``kernels/<key>.py`` (once) and import it from there."""
    if key in _MODULES:
        return _MODULES[key]
    path = root() / "kernels" / f"spattn_{key}.py"
    if not path.exists() or path.read_text() != source:
        write_atomic(path, source.encode())
    name = f"spattn_kernels_{key}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    _MODULES[key] = module
    return module


def load_layout(name: str):
    path = root() / "layouts" / f"{name}.pt"
    if not path.exists():
        return None
    try:
        return torch.load(path, weights_only=True)
    except Exception:  # a truncated or foreign file: recompute
        return None


def save_layout(name: str, tensors: dict) -> None:
    path = root() / "layouts" / f"{name}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    os.close(fd)
    torch.save(tensors, tmp)
    os.replace(tmp, path)


def load_json(name: str) -> dict:
    path = root() / name
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def update_json(name: str, key: str, value) -> None:
    table = load_json(name)
    table[key] = value
    write_atomic(root() / name, json.dumps(table, indent=1, sort_keys=True).encode())
