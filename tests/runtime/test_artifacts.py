"""``write_artifacts`` (behind ``spattn compile``), caches and the FlexAttention export."""
import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
from torch.nn.attention.flex_attention import create_mask

from spattn_dsl.ir import nodes as N
from spattn_dsl.runtime import compile
from spattn_dsl.runtime.artifacts import write_artifacts
from spattn_dsl.runtime.flex import block_mask, mask_mod

from ..layout.patterns import pattern


def test_write_artifacts(tmp_path):
    p = pattern("bigbird")
    paths = write_artifacts(p, 1000, 64, "bf16", tmp_path / "out")
    assert [Path(x).name for x in paths] == ["kernel.py", "layout.pt", "plan.json", "plan.pt",
                                             "term_c0_0.py", "manifest.json"]
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


def test_write_artifacts_plan_and_pair_counts(tmp_path):
    """A structured pattern's plan: its terms, gathers and the pair counts over head cases."""
    p = pattern(N.Heads((N.Intersect(N.Causal(), N.Union(N.Chunk(N.Num(64)),
                                                          N.Summary(N.Num(64), N.Num(4)))),
                         N.Intersect(N.Causal(), N.Stride(N.Num(50))))))
    paths = write_artifacts(p, 3000, 64, "bf16", tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    allowed = sum(int(p.mask(3000, head=h).sum()) for h in range(2))
    assert manifest["pairs_allowed"] == allowed
    tiles = manifest["tiles"]
    single = sum(case["full_tiles"] + case["partial_tiles"] for case in manifest["head_cases"])
    assert allowed <= manifest["pairs_computed"] < single * tiles["block_m"] * tiles["block_n"] / 3
    plan = json.loads((tmp_path / "plan.json").read_text())
    kinds = [[t["kind"] for t in case["terms"]] for case in plan["cases"]]
    assert kinds[1] == ["residue"] and "columns" in kinds[0]
    for case in plan["cases"]:
        assert sum(t["pairs_allowed"] for t in case["terms"]) == int(
            p.mask(3000, head=case["case"]).sum())
    tensors = torch.load(tmp_path / "plan.pt", weights_only=True)
    gather = tensors["case1.term0.k_gather"]
    assert sorted(gather[gather >= 0].tolist()) == list(range(3000))  # a permutation
    names = [Path(x).name for x in paths]
    assert "term_c1_0.py" in names and "stride(50)" in (tmp_path / "term_c1_0.py").read_text()


def test_show_plan_draws_terms(tmp_path):
    from spattn_dsl.cli import main

    source = tmp_path / "p.spattn"
    source.write_text("pattern lf { band(40, 40) | global(first = 2) }\n")
    assert main(["show", str(source), "--pattern", "lf", "--seq-len", "3000", "--plan",
                 "--width", "20"]) == 0


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
