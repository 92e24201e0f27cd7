"""On-disk caches: generated kernel sources (imported from their files), layouts, autotune
results. The root is ``$SPATTN_CACHE`` or ``~/.cache/spattn``.

The caches heal: an entry that cannot be read, is not what it claims (non-UTF-8 text, a
directory in a file's place, a JSON list for a table, a layout of another format or with a
wrong checksum) is reported in one warning line and rebuilt. A root that cannot be written
(a file, a read-only directory, ``/dev/null``) is reported once and the process runs on
in-memory caches. Writers are atomic (write a temporary file, then rename), so processes
that share a cache see an entry whole or not at all.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import linecache
import os
import shutil
import sys
import tempfile
import types
import warnings
from pathlib import Path

import torch

LAYOUT_FORMAT = 2  # bump when the meaning of a stored layout changes (stale layouts rebuild)


class CacheWarning(UserWarning):
    """A cache entry or the cache root was unusable; spattn rebuilt it or works in memory."""


_WARNED: set = set()


def warn_once(message: str, kind: str | None = None) -> None:
    """Warn about ``message`` once per process; with ``kind``, once for every entry of that
    kind (a cache from an older version holds many stale layouts: one line says it)."""
    key = kind or message
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, CacheWarning, stacklevel=3)


# ------------------------------------------------------------------------------- the root
_USABLE: dict = {}  # root path -> whether it can be written


def configured_root() -> Path:
    return Path(os.environ.get("SPATTN_CACHE") or Path.home() / ".cache" / "spattn")


def root() -> Path | None:
    """The cache directory, or None when it cannot be used (warned about once): then every
    cache lives in this process's memory only."""
    path = configured_root()
    if path not in _USABLE:
        _USABLE[path] = _probe(path)
    return path if _USABLE[path] else None


def _probe(path: Path) -> bool:
    """Whether files can be created under ``path`` (created when missing)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".probe.")
        os.close(fd)
        os.remove(probe)
        return True
    except OSError as error:
        warn_once(f"spattn: cache directory {str(path)!r} is unusable ({_reason(error)}); "
                  f"running without a disk cache (set SPATTN_CACHE to a writable directory)")
        return False


def _reason(error: BaseException) -> str:
    return getattr(error, "strerror", None) or type(error).__name__


def _clear(path: Path) -> None:
    """Remove whatever is at ``path`` (file, link or directory), if anything."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _ensure_dir(path: Path) -> None:
    """``path`` as a directory, replacing a file that stands in its place."""
    if path.exists() and not path.is_dir():
        warn_once(f"spattn: cache entry {str(path)!r} is not a directory; replaced")
        _clear(path)
    path.mkdir(parents=True, exist_ok=True)


def write_atomic(path: Path, data: bytes) -> None:
    """Write a file so that concurrent readers see either nothing or all of it (a directory in
    its place is removed first)."""
    _ensure_dir(path.parent)
    if path.is_dir() and not path.is_symlink():
        _clear(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _read_text(path: Path, what: str) -> str | None:
    """The file's UTF-8 text; None when it is missing, or unusable (warned: the caller
    rebuilds it)."""
    try:
        return path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):  # missing (a bad parent is healed on write)
        return None
    except (OSError, UnicodeDecodeError) as error:
        warn_once(f"spattn: cached {what} {str(path)!r} is unreadable ({_reason(error)}); "
                  f"rebuilding it")
        return None


# ---------------------------------------------------------------------------- kernels
_MODULES: dict = {}


def import_source(key: str, source: str):
    """Write a generated kernel under ``kernels/<key>.py`` (rewritten unless it holds exactly
    ``source``) and import it from there; from memory when the disk cache is unusable."""
    if key in _MODULES:
        return _MODULES[key]
    name = f"spattn_kernels_{key}"
    base = root()
    module = None
    if base is not None:
        path = base / "kernels" / f"spattn_{key}.py"
        try:
            if _read_text(path, "kernel") != source:
                write_atomic(path, source.encode())
            module = _import_file(name, path)
        except OSError as error:
            warn_once(f"spattn: cannot write kernel {str(path)!r} ({_reason(error)}); "
                      f"importing it from memory")
    if module is None:
        module = _import_memory(name, source)
    _MODULES[key] = module
    return module


