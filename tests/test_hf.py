"""The Hugging Face backend against transformers' own sdpa attention on tiny random models.

The kernels run under the Triton interpreter in fp32; sdpa runs in fp32 on the CPU. Both sides
compute the same softmax attention, so logits agree to float32 rounding: we allow 1e-4 absolute
(logits are O(1)), and greedy decoding must give identical tokens.
"""
import pytest
import torch

transformers = pytest.importorskip("transformers")

import spattn_dsl  # noqa: E402
from spattn_dsl import hf  # noqa: E402

ATOL = 1e-4
SIZES = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
             attention_dropout=0.0)


def tiny(config_class, model_class, seed=0, **overrides):
    torch.manual_seed(seed)
    config = config_class(**{**SIZES, **overrides})
    return model_class(config).eval()


def llama(**overrides):
    return tiny(transformers.LlamaConfig, transformers.LlamaForCausalLM, **overrides)


def twin(model, config_changes=None):
    """The same weights under another config (e.g. without the sliding-window cache)."""
    config = model.config.__class__(**{**model.config.to_dict(), **(config_changes or {})})
    copy = model.__class__(config).eval()
    copy.load_state_dict(model.state_dict())
    return copy


def greedy(model, ids, new_tokens):
    return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                          do_sample=False, pad_token_id=0)


def logits(model, ids, **kwargs):
    with torch.no_grad():
        return model(ids, use_cache=False, **kwargs).logits


@pytest.fixture
def ids():
    return torch.randint(0, SIZES["vocab_size"], (2, 23), generator=torch.Generator().manual_seed(1))


def test_dense_causal_llama_matches_sdpa_logits_and_greedy_decode(ids):
    model = llama()
    reference_logits = logits(model, ids)
    reference_tokens = greedy(model, ids, 5)
    model.set_attn_implementation(hf.register("spattn_test_causal", "causal"))
    assert torch.allclose(logits(model, ids), reference_logits, atol=ATOL)
    assert torch.equal(greedy(model, ids, 5), reference_tokens)


def test_llama_with_a_sparse_pattern_matches_sdpa_given_the_dense_mask(ids):
    pattern = spattn_dsl.loads("pattern p { causal & (window(5) | sink(2) | stride(7)) }").pattern("p")
    model = llama()
    dense_mask = pattern.mask(ids.shape[1])[None, None].expand(ids.shape[0], 1, -1, -1)
    reference = logits(model, ids, attention_mask=dense_mask)
    assert not torch.allclose(reference, logits(model, ids), atol=1e-2)  # the pattern matters
    model.set_attn_implementation(hf.register("spattn_test_sparse", pattern))
    assert torch.allclose(logits(model, ids), reference, atol=ATOL)


def test_mistral_sliding_window_matches_spattn_window(ids):
    """Mistral's sliding_window = w lets a token see the w most recent keys, itself included
    (transformers' sliding_window_overlay: q - w < k <= q): spattn's ``causal & window(w)``."""
    model = tiny(transformers.MistralConfig, transformers.MistralForCausalLM, sliding_window=6)
    reference_logits = logits(model, ids)
    reference_tokens = greedy(model, ids, 6)
    # spattn needs the whole key sequence: the same weights without the sliding-window cache
    spattn_model = twin(model, {"sliding_window": None})
    spattn_model.set_attn_implementation(hf.register("spattn_test_swa", "causal & window(6)"))
    assert torch.allclose(logits(spattn_model, ids), reference_logits, atol=ATOL)
    tokens = greedy(spattn_model, ids, 6)
    assert torch.equal(tokens, reference_tokens)


def test_a_model_gives_each_layer_its_pattern(ids):
    """Qwen2 with layer types (sliding, full) against a spattn model with the same schedule."""
    model = tiny(transformers.Qwen2Config, transformers.Qwen2ForCausalLM, use_sliding_window=True,
                 sliding_window=4, max_window_layers=0,
                 layer_types=["sliding_attention", "full_attention"])
    reference = logits(model, ids)
    program = spattn_dsl.loads("model m { layers 1: causal & window(4); layers 1: causal }")
    spattn_model = twin(model, {"use_sliding_window": False, "layer_types": None})
    spattn_model.set_attn_implementation(hf.register("spattn_test_model", program.model("m")))
    assert torch.allclose(logits(spattn_model, ids), reference, atol=ATOL)


def test_left_padding_reaches_the_kernel(ids):
    model = llama()
    padding = torch.ones_like(ids)
    padding[1, :5] = 0  # the second sequence is left-padded by 5 tokens
    reference = logits(model, ids, attention_mask=padding)
    model.set_attn_implementation(hf.register("spattn_test_padding", "causal"))
    result = logits(model, ids, attention_mask=padding)
    real = padding.bool()  # compare real tokens only: padded query rows are undefined
    assert torch.allclose(result[real], reference[real], atol=ATOL)


def test_caches_that_drop_keys_are_refused_clearly():
    with pytest.raises(ValueError, match="dropped the first 3"):
        hf.key_padding_mask(1, 1, 8, q_offset=10, kv_offset=3)
    with pytest.raises(ValueError, match="static cache"):
        hf.key_padding_mask(1, 1, 64, q_offset=10, kv_offset=0)
    assert hf.key_padding_mask(2, 1, 8, q_offset=7, attention_mask=torch.ones(2, 8)) is None


def test_dropout_is_refused():
    layers = spattn_dsl.decorator.LayerPatterns("causal")
    q = torch.randn(1, 2, 4, 16)
    with pytest.raises(NotImplementedError, match="dropout"):
        hf.spattn_attention_forward(layers, torch.nn.Module(), q, q, q, None, dropout=0.1)


def rel_err(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_llama_fp32_padding_gradients_and_decode(ids):
    """On the GPU the kernels run (no interpreter): forward, backward and decoding."""
    ids = ids.cuda()
    padding = torch.ones_like(ids)
    padding[1, :5] = 0
    real = padding.bool()
    models = {}
    for name in ("sdpa", hf.register("spattn_test_gpu", "causal")):
        model = llama().cuda()
        model.set_attn_implementation(name)
        out = model(ids, attention_mask=padding, use_cache=False).logits
        torch.nn.functional.cross_entropy(out[real], ids[real]).backward()
        models[name] = (model, out.detach())
    (reference, ref_logits), (model, result) = models.values()
    assert rel_err(result[real], ref_logits[real]) < 1e-4
    for (name, p), (_, p_ref) in zip(model.named_parameters(), reference.named_parameters()):
        assert rel_err(p.grad, p_ref.grad) < 1e-3, name
    assert torch.equal(greedy(model, ids[:1], 6), greedy(reference, ids[:1], 6))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_llama_bf16_sparse_pattern_matches_sdpa_with_the_dense_mask(ids):
    pattern = spattn_dsl.loads("pattern p { causal & (window(5) | sink(2) | stride(7)) }").pattern("p")
    model = llama().cuda().to(torch.bfloat16)
    ids = ids.cuda()
    dense_mask = pattern.mask(ids.shape[1]).cuda()[None, None].expand(ids.shape[0], 1, -1, -1)
    reference = logits(model, ids, attention_mask=dense_mask)
    model.set_attn_implementation(hf.register("spattn_test_gpu_bf16", pattern))
    assert rel_err(logits(model, ids), reference) < 2e-2
