"""Kernels of the plan's terms (residue classes, gathered key columns, global rows, merged by
log-sum-exp) against float64 attention under the reference mask, forward and gradients.

``lowering="terms"`` forces every structured part into its own term (on these small sizes
the cost model would keep the single grid layout). Fresh random inputs, ragged lengths,
n_q < n_k, GQA, per-head mixes, key padding."""
import importlib.util
from pathlib import Path

import pytest
import torch

from spattn_dsl.codegen import attention_reference
from spattn_dsl.ir import nodes as N
from spattn_dsl.runtime import compile
from spattn_dsl.runtime.launch import forward

from ..layout.patterns import PRIMITIVES, num, pattern
from .test_attention import inputs, rel_err
from .test_backward import assert_close, grads, reference_grads

EXPRS = {
    "stride7": N.Intersect(N.Causal(), N.Stride(num(7))),
    "stride16-window": N.Intersect(N.Window(num(40)), N.Stride(num(16))),
    "dilated4-3": N.Dilated(num(4), num(3)),
    "fixed": PRIMITIVES["fixed"],
    "tokens": N.Union(N.Band(num(2), num(2)), PRIMITIVES["tokens"]),
    "sinks": N.Intersect(N.Causal(), N.Union(N.Sink(num(4)), N.Window(num(9)))),
    "difference": N.Difference(N.Union(N.Stride(num(5)), N.Summary(num(8), num(2))),
                               N.Window(num(6))),
    "longformer": PRIMITIVES["longformer"],
    "heads": N.Heads((PRIMITIVES["longformer"], N.Intersect(N.Causal(), N.Stride(num(9))))),
    # random links beside residue classes: the residue term subtracts the draws
    "stride-random": N.Union(N.Intersect(N.Causal(), N.Stride(num(4))), N.Random(num(2), num(1))),
    # only global rows: the first term writes some rows, the others stay empty (0)
    "rows-only": N.Union(N.Compare("<", N.Var("q"), num(3)),
                         N.Compare("==", N.Var("q"), num(120))),
}

CASES = [  # name, heads, kv heads, n_q, n_k
    ("stride7", 2, 2, 111, 111),
    ("stride7", 1, 1, 40, 130),
    ("stride16-window", 1, 1, 64, 64),
    ("dilated4-3", 2, 1, 130, 130),
    ("dilated4-3", 1, 1, 5, 5),
    ("stride-random", 1, 1, 130, 130),
    ("fixed", 1, 1, 111, 111),
    ("tokens", 1, 1, 64, 64),
    ("tokens", 1, 1, 40, 130),
    ("sinks", 1, 1, 130, 130),
    ("difference", 1, 1, 111, 111),
    ("longformer", 2, 1, 1, 130),        # decoding a single query
    ("heads", 4, 2, 64, 111),            # two cases, GQA groups mixing both cases
    ("rows-only", 1, 1, 40, 130),
]


@pytest.mark.parametrize("name,heads,kv_heads,n_q,n_k", CASES,
                         ids=[f"{c[0]}-h{c[1]}-kv{c[2]}-nq{c[3]}-nk{c[4]}" for c in CASES])
def test_plan_terms_match_reference(name, heads, kv_heads, n_q, n_k):
    p = pattern(EXPRS[name])
    attn = compile(p, lowering="terms")
    q, k, v = inputs(1, heads, n_q, n_k, 16, kv_heads=kv_heads)
    plan = attn.plan(q, k, v, 0.25)
    assert sum(len(terms) for terms in plan.cases) >= 1
    grad_out = torch.randn_like(q)
    assert_close(grads(attn, q, k, v, grad_out), reference_grads(p, q, k, v, grad_out), 1e-4)
    lse = torch.full(q.shape[:3], float("nan"), device=q.device)
    out, lse = forward(plan, q, k, v, 0.25, out=torch.full_like(q, float("nan")), lse=lse)
    ref, ref_lse = attention_reference(p, q, k, v, 0.25)
    assert rel_err(out, ref) < 1e-4
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), finite)
    assert torch.allclose(lse.double()[finite], ref_lse[finite], atol=1e-4)


