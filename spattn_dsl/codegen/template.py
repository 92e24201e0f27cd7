"""The Triton source template of the forward kernel (filled in by ``codegen.render``).

One program computes one query tile (``BLOCK_M`` rows) of one (batch, head): it visits the
FULL key tiles of its row without any predicate, then the PARTIAL ones with the pattern's
predicate and the bounds mask (or, ``MERGED``, one loop over a row's range of tiles with the
predicate applied on its PARTIAL end tiles only: one software pipeline instead of two), keeping an online softmax in fp32 with exp2. Rows with no
allowed key give 0. The log-sum-exp (natural log) is saved for the backward pass.
"""
from string import Template

HELPERS = '''
@triton.jit
def _floordiv(a, b):
    quot = a // b
    rem = a - quot * b
    return tl.where((rem != 0) & ((rem < 0) != (b < 0)), quot - 1, quot)


@triton.jit
def _floormod(a, b):
    return a - b * _floordiv(a, b)


@triton.jit
def _isqrt(x):
    root = tl.sqrt(x.to(tl.float64)).to(tl.int64)
    root = tl.where(root * root > x, root - 1, root)
    return tl.where((root + 1) * (root + 1) <= x, root + 1, root)


@triton.jit
def _log2(x):
    bits = tl.log2(x.to(tl.float64)).to(tl.int64)
    one = tl.full(bits.shape, 1, tl.int64)
    bits = tl.where((one << bits) > x, bits - 1, bits)
    return tl.where((one << (bits + 1)) <= x, bits + 1, bits)


@triton.jit
def _drawn(table, row, key, n_rows, R: tl.constexpr):
    """Whether ``key`` is among the ``R`` keys drawn for ``row``: [BLOCK_M, 1] x [1, BLOCK_N]."""
    row = tl.minimum(row, n_rows - 1)
    hit = (row < 0) & (key < 0)
    for j in tl.static_range(R):
        hit = hit | (tl.load(table + row * R + j) == key)
    return hit
'''

