"""Greedy generate() with spattn's KV cache (hf.cache) against the default full cache."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

import spattn_dsl  # noqa: E402
from spattn_dsl import hf  # noqa: E402

SIZES = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=16,
             max_position_embeddings=128, attention_dropout=0.0)


def test_windowed_llama_generates_the_same_tokens_with_flat_cache_memory():
    """A Model: each layer's cache follows its own pattern (a window; sinks and a window)."""
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SIZES)).eval()
    program = spattn_dsl.loads("model m { layers 1: causal & window(6); "
                               "layers 1: causal & (sink(2) | window(6)) }")
    model.set_attn_implementation(hf.register("spattn_test_decode_window", program.model("m")))
    ids = torch.randint(0, SIZES["vocab_size"], (1, 20), generator=torch.Generator().manual_seed(1))
    kwargs = dict(attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=0)
    new = 14  # more steps than the window
    full = model.generate(ids, max_new_tokens=new, **kwargs)  # transformers' dynamic cache
    spattn_cache = hf.cache(model, page_size=16)
    tokens = model.generate(ids, max_new_tokens=new, past_key_values=spattn_cache, **kwargs)
    assert torch.equal(tokens, full)
    window, sinks = (layer.cache for layer in spattn_cache.layers)
    for cache in (window, sinks):  # 33 positions appended: pages 0, 1 and 2
        assert int(cache.length[0]) == 20 + new - 1
    assert window._logical[0] == [1, 2] and window.capacity == 2  # page 0's memory reused
    assert sinks._logical[0] == [0, 1, 2]  # page 0 holds the sinks


def test_cache_needs_a_registered_model():
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SIZES))
    with pytest.raises(ValueError, match="not one registered"):
        hf.cache(model)
