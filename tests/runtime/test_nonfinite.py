"""NaN and inf in K and V through the generated kernels (issue 25, item 1).

A pair the mask hides contributes nothing, even where the hidden key or value is NaN or inf
(``0 * NaN`` is NaN inside a dot): padding keys, keys past the end, other documents' keys and
keys the pattern hides from some rows of a tile only. A row that may see a non-finite value
has a non-finite output (and gradients), as in the oracle (NaN where the oracle may say inf): float64 attention over each row's
allowed keys only, selected (never multiplied by 0), differentiated by autograd.

Without a GPU the kernels run under the Triton interpreter (fp32, small shapes)."""
import pytest
import torch

from spattn_dsl import loads
from spattn_dsl.runtime import compile

from .test_attention import DEVICE, inputs

NAN, INF = float("nan"), float("inf")
PATTERNS = loads("""
pattern causal_only { causal }
pattern dense_only { dense }
pattern swa { causal & window(9) }
pattern longformer { band(3, 3) | global(first = 1) }
pattern drawn { causal & (window(3) | random(2, seed = 1)) }
""")
TILES = dict(block_m=16, block_n=16, num_warps=1, num_stages=1)


def masks(pattern, heads, n_q, n_k, key_padding=None, documents=None):
    """bool ``[batch or 1, heads, n_q, n_k]``: the reference mask (and the real keys)."""
    rows = [None] if documents is None else list(documents.cpu())
    out = torch.stack([torch.stack([pattern.mask(n_q, n_k, head=h, documents=row)
                                    for h in range(heads)]) for row in rows])
    if key_padding is not None:
        out = out & key_padding.cpu()[:, None, None, :]
    return out


