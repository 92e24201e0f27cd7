"""``attn(q, k, v, documents=ids)``: packed sequences through the generated kernels (forward,
dQ, dK/dV) against float64 softmax attention under ``Pattern.mask(..., documents=)``.

Without a GPU the kernels run under the Triton interpreter (fp32, small shapes); inputs,
output gradients and document boundaries are fresh random draws, on ragged lengths."""
import pytest
import torch

from spattn_dsl import loads
from spattn_dsl.runtime import attention as attention_module
from spattn_dsl.runtime import compile

from .test_attention import DEVICE, inputs, rel_err

PATTERNS = loads("""
pattern causal_only { causal }
pattern swa(w = 9) { causal & window(w) }
pattern blocky { causal & blocks(8) { band(1, 0) | global(first = 1) } }
pattern two_heads { heads { causal & window(5); causal & (chunk(6) | sink(2)) } }
pattern longformer { band(3, 3) | global(first = 1) }
pattern drawn { causal & (window(3) | random(2, seed = 1)) }
pattern by_length { causal & where(k >= q - n // 4) }
""")
TILES = dict(block_m=16, block_n=16, num_warps=1, num_stages=1)


def ragged_ids(batch: int, n_k: int, gen) -> torch.Tensor:
    """int64 ``[batch, n_k]`` non-decreasing ids: each row cut into documents of random,
    ragged lengths (1, 7, 13, 20, ... first, then random), ids neither from 0 nor consecutive."""
    rows = []
    for b in range(batch):
        lengths = [1, 7, 13, 20] if b == 0 else []
        while sum(lengths) < n_k:
            lengths.append(int(torch.randint(1, 40, (1,), generator=gen)))
        ids = torch.repeat_interleave(torch.arange(len(lengths)) * 3 + 5, torch.tensor(lengths))
        rows.append(ids[:n_k])
    return torch.stack(rows)


def oracle(pattern, q, k, v, documents, key_padding=None):
    """float64 softmax attention under each row's document mask (rows with no key give 0),
    differentiable by autograd: the test's oracle."""
    batch, heads, n_q, _ = q.shape
    n_k, group = k.shape[2], q.shape[1] // k.shape[1]
    masks = torch.stack([torch.stack([pattern.mask(n_q, n_k, head=h, documents=row)
                                      for h in range(heads)]) for row in documents.cpu()])
    if key_padding is not None:
        masks = masks & key_padding.cpu()[:, None, None, :]
    kd, vd = (t.repeat_interleave(group, 1) for t in (k, v))
    scores = (q @ kd.transpose(-1, -2)) * q.shape[-1] ** -0.5
    scores = scores.masked_fill(~masks, float("-inf"))
    probs = torch.softmax(scores, -1).nan_to_num(0.0)
    return probs @ vd


def check(pattern, batch=2, heads=2, kv_heads=None, n_q=70, n_k=70, key_padding=False,
          tol=1e-4, tiles=TILES, **hints):
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    attn = compile(pattern, **tiles, **hints)
    q, k, v = inputs(batch, heads, n_q, n_k, 16, kv_heads=kv_heads)
    documents = ragged_ids(batch, n_k, gen)
    pad = None
    if key_padding:
        pad = torch.rand(batch, n_k, generator=gen) > 0.2
    qs, ks, vs = (t.clone().requires_grad_(True) for t in (q, k, v))
    out = attn(qs, ks, vs, key_padding=None if pad is None else pad.to(DEVICE),
               documents=documents.to(DEVICE))
    grad_out = torch.randn(out.shape, generator=gen).to(DEVICE)
    out.backward(grad_out)
    qd, kd, vd = (t.detach().cpu().double().requires_grad_(True) for t in (q, k, v))
    ref = oracle(pattern, qd, kd, vd, documents, pad)
    ref.backward(grad_out.cpu().double())
    for name, got, want in (("out", out, ref), ("dq", qs.grad, qd.grad), ("dk", ks.grad, kd.grad),
                            ("dv", vs.grad, vd.grad)):
        assert rel_err(got, want) < tol, name


@pytest.mark.parametrize("name", ["causal_only", "swa", "blocky", "two_heads", "longformer"])
def test_documents_forward_and_gradients_match_float64(name):
    check(PATTERNS.pattern(name))


def test_documents_with_tensor_descriptor_loads(monkeypatch):
    used = []
    real = attention_module.launch._descriptors
    monkeypatch.setattr(attention_module.launch, "_descriptors",
                        lambda *a, **shift: used.append(real(*a, **shift)) or used[-1])
    check(PATTERNS.pattern("two_heads"), kv_heads=1, key_padding=True, descriptors=True)
    assert used and all(used)


def test_documents_gqa_padding_and_fewer_queries():
    """Grouped-query heads, padding keys and decoding-like n_q < n_k, all at once."""
    check(PATTERNS.pattern("two_heads"), heads=4, kv_heads=2, n_q=37, n_k=101, key_padding=True)


