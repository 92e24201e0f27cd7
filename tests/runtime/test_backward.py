"""Generated backward kernels (through the custom op) against float64 autograd through the
reference masked attention; the op under opcheck and torch.compile; key padding.

Without a GPU the kernels run under the Triton interpreter (fp32, small shapes); inputs and
output gradients are fresh random draws."""
import dataclasses
from pathlib import Path

import pytest
import torch

from spattn_dsl import load
from spattn_dsl.codegen import attention_reference
from spattn_dsl.codegen.reference import attention_reference_backward
from spattn_dsl.ir import nodes as N
from spattn_dsl.runtime import compile, launch

from ..layout.patterns import pattern
from .test_attention import DEVICE, inputs, rel_err

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.spattn"))


def grads(attn, q, k, v, grad_out, **kwargs):
    """(out, dq, dk, dv) of the compiled attention for the output gradient ``grad_out``."""
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    out = attn(q, k, v, **kwargs)
    out.backward(grad_out)
    return out, q.grad, k.grad, v.grad


def reference_grads(p, q, k, v, grad_out, **kwargs):
    """The same in float64 autograd through ``attention_reference`` (the oracle)."""
    q, k, v = (t.detach().cpu().double().requires_grad_(True) for t in (q, k, v))
    out, _ = attention_reference(p, q, k, v, **kwargs)
    out.backward(grad_out.cpu().double())
    return out, q.grad, k.grad, v.grad


def assert_close(got, want, tol):
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
        assert rel_err(a, b) < tol, name


CASES = [  # pattern, batch, heads, kv heads, n_q, n_k, head_dim
    ("longformer", 1, 2, 2, 63, 63, 16),
    ("heads", 2, 4, 2, 40, 111, 32),      # two head cases, GQA, n_q < n_k, ragged
    ("bigbird", 1, 2, 1, 33, 70, 16),     # random links, multi-query
    ("fixed", 1, 2, 2, 50, 50, 24),       # padded head_dim
    ("where-mod", 1, 1, 1, 37, 37, 16),
    ("blocks5-causal", 1, 2, 2, 5, 45, 16),  # decoding-like: a few queries
]


@pytest.mark.parametrize("name,batch,heads,kv_heads,n_q,n_k,head_dim", CASES,
                         ids=[c[0] for c in CASES])
def test_gradients_match_float64_autograd(name, batch, heads, kv_heads, n_q, n_k, head_dim):
    p = pattern(name)
    attn = compile(p, block_m=16, block_n=16, num_warps=1, num_stages=1)
    q, k, v = inputs(batch, heads, n_q, n_k, head_dim, kv_heads=kv_heads)
    grad_out = torch.randn_like(q)
    assert_close(grads(attn, q, k, v, grad_out), reference_grads(p, q, k, v, grad_out), 1e-4)


def test_rows_without_keys_get_zero_gradient():
    p = pattern(N.Difference(N.Window(N.Num(3)), N.Prefix(N.Num(30))))  # rows < 27 see nothing
    attn = compile(p, block_m=16, block_n=16, num_warps=1, num_stages=1)
    q, k, v = inputs(1, 2, 50, 50, 16)
    grad_out = torch.randn_like(q)
    got = grads(attn, q, k, v, grad_out)
    assert_close(got, reference_grads(p, q, k, v, grad_out), 1e-4)
    assert bool((got[1][:, :, :27] == 0).all())


def test_key_padding_forward_and_backward():
    p = pattern("longformer")
    attn = compile(p, block_m=16, block_n=16, num_warps=1, num_stages=1)
    q, k, v = inputs(3, 2, 40, 40, 16)
    padding = torch.rand(3, 40, generator=torch.Generator().manual_seed(0)) > 0.3
    padding[1, :] = False                                 # a sequence of padding only
    padding[2, :12] = False                               # left padding
    padding = padding.to(DEVICE)
    grad_out = torch.randn_like(q)
    got = grads(attn, q, k, v, grad_out, key_padding=padding)
    assert_close(got, reference_grads(p, q, k, v, grad_out, key_padding=padding.cpu()), 1e-4)
    assert bool((got[0][1] == 0).all()) and bool((got[2][1] == 0).all())