def oracle(mask, q, k, v):
    """float64 attention, each row over its allowed keys only (selected, so a NaN it may not
    see never meets it); rows without a key give 0. Differentiable by autograd."""
    batch, heads, n_q, _ = q.shape
    group = heads // k.shape[1]
    rows = []
    for b in range(batch):
        for h in range(heads):
            for i in range(n_q):
                keys = mask[min(b, mask.shape[0] - 1), h, i].nonzero().flatten()
                kk, vv = k[b, h // group, keys], v[b, h // group, keys]
                weights = torch.softmax(kk @ q[b, h, i] * q.shape[-1] ** -0.5, 0)
                rows.append(weights @ vv if len(keys) else q[b, h, i] * 0.0)
    return torch.stack(rows).reshape(q.shape)


def run(pattern, q, k, v, grad_out=None, tiles=TILES, **kwargs):
    """(out, dq, dk, dv) of the kernels; the gradients only with ``grad_out``."""
    q, k, v = (t.detach().clone().requires_grad_(grad_out is not None) for t in (q, k, v))
    out = compile(pattern, **tiles)(q, k, v, **kwargs)
    if grad_out is None:
        return out.detach(), None, None, None
    out.backward(grad_out)
    return out.detach(), q.grad, k.grad, v.grad


def expected(mask, q, k, v, grad_out=None):
    q, k, v = (t.detach().cpu().double().requires_grad_(grad_out is not None) for t in (q, k, v))
    out = oracle(mask, q, k, v)
    if grad_out is None:
        return out.detach(), None, None, None
    out.backward(grad_out.cpu().double())
    return out.detach(), q.grad, k.grad, v.grad


def assert_same(got, want, name):
    """Non-finite exactly where the oracle is (the kernels give NaN where a PARTIAL tile's row
    sees a non-finite value, the oracle may give inf), equal up to fp32 rounding elsewhere."""
    got, want = got.detach().cpu().double(), want.detach().cpu()
    finite = torch.isfinite(want)
    assert torch.equal(torch.isfinite(got), finite), f"{name}: non-finite elsewhere"
    torch.testing.assert_close(got[finite], want[finite], rtol=1e-4, atol=1e-4, msg=name)


def check(pattern, q, k, v, grad_out=None, tiles=TILES, key_padding=None, documents=None):
    mask = masks(pattern, q.shape[1], q.shape[2], k.shape[2], key_padding, documents)
    kwargs = dict(key_padding=key_padding, documents=documents)
    got = run(pattern, q, k, v, grad_out, tiles, **kwargs)
    want = expected(mask, q, k, v, grad_out)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
        if b is not None:
            assert_same(a, b, name)
    return got[0]


# ------------------------------------------------------------- the reproductions
def test_causal_row_zero_does_not_see_a_nan_at_key_one():
    """Key 1 is hidden from row 0 but seen by row 1 of the same tile (a partly hidden key)."""
    q, k, v = inputs(1, 1, 2, 2, 16, seed=1)
    v[..., 1, :] = NAN
    out = check(PATTERNS.pattern("causal_only"), q, k, v)
    assert torch.isfinite(out[0, 0, 0]).all() and torch.isnan(out[0, 0, 1]).all()


def test_an_inf_at_a_padding_key_reaches_no_row():
    q, k, v = inputs(1, 1, 4, 4, 16, seed=2)
    v[..., 3, :] = INF
    out = check(PATTERNS.pattern("dense_only"), q, k, v,
                key_padding=torch.tensor([[True, True, True, False]], device=DEVICE))
    assert torch.isfinite(out).all()


def test_a_nan_in_another_document_reaches_no_row():
    q, k, v = inputs(1, 1, 4, 4, 16, seed=3)
    v[..., 3, :] = NAN
    out = check(PATTERNS.pattern("dense_only"), q, k, v,
                documents=torch.tensor([[0, 0, 1, 1]], device=DEVICE))
    assert torch.isfinite(out[0, 0, :2]).all() and torch.isnan(out[0, 0, 2:]).all()


def test_rows_without_keys_are_exactly_zero():
    q, k, v = inputs(1, 2, 20, 20, 16, seed=4)
    k[..., 5, :], v[..., 5, :], v[..., 7, :] = NAN, NAN, -INF
    pad = torch.zeros(1, 20, dtype=torch.bool, device=DEVICE)
    out = run(PATTERNS.pattern("dense_only"), q, k, v, key_padding=pad)[0]
    assert torch.equal(out, torch.zeros_like(out))


# ------------------------------------------------------------- tiles of every kind
def poisoned(seed, n_q, n_k, keys, where="v", value=NAN, heads=2, kv_heads=None):
    q, k, v = inputs(2, heads, n_q, n_k, 16, kv_heads=kv_heads, seed=seed)
    for key in keys:
        (k if where == "k" else v)[..., key, :] = value
    return q, k, v


CASES = [("causal_only", 40, 40, [5, 33]), ("swa", 40, 40, [0, 17, 39]),
         ("longformer", 45, 45, [1, 20]), ("drawn", 33, 50, [2, 30, 49]), ("swa", 1, 40, [35])]


@pytest.mark.parametrize("value", [NAN, INF, -INF], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("name,n_q,n_k,keys", CASES, ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CASES])
def test_forward_hides_nonfinite_values(name, n_q, n_k, keys, value):
    q, k, v = poisoned(10, n_q, n_k, keys, "v", value)
    check(PATTERNS.pattern(name), q, k, v)


@pytest.mark.parametrize("hints", [dict(merged=True), dict(merged=True, lowering="grid"),
                                   dict(descriptors=True)], ids=["merged", "merged-lists", "descriptors"])
@pytest.mark.parametrize("name", ["swa", "longformer"])
def test_other_loops_hide_nonfinite_values(name, hints):
    q, k, v = poisoned(11, 40, 40, [3, 21, 38], "v", NAN)
    pad = torch.rand(2, 40, generator=torch.Generator().manual_seed(5)) > 0.2
    pad[:, [4, 22]] = False
    v[:, :, [4, 22]] = INF
    check(PATTERNS.pattern(name), q, k, v, tiles={**TILES, **hints}, key_padding=pad.to(DEVICE))


@pytest.mark.parametrize("where", ["k", "v"])
@pytest.mark.parametrize("name,n_q,n_k,keys", CASES, ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CASES])
def test_gradients_hide_nans(name, n_q, n_k, keys, where):
    q, k, v = poisoned(12, n_q, n_k, keys, where, NAN, heads=2, kv_heads=1)
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(6)).to(DEVICE)
    check(PATTERNS.pattern(name), q, k, v, grad_out)


def test_gradients_with_padding_and_documents_hide_nans():
    """NaN keys and values behind padding (in FULL tiles too) and in other documents."""
    q, k, v = poisoned(13, 40, 40, [6, 25], "v", NAN)
    k[..., [9, 30], :] = NAN
    pad = torch.ones(2, 40, dtype=torch.bool)
    pad[:, [6, 9, 30]] = False
    documents = torch.repeat_interleave(torch.arange(3), torch.tensor([20, 6, 14]))[None].repeat(2, 1)
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(7)).to(DEVICE)
    for pattern, docs in ((PATTERNS.pattern("dense_only"), None),
                          (PATTERNS.pattern("causal_only"), documents.to(DEVICE))):
        check(pattern, q, k, v, grad_out, key_padding=pad.to(DEVICE), documents=docs)
