"""The CPU path without the Triton interpreter: attention over the block layout, one query tile
at a time, against float64 autograd through the dense reference (``Pattern.mask``).

Fresh random inputs; ragged lengths, n_q < n_k, grouped-query heads, per-head patterns, key
padding, rows without keys."""
import warnings

import pytest
import torch

import spattn_dsl.codegen.reference as reference
from spattn_dsl import loads
from spattn_dsl.codegen.reference import attention_reference, attention_tiled, \
    attention_tiled_backward
from spattn_dsl.ir import nodes as N
from spattn_dsl.ir.program import Pattern
from spattn_dsl.layout.build import lower
from spattn_dsl.runtime import compile

from ..layout.patterns import pattern
from .test_backward import reference_grads

CASES = [  # pattern, batch, heads, kv heads, n_q, n_k, head_dim
    ("longformer", 1, 2, 2, 130, 130, 16),
    ("heads", 2, 4, 2, 40, 300, 16),        # two head cases, GQA, n_q < n_k
    ("bigbird", 1, 2, 1, 77, 260, 16),      # random links, multi-query
    ("where-mod", 1, 1, 1, 129, 129, 16),
    ("random3", 1, 3, 3, 1, 257, 16),       # one query row (decoding)
    ("blocks5-causal", 2, 2, 2, 5, 45, 16),
    ("none", 1, 2, 2, 20, 33, 16),          # every row empty
]


