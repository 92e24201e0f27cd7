"""Caches that heal: each kind of corrupt entry is detected, rebuilt and warned about in one
line (once), a later run is silent; an unusable cache root runs in memory; processes that
share an empty cache compile the same pattern safely.

Kernels run under the Triton interpreter on small shapes; results are checked against the
reference attention."""
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

import spattn_dsl.runtime.lowering as lowering
from spattn_dsl.codegen import attention_reference
from spattn_dsl.codegen.render import render
from spattn_dsl.runtime import cache, compile
from spattn_dsl.runtime.autotune import TUNING_FILE, known_configs

from ..layout.patterns import pattern
from .test_attention import inputs, rel_err

# one token-grid layout per problem (the plan pass would store one per term)
TILES = dict(block_m=16, block_n=16, num_warps=1, num_stages=1, lowering="grid")
REPO = Path(__file__).parents[2]


def fresh_process(monkeypatch):
    """Forget everything this process cached in memory, as a new process would."""
    for module, name in ((cache, "_MODULES"), (cache, "_USABLE"), (cache, "_WARNED"),
                         (cache, "_MEMORY_LAYOUTS"), (cache, "_MEMORY_JSON"),
                         (cache, "_LAYOUTS"), (lowering, "_CASE_PLANS")):
        monkeypatch.setattr(module, name, type(getattr(module, name))())


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("SPATTN_CACHE", str(root))
    fresh_process(monkeypatch)
    return root