def test_lse_gradient():
    p = pattern("longformer")  # every row sees a key, so the reference lse is differentiable
    attn = compile(p, block_m=16, block_n=16, num_warps=1, num_stages=1)
    q, k, v = inputs(1, 2, 30, 30, 16)
    qs, ks, vs = (t.clone().requires_grad_(True) for t in (q, k, v))
    out, lse = attn.forward(qs, ks, vs)
    (out.square().sum() + lse.sum()).backward()
    qr, kr, vr = (t.cpu().double().requires_grad_(True) for t in (q, k, v))
    ref, ref_lse = attention_reference(p, qr, kr, vr)
    (ref.square().sum() + ref_lse.sum()).backward()
    for a, b in ((qs.grad, qr.grad), (ks.grad, kr.grad), (vs.grad, vr.grad)):
        assert rel_err(a, b) < 1e-4


def test_backward_is_deterministic():
    attn = compile(pattern("heads"), block_m=16, block_n=16, num_warps=1, num_stages=1)
    q, k, v = inputs(1, 4, 40, 40, 16, kv_heads=1)
    grad_out = torch.randn_like(q)
    first, second = grads(attn, q, k, v, grad_out), grads(attn, q, k, v, grad_out)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_non_contiguous_inputs_and_output_gradient():
    """Tensors viewed from [batch, seq, heads, dim], as Hugging Face models hold them."""
    p = pattern("fixed")
    attn = compile(p, block_m=16, block_n=16, num_warps=1, num_stages=1)
    q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in inputs(2, 2, 33, 33, 16))
    grad_out = torch.randn(2, 33, 2, 16).to(DEVICE).transpose(1, 2)
    assert not q.is_contiguous() and not grad_out.is_contiguous()
    assert_close(grads(attn, q, k, v, grad_out), reference_grads(p, q, k, v, grad_out), 1e-4)


def test_reference_backward_matches_autograd_without_interpreter(monkeypatch):
    from spattn_dsl.runtime import attention
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(attention, "_WARNED", set())  # the one-time warning, even if given
    p = pattern("heads")
    q, k, v = (t.cpu() for t in inputs(2, 4, 20, 30, 16, kv_heads=2))
    grad_out = torch.randn_like(q)
    with pytest.warns(UserWarning, match="reference"):
        got = grads(compile(p), q, k, v, grad_out)
    assert_close(got, reference_grads(p, q, k, v, grad_out), 1e-5)
    closed = attention_reference_backward(p, grad_out, q, k, v, dtype=torch.float64)
    assert_close(got[:1] + closed, reference_grads(p, q, k, v, grad_out), 1e-5)


def test_opcheck():
    attn = compile(pattern("bigbird"), block_m=16, block_n=16, num_warps=1, num_stages=1)
    q, k, v = (t.requires_grad_(True) for t in inputs(1, 2, 20, 36, 16, kv_heads=1))
    padding = (torch.arange(36) >= 4)[None].to(DEVICE)
    for key_padding in (None, padding):
        torch.library.opcheck(torch.ops.spattn.attention.default,
                              (q, k, v, key_padding, 0.25, attn.op_id))


