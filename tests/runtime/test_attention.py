"""Generated forward kernels against softmax attention in float64 under the reference mask.

Without a GPU they run under the Triton interpreter (fp32, small shapes). Outputs are
poisoned with NaN before each run; inputs are fresh random draws."""
import pytest
import torch

from spattn_dsl.codegen import attention_reference
from spattn_dsl.codegen.render import TileConfig
from spattn_dsl.ir import nodes as N
from spattn_dsl.runtime import compile
from spattn_dsl.runtime.launch import forward

from ..layout.patterns import pattern

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
KERNEL_PATTERNS = ["heads", "bigbird", "longformer", "fixed", "where-mod", "random3", "tokens",
                   "dilated4-3", "blocks5-causal", "none"]
SHAPES = [(63, 63), (40, 111), (32, 64)]


def rel_err(out, ref):
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    assert not torch.isnan(out).any(), "NaN in output (unwritten or 0/0)"
    return float((out - ref).norm() / ref.norm().clamp(min=1e-30))


def run_poisoned(attn, q, k, v, scale=None):
    """Run the kernel into NaN-filled outputs and return (out, lse)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    plan = attn.plan(q, k, v, scale)
    out = torch.full_like(q, float("nan"))
    lse = torch.full(q.shape[:3], float("nan"), device=q.device)
    return forward(plan, q, k, v, scale, out=out, lse=lse)


def inputs(batch, heads, n_q, n_k, head_dim, kv_heads=None, dtype=torch.float32, seed=None):
    gen = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % 2**31)
    kv_heads = kv_heads or heads
    q = torch.randn(batch, heads, n_q, head_dim, generator=gen, dtype=dtype)
    k = torch.randn(batch, kv_heads, n_k, head_dim, generator=gen, dtype=dtype)
    v = torch.randn(batch, kv_heads, n_k, head_dim, generator=gen, dtype=dtype)
    return q.to(DEVICE), k.to(DEVICE), v.to(DEVICE)


@pytest.mark.parametrize("name", KERNEL_PATTERNS)
@pytest.mark.parametrize("n_q,n_k", SHAPES, ids=[f"nq{a}-nk{b}" for a, b in SHAPES])
def test_forward_matches_reference(name, n_q, n_k):
    p = pattern(name)
    attn = compile(p, block_m=16, block_n=16, num_warps=1, num_stages=1)
    q, k, v = inputs(1, 3, n_q, n_k, 32)
    out, lse = run_poisoned(attn, q, k, v)
    ref, ref_lse = attention_reference(p, q.cpu(), k.cpu(), v.cpu())
    assert rel_err(out, ref) < 1e-5
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse.cpu()), finite)
    assert torch.allclose(lse.cpu().double()[finite], ref_lse[finite], atol=1e-4)


@pytest.mark.parametrize("name", ["window40", "band3-9", "causal", "blocks5-causal", "chunk10"])
@pytest.mark.parametrize("n_q,n_k", SHAPES, ids=[f"nq{a}-nk{b}" for a, b in SHAPES])
def test_merged_loop_matches_reference(name, n_q, n_k):
    p = pattern(name)
    attn = compile(p, block_m=16, block_n=16, num_warps=1, num_stages=1, merged=True)
    q, k, v = inputs(1, 2, n_q, n_k, 16)
    out, _ = run_poisoned(attn, q, k, v)
    assert attn.plan(q, k, v, 0.25).merged  # these layouts visit one range of tiles per row
    ref, _ = attention_reference(p, q.cpu(), k.cpu(), v.cpu())
    assert rel_err(out, ref) < 1e-5


def test_rows_without_keys_are_zero():
    p = pattern(N.Intersect(N.Causal(), N.Global(N.Num(5))))  # rows q >= 5 see keys 0..4 only
    p_empty = pattern(N.Difference(N.Window(N.Num(3)), N.Prefix(N.Num(30))))
    for pat in (p, p_empty):
        attn = compile(pat, block_m=16, block_n=16, num_warps=1, num_stages=1)
        q, k, v = inputs(1, 2, 50, 50, 16)
        out, lse = run_poisoned(attn, q, k, v)
        ref, _ = attention_reference(pat, q.cpu(), k.cpu(), v.cpu())
        assert rel_err(out, ref) < 1e-5
    assert bool((out[:, :, :27] == 0).all())  # rows 0..26 only see keys inside the prefix
    assert bool(torch.isinf(lse[:, :, :27]).all())


@pytest.mark.parametrize("head_dim", [16, 24, 80])
def test_head_dims_including_padded(head_dim):
    p = pattern("longformer")
    attn = compile(p, block_m=16, block_n=32, num_warps=1, num_stages=1)
    q, k, v = inputs(2, 2, 37, 37, head_dim)
    out, _ = run_poisoned(attn, q, k, v, scale=0.3)
    ref, _ = attention_reference(p, q.cpu(), k.cpu(), v.cpu(), scale=0.3)
    assert rel_err(out, ref) < 1e-5


def test_grouped_query_heads_and_default_compile():
    p = pattern("heads")
    attn = compile(p)  # no hints: one config under the interpreter, autotuned on a GPU
    q, k, v = inputs(1, 4, 45, 70, 32, kv_heads=2)
    out = attn(q, k, v)
    ref, _ = attention_reference(p, q.cpu(), k.cpu(), v.cpu())
    assert rel_err(out, ref) < (1e-5 if DEVICE == "cpu" else 5e-3)


def test_half_inputs_keep_their_dtype():
    p = pattern("window5")
    attn = compile(p)
    q, k, v = inputs(1, 1, 20, 20, 16, dtype=torch.float16)
    out = attn(q, k, v)
    assert out.dtype == torch.float16
    ref, _ = attention_reference(p, q.cpu(), k.cpu(), v.cpu())
    assert rel_err(out, ref) < 2e-3


def test_reference_fallback_warns_without_interpreter(monkeypatch):
    import spattn_dsl.runtime.attention as attention

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(attention, "_WARNED", set())
    p = pattern("causal")
    q, k, v = (t.cpu() for t in inputs(1, 1, 9, 9, 16))
    with pytest.warns(UserWarning, match="reference"):
        out = compile(p)(q, k, v)
    assert rel_err(out, attention_reference(p, q, k, v)[0]) < 1e-5


@pytest.mark.parametrize("case", ["dims", "dtype", "mixed-dtype", "device", "kv-shape", "batch",
                                  "head-dim-small", "head-dim-large", "heads", "n_q>n_k",
                                  "not-tensor", "scale"])
def test_clear_errors(case):
    attn = compile(pattern("causal"))
    q, k, v = (torch.randn(1, 2, 8, 16) for _ in range(3))
    args = {
        "dims": (q[0], k, v), "dtype": (q.double(), k.double(), v.double()),
        "mixed-dtype": (q, k.half(), v), "device": (q.to("meta"), k.to("meta"), v.to("meta")),
        "kv-shape": (q, k, v[:, :, :4]), "batch": (q, k.expand(2, 2, 8, 16), v.expand(2, 2, 8, 16)),
        "head-dim-small": (q[..., :0], k[..., :0], v[..., :0]),  # 1 to 15: padded (test_head_dims)
        "head-dim-large": (torch.randn(1, 1, 4, 272),) * 3,
        "heads": (torch.randn(1, 3, 8, 16), k, v), "n_q>n_k": (torch.randn(1, 2, 9, 16), k, v),
        "not-tensor": (q.numpy(), k, v), "scale": (q, k, v),
    }[case]
    error = TypeError if case in ("dtype", "mixed-dtype", "not-tensor") else ValueError
    with pytest.raises(error) as info:
        attn(*args, scale=-1.0) if case == "scale" else attn(*args)
    assert len(str(info.value)) > 20


def test_compile_rejects_non_patterns():
    with pytest.raises(TypeError, match="Pattern"):
        compile("causal")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["heads", "bigbird", "longformer", "fixed", "random3"])
def test_gpu_half_precision(name, dtype):
    p = pattern(name)
    attn = compile(p, block_m=64, block_n=64, num_warps=4, num_stages=3)
    q, k, v = inputs(2, 4, 1000, 1111, 64, dtype=dtype)
    out, _ = run_poisoned(attn, q, k, v)
    ref, _ = attention_reference(p, q, k, v)
    assert rel_err(out, ref) < 1e-2


LIST_CASES = [("bigbird", 40, 111), ("bigbird", 100, 100), ("longformer", 63, 63),
              ("longformer", 97, 130), ("tokens", 32, 64), ("random3", 97, 130)]


@pytest.mark.parametrize("name,n_q,n_k", LIST_CASES, ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in LIST_CASES])
def test_merged_loop_over_tile_lists_matches_reference(name, n_q, n_k):
    """Rows that are not one range of tiles: one loop over the FULL, then the PARTIAL list."""
    p = pattern(name)
    attn = compile(p, block_m=16, block_n=16, num_warps=1, num_stages=1, merged=True,
                   lowering="grid")
    q, k, v = inputs(1, 2, n_q, n_k, 16)
    out, lse = run_poisoned(attn, q, k, v)
    terms = [t for terms in attn.plan(q, k, v, 0.25).cases for t in terms]
    assert all(t.merged for t in terms) and not all(t.visit_range for t in terms)
    ref, ref_lse = attention_reference(p, q.cpu(), k.cpu(), v.cpu())
    assert rel_err(out, ref) < 1e-5
    finite = torch.isfinite(ref_lse)
    assert torch.allclose(lse.cpu().double()[finite], ref_lse[finite], atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("block_m,block_n,warps", [(64, 64, 4), (128, 64, 8), (128, 128, 8)])
def test_gpu_merged_loop(block_m, block_n, warps):
    p = pattern(N.Intersect(N.Causal(), N.Window(N.Num(300))))
    attn = compile(p, block_m=block_m, block_n=block_n, num_warps=warps, num_stages=3, merged=True)
    q, k, v = inputs(2, 4, 1000, 1111, 128, dtype=torch.bfloat16)
    out, _ = run_poisoned(attn, q, k, v)
    assert attn.plan(q, k, v, 1.0).merged
    ref, _ = attention_reference(p, q, k, v)
    assert rel_err(out, ref) < 1e-2


def test_strided_inputs_in_sequence_major_layout():
    """Tensors viewed from [batch, seq, heads, dim] (as Hugging Face models hold them)."""
    p = pattern("longformer")
    attn = compile(p, block_m=16, block_n=16, num_warps=1, num_stages=1)
    q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in inputs(2, 3, 33, 40, 16))
    assert not q.is_contiguous()
    out, _ = run_poisoned(attn, q, k, v)
    ref, _ = attention_reference(p, q.cpu(), k.cpu(), v.cpu())
    assert rel_err(out, ref) < 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_autotune_result_persists(monkeypatch):
    import triton.testing

    from spattn_dsl.runtime import cache
    from spattn_dsl.runtime.autotune import TUNING_FILE, tuning_key

    p = pattern("window40")
    q, k, v = inputs(2, 4, 2048, 2048, 64, dtype=torch.bfloat16)  # large enough to be tuned
    q.requires_grad_(True)
    compile(p)(q, k, v).sum().backward()
    entry = cache.load_json(TUNING_FILE)[tuning_key(p, q, k)]
    assert len(entry["timings"]) >= 2
    backward_entry = cache.load_json(TUNING_FILE)["backward|" + tuning_key(p, q, k)]
    assert len(backward_entry["dq_timings"]) >= 2 and len(backward_entry["dkdv_timings"]) >= 2
    again = compile(p)

    def no_timing(*args, **kwargs):
        raise AssertionError("tuned again although the tuning file has this problem")

    monkeypatch.setattr(triton.testing, "do_bench", no_timing)
    plan = again.plan(q, k, v, 0.125)  # read from the tuning file, not re-timed
    assert [plan.config.block_m, plan.config.block_n] == entry["config"][:2]
    dq_plan, dkdv_plan = again.backward_plans(q, k, v, 0.125)
    assert [dkdv_plan.config.block_m, dkdv_plan.config.block_n] == backward_entry["dkdv"][:2]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_small_problems_are_not_tuned(monkeypatch):
    import triton.testing

    def no_timing(*args, **kwargs):
        raise AssertionError("a small problem was autotuned")

    monkeypatch.setattr(triton.testing, "do_bench", no_timing)
    q, k, v = inputs(8, 4, 128, 128, 16, dtype=torch.bfloat16)
    q.requires_grad_(True)
    compile(pattern("window40"))(q, k, v).sum().backward()


@pytest.mark.parametrize("hints", [dict(merged=True), dict(descriptors=True),
                                   dict(merged=True, descriptors=True)])
def test_a_loop_flag_alone_fixes_the_configuration(hints):
    """``merged`` or ``descriptors`` without tile sizes is not dropped: it fixes the default
    tiles with that flag, and the forward's terms use it."""
    p = pattern("window40")
    attn = compile(p, **hints)
    assert attn.forced == TileConfig(64, 64, 4, 2, **hints)
    q, k, v = inputs(1, 2, 150, 150, 16)
    assert attn.plan(q, k, v, 0.25).merged == hints.get("merged", False)
    out, _ = run_poisoned(attn, q, k, v)
    ref, _ = attention_reference(p, q.cpu(), k.cpu(), v.cpu())
    assert rel_err(out, ref) < 1e-5
