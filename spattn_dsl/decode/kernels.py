"""Triton decode kernels: split-K over the visited pages, then a log-sum-exp merge.

One program of ``split_pages`` takes one (sequence, KV head), one tile of query rows and one
share of that pair's visit list. Its rows are the query heads that share the KV head times
the ``m`` new queries (row ``g * m + i``: head ``kv_head * G + g``, query ``i``), so one page
of keys feeds all of them (GQA). Scores are in base 2 (``qk_scale`` includes log2(e)). The
partial output (normalised) and log-sum-exp of each split go to fp32 buffers that
``merge_splits`` combines; a row with no allowed key gets output 0 and lse -inf. fp32
caches multiply in IEEE fp32 (``DOT_PRECISION``; a GPU's default, tf32, errs by 1e-3).
"""
import triton
import triton.language as tl


@triton.jit
def split_pages(Q, K, V, TABLE, VISIT, FULL, COUNT, MASK, OUT, LSE,
                sq_b, sq_h, sq_m, sk_p, sk_h, sk_s, sm_b, sm_h, sm_m,
                qk_scale, KVH, G, M, R, PAGES,
                PS: tl.constexpr, D: tl.constexpr, BLOCK_R: tl.constexpr,
                BLOCK_D: tl.constexpr, SPLITS: tl.constexpr, DOT_PRECISION: tl.constexpr):
    bh = tl.program_id(0)
    split = tl.program_id(1)
    b = bh // KVH
    kvh = bh % KVH
    rows = tl.program_id(2) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < R
    head = kvh * G + rows // M
    i = rows % M
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    slots = tl.arange(0, PS)
    q = tl.load(Q + b * sq_b + head[:, None] * sq_h + i[:, None] * sq_m + d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    mask_rows = MASK + b * sm_b + head[:, None] * sm_h + i[:, None] * sm_m

    count = tl.load(COUNT + bh)
    share = tl.cdiv(count, SPLITS)
    start = split * share
    end = tl.minimum(start + share, count)
    m_i = tl.full([BLOCK_R], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_R], tl.float32)
    acc = tl.zeros([BLOCK_R, BLOCK_D], tl.float32)
    for j in range(start, end):
        column = tl.load(VISIT + bh * PAGES + j)
        page = tl.load(TABLE + b * PAGES + column).to(tl.int64)
        full = tl.load(FULL + bh * PAGES + j).to(tl.int32)
        offsets = page * sk_p + kvh * sk_h + slots[:, None] * sk_s + d[None, :]
        k = tl.load(K + offsets, mask=d_ok[None, :], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        # a FULL page reads no mask: the masked-off load touches no memory
        keep = tl.load(mask_rows + (column * PS + slots)[None, :],
                       mask=row_ok[:, None] & (slots[None, :] < PS * (1 - full)), other=1)
        s = tl.where((keep != 0) & row_ok[:, None], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(V + offsets, mask=d_ok[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    part = (bh * SPLITS + split) * R + rows
    tl.store(OUT + part[:, None] * D + d[None, :], acc / l_safe[:, None],
             mask=row_ok[:, None] & d_ok[None, :])
    tl.store(LSE + part, tl.where(empty, float("-inf"), m_i + tl.log2(l_safe)), mask=row_ok)


@triton.jit
def merge_splits(OUT_PART, LSE_PART, OUT, LSE, so_b, so_h, so_m, KVH, G, M, R,
                 D: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
                 SPLITS: tl.constexpr):
    bh = tl.program_id(0)
    b = bh // KVH
    kvh = bh % KVH
    rows = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < R
    head = kvh * G + rows // M
    i = rows % M
    d = tl.arange(0, BLOCK_D)
    ok = row_ok[:, None] & (d < D)[None, :]
    m_i = tl.full([BLOCK_R], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_R], tl.float32)
    acc = tl.zeros([BLOCK_R, BLOCK_D], tl.float32)
    for split in range(SPLITS):
        part = (bh * SPLITS + split) * R + rows
        lse = tl.load(LSE_PART + part, mask=row_ok, other=float("-inf"))
        out = tl.load(OUT_PART + part[:, None] * D + d[None, :], mask=ok, other=0.0)
        m_new = tl.maximum(m_i, lse)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        weight = tl.exp2(lse - m_safe)
        acc = acc * alpha[:, None] + out * weight[:, None]
        l_i = l_i * alpha + weight
        m_i = m_new
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    target = b * so_b + head * so_h + i * so_m
    tl.store(OUT + target[:, None] + d[None, :], (acc / l_safe[:, None]).to(OUT.dtype.element_ty),
             mask=ok)
    lse_out = tl.where(empty, float("-inf"), (m_i + tl.log2(l_safe)) * 0.6931471805599453)
    tl.store(LSE + (b * KVH * G + head) * M + i, lse_out, mask=row_ok)
