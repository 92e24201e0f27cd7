"""Launch the generated kernels (forward, backward dQ and dK/dV) of a plan: the only place
kernels are called.

A ``Plan`` holds, per head case, the terms the plan pass chose (``layout.plan``), each with
its own kernel, layout and gather vectors. Terms run one after another in a fixed order; a
single term per case writes its outputs directly, several merge in fp32 (the forward by
log-sum-exp, the gradients by addition) inside the kernels, so results are deterministic."""
from __future__ import annotations

import functools

import torch
import triton

from ..ir import nodes as N
from ..layout.pairs import random_table
from . import direct

LOG2E = 1.4426950408889634


def random_tables(module, n_k: int, device) -> list:
    """The kernel arguments of its random nodes (argument order): each int32 ``[rows, r]``
    draw table and its row count."""
    out = []
    for r, seed, divisors, *among in module.TABLES:
        rows = n_k
        for b in divisors:
            rows = -(-rows // b)
        node = N.Random(r, seed, fresh=1, among=table_among(among[0])) if among \
            else N.Random(r, seed)
        table = random_table(node, rows).to(torch.int32).contiguous()
        out.append((table.to(device), rows))
    return out


@functools.lru_cache(maxsize=256)
def table_among(text: str):
    """A fresh random node's candidates from their text in a module's ``TABLES`` (the
    ``repr`` of concrete IR nodes, ``codegen.render``)."""
    names = {name: getattr(N, name) for name in dir(N) if isinstance(getattr(N, name), type)}
    return eval(text, {"__builtins__": {}}, names)  # noqa: S307 (our own generated file)


class TermLaunch:
    """One term of a plan, ready to launch: its kernel module, tile config, layout tensors
    on the device, gather vectors (None: the identity), range flags and random tables."""

    doc_start = None  # documents: int32 [B, n_k] document starts (DocumentTerm)
    doc_length = None  # and lengths (the same strides)

    def __init__(self, module, layout, config, device, q_gather=None, k_gather=None,
                 kind: str = "grid", n_k: int | None = None, tables: list | None = None,
                 residue: tuple[int, int, int] | None = None):
        self.module = module
        self.config = config
        self.kind = kind
        # the kernels' GATHER_Q / GATHER_K: 0 the identity, 1 read the gather vector, 2 a
        # residue class's positions computed from (step, class length of rows, of keys)
        self.residue = residue
        self.gather_q = 2 if residue else int(q_gather is not None)
        self.gather_k = 2 if residue else int(k_gather is not None)
        self.residue_args = residue or (1, 1, 1)
        self.full_range = layout.full_is_range
        self.partial_range = layout.partial_is_range
        self.merged = config.merged and self.gather_q != 1 and self.gather_k != 1
        self.visit_range = layout.visit_is_range
        self.full_q_range = layout.full_q_is_range
        self.partial_q_range = layout.partial_q_is_range
        self.visit_start = layout.visit_start.to(device)
        self.col_order = layout.col_order.to(device)
        self.layout = layout.to(device)
        self.q_gather = None if q_gather is None else q_gather.to(device)
        self.k_gather = None if k_gather is None else k_gather.to(device)
        self.m_q, self.m_k = layout.n_q, layout.n_k
        if tables is None:  # (documents pass each call's draws)
            tables = random_tables(module, layout.n_k if n_k is None else n_k, device)
        self.tables = tables

    @property
    def covers_all_rows(self) -> bool:
        """Every query row is one of its (virtual) rows."""
        return self.q_gather is None or self.kind == "residue"

    @property
    def covers_all_keys(self) -> bool:
        return self.k_gather is None or self.kind == "residue"


class Plan:
    """Everything the launches of one problem size need: per head case (head h uses case
    h mod cases) the terms of its plan, launched one after another (later terms merge into
    the result of earlier ones, in a fixed order: deterministic)."""

    def __init__(self, cases: list, config):
        self.cases = cases          # list (per head case) of lists of TermLaunch
        self.config = config

    @property
    def module(self):
        return self.cases[0][0].module

    @property
    def merged(self) -> bool:
        return any(t.merged for terms in self.cases for t in terms)

    @property
    def layout(self):
        """The first term's layout (a single-term plan's only one)."""
        return self.cases[0][0].layout

    def launches(self, heads: int):
        """(term's index in its case, term, head_first, head_step, head count) for every
        launch with heads."""
        step = len(self.cases)
        for c, terms in enumerate(self.cases):
            count = len(range(c, heads, step))
            if count == 0:
                continue
            for index, term in enumerate(terms):
                yield index, term, c, step, count

    def first_writes(self, keys: bool = False, kv_group: int = 1) -> bool:
        """Whether the first term of every case covers all its outputs (rows, or keys) alone,
        so that it may write them directly and later terms add to them."""
        if keys and len(self.cases) > 1 and kv_group > 1:  # cases share key/value heads
            return False
        return all(terms[0].covers_all_keys if keys else terms[0].covers_all_rows
                   for terms in self.cases)


def _target(plan: Plan, target, keys: bool = False, kv_group: int = 1):
    """(the tensor the launches write, whether each case's first term writes it directly):
    the target itself for one term per case, else an fp32 buffer the terms merge into
    (zeroed unless the first terms write everything)."""
    first = plan.first_writes(keys, kv_group)
    if first and all(len(terms) == 1 for terms in plan.cases):
        return target, True
    buffer = target if target.dtype == torch.float32 else torch.empty(
        target.shape, device=target.device, dtype=torch.float32)
    if not first:
        buffer.zero_()
    return buffer, first


def forward(plan: Plan, q, k, v, scale: float, key_padding=None, out=None, lse=None):
    """(out ``[B, H, n_q, D]``, lse float32 ``[B, H, n_q]``) of one launch (into ``out`` and
    ``lse`` when given). ``key_padding``: None or ``[B, n_k]`` bool, False = a padding key."""
    batch, heads, n_q, head_dim = q.shape
    n_k = k.shape[2]
    out = q.new_empty(q.shape) if out is None else out
    if lse is None:
        lse = torch.empty(batch, heads, n_q, device=q.device, dtype=torch.float32)
    if n_q == 0 or batch == 0 or heads == 0:
        return out, lse
    work, first_writes = _target(plan, out)
    if not first_writes:
        lse.fill_(float("-inf"))
    pad, pad_stride = _padding(key_padding, lse)
    for index, term, first, step, count in plan.launches(heads):
        layout, config = term.layout, term.config
        n_tiles_q = layout.tiles[0]
        direct.launch(term.module.FORWARD, (n_tiles_q * batch * count,),
            q, k, v, work, lse, pad, _index(term.q_gather, lse), _index(term.k_gather, lse),
            _index(term.doc_start, lse), _index(term.doc_length, lse), layout.full_counts, layout.full_indices,
            layout.partial_counts, layout.partial_indices, layout.row_order, term.visit_start,
            *q.stride(), *k.stride(), *v.stride(), *work.stride(), lse.stride(0), lse.stride(1),
            pad_stride, _doc_stride(term), batch, count, heads // k.shape[1], n_q, n_k, term.m_q,
            term.m_k, *term.residue_args, first, step, n_tiles_q, layout.full_indices.shape[-1],
            layout.partial_indices.shape[-1],
            scale * LOG2E, *_table_args(term.tables),
            MERGED=term.merged, VISIT_RANGE=term.visit_range,
            EVEN_N=term.gather_k == 0 and n_k % config.block_n == 0,
            FULL_RANGE=term.full_range, PARTIAL_RANGE=term.partial_range,
            GATHER_Q=term.gather_q, GATHER_K=term.gather_k,
            ACCUMULATE=index > 0 or not first_writes, DOCUMENTS=term.doc_start is not None,
            DESCRIPTORS=_descriptors(config, term.gather_k, k, v),
            **_common(term.module, q, config, key_padding),
        )
    if work is not out:
        out.copy_(work)
    return out, lse


def backward(dq_plan: Plan, dkdv_plan: Plan, grad_out, q, k, v, out, lse, scale: float,
             key_padding=None, grad_lse=None):
    """(dq, dk, dv) of the attention that ``forward`` computed (``out``, ``lse``): the dQ
    kernel over query tiles (``dq_plan``'s layout), the dK/dV kernel over key tiles of the
    transposed layout (``dkdv_plan``'s). ``grad_lse`` (or None) is the gradient of ``lse``.
    Every term uses the final lse and Delta (P = exp(S - lse)): the terms' contributions add."""
    dq, dk, dv = q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)
    if min(*q.shape[:3], k.shape[2]) == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    delta = backward_delta(dq_plan, grad_out, out, grad_lse)
    lse = lse.contiguous()
    backward_dq(dq_plan, grad_out, q, k, v, lse, delta, scale, key_padding, dq)
    backward_dkdv(dkdv_plan, grad_out, q, k, v, lse, delta, scale, key_padding, dk, dv)
    return dq, dk, dv


