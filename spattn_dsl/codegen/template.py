"""The Triton source templates of the forward and backward kernels (filled in by
``codegen.render``).

Forward: one program computes one query tile (``BLOCK_M`` rows) of one (batch, head): it
visits the FULL key tiles of its row without any predicate, then the PARTIAL ones with the
pattern's predicate and the bounds mask (or, ``MERGED``, one loop over all of them: a row's
range of tiles, or its FULL then its PARTIAL list, with the predicate on PARTIAL tiles only:
one software pipeline instead of two), keeping an online softmax in fp32 with exp2. Rows with
no allowed key give 0. The log-sum-exp (natural log) is saved for the backward pass.
``HAS_PAD`` adds a per-key padding mask (``key_padding``) to every tile. ``DESCRIPTORS`` reads
the visited tiles through tensor descriptors (Hopper's bulk tensor copies) instead of
pointer loads.

Non-finite inputs: a pair the mask hides contributes nothing, even where its key or value is
NaN or inf (a masked probability is 0, but ``0 * NaN`` is NaN inside ``tl.dot``): padding keys
are zeroed in every tile that reads them; on PARTIAL tiles, where a key may be hidden from some
rows and seen by others, hidden pairs are selected away (the dS of the backward too) and the
non-finite entries of V (of K in dQ) are zeroed before the dot, the rows that see one set to
NaN (``_drop_nonfinite``: elementwise, no branch). FULL tiles (every pair seen) pay nothing and
give IEEE's result. So a row that sees a non-finite key or value gets a non-finite output (NaN
in every column where its tile is PARTIAL) and NaN gradients; every other row is exact; rows
with no allowed key give 0. Not covered: a NaN in Q or dO reaches dK of the keys its row cannot
see in PARTIAL tiles.

Backward (``BACKWARD_HELPERS``, ``BACKWARD``): see the comment above them.
"""
from string import Template