def cache_warnings(fn, *args):
    """(result of fn, the CacheWarning messages it raised)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn(*args)
    return result, [str(w.message) for w in caught if issubclass(w.category, cache.CacheWarning)]


def run_attention(name="longformer", n=40):
    """Forward of a compiled pattern; its relative error against the reference."""
    p = pattern(name)
    q, k, v = inputs(1, 2, n, n, 16)
    out = compile(p, **TILES)(q, k, v)
    return rel_err(out, attention_reference(p, q.cpu(), k.cpu(), v.cpu())[0])


def healed_once(monkeypatch, corrupt, what):
    """Run, corrupt the cache, run again (one warning naming ``what``, correct result), and a
    third time in a fresh process (silent)."""
    assert run_attention() < 1e-5
    corrupt()
    fresh_process(monkeypatch)
    err, messages = cache_warnings(run_attention)
    assert err < 1e-5
    assert len(messages) == 1 and what in messages[0] and "\n" not in messages[0], messages
    fresh_process(monkeypatch)
    err, messages = cache_warnings(run_attention)
    assert err < 1e-5 and messages == []


def only(paths):
    paths = [p for p in paths if not p.name.startswith(".")]
    assert len(paths) == 1, paths
    return paths[0]


# ------------------------------------------------------------------------------ kernels
def kernel_file(root):
    return only(list((root / "kernels").glob("spattn_*.py")))


def test_non_utf8_kernel_file_is_rebuilt(cache_dir, monkeypatch):
    healed_once(monkeypatch, lambda: kernel_file(cache_dir).write_bytes(b"\xff\xfe\x00bad"),
                "kernel")
    assert "def " in kernel_file(cache_dir).read_text()


def test_directory_in_place_of_kernel_file_is_rebuilt(cache_dir, monkeypatch):
    def corrupt():
        path = kernel_file(cache_dir)
        path.unlink()
        (path / "inner").mkdir(parents=True)

    healed_once(monkeypatch, corrupt, "kernel")
    assert kernel_file(cache_dir).is_file()


def test_unreadable_kernel_file_is_rebuilt(cache_dir, monkeypatch):
    original = Path.read_text
    broken = set()

    def read_text(self, *args, **kwargs):
        if self in broken:
            broken.discard(self)  # unreadable until rewritten
            raise PermissionError(13, "Permission denied")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    healed_once(monkeypatch, lambda: broken.add(kernel_file(cache_dir)), "kernel")


def test_file_in_place_of_kernel_directory_is_replaced(cache_dir, monkeypatch):
    def corrupt():
        kernels = cache_dir / "kernels"
        for path in kernels.iterdir():
            path.unlink()
        kernels.rmdir()
        kernels.write_text("not a directory")

    healed_once(monkeypatch, corrupt, "not a directory")


def test_stale_kernel_source_is_rewritten(cache_dir, monkeypatch):
    assert run_attention() < 1e-5
    kernel_file(cache_dir).write_text("raise RuntimeError('stale kernel')\n")
    fresh_process(monkeypatch)
    assert run_attention() < 1e-5
    assert "stale kernel" not in kernel_file(cache_dir).read_text()


# ------------------------------------------------------------------------------ layouts
def layout_files(root):
    return sorted((root / "layouts").glob("*.pt"))


@pytest.mark.parametrize("corruption", ["garbage", "truncated", "directory", "old-format",
                                        "wrong-type", "tampered", "stale-version"])
def test_corrupt_layout_is_rebuilt(cache_dir, monkeypatch, corruption):
    def corrupt():
        path = only(layout_files(cache_dir))
        record = torch.load(path, weights_only=True)
        if corruption == "garbage":
            path.write_bytes(b"\x00not a torch file")
        elif corruption == "truncated":
            path.write_bytes(path.read_bytes()[:100])
        elif corruption == "directory":
            path.unlink()
            path.mkdir()
        elif corruption == "old-format":  # as stored before layouts had a stamp
            torch.save(record["tensors"], path)
        elif corruption == "wrong-type":
            record["tensors"]["full_counts"] = 3
            torch.save(record, path)
        elif corruption == "tampered":  # one tile changed, the stamp kept
            record["tensors"]["full_counts"][0, 0] += 1
            torch.save(record, path)
        else:
            record["format"] = "1|0.0.1|000000000000"
            torch.save(record, path)

    healed_once(monkeypatch, corrupt, "layout")


def test_layout_of_another_problem_is_not_trusted(cache_dir, monkeypatch):
    # Before layouts carried their key and checksum, a file swapped in from another pattern
    # was used silently (relative error 0.67).
    assert run_attention("longformer") < 1e-5
    longformer = only(layout_files(cache_dir))
    assert run_attention("window40") < 1e-5
    window = only([p for p in layout_files(cache_dir) if p != longformer])
    window.replace(longformer)
    fresh_process(monkeypatch)
    err, messages = cache_warnings(run_attention, "longformer")
    assert err < 1e-5
    assert len(messages) == 1 and "another problem" in messages[0]


# -------------------------------------------------------------------------- tuning file
def tuning_path(root):
    return root / TUNING_FILE


@pytest.mark.parametrize("content", [b"[1, 2, 3]", b"\xff\xfe not utf-8", b"{not json",
                                     b'"a string"', "directory"])
def test_unusable_tuning_file_reads_empty_and_is_rewritten(cache_dir, content):
    path = tuning_path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    if content == "directory":
        (path / "inner").mkdir(parents=True)
    else:
        path.write_bytes(content)
    table, messages = cache_warnings(cache.load_json, TUNING_FILE)
    assert table == {}
    assert len(messages) == 1
    _, messages = cache_warnings(cache.update_json, TUNING_FILE, "a", {"config": [64, 64, 4, 2,
                                                                                   False]})
    assert json.loads(path.read_text()) == {"a": {"config": [64, 64, 4, 2, False]}}
    assert cache_warnings(cache.load_json, TUNING_FILE)[1] == []


@pytest.mark.parametrize("entry", [[64, 64, 4, 2, False, False], {"config": "64x64"},
                                   {"config": [64, 64, 4]}, {"config": [64, 64, 4, 2, False]},
                                   {"config": [64, 48, 4, 2, False, False]},
                                   {"config": [64, 64, 4, 2, "no", False]},
                                   {"config": [64, 64, 4, 2, False, 1]},
                                   {"config": [64.0, 64, 4, 2, False, False]},
                                   {"config": [True, 64, 4, 2, False, False]}, {}])
def test_malformed_tuning_entry_is_tuned_again(cache_dir, entry):
    cache.update_json(TUNING_FILE, "key", entry)
    result, messages = cache_warnings(known_configs, "key", ("config",))
    assert result is None
    assert len(messages) == 1 and "tuning" in messages[0]
    # warned once per process, however often it is read
    assert cache_warnings(known_configs, "key", ("config",)) == (None, [])


def test_wellformed_tuning_entry_is_read(cache_dir):
    cache.update_json(TUNING_FILE, "key", {"dq": [32, 64, 4, 2, False, True],
                                           "dkdv": [64, 32, 8, 3, True, False]})
    dq, dkdv = known_configs("key", ("dq", "dkdv"))
    assert (dq.block_m, dq.block_n, dkdv.num_warps, dkdv.merged) == (32, 64, 8, True)
    assert (dq.descriptors, dkdv.descriptors) == (True, False)
    assert known_configs("other", ("dq",)) is None


# --------------------------------------------------------------------------- cache root
def unusable_roots(tmp_path):
    as_file = tmp_path / "a-file"
    as_file.write_text("x")
    roots = {"file": as_file, "dev-null": Path("/dev/null"), "under-a-file": as_file / "sub"}
    if os.geteuid() != 0:  # root writes through permission bits
        read_only = tmp_path / "read-only"
        read_only.mkdir()
        read_only.chmod(0o555)
        roots["read-only"] = read_only
    elif Path("/proc").is_dir():
        roots["read-only"] = Path("/proc")  # read-only even for root
    return roots


@pytest.mark.parametrize("kind", ["file", "dev-null", "under-a-file", "read-only"])
def test_unusable_cache_root_warns_once_and_runs_in_memory(tmp_path, monkeypatch, kind):
    roots = unusable_roots(tmp_path)
    if kind not in roots:
        pytest.skip("no read-only directory on this machine")
    monkeypatch.setenv("SPATTN_CACHE", str(roots[kind]))
    fresh_process(monkeypatch)
    err, messages = cache_warnings(run_attention)
    assert err < 1e-5
    assert len(messages) == 1 and "without a disk cache" in messages[0], messages
    err, messages = cache_warnings(run_attention, "heads")  # new kernel and layout: in memory
    assert err < 1e-5 and messages == []
    cache.update_json(TUNING_FILE, "k", {"config": [16, 16, 1, 1, False, False]})
    assert known_configs("k", ("config",))[0].block_m == 16
    assert cache.load_layout("missing") is None
    if kind == "file":
        assert roots[kind].read_text() == "x"


def test_kernel_imported_from_memory_is_a_working_triton_kernel(cache_dir, monkeypatch):
    monkeypatch.setenv("SPATTN_CACHE", "/dev/null")
    fresh_process(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cache.CacheWarning)
        rendered = render(pattern("causal"), 32)
        module = cache.import_source(rendered.key, rendered.source)
    assert module.__file__.startswith("<spattn-kernel")
    assert hasattr(module, "FORWARD")
    assert run_attention("causal") < 1e-5


# --------------------------------------------------------------------------- processes
WORKER = textwrap.dedent("""
    import sys, warnings
    import torch
    warnings.simplefilter("error")  # any warning (a cache one included) fails the worker
    from spattn_dsl.codegen import attention_reference
    from spattn_dsl.runtime import compile
    from tests.layout.patterns import pattern
    p = pattern("bigbird")
    torch.manual_seed(int(sys.argv[1]))
    q, k, v = (torch.randn(1, 2, 45, 16) for _ in range(3))
    device = "cuda" if torch.cuda.is_available() else "cpu"  # else the interpreter
    out = compile(p, block_m=16, block_n=16, num_warps=1, num_stages=1)(
        q.to(device), k.to(device), v.to(device)).cpu()
    ref, _ = attention_reference(p, q, k, v)
    err = float((out.double() - ref).norm() / ref.norm())
    assert err < 1e-5, err
    print("ok", err)
""")


def test_processes_share_an_empty_cache(tmp_path):
    root = tmp_path / "shared-cache"
    env = dict(os.environ, SPATTN_CACHE=str(root),
               TRITON_INTERPRET="0" if torch.cuda.is_available() else "1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(seed)], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for seed in range(3)]
    results = [(w.wait(timeout=300), *w.communicate()) for w in workers]
    for code, out, err in results:
        assert code == 0 and out.startswith("ok"), err[-2000:]
    assert len(list((root / "kernels").glob("spattn_*.py"))) == 1
    assert len(layout_files(root)) == 1
    assert not [p for p in (root / "layouts").iterdir() if p.suffix != ".pt"]  # no temp files
