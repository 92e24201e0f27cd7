"""Packed rows in the Hugging Face backend: position ids -> document ids, and the refusal of
attention callables that cannot take documents."""
import random

import pytest
import torch

transformers = pytest.importorskip("transformers")

from spattn_dsl import hf  # noqa: E402
from spattn_dsl.api import pattern_from  # noqa: E402
from spattn_dsl.decorator import LayerPatterns  # noqa: E402
from spattn_dsl.runtime.attention import SparseAttention  # noqa: E402

SIZES = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
             attention_dropout=0.0)


def llama(seed=0):
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**SIZES)).eval()


def ids_of(lengths):
    return torch.cat([torch.full((n,), d) for d, n in enumerate(lengths)])


def flattened(lengths, seed=0):
    """What DataCollatorWithFlattening makes of documents of these lengths: one packed row."""
    gen = torch.Generator().manual_seed(seed)
    features = [{"input_ids": torch.randint(1, SIZES["vocab_size"], (n,), generator=gen).tolist()}
                for n in lengths]
    batch = transformers.DataCollatorWithFlattening(return_tensors="pt")(features)
    return batch["input_ids"], batch["position_ids"]


def test_flattening_collator_rows_become_documents():
    lengths = [5, 1, 12, 7]
    input_ids, position_ids = flattened(lengths)
    documents = hf.documents_from_position_ids(position_ids, 1, sum(lengths))
    assert documents.dtype == torch.int64
    assert documents.tolist() == [ids_of(lengths).tolist()]


@pytest.mark.parametrize("seed", range(5))
def test_rows_with_different_boundaries(seed):
    rng = random.Random(seed)
    n = rng.randint(2, 40)
    rows, want = [], []
    for _ in range(3):
        cuts = sorted(rng.sample(range(1, n), rng.randint(0, min(5, n - 1))))
        lengths = [b - a for a, b in zip([0] + cuts, cuts + [n])]
        rows.append(torch.cat([torch.arange(length) for length in lengths]))
        want.append(ids_of(lengths))
    documents = hf.documents_from_position_ids(torch.stack(rows), 3, n)
    if all(len(torch.unique(w)) == 1 for w in want):
        assert documents is None
    else:
        assert torch.equal(documents, torch.stack(want))


def test_unpacked_rows_padding_and_decoding_are_not_documents():
    n = 9
    plain = torch.arange(n)[None]
    assert hf.documents_from_position_ids(plain, 4, n) is None  # broadcast over the batch
    assert hf.documents_from_position_ids(None, 1, n) is None
    assert hf.documents_from_position_ids(torch.tensor([[9]]), 1, 10) is None  # one new query
    # position ids as generate() makes them under left padding, and right padding
    padding = torch.tensor([[False, False, True, True, True, True, True, True, True],
                            [True] * 6 + [False] * 3])
    position_ids = torch.tensor([[1, 1, 0, 1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 4, 5, 1, 1, 1]])
    assert hf.documents_from_position_ids(position_ids, 2, n, padding) is None
    # a packed row next to a padded one: only the real restart counts
    position_ids[1] = torch.tensor([0, 1, 2, 0, 1, 2, 1, 1, 1])
    documents = hf.documents_from_position_ids(position_ids, 2, n, padding)
    assert documents[1, :6].tolist() == [0, 0, 0, 1, 1, 1]
    assert documents[0, 2:].unique().numel() == 1


def test_takes_documents_reads_the_signature():
    assert hf.takes_documents(SparseAttention(pattern_from("causal")))
    assert not hf.takes_documents(lambda q, k, v, scale=None, key_padding=None: q)
    assert hf.takes_documents(lambda q, k, v, scale=None, key_padding=None, documents=None: q)
    assert hf.takes_documents(lambda q, k, v, *, documents: q)
    assert not hf.takes_documents(lambda q, k, v, **kwargs: q)  # could drop the ids silently


def test_packed_rows_are_refused_without_documents_support(monkeypatch):
    monkeypatch.setattr(LayerPatterns, "attention",
                        lambda self, layer: lambda q, k, v, scale=None, key_padding=None: q)
    model = llama()
    model.set_attn_implementation(hf.register("spattn_test_packed_refused", "causal"))
    input_ids, position_ids = flattened([6, 9, 4])
    with pytest.raises(NotImplementedError, match="packed rows"), torch.no_grad():
        model(input_ids, position_ids=position_ids, use_cache=False)


def reference_attention(pattern, calls):
    """A float64 attention callable that takes ``documents=`` (as the kernels will)."""
    def attn(q, k, v, scale=None, key_padding=None, documents=None):
        calls.append(documents)
        n_q, n_k = q.shape[2], k.shape[2]
        group = q.shape[1] // k.shape[1]
        kd, vd = (t.double().repeat_interleave(group, 1) for t in (k, v))
        masks = torch.stack([pattern.mask(n_q, n_k, documents=None if documents is None
                                          else documents[b]) for b in range(q.shape[0])])
        scores = (q.double() @ kd.transpose(-1, -2)) * scale
        scores = scores.masked_fill(~masks[:, None], float("-inf"))
        return (scores.softmax(-1) @ vd).to(q.dtype)
    return attn


def assert_packed_rows_equal_each_document_alone(model, alone_model, lengths):
    """Logits of rows packed with documents of ``lengths`` (position ids restart per
    document) equal ``alone_model``'s on each document alone."""
    rows = [flattened(ls, seed=i) for i, ls in enumerate(lengths)]
    input_ids = torch.cat([r[0] for r in rows])
    position_ids = torch.cat([r[1] for r in rows])
    with torch.no_grad():
        packed = model(input_ids, position_ids=position_ids, use_cache=False).logits
        for b, ls in enumerate(lengths):
            start = 0
            for n in ls:
                alone = alone_model(input_ids[b:b + 1, start:start + n], use_cache=False).logits
                assert torch.allclose(packed[b:b + 1, start:start + n], alone, atol=1e-4)
                start += n


def test_packed_rows_reach_documents_and_equal_each_document_alone(monkeypatch):
    pattern = pattern_from("causal")
    calls = []
    monkeypatch.setattr(LayerPatterns, "attention",
                        lambda self, layer: reference_attention(pattern, calls))
    model = llama()
    sdpa = llama()  # the same weights under transformers' own attention
    sdpa.set_attn_implementation("sdpa")
    model.set_attn_implementation(hf.register("spattn_test_packed_documents", pattern))
    lengths = [[6, 9, 4, 1], [3, 10, 7]]
    assert_packed_rows_equal_each_document_alone(model, sdpa, lengths)
    want = torch.stack([ids_of(ls) for ls in lengths])
    assert len(calls) == SIZES["num_hidden_layers"] and all(torch.equal(c, want) for c in calls)


@pytest.mark.parametrize("text", ["causal", "causal & window(5)"])
def test_packed_rows_through_the_kernels_equal_each_document_alone(text):
    """The spattn kernels themselves (no stand-in): logits of packed rows equal each document
    run alone under the same pattern."""
    model = llama()
    model.set_attn_implementation(hf.register(f"spattn_test_packed_kernels_{len(text)}", text))
    assert_packed_rows_equal_each_document_alone(model, model, [[5, 1, 12, 7], [13, 12]])