RESIDUE_CASES = [c for c in CASES if c[0] in ("stride7", "stride16-window", "dilated4-3", "heads")]


@pytest.mark.parametrize("hints", [dict(merged=True), dict(descriptors=True),
                                   dict(merged=True, descriptors=True)],
                         ids=["merged", "descriptors", "merged-descriptors"])
@pytest.mark.parametrize("name,heads,kv_heads,n_q,n_k", RESIDUE_CASES,
                         ids=[f"{c[0]}-h{c[1]}-kv{c[2]}-nq{c[3]}-nk{c[4]}" for c in RESIDUE_CASES])
def test_residue_terms_merged_and_strided_views(name, heads, kv_heads, n_q, n_k, hints):
    """Residue classes computed in the kernels (no gather vectors read): in the merged loop,
    and with their K/V (and dK/dV's Q/dO) tiles read as strided views by descriptors."""
    p = pattern(EXPRS[name])
    attn = compile(p, lowering="terms", block_m=16, block_n=16, num_warps=1, num_stages=1,
                   **hints)
    q, k, v = inputs(1, heads, n_q, n_k, 16, kv_heads=kv_heads)
    plan = attn.plan(q, k, v, 0.25)
    residue = [t for terms in plan.cases for t in terms if t.kind == "residue"]
    assert residue and all(t.gather_q == t.gather_k == 2 for t in residue)
    # the kernels take a tile's class from its first row: classes are padded to whole tiles
    assert all(t.residue[1] % 16 == 0 and t.residue[2] % 16 == 0 for t in residue)
    assert all(t.merged == hints.get("merged", False) for t in residue)
    grad_out = torch.randn_like(q)
    assert_close(grads(attn, q, k, v, grad_out), reference_grads(p, q, k, v, grad_out), 1e-4)
    out, _ = forward(plan, q, k, v, 0.25, out=torch.full_like(q, float("nan")))
    assert rel_err(out, attention_reference(p, q, k, v, 0.25)[0]) < 1e-4


def test_plan_terms_structured_kinds_run():
    """The forced plans above really use gathered terms (not one grid layout)."""
    q, k, v = inputs(1, 2, 64, 64, 16)
    kinds = {}
    for name in ("stride7", "tokens", "longformer"):
        plan = compile(pattern(EXPRS[name]), lowering="terms").plan(q, k, v, 0.25)
        kinds[name] = [t.kind for t in plan.cases[0]]
    assert kinds == {"stride7": ["residue"], "tokens": ["grid", "columns", "rows"],
                     "longformer": ["grid", "columns", "rows"]}


def test_plan_terms_key_padding_and_empty_rows():
    p = pattern(EXPRS["sinks"])
    attn = compile(p, lowering="terms")
    q, k, v = inputs(2, 2, 50, 70, 16)
    pad = torch.ones(2, 70, dtype=torch.bool)
    pad[0, :30] = False          # row 0's sinks and many window keys are padding
    pad[1, 60:] = False
    grad_out = torch.randn_like(q)
    got = grads(attn, q, k, v, grad_out, key_padding=pad)
    want = reference_grads(p, q, k, v, grad_out, key_padding=pad)
    assert_close(got, want, 1e-4)
    empty = ~(p.mask(50, 70)[None] & pad[:, None, :]).any(-1)  # [B, n_q] rows with no key
    assert bool(empty.any())
    out = got[0].detach().permute(0, 2, 1, 3)                   # [B, n_q, H, D]
    assert bool((out[empty] == 0).all())


def test_plan_grid_lowering_is_one_term():
    q, k, v = inputs(1, 1, 64, 64, 16)
    plan = compile(pattern(EXPRS["fixed"]), lowering="grid").plan(q, k, v, 0.25)
    assert [[t.kind for t in terms] for terms in plan.cases] == [["grid"]]
    with pytest.raises(ValueError, match="lowering"):
        compile(pattern(EXPRS["fixed"]), lowering="fast")


