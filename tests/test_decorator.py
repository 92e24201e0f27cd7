"""``sparse_attention``: the decorated function runs spattn, checked against the reference
attention under ``Pattern.mask`` (float64), on ragged lengths, GQA and per-layer models."""
import math

import pytest
import torch

import spattn_dsl
from spattn_dsl import sparse_attention

EXAMPLES = "examples/longformer.spattn"


def reference(pattern, q, k, v, scale=None):
    """Softmax attention under the reference mask in float64; rows without keys give 0."""
    q, k, v = (t.double() for t in (q, k, v))
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    masks = torch.stack([pattern.mask(q.shape[2], k.shape[2], head=h) for h in range(q.shape[1])])
    scores = (q @ k.transpose(-1, -2) * scale).masked_fill(~masks, -math.inf)
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return weights @ v


def inputs(b=2, h=4, h_kv=None, n_q=37, n_k=37, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, n_q, d, generator=g)
    k = torch.randn(b, h_kv or h, n_k, d, generator=g)
    v = torch.randn(b, h_kv or h, n_k, d, generator=g)
    return q, k, v


def close(a, b):
    return (a.double() - b).norm() <= 1e-5 * b.norm()


def test_function_keeps_its_name_and_docstring_and_runs_the_pattern():
    @sparse_attention("causal & window(5) | global(first = 2)")
    def attention(q, k, v, dropout=0.0):
        """My attention."""
        raise AssertionError("replaced by spattn")

    assert attention.__name__ == "attention" and attention.__doc__ == "My attention."
    q, k, v = inputs(n_q=7, n_k=41)
    pattern = attention.spattn.pattern(None)
    assert close(attention(q, k, v, dropout=0.1), reference(pattern, q, k, v))
    assert close(attention(q, k, v, scale=0.3), reference(pattern, q, k, v, scale=0.3))


@pytest.mark.parametrize("spec", [f"{EXAMPLES}:longformer", "pattern_object"])
def test_pattern_from_file_reference_or_object(spec):
    pattern = spattn_dsl.load(EXAMPLES).pattern("longformer", half=4)
    if spec == "pattern_object":
        spec = pattern
    else:
        pattern = spattn_dsl.load(EXAMPLES).pattern("longformer")
    attention = sparse_attention(spec)(lambda q, k, v: None)
    q, k, v = inputs(h=4, h_kv=2, n_q=63, n_k=63)  # grouped-query attention
    assert close(attention(q, k, v), reference(pattern, q, k, v))


def test_a_model_gives_each_module_its_layer_pattern():
    program = spattn_dsl.loads("model m { layers 1: causal & window(3); layers 1: causal }")
    model = program.model("m")

    class Attention(torch.nn.Module):
        def __init__(self, layer_idx):
            super().__init__()
            self.layer_idx = layer_idx

        @sparse_attention(model)
        def forward(self, q, k, v):
            raise AssertionError("replaced by spattn")

    q, k, v = inputs(n_q=19, n_k=19)
    for layer in range(2):
        assert close(Attention(layer)(q, k, v), reference(model.layers[layer], q, k, v))
    assert close(Attention(None)(q, k, v, layer_idx=1), reference(model.layers[1], q, k, v))
    with pytest.raises(ValueError, match="pass layer_idx"):
        Attention(None)(q, k, v)
    with pytest.raises(ValueError, match="layer 2 is outside model 'm'"):
        Attention(2)(q, k, v)


def test_gradients_flow_through_the_decorated_function():
    attention = sparse_attention("causal & window(4)")(lambda q, k, v: None)
    q, k, v = (t.requires_grad_(True) for t in inputs(n_q=11, n_k=11))
    attention(q, k, v).sum().backward()
    q2, k2, v2 = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    pattern = attention.spattn.pattern(None)
    reference(pattern, q2, k2, v2).sum().backward()
    for got, want in ((q.grad, q2.grad), (k.grad, k2.grad), (v.grad, v2.grad)):
        assert (got.double() - want).norm() <= 1e-4 * want.norm()


def test_bad_pattern_text_is_a_located_error():
    with pytest.raises(spattn_dsl.PatternError, match="wndow"):
        sparse_attention("causal & wndow(3)")