def test_eager_path_gives_the_custom_ops_values_and_gradients():
    """A call in eager mode skips the custom op's dispatch (``op.apply``); the values and
    gradients, of out and of lse alone, are the op's, bit for bit."""
    attn = compile(pattern("heads"), block_m=16, block_n=16, num_warps=1, num_stages=1)
    q, k, v = (t.requires_grad_(True) for t in inputs(1, 4, 30, 41, 16, kv_heads=2))
    grad_out = torch.randn_like(q)
    eager = attn.forward(q, k, v, 0.25)
    op = torch.ops.spattn.attention(q, k, v, None, 0.25, attn.op_id)
    assert all(torch.equal(a, b) for a, b in zip(eager, op))
    for loss in (lambda out, lse: (out * grad_out).sum(), lambda out, lse: lse.sum()):
        got = torch.autograd.grad(loss(*eager), (q, k, v), retain_graph=True)
        want = torch.autograd.grad(loss(*op), (q, k, v), retain_graph=True)
        assert all(torch.equal(a, b) for a, b in zip(got, want))
    with torch.no_grad():
        assert torch.equal(attn(q, k, v, 0.25), op[0])


def test_torch_compile_matches_eager():
    torch._dynamo.reset()
    p = pattern("longformer")
    attn = compile(p, block_m=16, block_n=16, num_warps=1, num_stages=1)

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(16, 48)

        def forward(self, x):
            q, k, v = self.proj(x).unflatten(-1, (3, 1, 16)).permute(2, 0, 3, 1, 4)
            return attn(q, k, v).sum(1)

    torch.manual_seed(0)
    block = Block().to(DEVICE)
    x = torch.randn(2, 30, 16, device=DEVICE)
    eager = block(x)
    eager.square().sum().backward()
    eager_grad = block.proj.weight.grad.clone()
    block.zero_grad()
    try:
        compiled = torch.compile(block)(x)  # inductor
    except (torch._dynamo.exc.BackendCompilerFailed, torch._inductor.exc.InductorError) as error:
        # inductor on a CPU needs a working C++ toolchain for the code around the op; where
        # the machine has none, aot_eager still traces the op through its fake and autograd
        if DEVICE == "cuda" or "C++" not in str(error):
            raise
        torch._dynamo.reset()
        compiled = torch.compile(block, backend="aot_eager")(x)
    compiled.square().sum().backward()
    assert torch.allclose(compiled, eager, atol=1e-5)
    assert torch.allclose(block.proj.weight.grad, eager_grad, atol=1e-4)


def _example_patterns():
    for path in EXAMPLES:
        for name in load(path).patterns:
            dynamic = load(path).pattern(name).dynamic
            marks = [pytest.mark.skip(reason="dynamic kernels not landed yet (issue 27 item 3)")] \
                if dynamic else []
            yield pytest.param(path, name, id=f"{path.stem}-{name}", marks=marks)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("path,name", list(_example_patterns()))
def test_gpu_bf16_gradients_of_every_example(path, name):
    p = load(path).pattern(name)
    attn = compile(p)
    q, k, v = inputs(2, 4, 1000, 1111, 64, kv_heads=2, dtype=torch.bfloat16)
    grad_out = torch.randn_like(q)
    got = grads(attn, q, k, v, grad_out)
    want = reference_grads(p, q, k, v, grad_out)
    assert_close(got, want, 1e-2)


@pytest.mark.parametrize("batch,heads,n_q,n_k", [(64, 1, 9, 9), (3, 2, 1, 40)],
                         ids=["batch64", "decode1"])
def test_large_batch_and_single_query_decoding(batch, heads, n_q, n_k):
    p = pattern("fixed")
    attn = compile(p, block_m=16, block_n=16, num_warps=1, num_stages=1)
    q, k, v = inputs(batch, heads, n_q, n_k, 16, kv_heads=1)
    grad_out = torch.randn_like(q)
    assert_close(grads(attn, q, k, v, grad_out), reference_grads(p, q, k, v, grad_out), 1e-4)


DESCRIPTOR_CASES = [  # pattern, batch, heads, kv heads, n_q, n_k, head_dim, merged
    ("longformer", 1, 2, 2, 63, 63, 16, False),
    ("window40", 1, 2, 2, 63, 63, 16, True),      # the one-loop kernel
    ("heads", 2, 4, 2, 40, 111, 32, False),       # two head cases, GQA, n_q < n_k
    ("bigbird", 1, 2, 1, 33, 70, 16, False),      # random links, multi-query
    ("dilated4-3", 1, 2, 2, 50, 50, 16, False),   # residue classes: strided views
]