def test_documents_one_query_row():
    check(PATTERNS.pattern("swa"), batch=2, heads=1, n_q=1, n_k=50)


DRAWN = loads("""
pattern bigbird_like { blocks(8) { band(1, 1) | global(first = 1) | random(2, seed = 3) } }
pattern two_draws { heads { causal & (window(2) | random(3, seed = 5)); blocks(4) { random(1) } } }
pattern draws_of_n { causal & (window(3) | random(n // 8 + 1, seed = 1)) }
""")


@pytest.mark.parametrize("name", ["drawn", "bigbird_like", "two_draws"])
def test_documents_random_links_draw_per_document_in_the_kernels(name, monkeypatch):
    """random(...) draws per document (on each document's own grid): the kernels read this
    call's draw tables; forward and gradients exact, GQA, padding and n_q < n_k too."""
    pattern = PATTERNS.pattern(name) if name == "drawn" else DRAWN.pattern(name)
    monkeypatch.setattr(attention_module, "reference_forward", None)  # must not be called
    monkeypatch.setattr(attention_module, "reference_backward", None)
    check(pattern, heads=2)
    check(pattern, heads=2, kv_heads=1, n_q=29, n_k=90, key_padding=True)


def test_documents_draws_the_kernels_cannot_take_use_the_reference():
    """random(n // 8 + 1): how many keys a row draws depends on its document; the dense
    reference runs (warned once)."""
    pattern = DRAWN.pattern("draws_of_n")
    attention_module._WARNED.discard(("documents", pattern.hash))
    with pytest.warns(UserWarning, match="dense reference"):
        check(pattern, heads=1)
    check(pattern, heads=2, kv_heads=1, n_q=29, n_k=90, key_padding=True)


def test_documents_one_module_serves_longer_calls():
    """The documents kernel is rendered once per pattern, unclamped: a first call shorter than
    the window does not shrink the window of later, longer calls."""
    pattern = PATTERNS.pattern("swa")  # window(9)
    attn = compile(pattern, **TILES)
    for n in (5, 60):
        q, k, v = inputs(1, 1, n, n, 16)
        documents = torch.zeros(1, n, dtype=torch.int64)
        out = attn(q, k, v, documents=documents.to(DEVICE))
        ref = oracle(pattern, *(t.cpu().double() for t in (q, k, v)), documents)
        assert rel_err(out, ref) < 1e-4, n


BY_LENGTH = loads("""
pattern prefix_half(p = n // 2) { causal | prefix(p) }
pattern sqrt_window { causal & window(isqrt(n) + 1) }
pattern dilated_summary { heads { dilated(max(n // 4, 1), 2) | sink(1); causal & summary(n // 2 + 2, 2) } }
pattern grid_of_n { causal & blocks(max(n // 8, 1)) { band(1, 0) | where(k >= n - 2) } }
pattern tokens { causal & (window(3) | global(n - 1, n // 3)) }
""")


@pytest.mark.parametrize("name", ["by_length", *BY_LENGTH.patterns])
def test_documents_patterns_of_n_run_the_kernels(name, monkeypatch):
    """A parameter that mentions n takes each document's length in the kernels (no warning,
    no reference), forward and gradients exact; GQA, padding and n_q < n_k too."""
    pattern = BY_LENGTH.pattern(name) if name in BY_LENGTH.patterns else PATTERNS.pattern(name)
    monkeypatch.setattr(attention_module, "reference_forward", None)  # must not be called
    monkeypatch.setattr(attention_module, "reference_backward", None)
    check(pattern, heads=2)
    check(pattern, heads=2, kv_heads=1, n_q=29, n_k=90, key_padding=True)


# parameters of n that are valid at every length >= 1
N_LEAVES = ["causal", "window(n // 4 + 1)", "band(n // 3, n // 5)", "prefix(n // 2)",
            "sink(n // 3)", "chunk(n // 4 + 1)", "stride(n // 5 + 1)", "dilated(n // 6 + 1, 2)",
            "summary(n // 4 + 2, 2)", "global(first = n // 5)", "global(n - 1)",
            "where(k >= q - n // 3)", "where(q + k < n)"]


def random_text_of_n(rng, depth=3, leaves=tuple(N_LEAVES), size="n // 8 + 1") -> str:
    if depth == 0 or rng.random() < 0.3:
        return rng.choice(leaves)
    kind = rng.choice(["|", "&", "-", "!", "blocks"])
    inner = [random_text_of_n(rng, depth - 1, leaves, size) for _ in range(2)]
    if kind == "!":
        return f"!({inner[0]})"
    if kind == "blocks":
        return f"blocks({size}) {{ {inner[0]} }}"
    return f"({inner[0]}) {kind} ({inner[1]})"


