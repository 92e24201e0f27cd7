"""Layouts that pass the cache's format, key and checksum checks but are wrong for the problem
they are loaded for (issue 25, item 9): another pattern's layout with its key and checksum
rewritten, tensors of other shapes, indices out of range. Each is warned about once and
rebuilt; before, the CPU path raised IndexError / AssertionError and the interpreter returned
wrong results."""
import pytest
import torch

from spattn_dsl.codegen import attention_reference
from spattn_dsl.layout.build import lower
from spattn_dsl.runtime import cache, compile

from ..layout.patterns import pattern
from .test_attention import inputs, rel_err
from .test_cache import cache_dir, cache_warnings, fresh_process, layout_files  # noqa: F401

TILES = dict(block_m=16, block_n=16)


def forge(path, tensors, **fields):
    """Rewrite a stored record with other tensors or fields, its checksum made to match."""
    record = torch.load(path, weights_only=True)
    record.update(fields)
    record["tensors"] = tensors
    record["checksum"] = cache.checksum(tensors)
    torch.save(record, path)


def cpu_attention(name, n=300):
    """The CPU path (the tiled reference on the runtime's cached layout)."""
    p = pattern(name)
    q, k, v = inputs(1, 2, n, n, 16, seed=0)
    out = compile(p)(q, k, v)
    return rel_err(out, attention_reference(p, q, k, v)[0])


def test_another_patterns_layout_with_key_and_checksum_rewritten(cache_dir, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert cpu_attention("causal") < 1e-5
    targets = layout_files(cache_dir)  # one per tile shape the CPU path uses
    assert cpu_attention("window5") < 1e-5
    others = [p for p in layout_files(cache_dir) if p not in targets]
    tiles = lambda path: path.name.split("-q", 1)[1]  # noqa: E731
    pairs = [(t, o) for t in targets for o in others if tiles(t) == tiles(o)]
    assert pairs  # the tile shapes both patterns use (the probe's, at least)
    for target, other in pairs:  # each such causal layout becomes window5's of the same tiles
        stored = torch.load(target, weights_only=True)
        forge(target, torch.load(other, weights_only=True)["tensors"], key=stored["key"])
    fresh_process(monkeypatch)
    err, messages = cache_warnings(cpu_attention, "causal")
    assert err < 1e-5
    assert 1 <= len(messages) <= len(pairs), messages
    assert all("not the layout of its problem" in m for m in messages), messages
    fresh_process(monkeypatch)  # rebuilt and saved: silent from then on
    assert cache_warnings(cpu_attention, "causal") == (pytest.approx(0, abs=1e-5), [])


def stored_layout(name="causal", n=40):
    """A layout stored through cache.layout as the runtime does; (its file, its expression)."""
    concrete = pattern(name).at(n)
    cache.layout("probe", n, n, 16, 16, lambda: lower(concrete, n, n, 16, 16))
    return cache.root() / "layouts" / "probe.pt", concrete


def reload(monkeypatch, n=40, name="causal"):
    """cache.layout in a fresh process (no ``expr``: the checks every caller gets)."""
    fresh_process(monkeypatch)
    concrete = pattern(name).at(n)
    return cache_warnings(cache.layout, "probe", n, n, 16, 16,
                          lambda: lower(concrete, n, n, 16, 16))


def test_tensors_of_another_size(cache_dir, monkeypatch):
    path, _ = stored_layout(n=40)
    forge(path, lower(pattern("causal").at(80), 80, 80, 16, 16).tensors())
    found, messages = reload(monkeypatch)
    assert len(messages) == 1 and "counts of shape (1, 5), expected (1, 3)" in messages[0]
    assert found.full_counts.shape == (1, 3)


def test_tile_index_out_of_range(cache_dir, monkeypatch):
    path, _ = stored_layout()
    tensors = torch.load(path, weights_only=True)["tensors"]
    tensors["partial_indices"][0, 0, 0] = 7  # 3 key tiles at n = 40
    forge(path, tensors)
    found, messages = reload(monkeypatch)
    assert len(messages) == 1 and "a tile index outside [0, 3)" in messages[0], messages
    assert torch.equal(found.partial_indices, lower(pattern("causal").at(40), 40, 40, 16,
                                                    16).partial_indices)


def test_record_of_another_problem(cache_dir, monkeypatch):
    path, _ = stored_layout()
    record = torch.load(path, weights_only=True)
    forge(path, record["tensors"], problem={**record["problem"], "block_m": 32})
    _, messages = reload(monkeypatch)
    assert len(messages) == 1 and "another problem" in messages[0]


def test_a_fitting_layout_is_used_silently(cache_dir, monkeypatch):
    stored_layout()
    found, messages = reload(monkeypatch)
    assert messages == [] and found.tiles == (3, 3)