HELPERS = '''
@triton.jit
def _program_slot(n_bh, n_tiles, HEAD_MAJOR: tl.constexpr):
    """(slot in the tile order, batch*head index) of this program. Slot-major: concurrent
    programs are one tile of every head; head-major: the tiles of one head run together and
    share its K/V (or Q/dO) in L2."""
    pid = tl.program_id(0)
    if HEAD_MAJOR:
        return pid % n_tiles, pid // n_tiles
    return pid // n_bh, pid % n_bh


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
    """floor(sqrt(x)), exact for x in [0, 2**62] (where(...)'s range): a float estimate, corrected."""
    x = x.to(tl.int64)
    root = tl.sqrt(tl.maximum(x, 0).to(tl.float64)).to(tl.int64)
    root = tl.where(root * root > x, root - 1, root)
    return tl.where((root + 1) * (root + 1) <= x, root + 1, root)


@triton.jit
def _log2(x):
    """floor(log2(x)), exact for x in [1, 2**62]: a float estimate, corrected by right shifts
    (2**(bits + 1) would overflow at 2**62). Shift counts stay in [0, 63] on every lane, even
    lanes the caller masks (a larger count is undefined)."""
    x = x.to(tl.int64)
    bits = tl.minimum(tl.log2(tl.maximum(x, 1).to(tl.float64)).to(tl.int64), 62)
    bits = tl.where((x >> bits) == 0, bits - 1, bits)           # 2**bits > x
    return tl.where((x >> (bits + 1)) > 0, bits + 1, bits)      # 2**(bits + 1) <= x


@triton.jit
def _drawn(table, row, key, n_rows, R: tl.constexpr):
    """Whether ``key`` is among the ``R`` keys drawn for ``row``: [BLOCK_M, 1] x [1, BLOCK_N]."""
    row = tl.minimum(row, n_rows - 1)
    hit = (row < 0) & (key < 0)
    for j in tl.static_range(R):
        hit = hit | (tl.load(table + row * R + j) == key)
    return hit


@triton.jit
def _kept(pad_row, offs_kn, n_k):
    """[BLOCK_N] whether each key is a real token (``key_padding``), False past ``n_k``."""
    return tl.load(pad_row + offs_kn, mask=(offs_kn >= 0) & (offs_kn < n_k), other=0) != 0


@triton.jit
def _doc_start(doc_row, pos, n_k, other):
    """Each position's entry of a per-position row (``documents``: its document's start or
    length); ``other`` outside ``[0, n_k)``."""
    return tl.load(doc_row + pos, mask=(pos >= 0) & (pos < n_k), other=other)


@triton.jit
def _document_of(DocStart, DocLength, row_offset, pos, n_k, outside, DOCUMENTS: tl.constexpr):
    """(this batch row's document starts, each position's document start (``outside`` past
    ``[0, n_k)``) and length); without documents the row is one document: 0 and ``n_k``."""
    doc_row = DocStart + row_offset
    if DOCUMENTS:
        start = _doc_start(doc_row, pos, n_k, outside)
        length = _doc_start(DocLength + row_offset, pos, n_k, 1)
    else:
        start = pos * 0
        length = start + n_k
    return doc_row, start, length


@triton.jit
def _kv_tile(k_desc, v_desc, k_base, v_base, k_ptrs, v_ptrs, desc_row, start_n, offs_kn, k_ok, d_ok,
             stride_kn, stride_vn, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
             DESCRIPTORS: tl.constexpr, GATHER_K: tl.constexpr, EVEN_N: tl.constexpr):
    """K^T ``[HEAD_DIM_PAD, BLOCK_N]`` and V ``[BLOCK_N, HEAD_DIM_PAD]`` of a key tile that may
    hold holes or run past n_k: by descriptor (from row ``desc_row`` of its view), at gathered
    positions ``offs_kn``, or from tile 0's pointers moved by ``start_n`` rows."""
    if DESCRIPTORS:
        k = tl.trans(k_desc.load([desc_row, 0]))
        v = v_desc.load([desc_row, 0])
    elif GATHER_K:
        k = tl.load(k_base + offs_kn.to(tl.int64)[None, :] * stride_kn, mask=k_ok[None, :] & d_ok[:, None], other=0.0)
        v = tl.load(v_base + offs_kn.to(tl.int64)[:, None] * stride_vn, mask=k_ok[:, None] & d_ok[None, :], other=0.0)
    elif EVEN_N and HEAD_DIM == HEAD_DIM_PAD:
        k = tl.load(k_ptrs + start_n * stride_kn)
        v = tl.load(v_ptrs + start_n * stride_vn)
    else:
        k = tl.load(k_ptrs + start_n * stride_kn, mask=k_ok[None, :] & d_ok[:, None], other=0.0)
        v = tl.load(v_ptrs + start_n * stride_vn, mask=k_ok[:, None] & d_ok[None, :], other=0.0)
    return k, v


@triton.jit
def _drop_nonfinite(acc, x, seen):
    """(acc, x) for ``tl.dot(w, x, acc)`` where ``w`` [M, N] is 0 outside ``seen``: the NaN and
    inf entries of ``x`` [N, D] are zeroed (``0 * NaN`` is NaN inside a dot, so a pair that a
    row cannot see would leak), and each row of ``acc`` that sees a key holding one becomes
    NaN. Elementwise work only (no dot, no branch), on PARTIAL tiles only."""
    finite = tl.abs(x.to(tl.float32)) < float("inf")             # NaN compares false
    bad_key = tl.max(tl.where(finite, 0.0, 1.0), 1)              # [N]
    bad_row = tl.max(tl.where(seen, bad_key[None, :], 0.0), 1)   # [M]
    acc = tl.where(bad_row[:, None] > 0.0, float("nan"), acc)
    return acc, tl.where(finite, x, 0.0).to(x.dtype)


@triton.jit
def _rows_descriptor(base, n_rows, stride_row, BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr):
    """A tensor descriptor of one (batch, head)'s ``[n_rows, HEAD_DIM]`` rows, read in
    ``[BLOCK, HEAD_DIM]`` tiles (Hopper's bulk tensor copies; out-of-range rows read 0)."""
    return tl.make_tensor_descriptor(base, shape=[n_rows, HEAD_DIM], strides=[stride_row, 1],
                                     block_shape=[BLOCK, HEAD_DIM])


@triton.jit
def _gathered(Idx, start, offs, size, n, shift, step, length, GATHER: tl.constexpr):
    """(positions, valid) of a tile ``offs`` (= ``start`` + 0, 1, ...) of virtual indices:
    ``GATHER`` 1 reads them through the gather vector ``Idx`` (-1 = a hole; holes read position
    0, masked by ``valid``); 2 computes them for residue classes of ``length`` (index
    r * length + a is position r + step * (shift // step + a) - shift: the rows' bottom-right
    shift, 0 for keys); 0 takes the indices themselves (valid below ``n``)."""
    if GATHER == 2:  # classes are padded to whole tiles: one division per tile, not per row
        virtual = offs.to(tl.int32)
        cls = start // length
        pos = cls + step * (shift // step + virtual - cls * length) - shift
        ok = (pos >= 0) & (pos < n) & (virtual < size)
        return tl.where(ok, pos, 0).to(offs.dtype), ok
    elif GATHER == 1:
        idx = tl.load(Idx + offs, mask=offs < size, other=-1)
        return tl.maximum(idx, 0), idx >= 0
    else:
        return offs, offs < n


@triton.jit
def _class_view(first_virtual, step, length, n, GATHER: tl.constexpr):
    """(its residue class r, the class's first virtual index, its row count, its row step) of
    the tile at ``first_virtual``: a residue class is the strided view of rows r, r + step,
    ...; without residue classes the whole ``n`` rows (class 0, step 1)."""
    if GATHER == 2:
        r = first_virtual // length
        return r, r * length, tl.maximum((n - r + step - 1) // step, 1), step
    else:
        return first_virtual * 0, 0, n, 1


@triton.jit
def _merge_into(o_ptrs, lse_ptrs, out, lse, o_mask, m_ok):
    """Merge (out, lse) of one term into the (fp32) result of the terms before it:
    lse = logaddexp, out = weights e^(lse_t - lse) times each out_t."""
    lse_old = tl.load(lse_ptrs, mask=m_ok, other=float("-inf"))
    out_old = tl.load(o_ptrs, mask=o_mask, other=0.0).to(tl.float32)
    top = tl.maximum(lse_old, lse)
    top = tl.where(top == float("-inf"), 0.0, top)
    w_old = tl.exp(lse_old - top)
    w_new = tl.exp(lse - top)
    total = w_old + w_new
    t_safe = tl.where(total == 0.0, 1.0, total)
    merged = (out_old * w_old[:, None] + out * w_new[:, None]) / t_safe[:, None]
    return merged, tl.where(total == 0.0, float("-inf"), top + tl.log(t_safe))
'''

