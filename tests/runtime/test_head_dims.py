"""Small and odd head dimensions (issue 26, item 4): below 16 the op pads q, k and v with zero
columns (the kernels' smallest dim) and slices the output; other dims up to 256 go to the
kernels as they are (``HEAD_DIM_PAD``). The scale stays ``head_dim ** -0.5`` of the caller's dim.

Each case runs the Triton kernels under the interpreter (conftest) and the CPU path, forward
and backward, against float64 attention with autograd."""
import warnings

import pytest
import torch

import spattn_dsl as spattn
from spattn_dsl.codegen.reference import attention_reference
from spattn_dsl.runtime import attention as attention_module

PATTERN = spattn.loads("pattern p { causal & (window(5) | sink(2)) }").pattern("p")


def _inputs(head_dim, n_q=19, n_k=21, heads=2, kv_heads=1, seed=0):
    gen = torch.Generator().manual_seed(seed + head_dim)
    q = torch.randn(1, heads, n_q, head_dim, generator=gen)
    k, v = (torch.randn(1, kv_heads, n_k, head_dim, generator=gen) for _ in range(2))
    grad = torch.randn(1, heads, n_q, head_dim, generator=gen)
    return q, k, v, grad


def _check(attn, head_dim, scale=None):
    q, k, v, grad = _inputs(head_dim)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = attn(*leaves, scale=scale)
    assert out.shape == q.shape and out.dtype == torch.float32
    out.backward(grad)
    wide = [t.double().requires_grad_() for t in (q, k, v)]
    ref, _ = attention_reference(PATTERN, *wide, scale=scale)  # scale None: head_dim ** -0.5
    ref.backward(grad.double())
    for got, want in zip([out] + [t.grad for t in leaves], [ref] + [t.grad for t in wide]):
        assert got.shape == want.shape
        assert torch.allclose(got.double(), want, atol=2e-5, rtol=1e-4), \
            float((got.double() - want).abs().max())


@pytest.mark.parametrize("head_dim", [1, 4, 8, 12, 20, 100])
def test_kernels_take_small_and_odd_head_dims_forward_and_backward(head_dim):
    _check(spattn.compile(PATTERN), head_dim)


@pytest.mark.parametrize("head_dim", [1, 8])
def test_cpu_path_takes_small_head_dims(head_dim, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the tiled reference in PyTorch
    monkeypatch.setattr(attention_module, "_WARNED", set())  # leave the one-time warning
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _check(spattn.compile(PATTERN), head_dim)


def test_padding_keeps_an_explicit_scale():
    _check(spattn.compile(PATTERN), 8, scale=0.7)


def test_head_dims_outside_one_to_256_are_refused():
    attn = spattn.compile(PATTERN)
    q = torch.randn(1, 1, 4, 257)
    with pytest.raises(ValueError, match="head_dim must be between 1 and 256, got 257"):
        attn(q, q, q)


def test_hugging_face_model_with_head_dim_8():
    transformers = pytest.importorskip("transformers")
    from spattn_dsl import hf

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=48,
                                      num_hidden_layers=1, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=64)
    model = transformers.LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 61, (1, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model(ids, use_cache=False).logits
        model.set_attn_implementation(hf.register("spattn_test_head_dim_8", "causal"))
        got = model(ids, use_cache=False).logits
    assert model.model.layers[0].self_attn.head_dim == 8
    assert torch.allclose(got, reference, atol=1e-4)