@pytest.mark.parametrize("name,batch,heads,kv_heads,n_q,n_k,head_dim,merged", DESCRIPTOR_CASES,
                         ids=[c[0] for c in DESCRIPTOR_CASES])
def test_tensor_descriptor_loads_match_float64(name, batch, heads, kv_heads, n_q, n_k, head_dim,
                                               merged, monkeypatch):
    """Tiles read by tensor descriptors (rows past n read as zeros) give the reference's values
    and gradients on ragged lengths; every kernel without a gather vector to read uses them."""
    used = []
    real = launch._descriptors

    def spy(config, gather, *tensors, shift=0):
        in_step = gather == 0 or (gather == 2 and shift == 0)  # a residue class: a strided view
        used.append((in_step, real(config, gather, *tensors, shift=shift)))
        return used[-1][1]
    monkeypatch.setattr(launch, "_descriptors", spy)
    p = pattern(name)
    attn = compile(p, block_m=16, block_n=16, num_warps=1, num_stages=1, merged=merged,
                   descriptors=True)
    q, k, v = inputs(batch, heads, n_q, n_k, head_dim, kv_heads=kv_heads)
    grad_out = torch.randn_like(q)
    assert_close(grads(attn, q, k, v, grad_out), reference_grads(p, q, k, v, grad_out), 1e-4)
    assert len(used) >= 3 and all(ungathered == on for ungathered, on in used)


def test_tensor_descriptors_only_for_tensors_a_bulk_copy_reads():
    config = compile(pattern("causal"), block_m=16, descriptors=True).forced
    q, k, v = inputs(1, 2, 40, 40, 16)
    assert launch._descriptors(config, 0, k, v)
    assert not launch._descriptors(config, 1, k, v)                          # a gather vector
    assert launch._descriptors(config, 2, k, v)                              # residue classes
    assert not launch._descriptors(config, 2, q, q, shift=3)                 # rows out of step
    assert not launch._descriptors(dataclasses.replace(config, descriptors=False), 0, k, v)
    assert not launch._descriptors(config, 0, k[..., :12], v[..., :12])     # head_dim 12
    assert not launch._descriptors(config, 0, k.transpose(2, 3), v)          # last stride not 1
    odd = torch.randn(1, 2, 40, 17)[..., 1:]                                 # rows 68 bytes apart
    assert not launch._descriptors(config, 0, odd, odd)
    shifted = torch.randn(2 * 40 * 16 + 1)[1:].view(1, 2, 40, 16)           # base 4 bytes off
    assert not launch._descriptors(config, 0, shifted, shifted)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("block_m,block_n,warps,stages,merged", [
    (64, 64, 4, 3, True), (64, 64, 4, 3, False), (128, 64, 8, 2, False)])
@pytest.mark.parametrize("name", ["window40", "bigbird", "heads", "dilated4-3"])
def test_gpu_bf16_tensor_descriptors(name, block_m, block_n, warps, stages, merged, monkeypatch):
    """Bulk tensor copies on Hopper, ragged lengths, bf16: values and gradients (tiles whose
    dK/dV kernel fits in shared memory)."""
    used = []
    real = launch._descriptors
    monkeypatch.setattr(launch, "_descriptors",
                        lambda *a, **kw: used.append(real(*a, **kw)) or used[-1])
    p = pattern(name)
    attn = compile(p, block_m=block_m, block_n=block_n, num_warps=warps, num_stages=stages,
                   merged=merged, descriptors=True)
    q, k, v = inputs(2, 4, 1000, 1111, 128, kv_heads=2, dtype=torch.bfloat16)
    grad_out = torch.randn_like(q)
    assert_close(grads(attn, q, k, v, grad_out), reference_grads(p, q, k, v, grad_out), 1e-2)
    if torch.cuda.get_device_capability()[0] >= 9:
        assert any(used)