KERNEL = Template('''
@triton.jit
def _allowed(q_pos, k_pos, case, n_pos, draw_pos$table_params):
    """The pattern on absolute positions q_pos [BLOCK_M, 1], k_pos [1, BLOCK_N] (or the
    transposes); in a documents kernel ``n_pos`` is ``n`` where the predicate mentions it and
    ``draw_pos`` each query's flat position ``z * n_k + q`` (its random links' table row)."""
$predicate_body


@triton.jit
def ${name}(
    Q, K, V, Out, Lse, KeyPad, QIdx, KIdx, DocStart, DocLength,
    FullCounts, FullIndices, PartialCounts, PartialIndices, RowOrder, VisitStart,
    stride_qz, stride_qh, stride_qm, stride_qd,
    stride_kz, stride_kh, stride_kn, stride_kd,
    stride_vz, stride_vh, stride_vn, stride_vd,
    stride_oz, stride_oh, stride_om, stride_od,
    stride_lz, stride_lh, stride_pz, stride_sz,
    n_batch, n_heads, kv_group, n_q, n_k, m_q, m_k, res_step, q_class, k_class,
    head_first, head_step, n_tiles_q, full_width, partial_width,
    qk_scale$table_params,
    CASES: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    FULL_RANGE: tl.constexpr, PARTIAL_RANGE: tl.constexpr, EVEN_N: tl.constexpr,
    MERGED: tl.constexpr, VISIT_RANGE: tl.constexpr, HAS_PAD: tl.constexpr, GATHER_Q: tl.constexpr,
    GATHER_K: tl.constexpr, ACCUMULATE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    DOCUMENTS: tl.constexpr, DESCRIPTORS: tl.constexpr,
    HEAD_MAJOR: tl.constexpr,
):
    slot, bh = _program_slot(n_batch * n_heads, n_tiles_q, HEAD_MAJOR)
    z = (bh // n_heads).to(tl.int64)
    h = head_first + head_step * (bh % n_heads)                  # the heads of one case
    kv_h = (h // kv_group).to(tl.int64)
    case = h % CASES
    if DOCUMENTS:  # per-call lists, one set per batch row
        layout_row = z * n_tiles_q
    else:
        layout_row = 0
    tile_m = tl.load(RowOrder + layout_row + slot)
    pad_row = KeyPad + z * stride_pz                             # this batch's key_padding row

    offs_m = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)            # [BLOCK_M] (virtual) rows
    rows, m_ok = _gathered(QIdx, tile_m * BLOCK_M, offs_m, m_q, n_q, n_k - n_q, res_step,
                           q_class, GATHER_Q)                    # [BLOCK_M] query rows
    offs_n = tl.arange(0, BLOCK_N)                               # [BLOCK_N]
    offs_d = tl.arange(0, HEAD_DIM_PAD)                          # [HEAD_DIM_PAD]
    q_pos = (rows + (n_k - n_q))[:, None]                        # [BLOCK_M, 1] absolute
    d_ok = offs_d < HEAD_DIM                                     # [HEAD_DIM_PAD]
    doc_row, q_start, q_len = _document_of(DocStart, DocLength, z * stride_sz, q_pos, n_k, -1,
                                           DOCUMENTS)            # [BLOCK_M, 1] document start, length
    draw_pos = z * n_k + tl.minimum(q_pos, n_k - 1)                # [BLOCK_M, 1]

    q_ptrs = Q + z * stride_qz + h.to(tl.int64) * stride_qh \\
        + rows.to(tl.int64)[:, None] * stride_qm + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=m_ok[:, None] & d_ok[None, :], other=0.0)  # [BLOCK_M, HEAD_DIM_PAD]
    k_base = K + z * stride_kz + kv_h * stride_kh + offs_d[:, None] * stride_kd  # [HEAD_DIM_PAD, 1]
    v_base = V + z * stride_vz + kv_h * stride_vh + offs_d[None, :] * stride_vd  # [1, HEAD_DIM_PAD]
    k_ptrs = k_base + offs_n[None, :] * stride_kn                # [HEAD_DIM_PAD, BLOCK_N] tile 0
    v_ptrs = v_base + offs_n[:, None] * stride_vn                # [BLOCK_N, HEAD_DIM_PAD] tile 0
    # the row's keys: its residue class (the same as its queries'), else every key
    r, k_first, view_rows, view_step = _class_view(tile_m * BLOCK_M // q_class * k_class,
                                                   res_step, k_class, n_k, GATHER_K)
    if DESCRIPTORS:  # K and V tiles by bulk tensor copies (rows past the view read as zeros)
        k_desc = _rows_descriptor(K + z * stride_kz + kv_h * stride_kh + r * stride_kn, view_rows,
                                  stride_kn * view_step, BLOCK_N, HEAD_DIM)
        v_desc = _rows_descriptor(V + z * stride_vz + kv_h * stride_vh + r * stride_vn, view_rows,
                                  stride_vn * view_step, BLOCK_N, HEAD_DIM)
    else:  # unused
        k_desc = K
        v_desc = V

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)          # [BLOCK_M] running max (log2 units)
    l_i = tl.zeros([BLOCK_M], tl.float32)                        # [BLOCK_M] running sum
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], tl.float32)          # [BLOCK_M, HEAD_DIM_PAD]

    row = layout_row + case * n_tiles_q + tile_m
    if MERGED:  # one loop (one software pipeline) over every tile of the row
        n_full = tl.load(FullCounts + row)
        full_row = FullIndices + row * full_width
        partial_row = PartialIndices + row * partial_width
        first_full = tl.load(full_row)
        start = tl.load(VisitStart + row)
        n_visit = n_full + tl.load(PartialCounts + row)
        for j in range(0, n_visit):
            if VISIT_RANGE:  # consecutive tiles, the PARTIAL ones at the ends
                tile_n = start + j
                partial = (tile_n < first_full) | (tile_n >= first_full + n_full)
            else:  # the FULL list, then the PARTIAL one
                partial = j >= n_full
                tile_n = tl.load(full_row + j, mask=j < n_full, other=0) \
                    + tl.load(partial_row + (j - n_full), mask=partial, other=0)
            start_n = (tile_n * BLOCK_N).to(tl.int64)
            offs_kn, k_ok = _gathered(KIdx, tile_n * BLOCK_N, tile_n * BLOCK_N + offs_n, m_k,
                                      n_k, 0, res_step, k_class, GATHER_K)  # [BLOCK_N] key positions
            k, v = _kv_tile(k_desc, v_desc, k_base, v_base, k_ptrs, v_ptrs, tile_n * BLOCK_N - k_first,
                            start_n, offs_kn, k_ok, d_ok, stride_kn, stride_vn, HEAD_DIM, HEAD_DIM_PAD,
                            DESCRIPTORS, GATHER_K, EVEN_N)  # [HEAD_DIM_PAD, BLOCK_N], [BLOCK_N, HEAD_DIM_PAD]
            qk = tl.dot(q, k, input_precision=DOT_PRECISION)   # [BLOCK_M, BLOCK_N]
            if partial:
                allowed = _allowed(q_pos, offs_kn[None, :], case, q_len, draw_pos$table_args) & k_ok[None, :]
                qk = tl.where(allowed, qk, float("-inf"))
            if HAS_PAD:  # padding keys: hidden from every row, their values zeroed
                kept = _kept(pad_row, offs_kn, n_k)
                qk = tl.where(kept[None, :], qk, float("-inf"))
                v = tl.where(kept[:, None], v, 0.0)
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)    # [BLOCK_M]
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.math.exp2(qk * qk_scale - m_use[:, None])     # [BLOCK_M, BLOCK_N]
            alpha = tl.math.exp2(m_i - m_use)                    # [BLOCK_M]
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None]
            if partial:  # a NaN/inf value at a pair some row cannot see must not reach it
                acc, v = _drop_nonfinite(acc, v, qk != float("-inf"))
            acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
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
            cols, _ = _gathered(KIdx, tile_n * BLOCK_N, tile_n * BLOCK_N + offs_n, m_k, n_k, 0,
                                res_step, k_class, GATHER_K)  # [BLOCK_N] key positions, no holes
            if DESCRIPTORS:
                k = tl.trans(k_desc.load([tile_n * BLOCK_N - k_first, 0]))  # [HEAD_DIM_PAD, BLOCK_N]
                v = v_desc.load([tile_n * BLOCK_N - k_first, 0])           # [BLOCK_N, HEAD_DIM_PAD]
            elif GATHER_K:
                k = tl.load(k_base + cols.to(tl.int64)[None, :] * stride_kn, mask=d_ok[:, None], other=0.0)
                v = tl.load(v_base + cols.to(tl.int64)[:, None] * stride_vn, mask=d_ok[None, :], other=0.0)
            elif HEAD_DIM == HEAD_DIM_PAD:
                k = tl.load(k_ptrs + start_n * stride_kn)            # [HEAD_DIM_PAD, BLOCK_N]
                v = tl.load(v_ptrs + start_n * stride_vn)            # [BLOCK_N, HEAD_DIM_PAD]
            else:
                k = tl.load(k_ptrs + start_n * stride_kn, mask=d_ok[:, None], other=0.0)
                v = tl.load(v_ptrs + start_n * stride_vn, mask=d_ok[None, :], other=0.0)
            qk = tl.dot(q, k, input_precision=DOT_PRECISION)       # [BLOCK_M, BLOCK_N]
            if HAS_PAD:  # padding keys: hidden from every row, their values zeroed
                kept = _kept(pad_row, cols, n_k)
                qk = tl.where(kept[None, :], qk, float("-inf"))
                v = tl.where(kept[:, None], v, 0.0)
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)        # [BLOCK_M]
            if HAS_PAD:
                m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
            else:
                m_use = m_new
            p = tl.math.exp2(qk * qk_scale - m_use[:, None])         # [BLOCK_M, BLOCK_N]
            alpha = tl.math.exp2(m_i - m_use)                        # [BLOCK_M]
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
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
            offs_kn, k_ok = _gathered(KIdx, tile_n * BLOCK_N, tile_n * BLOCK_N + offs_n, m_k,
                                      n_k, 0, res_step, k_class, GATHER_K)  # [BLOCK_N] key positions
            k, v = _kv_tile(k_desc, v_desc, k_base, v_base, k_ptrs, v_ptrs, tile_n * BLOCK_N - k_first,
                            start_n, offs_kn, k_ok, d_ok, stride_kn, stride_vn, HEAD_DIM, HEAD_DIM_PAD,
                            DESCRIPTORS, GATHER_K, EVEN_N)  # [HEAD_DIM_PAD, BLOCK_N], [BLOCK_N, HEAD_DIM_PAD]
            k_pos = offs_kn[None, :]                                 # [1, BLOCK_N] absolute
            if DOCUMENTS:  # the pattern on document-relative positions, same document only
                allowed = _allowed(q_pos - q_start, k_pos - q_start, case, q_len, draw_pos$table_args) \\
                    & (_doc_start(doc_row, k_pos, n_k, -2) == q_start)
            else:
                allowed = _allowed(q_pos, k_pos, case, q_len, draw_pos$table_args)  # [BLOCK_M, BLOCK_N] or a side
            if not EVEN_N:
                allowed = allowed & k_ok[None, :]
            if HAS_PAD:
                allowed = allowed & _kept(pad_row, offs_kn, n_k)[None, :]
            qk = tl.dot(q, k, input_precision=DOT_PRECISION)       # [BLOCK_M, BLOCK_N]
            qk = tl.where(allowed, qk, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)        # [BLOCK_M]
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)     # all masked so far: no NaN
            p = tl.math.exp2(qk * qk_scale - m_use[:, None])         # [BLOCK_M, BLOCK_N]
            alpha = tl.math.exp2(m_i - m_use)                        # [BLOCK_M]
            l_i = l_i * alpha + tl.sum(p, 1)
            acc, v = _drop_nonfinite(acc * alpha[:, None], v, qk != float("-inf"))  # no leak
            acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
            m_i = m_new

    empty = l_i == 0.0                                           # [BLOCK_M] rows with no key
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]                                  # [BLOCK_M, HEAD_DIM_PAD]
    lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(l_safe)) * 0.6931471805599453)
    o_ptrs = Out + z * stride_oz + h.to(tl.int64) * stride_oh \\
        + rows.to(tl.int64)[:, None] * stride_om + offs_d[None, :] * stride_od
    lse_ptrs = Lse + z * stride_lz + h.to(tl.int64) * stride_lh + rows
    o_mask = m_ok[:, None] & d_ok[None, :]
    if ACCUMULATE:  # a later term of a plan: merge with the terms before
        out, lse = _merge_into(o_ptrs, lse_ptrs, out, lse, o_mask, m_ok)
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=o_mask)
    tl.store(lse_ptrs, lse, mask=m_ok)
''')

