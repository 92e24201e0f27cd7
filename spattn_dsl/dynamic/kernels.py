"""Triton kernels over per-row key lists ("slots"): the dynamic part of a pattern's attention.

``Slots`` int32 ``[B, H, n_q, L]`` holds, for every query row, the absolute key positions it
attends beyond the static part (-1: nothing), each key at most once per row. One program
takes ``BLOCK_M`` rows of one (batch, head) and walks their slots ``BLOCK_N`` at a time,
gathering each row's own keys (``[BLOCK_M, BLOCK_N, D]`` loads, elementwise products: no
tensor cores, the price of per-row lists). It writes a log-sum-exp (natural log) so that the
runtime merges it with the static part's. The backward recomputes the probabilities from the
final lse and Delta, writes dQ per row and adds dK/dV by fp32 atomics (order-dependent
rounding on a GPU: not bitwise deterministic)."""
import triton
import triton.language as tl


@triton.jit
def _gather_rows(Base, idx, ok, stride_n, stride_d, HEAD_DIM: tl.constexpr,
                 HEAD_DIM_PAD: tl.constexpr):
    """``[BLOCK_M, BLOCK_N, HEAD_DIM_PAD]`` rows ``idx`` of ``Base`` (0 where not ``ok``)."""
    d = tl.arange(0, HEAD_DIM_PAD)
    ptrs = Base + idx[:, :, None] * stride_n + d[None, None, :] * stride_d
    return tl.load(ptrs, mask=ok[:, :, None] & (d[None, None, :] < HEAD_DIM), other=0.0)


@triton.jit
def slots_forward(
    Q, K, V, Slots, Out, Lse,
    stride_qz, stride_qh, stride_qm, stride_qd,
    stride_kz, stride_kh, stride_kn, stride_kd,
    stride_vz, stride_vh, stride_vn, stride_vd,
    stride_sz, stride_sh, stride_sm, stride_sl,
    stride_oz, stride_oh, stride_om, stride_od,
    stride_lz, stride_lh,
    heads, group, n_q, n_slots, scale_log2,
    HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    tile = tl.program_id(0)
    zh = tl.program_id(1)
    z, h = zh // heads, zh % heads
    rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_q
    d = tl.arange(0, HEAD_DIM_PAD)
    d_ok = d < HEAD_DIM
    q = tl.load(Q + z * stride_qz + h * stride_qh + rows[:, None] * stride_qm
                + d[None, :] * stride_qd, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    q = q.to(tl.float32)
    Kh = K + z * stride_kz + (h // group) * stride_kh
    Vh = V + z * stride_vz + (h // group) * stride_vh
    S = Slots + z * stride_sz + h * stride_sh + rows[:, None] * stride_sm
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], tl.float32)
    for start in range(0, n_slots, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        idx = tl.load(S + cols[None, :] * stride_sl,
                      mask=row_ok[:, None] & (cols[None, :] < n_slots), other=-1)
        ok = idx >= 0
        k = _gather_rows(Kh, idx, ok, stride_kn, stride_kd, HEAD_DIM, HEAD_DIM_PAD)
        s = tl.sum(q[:, None, :] * k.to(tl.float32), axis=2) * scale_log2
        s = tl.where(ok, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.where(ok, tl.math.exp2(s - m_safe[:, None]), 0.0)
        alpha = tl.math.exp2(m_i - m_safe)
        v = _gather_rows(Vh, idx, ok, stride_vn, stride_vd, HEAD_DIM, HEAD_DIM_PAD)
        acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v.to(tl.float32), axis=1)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        m_i = m_new
    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(tl.where(empty, 1.0, l_i)))
                   * 0.6931471805599453)
    tl.store(Out + z * stride_oz + h * stride_oh + rows[:, None] * stride_om
             + d[None, :] * stride_od, out, mask=row_ok[:, None] & d_ok[None, :])
    tl.store(Lse + z * stride_lz + h * stride_lh + rows, lse, mask=row_ok)


@triton.jit
def slots_backward(
    Q, K, V, Slots, DO, Lse, Delta, DQ, DK, DV,
    stride_qz, stride_qh, stride_qm, stride_qd,
    stride_kz, stride_kh, stride_kn, stride_kd,
    stride_vz, stride_vh, stride_vn, stride_vd,
    stride_sz, stride_sh, stride_sm, stride_sl,
    stride_doz, stride_doh, stride_dom, stride_dod,
    stride_lz, stride_lh,
    stride_gz, stride_gh, stride_gn, stride_gd,
    heads, group, n_q, n_slots, scale_log2, scale,
    HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dQ (written, fp32, same layout as Q) and dK, dV (added into fp32 ``[B, H_kv, n_k, D]``
    buffers with the strides ``stride_g*``) over the slots, with P = exp(S - lse) from the
    final lse and dS = P (dP - Delta)."""
    tile = tl.program_id(0)
    zh = tl.program_id(1)
    z, h = zh // heads, zh % heads
    rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_q
    d = tl.arange(0, HEAD_DIM_PAD)
    d_ok = d < HEAD_DIM
    tile_ok = row_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + z * stride_qz + h * stride_qh + rows[:, None] * stride_qm
                + d[None, :] * stride_qd, mask=tile_ok, other=0.0).to(tl.float32)
    do = tl.load(DO + z * stride_doz + h * stride_doh + rows[:, None] * stride_dom
                 + d[None, :] * stride_dod, mask=tile_ok, other=0.0).to(tl.float32)
    lse = tl.load(Lse + z * stride_lz + h * stride_lh + rows, mask=row_ok, other=0.0)
    lse = tl.where(lse == float("-inf"), 0.0, lse) * 1.4426950408889634
    delta = tl.load(Delta + z * stride_lz + h * stride_lh + rows, mask=row_ok, other=0.0)
    kv = h // group
    Kh = K + z * stride_kz + kv * stride_kh
    Vh = V + z * stride_vz + kv * stride_vh
    G_off = z * stride_gz + kv * stride_gh
    S = Slots + z * stride_sz + h * stride_sh + rows[:, None] * stride_sm
    dq = tl.zeros([BLOCK_M, HEAD_DIM_PAD], tl.float32)
    for start in range(0, n_slots, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        idx = tl.load(S + cols[None, :] * stride_sl,
                      mask=row_ok[:, None] & (cols[None, :] < n_slots), other=-1)
        ok = idx >= 0
        k = _gather_rows(Kh, idx, ok, stride_kn, stride_kd, HEAD_DIM, HEAD_DIM_PAD).to(tl.float32)
        v = _gather_rows(Vh, idx, ok, stride_vn, stride_vd, HEAD_DIM, HEAD_DIM_PAD).to(tl.float32)
        s = tl.sum(q[:, None, :] * k, axis=2) * scale_log2
        p = tl.where(ok, tl.math.exp2(s - lse[:, None]), 0.0)
        dp = tl.sum(do[:, None, :] * v, axis=2)
        ds = tl.where(ok, p * (dp - delta[:, None]), 0.0)
        dq += tl.sum(ds[:, :, None] * k, axis=1) * scale
        g_ptrs = idx[:, :, None] * stride_gn + d[None, None, :] * stride_gd + G_off
        g_ok = ok[:, :, None] & d_ok[None, None, :]
        tl.atomic_add(DK + g_ptrs, ds[:, :, None] * q[:, None, :] * scale, mask=g_ok)
        tl.atomic_add(DV + g_ptrs, p[:, :, None] * do[:, None, :], mask=g_ok)
    tl.store(DQ + z * stride_qz + h * stride_qh + rows[:, None] * stride_qm
             + d[None, :] * stride_qd, dq, mask=tile_ok)