def rand(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


def inputs(batch, heads, kv_heads, n_q, n_k, head_dim):
    return (rand(batch, heads, n_q, head_dim), rand(batch, kv_heads, n_k, head_dim),
            rand(batch, kv_heads, n_k, head_dim))


def padding(batch, n_k):
    """Random key padding, with one batch row padded entirely (its rows have no keys)."""
    keep = torch.rand(batch, n_k) > 0.3
    keep[-1] = False if batch > 1 else keep[-1]
    return keep


def max_err(a, b):
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


@pytest.fixture
def no_interpreter(monkeypatch):
    """The CPU path as a user without TRITON_INTERPRET sees it."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.mark.parametrize("name,batch,heads,kv_heads,n_q,n_k,head_dim", CASES,
                         ids=[c[0] for c in CASES])
@pytest.mark.parametrize("padded", [False, True], ids=["", "padded"])
def test_tiled_matches_float64_reference(name, batch, heads, kv_heads, n_q, n_k, head_dim,
                                         padded):
    p = pattern(name)
    q, k, v = (t.double() for t in inputs(batch, heads, kv_heads, n_q, n_k, head_dim))
    grad_out, grad_lse = torch.randn_like(q), torch.randn(q.shape[:3], dtype=torch.float64)
    keep = padding(batch, n_k) if padded else None
    want_out, want_lse = attention_reference(p, q, k, v, key_padding=keep)
    out, lse = attention_tiled(p, q, k, v, dtype=torch.float64, key_padding=keep)
    assert max_err(out, want_out) < 1e-12
    assert torch.equal(torch.isinf(lse), torch.isinf(want_lse))
    finite = torch.isfinite(want_lse)
    assert max_err(lse[finite], want_lse[finite]) < 1e-12
    want = reference.attention_reference_backward(p, grad_out, q, k, v, dtype=torch.float64,
                                                  key_padding=keep, grad_lse=grad_lse)
    got = attention_tiled_backward(p, grad_out, q, k, v, dtype=torch.float64, key_padding=keep,
                                   grad_lse=grad_lse)
    for a, b in zip(got, want):
        assert max_err(a, b) < 1e-12


@pytest.fixture
def split_work(monkeypatch):
    """Two tile workers and pieces of 64 key columns (the long rows' path)."""
    monkeypatch.setattr(reference, "PIECE", 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name,batch,heads,kv_heads,n_q,n_k,head_dim", CASES,
                         ids=[c[0] for c in CASES])
def test_tiles_split_among_workers_and_pieces(split_work, name, batch, heads, kv_heads, n_q,
                                              n_k, head_dim):
    """16-row query tiles run by two worker threads, rows longer than 64 keys in pieces
    merged by log-sum-exp; forward and backward against float64 (fp32 inputs)."""
    p = pattern(name)
    q, k, v = inputs(batch, heads, kv_heads, n_q, n_k, head_dim)
    grad_out, grad_lse = torch.randn_like(q), torch.randn(q.shape[:3])
    keep = padding(batch, n_k)
    layout = lower(p.at(n_k), n_q, n_k, 16, 16)
    want_out, want_lse = attention_reference(p, q, k, v, key_padding=keep)
    out, lse = attention_tiled(p, q, k, v, key_padding=keep, layout=layout)
    assert max_err(out, want_out) < 1e-5
    assert torch.equal(torch.isinf(lse), torch.isinf(want_lse))
    finite = torch.isfinite(want_lse)
    assert max_err(lse[finite], want_lse[finite]) < 1e-5
    want = reference.attention_reference_backward(p, grad_out, q, k, v, dtype=torch.float64,
                                                  key_padding=keep, grad_lse=grad_lse)
    got = attention_tiled_backward(p, grad_out, q, k, v, key_padding=keep, grad_lse=grad_lse,
                                   layout=layout)
    for a, b in zip(got, want):
        assert max_err(a, b) < 1e-4
    assert 2 in reference._WORKERS and torch.get_num_threads() == 2  # this thread keeps 2


def test_workers_under_inference_mode(split_work, no_interpreter):
    """The caller's inference mode reaches the tile workers (its tensors are written there)."""
    p = pattern("longformer")
    q, k, v = inputs(1, 2, 2, 130, 130, 16)
    with torch.inference_mode():
        out = compile(p)(q, k, v)
    assert max_err(out, attention_reference(p, q, k, v)[0]) < 1e-5


def _pools_in_child(queue):
    torch.set_num_threads(1)  # as DataLoader workers do: GNU OpenMP hangs in a forked child
    queue.put(len(reference._WORKERS))


def test_a_forked_child_forgets_the_parents_workers(split_work):
    """A forked child has none of the parent's worker threads: it must not wait on their
    pool (it would wait forever), so the pools are forgotten at the fork."""
    import multiprocessing
    p = pattern("longformer")
    q, k, v = inputs(1, 2, 2, 130, 130, 16)
    attention_tiled(p, q, k, v, layout=lower(p.at(130), 130, 130, 16, 16))
    assert 2 in reference._WORKERS
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_pools_in_child, args=(queue,))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0 and queue.get(timeout=5) == 0


def test_a_score_that_overflows_takes_the_exact_path():
    """Finite inputs whose product overflows at a hidden pair: the bias (-inf added) would
    make it NaN; the result is checked and the exact path (pairs selected away) taken."""
    p = loads("pattern c { causal }").pattern("c")
    q, k, v = (torch.zeros(1, 1, 2, 16) for _ in range(3))
    v[..., 0] = torch.tensor([1.0, 2.0])
    q[0, 0, 0, 0], k[0, 0, 1, 0] = 100.0, 1e38  # q0 . k1 * 0.25 overflows: pair (0, 1) hidden
    out, lse = attention_tiled(p, q, k, v)
    want_out, want_lse = attention_reference(p, q, k, v)
    assert torch.isfinite(out).all() and max_err(out, want_out) < 1e-6
    assert max_err(lse, want_lse) < 1e-6


@pytest.mark.parametrize("name,batch,heads,kv_heads,n_q,n_k,head_dim", CASES[:4],
                         ids=[c[0] for c in CASES[:4]])
def test_compiled_on_cpu_matches_float64_autograd(no_interpreter, name, batch, heads, kv_heads,
                                                  n_q, n_k, head_dim):
    p = pattern(name)
    q, k, v = inputs(batch, heads, kv_heads, n_q, n_k, head_dim)
    keep = padding(batch, n_k)
    grad_out = torch.randn_like(q)
    attn = compile(p)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out = attn(*leaves, scale=0.3, key_padding=keep)
    out.backward(grad_out)
    want = reference_grads(p, q, k, v, grad_out, scale=0.3, key_padding=keep)
    for got, ref in zip([out] + [t.grad for t in leaves], want):
        assert max_err(got, ref) < 1e-4


def test_empty_rows_give_zero_output_and_gradient(no_interpreter):
    # causal & window(4) with n_q < n_k: the queries whose four candidate keys are all
    # padding have no key; their output and every gradient through them are 0.
    p = pattern(N.Intersect(N.Causal(), N.Window(N.Num(4))))
    q, k, v = inputs(2, 2, 2, 24, 40, 16)
    keep = torch.ones(2, 40, dtype=torch.bool)
    keep[0, 20:] = False  # batch 0: the last 20 keys are padding, its last rows see nothing
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out = compile(p)(*leaves, key_padding=keep)
    out.backward(torch.randn_like(out))
    empty = ~(p.mask(24, 40)[None] & keep[:, None, :]).any(-1)  # [batch, n_q]
    assert empty.sum() >= 3
    rows = out.detach().permute(0, 2, 1, 3)[empty]
    assert torch.equal(rows, torch.zeros(int(empty.sum()), 2, 16))
    assert not leaves[0].grad.permute(0, 2, 1, 3)[empty].any()
    assert not leaves[1].grad[0, :, 20:].any() and not leaves[2].grad[0, :, 20:].any()


def test_low_precision_inputs_on_cpu(no_interpreter):
    p = pattern("heads")
    q, k, v = (t.to(torch.bfloat16) for t in inputs(1, 2, 1, 50, 70, 16))
    out = compile(p)(q, k, v)
    assert out.dtype == torch.bfloat16
    want, _ = attention_reference(p, q, k, v)
    assert max_err(out, want) < 2e-2


@pytest.mark.parametrize("tensor", ["v", "k"])
def test_nan_at_an_unseen_key_stays_out_of_rows(no_interpreter, tensor):
    # causal: only the last query sees the last key. A NaN there (and at padding keys) must
    # not reach the other rows, forward or backward; masked terms are selected, not x 0.
    p = pattern("causal")
    q, k, v = inputs(1, 2, 2, 30, 30, 16)
    keep = torch.ones(1, 30, dtype=torch.bool)
    keep[0, 10] = False
    poisoned = {"k": k, "v": v}[tensor]
    poisoned[0, :, -1, 3] = float("nan")
    poisoned[0, :, 10] = float("nan")
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out = compile(p)(*leaves, key_padding=keep)
    assert torch.isfinite(out[0, :, :-1]).all()
    assert torch.isnan(out[0, :, -1]).any()
    out[0, :, :-1].sum().backward()
    assert torch.isfinite(leaves[0].grad[0, :, :-1]).all()
    for fn in (attention_reference, attention_tiled):  # the oracle selects too
        ref, _ = fn(p, q, k, v, key_padding=keep)
        assert torch.isfinite(ref[0, :, :-1]).all()


def test_memory_follows_the_allowed_pairs(monkeypatch):
    # At n = 4096 with a 64-token window, every query row's scores are computed once, over no
    # more than its tile's rows and the window's 64 keys before them, in blocks of at most
    # PIECE score elements, and the dense mask is never built.
    p = Pattern(N.Intersect(N.Causal(), N.Window(N.Num(64))))
    n = 4096
    shapes = []
    softmax = reference._softmax_

    def counting(scores, hidden, rows, padding=None):
        shapes.append(scores.shape)
        return softmax(scores, hidden, rows, padding)

    def no_dense_mask(*args, **kwargs):
        raise AssertionError("the tiled reference built a dense mask")

    monkeypatch.setattr(reference, "_softmax_", counting)
    monkeypatch.setattr(Pattern, "mask", no_dense_mask)
    q, k, v = inputs(1, 1, 1, n, n, 16)
    out, _ = attention_tiled(p, q, k, v)
    bm, bn = reference.cpu_tiles(p, n, n, 1, forward=True)
    assert sum(shape[-2] for shape in shapes) == n
    assert max(shape[-1] for shape in shapes) <= bm + 64
    assert max(shape[-2] * shape[-1] for shape in shapes) <= max(reference.PIECE, bm * (bm + 64))
    # spot-check rows against a direct softmax over their window
    for row in (0, 63, 64, 2000, n - 1):
        keys = torch.arange(max(0, row - 63), row + 1)
        scores = (q[0, 0, row] @ k[0, 0, keys].T) * 16 ** -0.5
        want = torch.softmax(scores.double(), -1) @ v[0, 0, keys].double()
        assert max_err(out[0, 0, row], want) < 1e-5


BANDS = [  # pattern, batch, heads, kv heads, n_q, n_k
    (N.Intersect(N.Causal(), N.Window(N.Num(24))), 2, 4, 2, 150, 150),  # GQA, ragged
    (N.Window(N.Num(20)), 1, 2, 2, 100, 133),                           # both sides, n_q < n_k
    ("heads", 2, 4, 2, 90, 90),          # a band in one head case, strides in the other
    ("longformer", 1, 2, 1, 130, 130),   # a band beside a global column: no band
]


def band_rows(p, layout, n_q, n_k, limit):
    return [row for case in range(layout.cases)
            for row in reference._rows(reference.select_head(p.at(n_k), case), layout, case,
                                       n_q, n_k, torch.device("cpu"), limit)]


@pytest.mark.parametrize("expr,batch,heads,kv_heads,n_q,n_k", BANDS, ids=range(len(BANDS)))
@pytest.mark.parametrize("padded", [False, True], ids=["", "padded"])
@pytest.mark.parametrize("most", [None, 3], ids=["one-band", "three-tile-bands"])
def test_bands_match_float64_reference(monkeypatch, expr, batch, heads, kv_heads, n_q, n_k,
                                       padded, most):
    # The forward multiplies a band's 16-row tiles at once (strided views of k and v): equal
    # to the dense float64 reference, also with key padding and bands cut short by PIECE.
    p = pattern(expr)
    layout = lower(p.at(n_k), n_q, n_k, 16, 16)
    if most:  # PIECE for bands of at most `most` tiles
        widest = max(row.width for row in band_rows(p, layout, n_q, n_k, 0))
        monkeypatch.setattr(reference, "PIECE", most * 16 * widest)
    q, k, v = (t.double() for t in inputs(batch, heads, kv_heads, n_q, n_k, 16))
    keep = padding(batch, n_k) if padded else None
    want_out, want_lse = attention_reference(p, q, k, v, key_padding=keep)
    out, lse = attention_tiled(p, q, k, v, dtype=torch.float64, key_padding=keep, layout=layout)
    assert max_err(out, want_out) < 1e-12
    assert torch.equal(torch.isinf(lse), torch.isinf(want_lse))
    finite = torch.isfinite(want_lse)
    assert max_err(lse[finite], want_lse[finite]) < 1e-12
    rows = band_rows(p, layout, n_q, n_k, reference.PIECE)
    bands = [row for row in rows if row.tiles > 1]
    assert bool(bands) == (expr != "longformer")  # the band path ran where it could
    assert all(row.tiles * 16 * row.width <= reference.PIECE for row in bands)
    if most:
        assert max(row.tiles for row in rows) < n_q // 16  # cut short
    assert sum(row.rows.stop - row.rows.start for row in rows) == \
        sum(row.rows.stop - row.rows.start for row in band_rows(p, layout, n_q, n_k, 0))


def test_the_forward_takes_small_tiles_for_a_band_only():
    # A window's band multiplied at once wastes little at 64 rows; causal has no band.
    window = Pattern(N.Intersect(N.Causal(), N.Window(N.Num(1024))))
    causal = Pattern(N.Causal())
    assert reference.cpu_tiles(window, 8192, 8192, 4, forward=True)[0] == 64
    assert reference.cpu_tiles(window, 8192, 8192, 4)[0] > 64
    assert reference.cpu_tiles(causal, 8192, 8192, 4, forward=True) == \
        reference.cpu_tiles(causal, 8192, 8192, 4)


def test_tiles_are_as_tall_as_their_pieces_allow():
    # Long rows are computed in pieces of PIECE scores, so a tall tile costs no more memory:
    # causal at 32768 keeps 512 rows (128 under the former whole-row budget ran 14% slower);
    # only where a piece of PIECE_KEYS keys would exceed PIECE do tiles get shorter.
    causal = Pattern(N.Causal())
    for forward in (True, False):
        assert reference.cpu_tiles(causal, 32768, 32768, 4, forward=forward)[0] == 512
    many = 4 * reference.PIECE // (512 * reference.PIECE_KEYS)  # batch x heads
    bm = reference.cpu_tiles(causal, 4096, 4096, many)[0]
    assert bm < 512 and many * bm * reference.PIECE_KEYS <= reference.PIECE


def test_tiled_reads_the_layout_it_is_given():
    # The runtime passes its cached layout; a layout of other tile sizes gives the same result.
    p = pattern("bigbird")
    q, k, v = (t.double() for t in inputs(1, 2, 2, 70, 90, 16))
    want, _ = attention_reference(p, q, k, v)
    for bm, bn in ((16, 32), (64, 16)):
        layout = lower(p.at(90), 70, 90, bm, bn)
        out, _ = attention_tiled(p, q, k, v, dtype=torch.float64, layout=layout)
        assert max_err(out, want) < 1e-12