@pytest.mark.parametrize("seed", range(24))
def test_documents_random_patterns_of_n_match_the_mask(seed):
    """Random combinations of parameters of n (inside blocks n is the block count) on ragged
    documents, fewer queries than keys: the kernels' output is the masked softmax's."""
    import random

    text = random_text_of_n(random.Random(seed))
    pattern = loads(f"pattern p {{ {text} }}").pattern("p")
    attn = compile(pattern, **TILES)
    q, k, v = inputs(2, 1, 45, 61, 16)
    documents = ragged_ids(2, 61, torch.Generator().manual_seed(seed))
    out = attn(q, k, v, documents=documents.to(DEVICE))
    ref = oracle(pattern, *(t.cpu().double() for t in (q, k, v)), documents)
    assert rel_err(out, ref) < 1e-4, text


@pytest.mark.parametrize("seed", range(12))
def test_documents_random_patterns_with_draws_match_the_mask(seed, monkeypatch):
    """The same with random links among the leaves (inside blocks of constant size): drawn
    per document by the kernels, never by the reference."""
    import random

    leaves = (*N_LEAVES, *["random(2, seed = 7)", "random(1, seed = 3)"] * 4)
    text = random_text_of_n(random.Random(seed), leaves=leaves, size="3")
    pattern = loads(f"pattern p {{ {text} }}").pattern("p")
    monkeypatch.setattr(attention_module, "reference_forward", None)
    attn = compile(pattern, **TILES)
    q, k, v = inputs(2, 1, 45, 61, 16)
    documents = ragged_ids(2, 61, torch.Generator().manual_seed(seed))
    out = attn(q, k, v, documents=documents.to(DEVICE))
    ref = oracle(pattern, *(t.cpu().double() for t in (q, k, v)), documents)
    assert rel_err(out, ref) < 1e-4, text


def test_documents_lengths_a_pattern_of_n_refuses_are_pattern_errors():
    """window(n // 8) is window(0) in a document shorter than 8: the PatternError the
    reference (and Pattern.mask) gives, not a silent result."""
    from spattn_dsl.errors import PatternError

    attn = compile(loads("pattern w { causal & window(n // 8) }").pattern("w"), **TILES)
    q, k, v = inputs(1, 1, 40, 40, 16)
    fine = torch.tensor([[0] * 16 + [1] * 24], device=DEVICE)
    attn(q, k, v, documents=fine)
    short = torch.tensor([[0] * 35 + [1] * 5], device=DEVICE)
    with pytest.raises(PatternError, match="w must be >= 1"):
        attn(q, k, v, documents=short)


def test_documents_cpu_reference_without_interpreter(monkeypatch):
    if DEVICE != "cpu":
        pytest.skip("the reference path is the CPU's")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(attention_module, "_WARNED", {"cpu"})
    check(PATTERNS.pattern("blocky"))
    check(PATTERNS.pattern("two_heads"), heads=4, kv_heads=2, n_q=37, n_k=101, key_padding=True)


def test_documents_new_boundaries_reuse_the_kernels(monkeypatch):
    """Two calls with different boundaries render the kernels once and launch the same module;
    the layout follows the ids of each call."""
    renders = []
    real = attention_module.render_term
    monkeypatch.setattr(attention_module, "render_term",
                        lambda *a, **kw: renders.append(a) or real(*a, **kw))
    pattern = PATTERNS.pattern("two_heads")
    attn = compile(pattern, **TILES)
    q, k, v = inputs(1, 2, 48, 48, 16)
    gen = torch.Generator().manual_seed(3)
    plans = []
    for _ in range(2):
        documents = ragged_ids(1, 48, gen)
        out = attn(q, k, v, documents=documents.to(DEVICE))
        ref = oracle(pattern, *(t.cpu().double() for t in (q, k, v)), documents)
        assert rel_err(out, ref) < 1e-4
        plans.append(attn.document_plan(q, k, documents.to(DEVICE)))
    assert len(renders) == 2  # one per head case, on the first call only
    assert [t.module for terms in plans[0].cases for t in terms] == \
        [t.module for terms in plans[1].cases for t in terms]


def test_documents_layout_built_once_per_eager_step(monkeypatch):
    """Forward and backward of one eager call share its tile lists; the gradients are those of
    a backward that builds them again (the op's path)."""
    builds = []
    real = attention_module.document_layout
    monkeypatch.setattr(attention_module, "document_layout",
                        lambda *a, **kw: builds.append(a) or real(*a, **kw))
    attn = compile(PATTERNS.pattern("longformer"), **TILES)
    q, k, v = (t.requires_grad_(True) for t in inputs(2, 2, 40, 40, 16))
    documents = ragged_ids(2, 40, torch.Generator().manual_seed(4)).to(DEVICE)
    grad_out = torch.randn_like(q)
    eager = torch.autograd.grad(attn(q, k, v, documents=documents), (q, k, v), grad_out)
    assert len(builds) == 1
    out, _ = torch.ops.spattn.attention(q, k, v, None, 16 ** -0.5, attn.op_id, documents)
    rebuilt = torch.autograd.grad(out, (q, k, v), grad_out)
    assert len(builds) == 3
    assert all(torch.equal(a, b) for a, b in zip(eager, rebuilt))


