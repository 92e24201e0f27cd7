"""On-disk caches: generated kernel sources (imported from their files), layouts, autotune
results. The root is ``$SPATTN_CACHE`` or ``~/.cache/spattn``.

The caches heal: an entry that cannot be read, is not what it claims (non-UTF-8 text, a
directory in a file's place, a JSON list for a table, a layout of another format or with a
wrong checksum, a layout that does not fit the problem it is loaded for) is reported in one
warning line and rebuilt. A root that cannot be written
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

# bump when the meaning of a stored layout changes (stale layouts rebuild); 3: records name
# their problem (n_q, n_k, tile sizes)
LAYOUT_FORMAT = 3
SPOT_CHECKS = 8  # query tiles per head case whose tiles a loaded layout is checked on


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


def load_layout(name: str, problem: dict | None = None):
    """The stored layout tensors of ``name``; None when absent, or stale, tampered with,
    unreadable or stored for another ``problem`` (warned about once; the caller rebuilds and
    saves it)."""
    base = root()
    if base is None or name in _MEMORY_LAYOUTS:
        return _MEMORY_LAYOUTS.get(name)
    path = base / "layouts" / f"{name}.pt"
    if not path.exists():
        return None
    try:
        stored = torch.load(path, weights_only=True)
        problem = _layout_problem(stored, name, problem)
    except Exception as error:  # truncated, not a torch file, a directory, unreadable
        problem = f"unreadable ({_reason(error)})"
    if problem is None:
        return stored["tensors"]
    _warn_layout(path, problem)
    return None


def _warn_layout(path: Path, problem: str) -> None:
    warn_once(f"spattn: cached layout {str(path)!r} is {problem}; rebuilding it (and any other "
              "such layout, silently)", kind="layout")


def _layout_problem(stored, name: str, problem: dict | None) -> str | None:
    """Why a loaded layout file cannot be trusted, or None."""
    if not isinstance(stored, dict) or not isinstance(stored.get("tensors"), dict):
        return "not a spattn layout"
    if stored.get("format") != layout_format():
        return f"of another format ({stored.get('format')!r})"
    if stored.get("key") != name:
        return f"the layout of another problem ({stored.get('key')!r})"
    if problem is not None and stored.get("problem") != problem:
        return f"the layout of another problem ({stored.get('problem')!r}, not {problem!r})"
    if not all(isinstance(t, torch.Tensor) for t in stored["tensors"].values()):
        return "holding a value that is not a tensor"
    if stored.get("checksum") != checksum(stored["tensors"]):
        return "corrupt (checksum mismatch)"
    return None


def save_layout(name: str, tensors: dict, problem: dict | None = None) -> None:
    base = root()
    if base is None:
        _MEMORY_LAYOUTS[name] = tensors
        return
    path = base / "layouts" / f"{name}.pt"
    record = {"format": layout_format(), "key": name, "problem": problem,
              "checksum": checksum(tensors), "tensors": tensors}
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


def layout(name: str, n_q: int, n_k: int, block_m: int, block_n: int, build, expr=None):
    """The BlockLayout stored as ``name``: from memory, then disk, else ``build()`` and saved.

    A stored layout is checked against its problem first (sizes, the shapes and ranges of its
    tile lists, and with ``expr``, the concrete expression in token positions, its head cases
    and a sample of its tiles against the pairs): one that does not fit is rebuilt."""
    found = _LAYOUTS.get(name)
    if found is None:
        problem = {"n_q": n_q, "n_k": n_k, "block_m": block_m, "block_n": block_n}
        found = _stored_layout(name, problem, expr)
        if found is None:
            found = build()
            save_layout(name, found.tensors(), problem)
        _LAYOUTS[name] = found
    return found


def _stored_layout(name: str, problem: dict, expr):
    """The stored layout of ``name`` if it fits ``problem`` (else warned about, None)."""
    from ..layout.build import BlockLayout

    stored = load_layout(name, problem)
    if stored is None:
        return None
    try:
        found = BlockLayout(**problem, **stored)
        why = layout_mismatch(found, expr)
    except Exception as error:  # tensors a BlockLayout cannot take or that cannot be compared
        why = f"{type(error).__name__}: {error}"
    if why is None:
        return found
    base = root()
    _warn_layout(base / "layouts" / f"{name}.pt" if base else Path(name),
                 f"not the layout of its problem ({why})")
    return None


# --------------------------------------------------------------- checking a loaded layout
def layout_mismatch(layout, expr=None) -> str | None:
    """Why ``layout`` cannot be the layout of its sizes (and of ``expr``, a concrete
    expression in token positions, when given), or None. The shapes and ranges are checked in
    full (a kernel would read out of bounds); the tiles' classes on a sample of query tiles."""
    t_q = -(-layout.n_q // layout.block_m)
    t_k = -(-layout.n_k // layout.block_n)
    cases = layout.full_counts.shape[0] if layout.full_counts.dim() else -1
    if expr is not None:
        from ..ir.evaluate import head_count
        if cases != head_count(expr):
            return f"{cases} head cases, the pattern has {head_count(expr)}"
    for prefix, rows, bound in (("", t_q, t_k), ("_q", t_k, t_q)):
        for kind in ("full", "partial"):
            counts = getattr(layout, f"{kind}{prefix}_counts")
            indices = getattr(layout, f"{kind}{prefix}_indices")
            why = _list_mismatch(counts, indices, cases, rows, bound)
            if why:
                return f"{kind}{prefix}_indices: {why}"
    if not torch.equal(torch.sort(layout.row_order.long()).values, torch.arange(t_q)):
        return f"row_order is not an order of the {t_q} query tiles"
    states = getattr(layout, "states", None)
    if states is not None and tuple(states.shape) != (cases, t_q, t_k):
        return f"states of shape {tuple(states.shape)}, expected {(cases, t_q, t_k)}"
    return _tiles_mismatch(layout, expr, t_q, t_k) if expr is not None else None


def _list_mismatch(counts, indices, cases: int, rows: int, bound: int) -> str | None:
    """Tile lists: counts ``[cases, rows]`` within the table, indices ``[cases, rows, width]``
    within ``[0, bound)``."""
    if tuple(counts.shape) != (cases, rows):
        return f"counts of shape {tuple(counts.shape)}, expected {(cases, rows)}"
    if indices.dim() != 3 or tuple(indices.shape[:2]) != (cases, rows):
        return f"shape {tuple(indices.shape)}, expected {(cases, rows)} and a width"
    if counts.dtype.is_floating_point or indices.dtype.is_floating_point:
        return "not integers"
    if counts.numel() and (int(counts.min()) < 0 or int(counts.max()) > indices.shape[2]):
        return "a count outside its table"
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= max(bound, 1)):
        return f"a tile index outside [0, {bound})"
    return None


def _tiles_mismatch(layout, expr, t_q: int, t_k: int) -> str | None:
    """A sample of query tiles (the same for a given layout size): every key tile with an
    allowed pair must be listed, and every FULL one allow all its pairs. Another pattern's
    layout of the same sizes fails here; a check of every tile would cost a rebuild."""
    from ..ir.evaluate import select_head
    from ..layout.pairs import allowed

    generator = torch.Generator().manual_seed(t_q * 1_000_003 + t_k)
    rows = torch.randperm(t_q, generator=generator)[:SPOT_CHECKS].tolist() if t_q else []
    offset = layout.n_k - layout.n_q
    for case in range(layout.full_counts.shape[0]):
        chosen = select_head(expr, case)
        for r in rows:
            full = _listed(layout.full_counts, layout.full_indices, case, r)
            partial = _listed(layout.partial_counts, layout.partial_indices, case, r)
            q = torch.arange(r * layout.block_m, min(layout.n_q, (r + 1) * layout.block_m))
            q = q + offset
            for c in _sampled_keys(full | partial, t_k, generator):
                k = torch.arange(c * layout.block_n, min(layout.n_k, (c + 1) * layout.block_n))
                ok = allowed(chosen, q[:, None], k[None, :], layout.n_k)
                ok = torch.as_tensor(ok).expand(len(q), len(k))
                if c in full and not bool(ok.all()):
                    return f"head case {case}: tile ({r}, {c}) is listed FULL, not all allowed"
                if c not in full and c not in partial and bool(ok.any()):
                    return f"head case {case}: tile ({r}, {c}) has allowed pairs, not listed"
    return None


def _sampled_keys(listed: set, t_k: int, generator) -> list:
    """Key tiles to check in a row: two at random, the first and last listed ones and their
    outer neighbours (where a narrower or shifted pattern's layout differs)."""
    keys = set(torch.randint(t_k, (2,), generator=generator).tolist()) if t_k else set()
    if listed:
        lo, hi = min(listed), max(listed)
        keys |= {lo - 1, lo, hi, hi + 1}
    return sorted(c for c in keys if 0 <= c < t_k)


def _listed(counts, indices, case: int, row: int) -> set:
    return set(indices[case, row, :int(counts[case, row])].tolist())


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