# The backward pass: a Delta kernel and two kernels sharing ``_allowed``. With P = exp(S - lse)
# recomputed per tile and Delta = rowsum(dO * O) (minus the lse gradient),
# dS = P * (dO V^T - Delta), dQ = scale * dS K, dK = scale * dS^T Q and dV = P^T dO. Each
# program owns its output tile, so results are deterministic (no atomics).
BACKWARD_HELPERS = '''

@triton.jit
def _backward_delta(
    Out, DO, GradLse, Delta,
    stride_oz, stride_oh, stride_om, stride_od,
    stride_dz, stride_dh, stride_dm, stride_dd,
    stride_lz, stride_lh, n_heads, n_q,
    HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, BLOCK_M: tl.constexpr,
    HAS_GRAD_LSE: tl.constexpr,
):
    """Delta = rowsum(dO * O) - dlse, fp32, for BLOCK_M rows of one (batch, head)."""
    tile_m = tl.program_id(0)
    bh = tl.program_id(1)
    z = (bh // n_heads).to(tl.int64)
    h = (bh % n_heads).to(tl.int64)
    offs_m = (tile_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    mask = (offs_m[:, None] < n_q) & (offs_d[None, :] < HEAD_DIM)
    o = tl.load(Out + z * stride_oz + h * stride_oh + offs_m[:, None] * stride_om
                + offs_d[None, :] * stride_od, mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + z * stride_dz + h * stride_dh + offs_m[:, None] * stride_dm
                 + offs_d[None, :] * stride_dd, mask=mask, other=0.0).to(tl.float32)
    delta = tl.sum(o * do, 1)
    stat = z * stride_lz + h * stride_lh + offs_m
    if HAS_GRAD_LSE:
        delta -= tl.load(GradLse + stat, mask=offs_m < n_q, other=0.0)
    tl.store(Delta + stat, delta, mask=offs_m < n_q)


@triton.jit
def _log2_lse(lse):
    """lse in log2 units; a row with no allowed key (lse = -inf) gets +inf, so its P is 0."""
    return tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
'''

