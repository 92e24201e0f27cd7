"""``write_artifacts`` (behind ``spattn compile``), caches and the FlexAttention export."""
import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
from torch.nn.attention.flex_attention import create_mask

from spattn_dsl.runtime import compile
from spattn_dsl.runtime.artifacts import write_artifacts
from spattn_dsl.runtime.flex import block_mask, mask_mod

from ..layout.patterns import pattern


def test_write_artifacts(tmp_path):
    p = pattern("bigbird")
    paths = write_artifacts(p, 1000, 64, "bf16", tmp_path / "out")
    assert [Path(x).name for x in paths] == ["kernel.py", "layout.pt", "manifest.json"]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["text"] == p.text and manifest["hash"] == p.hash
    assert manifest["shapes"] == {"n_q": 1000, "n_k": 1000, "head_dim": 64, "dtype": "bf16"}
    assert manifest["tiles"]["block_m"] == 64 and 0 < manifest["tile_density"] < 1
    source = (tmp_path / "out" / "kernel.py").read_text()
    assert p.text in source and p.hash in source
    layout = torch.load(tmp_path / "out" / "layout.pt", weights_only=True)
    assert layout["states"].shape == (1, 16, 16)
    spec = importlib.util.spec_from_file_location("artifact_kernel", paths[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.CASES == 1 and module.TABLES == [(3, 0, (16,))]


def test_write_artifacts_rejects_bad_values(tmp_path):
    with pytest.raises(ValueError, match="dtype"):
        write_artifacts(pattern("causal"), 64, 64, "int8", tmp_path)
    with pytest.raises(ValueError, match="head_dim"):
        write_artifacts(pattern("causal"), 64, 8, "bf16", tmp_path)


def test_kernels_and_layouts_are_cached_on_disk():
    p = pattern("stride7")
    q = k = v = torch.randn(1, 1, 30, 16)
    if torch.cuda.is_available():
        q = k = v = q.cuda()
    compile(p, block_m=16, block_n=16)(q, k, v)
    root = Path(os.environ["SPATTN_CACHE"])
    kernels = list((root / "kernels").glob("spattn_*.py"))
    assert any("stride(7)" in f.read_text() for f in kernels)
    assert list((root / "layouts").glob("*-q30-k30-m16-n16.pt"))


@pytest.mark.parametrize("name", ["heads", "bigbird", "where-mod", "longformer", "tokens", "fixed"])
def test_flex_mask_mod_is_token_exact(name):
    p = pattern(name)
    mask = create_mask(mask_mod(p, 50, 111, "cpu"), 1, p.heads, 50, 111, device="cpu")
    for h in range(p.heads):
        assert torch.equal(mask[0, h], p.mask(50, 111, h))


def test_flex_block_mask_lists_visited_tiles():
    p = pattern("heads")
    bm = block_mask(p, 100, 111, 4, 32, 32, device="cpu")
    dense = bm.to_dense()[0]  # [H, T_q, T_k] visited tiles
    for h in range(4):
        m = p.mask(100, 111, h)
        padded = torch.zeros(128, 128, dtype=torch.bool)
        padded[:100, :111] = m
        assert torch.equal(dense[h].bool(), padded.view(4, 32, 4, 32).any(3).any(1))