def test_plan_terms_opcheck_lse_gradient_and_determinism():
    """The custom op over a three-term plan: opcheck, the lse gradient (folded into Delta),
    identical gradients on a second run, non-contiguous inputs."""
    p = pattern(EXPRS["longformer"])
    attn = compile(p, lowering="terms")
    q, k, v = (t.requires_grad_(True) for t in inputs(1, 1, 10, 20, 16))
    torch.library.opcheck(torch.ops.spattn.attention.default, (q, k, v, None, 0.25, attn.op_id),
                          test_utils=("test_schema", "test_autograd_registration",
                                      "test_faketensor"))
    q, k, v = (t.detach().transpose(1, 2).contiguous().transpose(1, 2)
               for t in inputs(1, 2, 30, 30, 16))
    qs, ks, vs = (t.clone().requires_grad_(True) for t in (q, k, v))
    out, lse = attn.forward(qs, ks, vs)
    (out.square().sum() + lse.sum()).backward()
    qr, kr, vr = (t.double().requires_grad_(True) for t in (q, k, v))
    ref, ref_lse = attention_reference(p, qr, kr, vr)
    (ref.square().sum() + ref_lse.sum()).backward()
    for a, b in ((qs.grad, qr.grad), (ks.grad, kr.grad), (vs.grad, vr.grad)):
        assert rel_err(a, b) < 1e-4
    grad_out = torch.randn_like(q)
    first, second = grads(attn, q, k, v, grad_out), grads(attn, q, k, v, grad_out)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("hints", [{}, dict(merged=True), dict(descriptors=True)],
                         ids=["plain", "merged", "descriptors"])
def test_row_offsets_past_32_bits(tmp_path, hints):
    """Rows 2^27 elements apart (like a [batch, seq, heads, dim] model's tensors at ~512K
    tokens): row offsets pass 2^31 elements, where 32-bit pointer arithmetic wraps. The
    tensors are views of a sparse file, so only the rows read take memory."""
    n, d, gap = 24, 16, 2 ** 27
    path = tmp_path / "sparse.bin"
    size = (n - 1) * gap + 8 * d
    with open(path, "wb") as file:
        file.truncate(size * 4)
    storage = torch.from_file(str(path), shared=True, size=size, dtype=torch.float32)

    def view(slot):  # two heads side by side in each row, as in a model's layout
        t = storage.as_strided((1, 2, n, d), (0, d, gap, 1), storage_offset=2 * d * slot)
        t.copy_(torch.randn(1, 2, n, d))
        return t
    q, k, v, grad_out = (view(slot) for slot in range(4))
    p = pattern(EXPRS["heads"])
    attn = compile(p, lowering="terms", block_m=16, block_n=16, num_warps=1, num_stages=1,
                   **hints)
    kinds = {t.kind for terms in attn.plan(q, k, v, 0.25).cases for t in terms}
    assert kinds == {"grid", "columns", "rows", "residue"}
    for t in (q, k, v):
        t.requires_grad_(True)
    out = attn(q, k, v)
    out.backward(grad_out)
    got = out, q.grad, k.grad, v.grad
    dense = [t.detach().contiguous() for t in (q, k, v, grad_out)]
    assert_close(got, reference_grads(p, *dense), 1e-4)


def test_kernel_fuzz_cases():
    """A few cases of benchmarks/fuzz_kernels.py (random patterns, lowerings, tile hints and
    shapes; forward and gradients against the reference), which runs thousands."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "fuzz_kernels.py"
    spec = importlib.util.spec_from_file_location("fuzz_kernels", path)
    fuzz = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fuzz)
    for seed in range(8):
        text, errors = fuzz.case(seed)
        assert all(e < 1e-4 for e in errors), (text, errors)