def backward_delta(plan: Plan, grad_out, out, grad_lse=None):
    """float32 ``[B, H, n_q]``: Delta = rowsum(dO * O). An lse gradient g adds g * P to dS,
    that is, subtracts g from Delta."""
    batch, heads, n_q, head_dim = out.shape
    delta = torch.empty(batch, heads, n_q, device=out.device, dtype=torch.float32)
    block_m = 64
    direct.launch(plan.module.BACKWARD_DELTA, (-(-n_q // block_m), batch * heads),
        out, grad_out, delta if grad_lse is None else grad_lse.contiguous(), delta,
        *out.stride(), *grad_out.stride(), delta.stride(0), delta.stride(1), heads, n_q,
        HEAD_DIM=head_dim, HEAD_DIM_PAD=_padded(head_dim), BLOCK_M=block_m,
        HAS_GRAD_LSE=grad_lse is not None,
    )
    return delta


def backward_dq(plan: Plan, grad_out, q, k, v, lse, delta, scale, key_padding, dq):
    """The dQ kernels: per term one program per (virtual query tile, batch, head)."""
    batch, heads, n_q, _ = q.shape
    kv_heads, n_k = k.shape[1], k.shape[2]
    pad, pad_stride = _padding(key_padding, lse)
    work, first_writes = _target(plan, dq)
    for index, term, first, step, count in plan.launches(heads):
        layout, config = term.layout, term.config
        n_tiles_q = layout.tiles[0]
        direct.launch(term.module.BACKWARD_DQ, (n_tiles_q * batch * count,),
            q, k, v, grad_out, lse, delta, work, pad, _index(term.q_gather, lse),
            _index(term.k_gather, lse), _index(term.doc_start, lse), _index(term.doc_length, lse),
            layout.full_counts, layout.full_indices, layout.partial_counts, layout.partial_indices,
            layout.row_order, *q.stride(), *k.stride(), *v.stride(), *grad_out.stride(),
            *work.stride(), lse.stride(0), lse.stride(1), pad_stride, _doc_stride(term),
            batch, count, heads // kv_heads, n_q, n_k, term.m_q, term.m_k, *term.residue_args,
            first, step, n_tiles_q, layout.full_indices.shape[-1], layout.partial_indices.shape[-1],
            scale * LOG2E, scale, *_table_args(term.tables),
            FULL_RANGE=term.full_range, PARTIAL_RANGE=term.partial_range,
            GATHER_Q=term.gather_q, GATHER_K=term.gather_k,
            ACCUMULATE=index > 0 or not first_writes, DOCUMENTS=term.doc_start is not None,
            DESCRIPTORS=_descriptors(config, term.gather_k, k, v),
            **_common(term.module, q, config, key_padding),
        )
    if work is not dq:
        dq.copy_(work)
    return dq


def backward_dkdv(plan: Plan, grad_out, q, k, v, lse, delta, scale, key_padding, dk, dv):
    """The dK/dV kernels: per term one program per (virtual key tile, batch, key/value
    head), over the query tiles of the transposed layout and the query heads of its group
    that belong to the term's head case."""
    batch, heads, n_q, _ = q.shape
    kv_heads, n_k = k.shape[1], k.shape[2]
    kv_group = heads // kv_heads
    pad, pad_stride = _padding(key_padding, lse)
    work_k, first_writes = _target(plan, dk, keys=True, kv_group=kv_group)
    work_v, _ = _target(plan, dv, keys=True, kv_group=kv_group)
    for index, term, first, step, count in plan.launches(heads):
        layout, config = term.layout, term.config
        n_tiles_k = layout.tiles[1]
        if kv_group == 1:  # only this case's key/value heads
            kv_first, kv_step, kv_count = first, step, count
        else:
            kv_first, kv_step, kv_count = 0, 1, kv_heads
        direct.launch(term.module.BACKWARD_DKDV, (n_tiles_k * batch * kv_count,),
            q, k, v, grad_out, lse, delta, work_k, work_v, pad, _index(term.q_gather, lse),
            _index(term.k_gather, lse), _index(term.doc_start, lse), _index(term.doc_length, lse),
            layout.full_q_counts, layout.full_q_indices, layout.partial_q_counts,
            layout.partial_q_indices, term.col_order,
            *q.stride(), *k.stride(), *v.stride(), *grad_out.stride(),
            *work_k.stride(), lse.stride(0), lse.stride(1), pad_stride, _doc_stride(term),
            batch, kv_count, kv_group, n_q, n_k, term.m_q, term.m_k, *term.residue_args, first,
            step, kv_first, kv_step, n_tiles_k, layout.full_q_indices.shape[-1],
            layout.partial_q_indices.shape[-1],
            scale * LOG2E, scale, *_table_args(term.tables),
            EVEN_M=term.gather_q == 0 and n_q % config.block_m == 0,
            FULL_RANGE=term.full_q_range, PARTIAL_RANGE=term.partial_q_range,
            GATHER_Q=term.gather_q, GATHER_K=term.gather_k,
            ACCUMULATE=index > 0 or not first_writes, DOCUMENTS=term.doc_start is not None,
            DESCRIPTORS=_descriptors(config, term.gather_q, q, grad_out,
                                     shift=(n_k - n_q) % term.residue_args[0]),
            **_common(term.module, q, config, key_padding),
        )
    if work_k is not dk:
        dk.copy_(work_k)
        dv.copy_(work_v)
    return dk, dv


def _index(gather, placeholder):
    """A gather vector for the kernels' QIdx/KIdx arguments (a placeholder when None)."""
    return placeholder if gather is None else gather


def _doc_stride(term) -> int:
    """The batch stride of a term's per-position document starts (0 without documents)."""
    return 0 if term.doc_start is None else term.doc_start.stride(0)


def _common(module, q, config, key_padding) -> dict:
    """Launch constants every kernel takes."""
    head_dim = q.shape[3]
    return dict(CASES=module.CASES, HEAD_DIM=head_dim,
                HEAD_DIM_PAD=_padded(head_dim),
                BLOCK_M=config.block_m, BLOCK_N=config.block_n, HAS_PAD=key_padding is not None,
                HEAD_MAJOR=config.head_major,
                DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
                num_warps=config.num_warps, num_stages=config.num_stages)


def _descriptors(config, gather: int, *tensors, shift: int = 0) -> bool:
    """Whether a kernel reads its visited tiles of ``tensors`` (``[B, H, n, D]``) through
    tensor descriptors: the config asks for it, no gather vector (a residue class is a strided
    view, unless the rows' bottom-right ``shift`` leaves its first row out of step), a Hopper
    GPU (or the interpreter), and tensors a bulk copy can read: a power-of-two head_dim of at
    least 16 bytes, the last stride 1, the others and the base 16-byte aligned."""
    if not config.descriptors or gather == 1 or (gather == 2 and shift):
        return False
    device = tensors[0].device
    if device.type == "cuda":
        if not _hopper(device):
            return False
        _set_allocator()
    for t in tensors:
        size = t.element_size()
        if t.stride(3) != 1 or t.data_ptr() % 16 or any(s * size % 16 for s in t.stride()[:3]):
            return False
    head_dim = tensors[0].shape[3]
    return head_dim == _padded(head_dim) and head_dim * tensors[0].element_size() >= 16


@functools.lru_cache(maxsize=None)
def _hopper(device) -> bool:
    return torch.cuda.get_device_capability(device)[0] >= 9


def _set_allocator() -> None:
    """Kernels that build tensor descriptors need a little global scratch memory per
    launch: give Triton an allocator, unless the program already set one."""
    from triton.runtime import _allocation
    current = getattr(_allocation, "_allocator", None)
    if current is None or isinstance(current.get(), _allocation.NullAllocator):
        triton.set_allocator(lambda size, alignment, stream: torch.empty(
            size, device="cuda", dtype=torch.int8))


def _padded(head_dim: int) -> int:
    return max(16, 1 << (head_dim - 1).bit_length())


def _padding(key_padding, placeholder):
    """(tensor, batch stride) for the kernels' KeyPad argument (a placeholder when None)."""
    if key_padding is None:
        return placeholder, 0
    return key_padding, key_padding.stride(0)


def _table_args(tables) -> list:
    """The random nodes' kernel arguments, flat (``random_tables``; with documents
    ``layout.documents.draw_tables``)."""
    return [arg for entry in tables for arg in entry]


def flops(batch: int, heads: int, head_dim: int, pairs: int) -> float:
    """Useful forward FLOPs: two matrix products over the allowed pairs."""
    return 4.0 * batch * heads * head_dim * pairs