def _import_file(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _import_memory(name: str, source: str):
    """A module from source text; its lines are registered with ``linecache`` so that
    ``inspect.getsource`` (which Triton's ``jit`` reads) finds them."""
    filename = f"<spattn-kernel {name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    module = types.ModuleType(name)
    module.__file__ = filename
    sys.modules[name] = module
    exec(compile(source, filename, "exec"), module.__dict__)  # noqa: S102  (our generated code)
    return module


# ---------------------------------------------------------------------------- layouts
_MEMORY_LAYOUTS: dict = {}


def layout_format() -> str:
    """The format stamp of stored layouts: this module's number, the package version and the
    layout's field names (a layout from another version or shape of BlockLayout is stale)."""
    from .. import __version__
    from ..layout.build import BlockLayout

    fields = ",".join(BlockLayout.__dataclass_fields__)
    return f"{LAYOUT_FORMAT}|{__version__}|{hashlib.sha256(fields.encode()).hexdigest()[:12]}"


def checksum(tensors: dict) -> str:
    """sha256 over the names, dtypes, shapes and bytes of a dict of tensors."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def load_layout(name: str):
    """The stored layout tensors of ``name``; None when absent, or stale, tampered with or
    unreadable (warned about once; the caller rebuilds and saves it)."""
    base = root()
    if base is None or name in _MEMORY_LAYOUTS:
        return _MEMORY_LAYOUTS.get(name)
    path = base / "layouts" / f"{name}.pt"
    if not path.exists():
        return None
    try:
        stored = torch.load(path, weights_only=True)
        problem = _layout_problem(stored, name)
    except Exception as error:  # truncated, not a torch file, a directory, unreadable
        problem = f"unreadable ({_reason(error)})"
    if problem is None:
        return stored["tensors"]
    warn_once(f"spattn: cached layout {str(path)!r} is {problem}; rebuilding it (and any other "
              "such layout, silently)", kind="layout")
    return None


def _layout_problem(stored, name: str) -> str | None:
    """Why a loaded layout file cannot be trusted, or None."""
    if not isinstance(stored, dict) or not isinstance(stored.get("tensors"), dict):
        return "not a spattn layout"
    if stored.get("format") != layout_format():
        return f"of another format ({stored.get('format')!r})"
    if stored.get("key") != name:
        return f"the layout of another problem ({stored.get('key')!r})"
    if not all(isinstance(t, torch.Tensor) for t in stored["tensors"].values()):
        return "holding a value that is not a tensor"
    if stored.get("checksum") != checksum(stored["tensors"]):
        return "corrupt (checksum mismatch)"
    return None


def save_layout(name: str, tensors: dict) -> None:
    base = root()
    if base is None:
        _MEMORY_LAYOUTS[name] = tensors
        return
    path = base / "layouts" / f"{name}.pt"
    record = {"format": layout_format(), "key": name, "checksum": checksum(tensors),
              "tensors": tensors}
    try:
        _ensure_dir(path.parent)
        if path.is_dir() and not path.is_symlink():
            _clear(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
        os.close(fd)
        torch.save(record, tmp)
        os.replace(tmp, path)
    except OSError as error:
        warn_once(f"spattn: cannot write layout {str(path)!r} ({_reason(error)}); kept in memory")
        _MEMORY_LAYOUTS[name] = tensors


_LAYOUTS: dict = {}  # name -> BlockLayout, this process's


def layout(name: str, n_q: int, n_k: int, block_m: int, block_n: int, build):
    """The BlockLayout stored as ``name``: from memory, then disk, else ``build()`` and saved."""
    from ..layout.build import BlockLayout

    found = _LAYOUTS.get(name)
    if found is None:
        stored = load_layout(name)
        if stored is not None:
            found = BlockLayout(n_q, n_k, block_m, block_n, **stored)
        else:
            found = build()
            save_layout(name, found.tensors())
        _LAYOUTS[name] = found
    return found


# ------------------------------------------------------------------------ JSON tables
_MEMORY_JSON: dict = {}


def load_json(name: str) -> dict:
    """A JSON object stored under the root (with the entries this process could not write);
    {} when absent or unusable (warned about once: not UTF-8, not JSON, not an object).
    Entries are the caller's to validate."""
    base = root()
    table = _load_json_file(base / name) if base is not None else {}
    return {**table, **_MEMORY_JSON.get(name, {})}


def _load_json_file(path: Path) -> dict:
    text = _read_text(path, "table")
    if text is None:
        return {}
    try:
        table = json.loads(text)
    except ValueError:
        table = None
    if not isinstance(table, dict):
        warn_once(f"spattn: cached table {str(path)!r} is not a JSON object; rebuilding it")
        return {}
    return table


def update_json(name: str, key: str, value) -> None:
    """Set ``table[key] = value`` in a stored JSON table (read-modify-write under a lock, so
    that concurrent processes do not drop each other's entries)."""
    base = root()
    if base is None:
        _MEMORY_JSON.setdefault(name, {})[key] = value
        return
    path = base / name
    try:
        with _locked(base / (name + ".lock")):
            table = _load_json_file(path)
            table[key] = value
            write_atomic(path, json.dumps(table, indent=1, sort_keys=True).encode())
    except OSError as error:
        warn_once(f"spattn: cannot write {str(path)!r} ({_reason(error)}); kept in memory")
        _MEMORY_JSON.setdefault(name, {})[key] = value


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive advisory lock on ``path`` where the platform has ``fcntl``."""
    try:
        import fcntl
    except ImportError:  # not POSIX: atomic replace only
        yield
        return
    if path.is_dir() and not path.is_symlink():
        _clear(path)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