KERNEL = Template('''
@triton.jit
def _allowed(q_pos, k_pos, case$table_params):
    """The pattern on absolute positions q_pos [BLOCK_M, 1], k_pos [1, BLOCK_N]."""
$predicate_body


@triton.jit
def ${name}(
    Q, K, V, Out, Lse,
    FullCounts, FullIndices, PartialCounts, PartialIndices, RowOrder, VisitStart,
    stride_qz, stride_qh, stride_qm, stride_qd,
    stride_kz, stride_kh, stride_kn, stride_kd,
    stride_vz, stride_vh, stride_vn, stride_vd,
    stride_oz, stride_oh, stride_om, stride_od,
    stride_lz, stride_lh,
    n_batch, n_heads, kv_group, n_q, n_k, n_tiles_q, full_width, partial_width,
    qk_scale$table_params,
    CASES: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    FULL_RANGE: tl.constexpr, PARTIAL_RANGE: tl.constexpr, EVEN_N: tl.constexpr,
    MERGED: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    slot = pid // (n_batch * n_heads)
    bh = pid % (n_batch * n_heads)
    z = (bh // n_heads).to(tl.int64)
    h = bh % n_heads
    kv_h = (h // kv_group).to(tl.int64)
    case = h % CASES
    tile_m = tl.load(RowOrder + slot)

    offs_m = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)            # [BLOCK_M] query rows
    offs_n = tl.arange(0, BLOCK_N)                               # [BLOCK_N]
    offs_d = tl.arange(0, HEAD_DIM_PAD)                          # [HEAD_DIM_PAD]
    q_pos = (offs_m + (n_k - n_q))[:, None]                      # [BLOCK_M, 1] absolute
    d_ok = offs_d < HEAD_DIM                                     # [HEAD_DIM_PAD]

    q_ptrs = Q + z * stride_qz + h.to(tl.int64) * stride_qh \\
        + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=(offs_m[:, None] < n_q) & d_ok[None, :], other=0.0)  # [BLOCK_M, HEAD_DIM_PAD]
    k_ptrs = K + z * stride_kz + kv_h * stride_kh \\
        + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd   # [HEAD_DIM_PAD, BLOCK_N] tile 0
    v_ptrs = V + z * stride_vz + kv_h * stride_vh \\
        + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd   # [BLOCK_N, HEAD_DIM_PAD] tile 0

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)          # [BLOCK_M] running max (log2 units)
    l_i = tl.zeros([BLOCK_M], tl.float32)                        # [BLOCK_M] running sum
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], tl.float32)          # [BLOCK_M, HEAD_DIM_PAD]

    row = case * n_tiles_q + tile_m
    if MERGED:
        n_full = tl.load(FullCounts + row)
        first_full = tl.load(FullIndices + row * full_width)
        start = tl.load(VisitStart + row)
        n_visit = n_full + tl.load(PartialCounts + row)
        for j in range(0, n_visit):
            tile_n = start + j
            start_n = (tile_n * BLOCK_N).to(tl.int64)
            offs_kn = tile_n * BLOCK_N + offs_n                  # [BLOCK_N] key positions
            k_ok = offs_kn < n_k                                 # [BLOCK_N]
            if EVEN_N and HEAD_DIM == HEAD_DIM_PAD:
                k = tl.load(k_ptrs + start_n * stride_kn)        # [HEAD_DIM_PAD, BLOCK_N]
                v = tl.load(v_ptrs + start_n * stride_vn)        # [BLOCK_N, HEAD_DIM_PAD]
            else:
                k = tl.load(k_ptrs + start_n * stride_kn, mask=k_ok[None, :] & d_ok[:, None], other=0.0)
                v = tl.load(v_ptrs + start_n * stride_vn, mask=k_ok[:, None] & d_ok[None, :], other=0.0)
            qk = tl.dot(q, k, input_precision=DOT_PRECISION)   # [BLOCK_M, BLOCK_N]
            if (tile_n < first_full) | (tile_n >= first_full + n_full):  # a PARTIAL tile
                allowed = _allowed(q_pos, offs_kn[None, :], case$table_args) & k_ok[None, :]
                qk = tl.where(allowed, qk, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)    # [BLOCK_M]
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.math.exp2(qk * qk_scale - m_use[:, None])     # [BLOCK_M, BLOCK_N]
            alpha = tl.math.exp2(m_i - m_use)                    # [BLOCK_M]
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
            m_i = m_new
    else:
        n_full = tl.load(FullCounts + row)
        full_row = FullIndices + row * full_width
        first_full = tl.load(full_row)
        for j in range(0, n_full):
            if FULL_RANGE:
                tile_n = first_full + j
            else:
                tile_n = tl.load(full_row + j)
            start_n = (tile_n * BLOCK_N).to(tl.int64)
            if HEAD_DIM == HEAD_DIM_PAD:
                k = tl.load(k_ptrs + start_n * stride_kn)            # [HEAD_DIM_PAD, BLOCK_N]
                v = tl.load(v_ptrs + start_n * stride_vn)            # [BLOCK_N, HEAD_DIM_PAD]
            else:
                k = tl.load(k_ptrs + start_n * stride_kn, mask=d_ok[:, None], other=0.0)
                v = tl.load(v_ptrs + start_n * stride_vn, mask=d_ok[None, :], other=0.0)
            qk = tl.dot(q, k, input_precision=DOT_PRECISION)       # [BLOCK_M, BLOCK_N]
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)        # [BLOCK_M]
            p = tl.math.exp2(qk * qk_scale - m_new[:, None])         # [BLOCK_M, BLOCK_N]
            alpha = tl.math.exp2(m_i - m_new)                        # [BLOCK_M]
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
            m_i = m_new

        n_partial = tl.load(PartialCounts + row)
        partial_row = PartialIndices + row * partial_width
        first_partial = tl.load(partial_row)
        for j in range(0, n_partial):
            if PARTIAL_RANGE:
                tile_n = first_partial + j
            else:
                tile_n = tl.load(partial_row + j)
            start_n = (tile_n * BLOCK_N).to(tl.int64)
            offs_kn = tile_n * BLOCK_N + offs_n                      # [BLOCK_N] key positions
            k_ok = offs_kn < n_k                                     # [BLOCK_N]
            if EVEN_N and HEAD_DIM == HEAD_DIM_PAD:
                k = tl.load(k_ptrs + start_n * stride_kn)            # [HEAD_DIM_PAD, BLOCK_N]
                v = tl.load(v_ptrs + start_n * stride_vn)            # [BLOCK_N, HEAD_DIM_PAD]
            else:
                k = tl.load(k_ptrs + start_n * stride_kn, mask=k_ok[None, :] & d_ok[:, None], other=0.0)
                v = tl.load(v_ptrs + start_n * stride_vn, mask=k_ok[:, None] & d_ok[None, :], other=0.0)
            k_pos = offs_kn[None, :]                                 # [1, BLOCK_N] absolute
            allowed = _allowed(q_pos, k_pos, case$table_args)        # [BLOCK_M, BLOCK_N] or a side
            if not EVEN_N:
                allowed = allowed & k_ok[None, :]
            qk = tl.dot(q, k, input_precision=DOT_PRECISION)       # [BLOCK_M, BLOCK_N]
            qk = tl.where(allowed, qk, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)        # [BLOCK_M]
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)     # all masked so far: no NaN
            p = tl.math.exp2(qk * qk_scale - m_use[:, None])         # [BLOCK_M, BLOCK_N]
            alpha = tl.math.exp2(m_i - m_use)                        # [BLOCK_M]
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
            m_i = m_new

    empty = l_i == 0.0                                           # [BLOCK_M] rows with no key
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]                                  # [BLOCK_M, HEAD_DIM_PAD]
    o_ptrs = Out + z * stride_oz + h.to(tl.int64) * stride_oh \\
        + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=(offs_m[:, None] < n_q) & d_ok[None, :])
    lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(l_safe)) * 0.6931471805599453)
    tl.store(Lse + z * stride_lz + h.to(tl.int64) * stride_lh + offs_m, lse, mask=offs_m < n_q)
''')