def test_documents_none_is_todays_path():
    """documents=None launches the plan of the document-free path, not the document kernels."""
    pattern = PATTERNS.pattern("swa")
    attn = compile(pattern, **TILES)
    q, k, v = inputs(1, 1, 40, 40, 16)
    out = attn(q, k, v)
    assert attn._document_modules == {}  # no document kernel was rendered
    whole = torch.zeros(1, 40, dtype=torch.int64, device=DEVICE)
    assert rel_err(attn(q, k, v, documents=whole), out) < 1e-5
    assert len(attn._document_modules) == 1


def test_documents_opcheck():
    attn = compile(PATTERNS.pattern("swa"), **TILES)
    q, k, v = (t.requires_grad_(True) for t in inputs(1, 1, 20, 30, 16))
    documents = torch.tensor([[0] * 12 + [4] * 18], device=DEVICE)
    torch.library.opcheck(torch.ops.spattn.attention.default,
                          (q, k, v, None, 0.25, attn.op_id, documents),
                          test_utils=("test_schema", "test_autograd_registration",
                                      "test_faketensor"))


@pytest.mark.parametrize("documents,match", [
    (torch.tensor([[0, 1, 1, 0] + [1] * 28]), "decrease"),
    (torch.zeros(1, 31, dtype=torch.int64), "shape"),
    (torch.zeros(1, 32), "integer"),
])
def test_documents_bad_ids_are_value_errors(documents, match):
    attn = compile(PATTERNS.pattern("swa"), **TILES)
    q, k, v = inputs(1, 1, 32, 32, 16)
    with pytest.raises(ValueError, match=match) as error:
        attn(q, k, v, documents=documents)
    assert "documents" in str(error.value)


def test_documents_under_torch_compile_without_recompiling():
    """The ids are a tensor input of the op: one graph (fullgraph) serves new boundaries, and
    forward and gradients equal eager."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    attn = compile(PATTERNS.pattern("swa"), **TILES)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(lambda q, k, v, d: attn(q, k, v, documents=d), backend=counter,
                             fullgraph=True)
    gen = torch.Generator().manual_seed(5)
    for _ in range(2):
        documents = ragged_ids(1, 45, gen).to(DEVICE)
        q, k, v = (t.requires_grad_(True) for t in inputs(1, 1, 45, 45, 16))
        out = compiled(q, k, v, documents)
        out.square().sum().backward()
        grads = [t.grad.clone() for t in (q, k, v)]
        for t in (q, k, v):
            t.grad = None
        eager = attn(q, k, v, documents=documents)
        eager.square().sum().backward()
        assert rel_err(out, eager) < 1e-6
        for got, t in zip(grads, (q, k, v)):
            assert rel_err(got, t.grad) < 1e-6
    assert counter.frame_count == 1


def test_decorator_passes_documents_on():
    from spattn_dsl import sparse_attention

    @sparse_attention("causal & window(6)", **TILES)
    def attention(q, k, v):
        """replaced by spattn"""

    pattern = loads("pattern p { causal & window(6) }").pattern("p")
    q, k, v = inputs(2, 1, 33, 33, 16)
    documents = ragged_ids(2, 33, torch.Generator().manual_seed(2))
    out = attention(q, k, v, documents=documents.to(DEVICE))
    ref = oracle(pattern, *(t.cpu().double() for t in (q, k, v)), documents)
    assert rel_err(out, ref) < 1e-4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("source,name", [(PATTERNS, "two_heads"), (PATTERNS, "longformer"),
                                         (DRAWN, "bigbird_like"), (BY_LENGTH, "sqrt_window"),
                                         (BY_LENGTH, "tokens")],
                         ids=["two_heads", "longformer", "bigbird_like", "sqrt_window", "tokens"])
def test_gpu_documents_with_the_documents_tiles(source, name, monkeypatch):
    """The GPU's documents tiles (64 x 64, not the interpreter's 16 x 16), random draws and
    parameters of n included, at lengths spanning several tiles; no reference."""
    monkeypatch.setattr(attention_module, "reference_forward", None)  # must not be called
    monkeypatch.setattr(attention_module, "reference_backward", None)
    pattern = source.pattern(name)
    check(pattern, heads=4, kv_heads=2, n_q=300, n_k=300, key_padding=True, tiles={})
    check(pattern, heads=2, n_q=97, n_k=400, tiles={})
