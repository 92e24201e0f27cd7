"""The oracle of the dynamic tests: float64 softmax attention under
``pattern.mask(..., selection=s)`` (and key padding), with float64 autograd for gradients."""
import torch

from spattn_dsl import loads

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the kernels' device (else the interpreter)

SOURCE = """
pattern moba { causal & (window(4) | topk(2, unit = 4)) }
pattern blocks16 { causal & (window(16) | topk(2, unit = 16, rows = 16)) }
pattern tokens { causal & (sink(1) | topk(3)) }
pattern quest { causal & (window(2) | topk(2, unit = 3, rows = 4, by = minmax, shared = group)) }
pattern indexer { causal & topk(4, unit = 2, rows = 2, by = scores, shared = all) }
pattern free { topk(2, unit = 5, rows = 3, shared = group) | window(1) }
pattern vs { causal & (sink(1) | vertical(2, probe = 3) | slash(2, probe = 4, shared = all)) }
pattern open_slash { window(3) | slash(3, probe = 2) }
pattern far_columns { window(2) & vertical(8, probe = 1) | where(k < 4) & slash(9, probe = 1) }
pattern per_head { heads { causal & topk(1, unit = 2); window(2) | topk(2, unit = 3) } }
pattern minus { dense - topk(2) }
pattern both { causal & (window(3) | topk(2, unit = 4) & topk(3, unit = 2, by = minmax)) }
"""
PROGRAM = loads(SOURCE)


def pattern(name):
    return PROGRAM.pattern(name)


def inputs(b, h, h_kv, n_q, n_k, d=16, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, n_q, d, generator=g, dtype=dtype)
    k = torch.randn(b, h_kv, n_k, d, generator=g, dtype=dtype)
    v = torch.randn(b, h_kv, n_k, d, generator=g, dtype=dtype)
    return q.to(DEVICE), k.to(DEVICE), v.to(DEVICE)


def scores_for(pat, b, h, n_q, n_k, seed=1):
    from spattn_dsl.semantics.select import term_nodes
    units = [t.unit for t in term_nodes(pat, n_k) if getattr(t, "by", None) == "scores"]
    if not units:
        return None
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, h, n_q, -(-n_k // units[0]), generator=g).to(DEVICE)


def attention64(pat, q, k, v, selection, scale=None, key_padding=None):
    """(out, lse) in float64 on the CPU under the selection's mask; rows without keys give 0."""
    q, k, v = q.cpu(), k.cpu(), v.cpu()
    key_padding = None if key_padding is None else key_padding.cpu()
    n_q, n_k = q.shape[2], k.shape[2]
    mask = pat.mask(n_q, n_k, selection=selection)
    if key_padding is not None:
        mask = mask & key_padding[:, None, None, :]
    group = q.shape[1] // k.shape[1]
    kd = k.double().repeat_interleave(group, 1)
    vd = v.double().repeat_interleave(group, 1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = (q.double() @ kd.transpose(-1, -2)) * scale
    s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - lse.nan_to_num(neginf=0.0)[..., None]).masked_fill(~mask, 0.0)
    return p @ vd, lse


def rel_err(a, b):
    a, b = a.detach().cpu(), b.detach().cpu()
    return float((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-12))


def check(attn, pat, q, k, v, key_padding=None, documents=None, scores=None, tol=1e-4):
    """Forward and gradients of ``attn`` against float64 under the returned selection."""
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    key_padding, documents = (None if t is None else t.to(q.device) for t in (key_padding, documents))
    torch.manual_seed(0)
    out, sel = attn(q, k, v, key_padding=key_padding, documents=documents, scores=scores,
                    return_selection=True)
    q64, k64, v64 = (t.detach().cpu().double().requires_grad_() for t in (q, k, v))
    ref, _ = attention64(pat, q64, k64, v64, sel, key_padding=key_padding)
    assert rel_err(out, ref) < tol
    grad = torch.randn(out.shape, dtype=torch.float64)
    out.backward(grad.to(out.device, out.dtype))
    ref.backward(grad)
    for mine, theirs in ((q.grad, q64.grad), (k.grad, k64.grad), (v.grad, v64.grad)):
        assert rel_err(mine, theirs) < tol
    return sel
