"""Dynamic patterns through torch.compile (the custom op, no recompile for a new selection),
the decorator and the Hugging Face backend."""
import pytest
import torch

import spattn_dsl

from .oracle import attention64, inputs, pattern, rel_err


@pytest.fixture(autouse=True)
def _interpreter(monkeypatch):
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.mark.parametrize("path", ["kernels", "cpu reference"])
def test_torch_compile_takes_new_selections_without_recompiling(path, monkeypatch):
    if path == "cpu reference":  # the selection and mask outside the graph there too
        monkeypatch.setenv("TRITON_INTERPRET", "0")
    pat = pattern("moba")
    attn = spattn_dsl.compile(pat)
    compiled = torch.compile(lambda q, k, v: attn(q, k, v), backend="aot_eager", fullgraph=False)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True):
        for seed in (1, 2):  # other inputs: another selection, the same graph
            q, k, v = inputs(1, 2, 1, 20, 20, seed=seed)
            if path == "cpu reference":
                q, k, v = q.cpu(), k.cpu(), v.cpu()
            q.requires_grad_()
            out = compiled(q, k, v)
            out.sum().backward()
            _, sel = attn(q.detach(), k, v, return_selection=True)
            q64 = q.detach().cpu().double().requires_grad_()
            ref, _ = attention64(pat, q64, k, v, sel)
            ref.sum().backward()
            assert rel_err(out, ref) < 1e-4 and rel_err(q.grad, q64.grad) < 1e-4


def test_decorator_runs_a_dynamic_pattern():
    @spattn_dsl.sparse_attention("causal & (window(2) | topk(2, unit = 4))")
    def attention(q, k, v):
        raise AssertionError("replaced")

    q, k, v = inputs(1, 2, 2, 17, 17)
    out = attention(q, k, v)
    pat = spattn_dsl.loads("pattern p { causal & (window(2) | topk(2, unit = 4)) }").pattern("p")
    _, sel = spattn_dsl.compile(pat)(q, k, v, return_selection=True)
    assert rel_err(out, attention64(pat, q, k, v, sel)[0]) < 1e-4


def test_hf_backend_runs_a_dynamic_pattern():
    transformers = pytest.importorskip("transformers")
    from spattn_dsl import hf

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=48,
                                      num_hidden_layers=1, num_attention_heads=2,
                                      num_key_value_heads=1, attention_dropout=0.0)
    model = transformers.LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 50, (1, 13), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model(ids, use_cache=False).logits
        # a budget above the candidate count selects every unit: the mask is causal
        model.set_attn_implementation(hf.register("spattn_test_dynamic",
                                                  "causal & (window(2) | topk(8, unit = 4))"))
        assert torch.allclose(model(ids, use_cache=False).logits, reference, atol=1e-4)