BACKWARD = Template('''

@triton.jit
def _dq_tiles(dq, q, do, lse2, delta, kt_ptrs, vt_ptrs, kt_base, vt_base, k_desc, v_desc, KIdx,
              m_k, res_step, k_class, k_first, pad_row, tiles, count, q_pos, case, stride_kn, stride_vn, n_k, qk_scale,
              doc_row, q_start, q_len, draw_pos$table_params,
              BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
              PARTIAL: tl.constexpr, IS_RANGE: tl.constexpr, HAS_PAD: tl.constexpr,
              GATHER_K: tl.constexpr, DOT_PRECISION: tl.constexpr, DOCUMENTS: tl.constexpr,
              DESCRIPTORS: tl.constexpr):
    """dQ += dS K over ``count`` key tiles of a list (FULL: no predicate, PARTIAL: the
    predicate and the bounds); ``GATHER_K``: key columns read through ``KIdx``;
    ``DESCRIPTORS``: K and V tiles through ``k_desc`` and ``v_desc``."""
    offs_n = tl.arange(0, BLOCK_N)
    d_ok = tl.arange(0, HEAD_DIM_PAD) < HEAD_DIM
    first = tl.load(tiles)
    for j in range(0, count):
        if IS_RANGE:
            tile_n = first + j
        else:
            tile_n = tl.load(tiles + j)
        start_n = (tile_n * BLOCK_N).to(tl.int64)
        offs_kn, k_ok = _gathered(KIdx, tile_n * BLOCK_N, tile_n * BLOCK_N + offs_n, m_k, n_k, 0,
                                  res_step, k_class, GATHER_K)   # [BLOCK_N] key positions
        if PARTIAL:
            load_ok = k_ok[None, :] & d_ok[:, None]
        else:
            load_ok = d_ok[:, None]
        if DESCRIPTORS:
            kt = tl.trans(k_desc.load([tile_n * BLOCK_N - k_first, 0]))  # [HEAD_DIM_PAD, BLOCK_N]
            vt = tl.trans(v_desc.load([tile_n * BLOCK_N - k_first, 0]))
        elif GATHER_K:
            kt = tl.load(kt_base + offs_kn.to(tl.int64)[None, :] * stride_kn, mask=load_ok, other=0.0)
            vt = tl.load(vt_base + offs_kn.to(tl.int64)[None, :] * stride_vn, mask=load_ok, other=0.0)
        else:
            kt = tl.load(kt_ptrs + start_n * stride_kn, mask=load_ok, other=0.0)  # [HEAD_DIM_PAD, BLOCK_N]
            vt = tl.load(vt_ptrs + start_n * stride_vn, mask=load_ok, other=0.0)
        qk = tl.dot(q, kt, input_precision=DOT_PRECISION)        # [BLOCK_M, BLOCK_N]
        p = tl.math.exp2(qk * qk_scale - lse2[:, None])
        if PARTIAL:
            if DOCUMENTS:
                k_pos = offs_kn[None, :]                         # [1, BLOCK_N]
                allowed = _allowed(q_pos - q_start, k_pos - q_start, case, q_len, draw_pos$table_args) \\
                    & (_doc_start(doc_row, k_pos, n_k, -2) == q_start) & k_ok[None, :]
            else:
                allowed = _allowed(q_pos, offs_kn[None, :], case, q_len, draw_pos$table_args) & k_ok[None, :]
            if HAS_PAD:
                allowed = allowed & _kept(pad_row, offs_kn, n_k)[None, :]
        elif HAS_PAD:  # padding keys: hidden from every row, their keys and values zeroed
            kept = _kept(pad_row, offs_kn, n_k)[None, :]
            p = tl.where(kept, p, 0.0)
            kt = tl.where(kept, kt, 0.0)
            vt = tl.where(kept, vt, 0.0)
        dp = tl.dot(do, vt, input_precision=DOT_PRECISION)       # [BLOCK_M, BLOCK_N]
        ds = p * (dp - delta[:, None])
        k_rows = tl.trans(kt)                                    # [BLOCK_N, HEAD_DIM_PAD]
        if PARTIAL:  # a hidden pair: 0, even where dp or delta is NaN; its K must not leak
            ds = tl.where(allowed, ds, 0.0)
            dq, k_rows = _drop_nonfinite(dq, k_rows, allowed)
        dq += tl.dot(ds.to(kt.dtype), k_rows, input_precision=DOT_PRECISION)
    return dq


@triton.jit
def ${name}_dq(
    Q, K, V, DO, Lse, Delta, DQ, KeyPad, QIdx, KIdx, DocStart, DocLength,
    FullCounts, FullIndices, PartialCounts, PartialIndices, RowOrder,
    stride_qz, stride_qh, stride_qm, stride_qd,
    stride_kz, stride_kh, stride_kn, stride_kd,
    stride_vz, stride_vh, stride_vn, stride_vd,
    stride_oz, stride_oh, stride_om, stride_od,
    stride_gz, stride_gh, stride_gm, stride_gd,
    stride_lz, stride_lh, stride_pz, stride_sz,
    n_batch, n_heads, kv_group, n_q, n_k, m_q, m_k, res_step, q_class, k_class,
    head_first, head_step, n_tiles_q, full_width, partial_width,
    qk_scale, sm_scale$table_params,
    CASES: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    FULL_RANGE: tl.constexpr, PARTIAL_RANGE: tl.constexpr,
    HAS_PAD: tl.constexpr, GATHER_Q: tl.constexpr, GATHER_K: tl.constexpr,
    ACCUMULATE: tl.constexpr, DOT_PRECISION: tl.constexpr, DOCUMENTS: tl.constexpr,
    DESCRIPTORS: tl.constexpr, HEAD_MAJOR: tl.constexpr,
):
    """dQ of one (virtual) query tile: its key tiles, as in the forward pass; ``ACCUMULATE``
    adds to what earlier terms wrote."""
    slot, bh = _program_slot(n_batch * n_heads, n_tiles_q, HEAD_MAJOR)
    z = (bh // n_heads).to(tl.int64)
    h = head_first + head_step * (bh % n_heads)
    kv_h = (h // kv_group).to(tl.int64)
    case = h % CASES
    if DOCUMENTS:  # per-call lists, one set per batch row
        layout_row = z * n_tiles_q
    else:
        layout_row = 0
    tile_m = tl.load(RowOrder + layout_row + slot)

    offs_m = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)            # [BLOCK_M] (virtual) rows
    rows, m_ok = _gathered(QIdx, tile_m * BLOCK_M, offs_m, m_q, n_q, n_k - n_q, res_step,
                           q_class, GATHER_Q)                    # [BLOCK_M] query rows
    offs_n = tl.arange(0, BLOCK_N)                               # [BLOCK_N]
    offs_d = tl.arange(0, HEAD_DIM_PAD)                          # [HEAD_DIM_PAD]
    q_pos = (rows + (n_k - n_q))[:, None]                        # [BLOCK_M, 1] absolute
    doc_row, q_start, q_len = _document_of(DocStart, DocLength, z * stride_sz, q_pos, n_k, -1,
                                           DOCUMENTS)            # [BLOCK_M, 1] document start, length
    draw_pos = z * n_k + tl.minimum(q_pos, n_k - 1)                # [BLOCK_M, 1]
    row_mask = m_ok[:, None] & (offs_d < HEAD_DIM)[None, :]
    q = tl.load(Q + z * stride_qz + h.to(tl.int64) * stride_qh + rows.to(tl.int64)[:, None] * stride_qm
                + offs_d[None, :] * stride_qd, mask=row_mask, other=0.0)   # [BLOCK_M, HEAD_DIM_PAD]
    do = tl.load(DO + z * stride_oz + h.to(tl.int64) * stride_oh + rows.to(tl.int64)[:, None] * stride_om
                 + offs_d[None, :] * stride_od, mask=row_mask, other=0.0)  # [BLOCK_M, HEAD_DIM_PAD]
    stat = z * stride_lz + h.to(tl.int64) * stride_lh + rows
    lse2 = _log2_lse(tl.load(Lse + stat, mask=m_ok, other=float("-inf")))  # [BLOCK_M]
    delta = tl.load(Delta + stat, mask=m_ok, other=0.0)          # [BLOCK_M]
    kt_base = K + z * stride_kz + kv_h * stride_kh + offs_d[:, None] * stride_kd  # [HEAD_DIM_PAD, 1]
    vt_base = V + z * stride_vz + kv_h * stride_vh + offs_d[:, None] * stride_vd
    kt_ptrs = kt_base + offs_n[None, :] * stride_kn              # [HEAD_DIM_PAD, BLOCK_N] tile 0
    vt_ptrs = vt_base + offs_n[None, :] * stride_vn              # [HEAD_DIM_PAD, BLOCK_N] tile 0
    r, k_first, view_rows, view_step = _class_view(tile_m * BLOCK_M // q_class * k_class,
                                                   res_step, k_class, n_k, GATHER_K)
    if DESCRIPTORS:  # the row's residue class (as in the forward pass), else every key
        k_desc = _rows_descriptor(K + z * stride_kz + kv_h * stride_kh + r * stride_kn, view_rows,
                                  stride_kn * view_step, BLOCK_N, HEAD_DIM)
        v_desc = _rows_descriptor(V + z * stride_vz + kv_h * stride_vh + r * stride_vn, view_rows,
                                  stride_vn * view_step, BLOCK_N, HEAD_DIM)
    else:  # unused
        k_desc = K
        v_desc = V
    pad_row = KeyPad + z * stride_pz
    dq = tl.zeros([BLOCK_M, HEAD_DIM_PAD], tl.float32)

    row = layout_row + case * n_tiles_q + tile_m
    dq = _dq_tiles(dq, q, do, lse2, delta, kt_ptrs, vt_ptrs, kt_base, vt_base, k_desc, v_desc,
                   KIdx, m_k, res_step, k_class, k_first, pad_row, FullIndices + row * full_width,
                   tl.load(FullCounts + row),
                   q_pos, case, stride_kn, stride_vn, n_k, qk_scale, doc_row, q_start, q_len,
                   draw_pos$table_args, BLOCK_N, HEAD_DIM, HEAD_DIM_PAD, False, FULL_RANGE, HAS_PAD,
                   GATHER_K, DOT_PRECISION, DOCUMENTS, DESCRIPTORS)
    dq = _dq_tiles(dq, q, do, lse2, delta, kt_ptrs, vt_ptrs, kt_base, vt_base, k_desc, v_desc,
                   KIdx, m_k, res_step, k_class, k_first, pad_row, PartialIndices + row * partial_width,
                   tl.load(PartialCounts + row), q_pos, case, stride_kn, stride_vn, n_k, qk_scale,
                   doc_row, q_start, q_len, draw_pos$table_args, BLOCK_N, HEAD_DIM, HEAD_DIM_PAD, True,
                   PARTIAL_RANGE, HAS_PAD, GATHER_K, DOT_PRECISION, DOCUMENTS, DESCRIPTORS)
    dq = dq * sm_scale
    dq_ptrs = DQ + z * stride_gz + h.to(tl.int64) * stride_gh + rows.to(tl.int64)[:, None] * stride_gm \\
        + offs_d[None, :] * stride_gd
    if ACCUMULATE:
        dq += tl.load(dq_ptrs, mask=row_mask, other=0.0).to(tl.float32)
    tl.store(dq_ptrs, dq.to(DQ.dtype.element_ty), mask=row_mask)


@triton.jit
def _dkdv_tiles(dk, dv, k, v, keep, k_pos, q_head, do_head, q_desc, do_desc, QIdx, m_q,
                res_step, q_class, q_first, Lse,
                Delta, stat_head, tiles, count, stride_qm, stride_qd, stride_om, stride_od, n_q,
                n_k, qk_scale, case, doc_row, k_start, k_len, doc_base$table_params,
                BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
                PARTIAL: tl.constexpr, IS_RANGE: tl.constexpr, EVEN_M: tl.constexpr,
                HAS_PAD: tl.constexpr, GATHER_Q: tl.constexpr, DOT_PRECISION: tl.constexpr,
                DOCUMENTS: tl.constexpr, DESCRIPTORS: tl.constexpr):
    """dV += P^T dO and dK += dS^T Q over ``count`` (virtual) query tiles of a list
    (``DESCRIPTORS``: Q and dO tiles through ``q_desc`` and ``do_desc``)."""
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    d_ok = offs_d < HEAD_DIM
    first = tl.load(tiles)
    for j in range(0, count):
        if IS_RANGE:
            tile_m = first + j
        else:
            tile_m = tl.load(tiles + j)
        # 32-bit positions for the mask's arithmetic, 64-bit offsets for the pointers
        rows, m_ok = _gathered(QIdx, tile_m * BLOCK_M, tile_m * BLOCK_M + offs_m, m_q, n_q,
                               n_k - n_q, res_step, q_class, GATHER_Q)  # [BLOCK_M] query rows
        row_offs = rows.to(tl.int64)[:, None]                    # [BLOCK_M, 1]
        if DESCRIPTORS:
            q = q_desc.load([tile_m * BLOCK_M - q_first, 0])     # [BLOCK_M, HEAD_DIM_PAD]
            do = do_desc.load([tile_m * BLOCK_M - q_first, 0])
            lse = tl.load(Lse + stat_head + rows, mask=m_ok, other=float("-inf"))  # [BLOCK_M]
            delta = tl.load(Delta + stat_head + rows, mask=m_ok, other=0.0)
        elif EVEN_M and HEAD_DIM == HEAD_DIM_PAD and not GATHER_Q:
            q = tl.load(q_head + row_offs * stride_qm + offs_d[None, :] * stride_qd)  # [BLOCK_M, HEAD_DIM_PAD]
            do = tl.load(do_head + row_offs * stride_om + offs_d[None, :] * stride_od)
            lse = tl.load(Lse + stat_head + rows)                # [BLOCK_M]
            delta = tl.load(Delta + stat_head + rows)
        else:
            mask = m_ok[:, None] & d_ok[None, :]
            q = tl.load(q_head + row_offs * stride_qm + offs_d[None, :] * stride_qd, mask=mask, other=0.0)
            do = tl.load(do_head + row_offs * stride_om + offs_d[None, :] * stride_od, mask=mask, other=0.0)
            lse = tl.load(Lse + stat_head + rows, mask=m_ok, other=float("-inf"))
            delta = tl.load(Delta + stat_head + rows, mask=m_ok, other=0.0)
        qk_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION)   # [BLOCK_N, BLOCK_M]
        p_t = tl.math.exp2(qk_t * qk_scale - _log2_lse(lse)[None, :])
        if PARTIAL:
            q_pos = (rows + (n_k - n_q))[None, :]                       # [1, BLOCK_M]
            draw_pos = doc_base + tl.minimum(q_pos, n_k - 1)
            if DOCUMENTS:  # document-relative positions, same document only
                q_start = _doc_start(doc_row, q_pos, n_k, -1)            # [1, BLOCK_M]
                allowed = _allowed(q_pos - q_start, k_pos - q_start, case, k_len, draw_pos$table_args) \\
                    & (k_start == q_start)
            else:
                allowed = _allowed(q_pos, k_pos, case, k_len, draw_pos$table_args)
            seen = allowed & keep
            p_t = tl.where(seen, p_t, 0.0)
        elif HAS_PAD:
            p_t = tl.where(keep, p_t, 0.0)
        dv += tl.dot(p_t.to(do.dtype), do, input_precision=DOT_PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)  # [BLOCK_N, BLOCK_M]
        ds_t = p_t * (dp_t - delta[None, :])
        if PARTIAL:  # a hidden pair: 0, even where dp (a NaN in v) or delta (a NaN row) is NaN
            ds_t = tl.where(seen, ds_t, 0.0)
        dk += tl.dot(ds_t.to(q.dtype), q, input_precision=DOT_PRECISION)
    return dk, dv


@triton.jit
def ${name}_dkdv(
    Q, K, V, DO, Lse, Delta, DK, DV, KeyPad, QIdx, KIdx, DocStart, DocLength,
    FullCounts, FullIndices, PartialCounts, PartialIndices, ColOrder,
    stride_qz, stride_qh, stride_qm, stride_qd,
    stride_kz, stride_kh, stride_kn, stride_kd,
    stride_vz, stride_vh, stride_vn, stride_vd,
    stride_oz, stride_oh, stride_om, stride_od,
    stride_gz, stride_gh, stride_gn, stride_gd,
    stride_lz, stride_lh, stride_pz, stride_sz,
    n_batch, n_kv_heads, kv_group, n_q, n_k, m_q, m_k, res_step, q_class, k_class,
    head_first, head_step, kv_first, kv_step, n_tiles_k, full_width, partial_width,
    qk_scale, sm_scale$table_params,
    CASES: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    FULL_RANGE: tl.constexpr, PARTIAL_RANGE: tl.constexpr, EVEN_M: tl.constexpr,
    HAS_PAD: tl.constexpr, GATHER_Q: tl.constexpr, GATHER_K: tl.constexpr,
    ACCUMULATE: tl.constexpr, DOT_PRECISION: tl.constexpr, DOCUMENTS: tl.constexpr,
    DESCRIPTORS: tl.constexpr, HEAD_MAJOR: tl.constexpr,
):
    """dK and dV of one (virtual) key tile of one key/value head: the query tiles of the
    transposed layout (``FullCounts``... are the ``*_q_*`` lists), for every query head of its
    group that belongs to this case (h = head_first mod head_step). DK and DV share their
    strides; ``ACCUMULATE`` adds to what earlier terms wrote."""
    slot, bh = _program_slot(n_batch * n_kv_heads, n_tiles_k, HEAD_MAJOR)
    z = (bh // n_kv_heads).to(tl.int64)
    kv_h = kv_first + kv_step * (bh % n_kv_heads)
    if DOCUMENTS:  # per-call lists, one set per batch row
        layout_row = z * n_tiles_k
    else:
        layout_row = 0
    tile_n = tl.load(ColOrder + layout_row + slot)

    offs_n = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)            # [BLOCK_N] (virtual) columns
    cols, k_ok = _gathered(KIdx, tile_n * BLOCK_N, offs_n, m_k, n_k, 0, res_step, k_class,
                           GATHER_K)                             # [BLOCK_N] key positions
    # the key tile's queries: its residue class (rows in step when descriptors read them)
    r, q_first, view_rows, view_step = _class_view(tile_n * BLOCK_N // k_class * q_class,
                                                   res_step, q_class, n_q, GATHER_Q)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    k_pos = cols[:, None]                                        # [BLOCK_N, 1] absolute
    doc_row, k_start, k_len = _document_of(DocStart, DocLength, z * stride_sz, k_pos, n_k, -2,
                                           DOCUMENTS)            # [BLOCK_N, 1] document start, length
    key_mask = k_ok[:, None] & (offs_d < HEAD_DIM)[None, :]
    k = tl.load(K + z * stride_kz + kv_h.to(tl.int64) * stride_kh + cols.to(tl.int64)[:, None] * stride_kn
                + offs_d[None, :] * stride_kd, mask=key_mask, other=0.0)    # [BLOCK_N, HEAD_DIM_PAD]
    v = tl.load(V + z * stride_vz + kv_h.to(tl.int64) * stride_vh + cols.to(tl.int64)[:, None] * stride_vn
                + offs_d[None, :] * stride_vd, mask=key_mask, other=0.0)
    keep = k_ok[:, None]                                         # [BLOCK_N, 1]
    if HAS_PAD:
        keep = keep & _kept(KeyPad + z * stride_pz, cols, n_k)[:, None]
    dk = tl.zeros([BLOCK_N, HEAD_DIM_PAD], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM_PAD], tl.float32)

    for g in range(0, kv_group):
        h = (kv_h * kv_group + g).to(tl.int64)
        if (h - head_first) % head_step == 0:
            case = h % CASES
            q_head = Q + z * stride_qz + h * stride_qh
            do_head = DO + z * stride_oz + h * stride_oh
            stat_head = z * stride_lz + h * stride_lh
            if DESCRIPTORS:
                q_desc = _rows_descriptor(q_head + r * stride_qm, view_rows, stride_qm * view_step,
                                          BLOCK_M, HEAD_DIM)
                do_desc = _rows_descriptor(do_head + r * stride_om, view_rows, stride_om * view_step,
                                           BLOCK_M, HEAD_DIM)
            else:  # unused
                q_desc = q_head
                do_desc = do_head
            row = layout_row + case * n_tiles_k + tile_n
            dk, dv = _dkdv_tiles(dk, dv, k, v, keep, k_pos, q_head, do_head, q_desc, do_desc, QIdx,
                                 m_q, res_step, q_class, q_first, Lse, Delta, stat_head, FullIndices + row * full_width,
                                 tl.load(FullCounts + row), stride_qm, stride_qd, stride_om,
                                 stride_od, n_q, n_k, qk_scale, case, doc_row, k_start, k_len,
                                 z * n_k$table_args, BLOCK_M, HEAD_DIM, HEAD_DIM_PAD, False, FULL_RANGE,
                                 EVEN_M, HAS_PAD, GATHER_Q, DOT_PRECISION, DOCUMENTS, DESCRIPTORS)
            dk, dv = _dkdv_tiles(dk, dv, k, v, keep, k_pos, q_head, do_head, q_desc, do_desc, QIdx,
                                 m_q, res_step, q_class, q_first, Lse, Delta, stat_head, PartialIndices + row * partial_width,
                                 tl.load(PartialCounts + row), stride_qm, stride_qd, stride_om,
                                 stride_od, n_q, n_k, qk_scale, case, doc_row, k_start, k_len,
                                 z * n_k$table_args, BLOCK_M, HEAD_DIM, HEAD_DIM_PAD, True,
                                 PARTIAL_RANGE, EVEN_M, HAS_PAD, GATHER_Q, DOT_PRECISION, DOCUMENTS,
                                 DESCRIPTORS)

    dk = dk * sm_scale
    if HAS_PAD:  # no row sees a padding key (FULL tiles leave 0 * NaN there)
        dk = tl.where(keep, dk, 0.0)
        dv = tl.where(keep, dv, 0.0)
    out_off = z * stride_gz + kv_h.to(tl.int64) * stride_gh + cols.to(tl.int64)[:, None] * stride_gn \\
        + offs_d[None, :] * stride_gd
    if ACCUMULATE:
        dk += tl.load(DK + out_off, mask=key_mask, other=0.0).to(tl.float32)
        dv += tl.load(DV + out_off, mask=key_mask, other=0.0).to(tl.float32)
    tl.store(DK + out_off, dk.to(DK.dtype.element_ty), mask=key_mask)
    tl.store(DV + out_off, dv.to(DV.dtype.element_ty), mask=key_mask)
''')
