"""``compile(pattern, **hints)`` -> ``attn(q, k, v, scale=None, key_padding=None, documents=None)``.

Shapes come from the tensors at call time. For each problem size the runtime builds (and
caches, in memory and on disk) the block layout and the generated kernels, picks a tile
configuration (autotuned on a GPU, persisted per GPU), and launches them through the custom
op ``torch.ops.spattn.attention`` (``runtime.op``; in eager mode a cheaper
``autograd.Function`` around the same bodies), whose backward runs the generated dQ and
dK/dV kernels. On a CPU the kernel runs
under the Triton interpreter when ``TRITON_INTERPRET=1`` (in fp32), and otherwise the tiled
reference runs, with a one-time warning.

Documents (packed sequences, docs/language.md §4): ``documents=`` an integer ``[batch, n_k]`` id
tensor. Each call builds its tile layout from the ids on the tensors' device
(``layout.documents``, never cached: boundaries change every batch; an eager call's backward
reuses its forward's) and launches the token-grid kernel of each head case with
``DOCUMENTS`` set: per-batch tile lists, and on PARTIAL tiles the predicate on
document-relative positions plus the same-document test. The generated code is the same for
every set of boundaries. Tiles are the forced ones, else ``codegen.space.DOCUMENTS_CONFIG``
(no autotuning under documents). The kernel renders the bound expression (no parameter
clamped to a call's length): ``n`` is read per position (``DocLength``), after every length
that occurs is checked against ``instantiate``, and random links read this call's draw tables
(``layout.documents.draw_tables``). Patterns whose draws the kernels cannot take
(``DocumentRules.undrawable``) run the exact dense reference of each document alone instead
(fp32, one document at a time), with a one-time warning.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import os
import warnings

import torch

from ..codegen.reference import attention_tiled, attention_tiled_backward, cpu_tiles
from ..codegen.render import TileConfig
from ..codegen.space import backward_candidates, candidate_configs, documents_config
from ..codegen.reference import attention_reference, attention_reference_backward
from ..codegen.render import render_term
from ..ir.evaluate import instantiate, select_head
from ..ir.program import require_static
from ..layout.build import BlockLayout, lower
from ..layout.documents import MAX_DRAWS, DocumentRules, document_layout, draw_tables
from ..semantics.documents import check_documents, document_runs
from . import cache, launch, op
from .launch import Plan, TermLaunch
from .lowering import MODES, cheapest, launch_plan

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
HEAD_DIMS = (16, 256)  # what the kernels take directly (``spattn compile --head-dim``)
CALL_HEAD_DIMS = (1, 256)  # what ``attn(q, k, v)`` takes: below 16, padded (``pad_head_dim``)
TUNE_PAIRS = 1 << 24  # smaller problems are not autotuned
_WARNED = set()


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


class SparseAttention:
    """The compiled attention of one pattern; call it as
    ``attn(q, k, v, scale=None, key_padding=None, documents=None)``."""

    def __init__(self, pattern, block_m: int | None = None, block_n: int | None = None,
                 num_warps: int | None = None, num_stages: int | None = None,
                 merged: bool = False, descriptors: bool = False, autotune: bool = True,
                 verbose: bool = False, lowering: str = "auto"):
        if not hasattr(pattern, "at") or not hasattr(pattern, "hash"):
            raise TypeError(f"compile() needs a Pattern (from spattn_dsl.load(...).pattern(name)), "
                            f"got {type(pattern).__name__}")
        self.pattern = pattern
        _check_hints(block_m=block_m, block_n=block_n, num_warps=num_warps,
                     num_stages=num_stages, merged=merged, descriptors=descriptors,
                     autotune=autotune, verbose=verbose)
        self.forced = None
        if block_m or block_n or num_warps or num_stages or merged or descriptors:
            self.forced = TileConfig(block_m or 64, block_n or 64, num_warps or 4, num_stages or 2,
                                     merged, descriptors)
        if lowering not in MODES:
            raise ValueError(f"lowering must be one of {', '.join(MODES)}, got {lowering!r}")
        self.lowering = lowering
        self.autotune = autotune
        self.verbose = verbose
        self._plans: dict = {}
        self._warned_heads: set = set()  # head counts warned about (see _check_head_count)
        self._document_rules = None
        self._document_modules: dict = {}
        self._valid_lengths: set = set()  # document lengths the pattern was checked at
        self.op_id = op.register(self)

    # ------------------------------------------------------------------ public
    def __call__(self, q, k, v=None, scale: float | None = None, key_padding=None,
                 documents=None):
        return self.forward(q, k, v, scale, key_padding, documents)[0]

    def forward(self, q, k, v=None, scale: float | None = None, key_padding=None,
                documents=None):
        """(out, lse): the attention output and the natural-log log-sum-exp per row (fp32),
        both differentiable. ``key_padding``: None or bool ``[batch, n_k]``, False marking
        padding keys that no query may attend to. ``documents``: None or integer
        ``[batch, n_k]`` non-decreasing document ids (packed sequences: every document is its
        own sequence). ``attn(q, cache)`` with a ``KVCache``: decoding (``spattn_dsl.decode``)."""
        if getattr(k, "is_spattn_kv_cache", False):
            from ..decode import attend
            return attend(self, q, k, v, scale, key_padding, documents)
        scale = check_inputs(q, k, v, scale, head_dims=CALL_HEAD_DIMS)
        self._check_head_count(q.shape[1])
        key_padding = check_padding(key_padding, q, k)
        if documents is not None:
            documents = check_document_ids(documents, q, k)
        head_dim = q.shape[3]
        if head_dim < HEAD_DIMS[0] and not _use_reference(q, warn=False):
            q, k, v = pad_head_dim((q, k, v), HEAD_DIMS[0])  # the scale is the caller's dim's
            out, lse = op.apply(q, k, v, key_padding, scale, self.op_id, documents)
            return out[..., :head_dim].contiguous(), lse  # autograd slices the gradients back
        return op.apply(q, k, v, key_padding, scale, self.op_id, documents)

    def _check_head_count(self, heads: int):
        """Warn, once per head count, where heads wrap unevenly over the pattern's cases
        (head h uses case h mod cases): a 4-case pattern on 2 heads never uses cases 2-3."""
        cases = self.pattern.heads
        if heads % cases == 0 or heads in self._warned_heads:
            return
        self._warned_heads.add(heads)
        unused = ""
        if heads < cases:
            unused = (f"; case {heads} is" if heads == cases - 1 else
                      f"; cases {heads} to {cases - 1} are") + " never used"
        warnings.warn(f"spattn: pattern '{self.pattern.name}' has {cases} head cases but the "
                      f"tensors have {heads} heads, not a multiple: head h uses case h mod "
                      f"{cases}{unused}", UserWarning, stacklevel=4)

    def layout(self, n_q: int, n_k: int, config: TileConfig) -> BlockLayout:
        return layout_for(self.pattern, n_q, n_k, config)

    # ------------------------------------------------------------- op bodies
    def run_forward(self, q, k, v, key_padding, scale, documents=None, memo=None):
        """The custom op's forward: the kernel, or the reference on a CPU without the interpreter
        (or, with documents, for patterns the document kernels cannot take). ``memo`` (a dict
        or None) keeps this call's document plan for its backward."""
        if _use_reference(q) or self._documents_by_reference(documents):
            return reference_forward(self.pattern, q, k, v, key_padding, scale, documents)
        if q.device.type == "cpu" and q.dtype != torch.float32:  # the interpreter's dot is fp32
            out, lse = self.run_forward(q.float(), k.float(), v.float(), key_padding, scale,
                                        documents, memo)
            return out.to(q.dtype), lse
        if documents is not None:
            plan = self.document_plan(q, k, documents)
            if memo is not None:
                memo["documents"] = plan
        else:
            plan = self.plan(q, k, v, scale)
        return launch.forward(plan, q, k, v, scale, key_padding)

    def run_backward(self, grad_out, grad_lse, q, k, v, out, lse, key_padding, scale,
                     documents=None, memo=None):
        """The custom op's backward: (dq, dk, dv); with documents, the forward's plan when
        ``memo`` kept it (the same tensors, so the same tile lists), else built again."""
        if _use_reference(q) or self._documents_by_reference(documents):
            return reference_backward(self.pattern, grad_out, grad_lse, q, k, v, key_padding, scale,
                                      documents, out, lse)
        if q.device.type == "cpu" and q.dtype != torch.float32:
            grads = self.run_backward(*(t.float() if t is not None and t.is_floating_point() else t
                                        for t in (grad_out, grad_lse, q, k, v, out, lse)),
                                      key_padding, scale, documents, memo)
            return tuple(g.to(t.dtype) for g, t in zip(grads, (q, k, v)))
        if documents is not None:
            dq_plan = dkdv_plan = (memo or {}).get("documents") or self.document_plan(q, k,
                                                                                      documents)
        else:
            dq_plan, dkdv_plan = self.backward_plans(q, k, v, scale)
        return launch.backward(dq_plan, dkdv_plan, grad_out, q, k, v, out, lse, scale,
                               key_padding, grad_lse)

    # -------------------------------------------------------------- documents
    def document_rules(self) -> DocumentRules:
        if self._document_rules is None:
            self._document_rules = DocumentRules(self.pattern)
        return self._document_rules

    def _documents_by_reference(self, documents) -> bool:
        """With documents, a pattern with random links the kernels cannot draw per call
        (``DocumentRules.undrawable``) runs the exact reference (warned about once per
        pattern)."""
        if documents is None:
            return False
        undrawable = self.document_rules().undrawable
        if undrawable and ("documents", self.pattern.hash) not in _WARNED:
            _WARNED.add(("documents", self.pattern.hash))
            warnings.warn(f"spattn: with documents, {', '.join(undrawable)} draws per document "
                          f"in a way the kernels do not take (r or its blocks depend on n, or "
                          f"r > {MAX_DRAWS}); using the dense reference attention per document "
                          "(exact, slow)",
                          stacklevel=4)
        return bool(undrawable)

    def _check_document_lengths(self, lists, n_q: int) -> None:
        """A pattern whose parameters mention ``n`` must be valid at the length of every
        document that holds queries (the reference raises the same PatternError there); each
        length is checked once per compiled attention."""
        lengths = lists.doc_length[:, lists.n_k - n_q:]
        for length in torch.unique(lengths).tolist():
            if length not in self._valid_lengths:
                instantiate(self.pattern.expr, length)
                self._valid_lengths.add(length)

    def document_plan(self, q, k, documents) -> Plan:
        """A Plan for one call with documents: this call's tile layout, built from the ids on
        their device, and each head case's token-grid kernel (rendered once per pattern)."""
        n_q, n_k = q.shape[2], k.shape[2]
        config = self.forced or documents_config(interpreter=q.device.type == "cpu")
        config = dataclasses.replace(config, merged=False)  # one loop per list: never merged
        lists = document_layout(self.document_rules(), documents, n_q, config.block_m,
                                config.block_n)
        if self.document_rules().needs_length:
            self._check_document_lengths(lists, n_q)
        doc_start, doc_length = lists.doc_start.contiguous(), lists.doc_length.contiguous()
        cases = []
        for case in range(lists.cases):
            layout = BlockLayout(n_q, n_k, config.block_m, config.block_n, **{
                name: getattr(lists, name)[:, case].contiguous() for name in _CASE_LISTS},
                row_order=lists.row_order.contiguous())
            module = self._document_module(case, n_k)
            term = TermLaunch(module, layout, config, q.device,
                              tables=draw_tables(module.TABLES, lists))
            term.col_order = lists.col_order.contiguous()  # per batch row (TermLaunch sums rows)
            term.doc_start, term.doc_length = doc_start, doc_length
            cases.append([term])
        return Plan(cases, config)

    def _document_module(self, case: int, n_k: int):
        """The token-grid kernel of one head case, rendered from the bound expression (no
        parameter clamped to some call's length; ``n`` each document's length at run time,
        random links reading each call's draws): one module serves every length and every set
        of boundaries."""
        module = self._document_modules.get(case)
        if module is None:
            expr = select_head(self.pattern.expr, case)
            rendered = render_term(self.pattern, expr, n_k, documents=True)
            module = cache.import_source(rendered.key, rendered.source)
            self._document_modules[case] = module
        return module

    # ------------------------------------------------------------------ plans
    def plan(self, q, k, v, scale) -> Plan:
        key = ("forward",) + _problem(q, k)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._choose(q, k, v, scale)
            self._plans[key] = plan
        return plan

    def backward_plans(self, q, k, v, scale) -> tuple[Plan, Plan]:
        """(dQ plan, dK/dV plan): the forward's tiles when forced or interpreted, else tuned
        over the backward space (each kernel timed alone)."""
        key = ("backward",) + _problem(q, k)
        plans = self._plans.get(key)
        if plans is None:
            n_q, n_k = q.shape[2], k.shape[2]
            if self.forced is not None or q.device.type == "cpu":
                config = self.plan(q, k, v, scale).config
                plans = (self._make_plan(n_q, n_k, config, q.device),) * 2
            else:
                dq_configs, dkdv_configs = backward_candidates(q.shape[3], n_q, n_k)
                if self._worth_tuning(q, k):
                    from .autotune import tune_backward
                    plans = tune_backward(self, q, k, v, scale, dq_configs, dkdv_configs)
                else:
                    plans = tuple(self._make_plan(n_q, n_k, cheapest(self.pattern, n_q, n_k,
                                                                     space, self.lowering),
                                                  q.device)
                                  for space in (dq_configs, dkdv_configs))
            self._plans[key] = plans
        return plans

    def _worth_tuning(self, q, k) -> bool:
        """Autotuning compiles and times a dozen kernels (seconds each); below about 16M
        query-key pairs a launch takes microseconds, so the first config serves."""
        return self.autotune and q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] >= TUNE_PAIRS

    def _make_plan(self, n_q, n_k, config, device) -> Plan:
        """The launch plan at one tile config: per head case the terms the plan pass chose
        (``lowering``: ``auto`` by cost, ``grid`` a single layout, ``terms`` every term)."""
        return launch_plan(self.pattern, n_q, n_k, config, device, self.lowering)

    def _choose(self, q, k, v, scale) -> Plan:
        n_q, n_k, head_dim = q.shape[2], k.shape[2], q.shape[3]
        if self.forced is not None:
            return self._make_plan(n_q, n_k, self.forced, q.device)
        configs = candidate_configs(head_dim, n_q, n_k, interpreter=q.device.type == "cpu")
        if len(configs) == 1 or not self._worth_tuning(q, k):  # tiles by the plan's cost
            return self._make_plan(n_q, n_k, cheapest(self.pattern, n_q, n_k, configs,
                                                      self.lowering), q.device)
        from .autotune import tune
        return tune(self, q, k, v, scale, configs)


# what compile() accepts for each numeric hint: (smallest, largest, powers of two only)
HINT_RANGES = {"block_m": (16, 256, True), "block_n": (16, 256, True),
               "num_warps": (1, 32, True), "num_stages": (1, 8, False)}


def _check_hints(**hints):
    """compile()'s hints, each named in its error: tile sizes and warps powers of two in
    HINT_RANGES, stages in range, flags bool (None: the hint is not given)."""
    from ..ir.program import integer_argument

    for name, value in hints.items():
        if value is None:
            continue
        if name not in HINT_RANGES:
            if not isinstance(value, bool):
                raise TypeError(f"compile: {name} must be True or False, got {value!r}")
            continue
        low, high, power = HINT_RANGES[name]
        value = integer_argument("compile", name, value)
        if not low <= value <= high or (power and value & (value - 1)):
            kind = "a power of two" if power else "an integer"
            raise ValueError(f"compile: {name} must be {kind} from {low} to {high}, "
                             f"got {value}")


def compile(pattern, **hints) -> SparseAttention:  # noqa: A001  (the documented name)
    """Compile a pattern into ``attn(q, k, v, scale=None, key_padding=None, documents=None)
    -> out`` on ``[B, H, n, D]`` tensors (``documents``: packed sequences, see the module
    docstring).

    Hints (all optional): ``block_m``, ``block_n``, ``num_warps``, ``num_stages``, ``merged``,
    ``descriptors`` (any of them fixes the tile configuration, the others at 64 x 64, 4 warps,
    2 stages; ``merged`` visits each row's tiles in one loop; ``descriptors`` reads tiles by
    tensor descriptors where the GPU and inputs allow), ``autotune``
    (default True), ``verbose`` (print tuning progress), ``lowering`` (``auto``: the plan of
    terms the cost model picks; ``grid``: one block layout; ``terms``: every structured term).
    """
    if getattr(pattern, "dynamic", False):  # dynamic terms (docs/language.md §5)
        from ..dynamic.attend import DynamicAttention
        return DynamicAttention(pattern, **hints)
    return SparseAttention(pattern, **hints)


# the per-case tensors of a DocumentLayout (``[batch, cases, ...]``), sliced per head case
_CASE_LISTS = ("states", "full_counts", "full_indices", "partial_counts", "partial_indices",
               "full_q_counts", "full_q_indices", "partial_q_counts", "partial_q_indices")


def layout_for(pattern, n_q: int, n_k: int, config: TileConfig) -> BlockLayout:
    """The layout of a pattern at a size and tile config: memory cache, then disk, then built."""
    from ..codegen.render import kernel_key

    if getattr(pattern, "dynamic", False):  # dynamic terms: not in layouts yet (issue 27)
        require_static(pattern, "layout_for()")
    concrete = pattern.at(n_k)
    bm, bn = config.block_m, config.block_n
    name = f"{kernel_key(concrete)}-q{n_q}-k{n_k}-m{bm}-n{bn}"
    return cache.layout(name, n_q, n_k, bm, bn, lambda: lower(concrete, n_q, n_k, bm, bn),
                        expr=concrete)


def pad_head_dim(tensors, head_dim: int) -> tuple:
    """Each tensor ``[..., d]`` with zero columns up to ``head_dim``: zeros in q and k leave every
    score unchanged, zeros in v give zero output columns (sliced off by the caller), and the
    padding's gradients are dropped by autograd (the pad's backward slices)."""
    return tuple(torch.nn.functional.pad(t, (0, head_dim - t.shape[-1])) for t in tensors)


def check_inputs(q, k, v, scale, head_dims=HEAD_DIMS):
    """Validate q, k, v (``[B, H, n, D]``, D in ``head_dims``) and return the softmax scale
    (``D ** -0.5`` when None)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be [batch, heads, seq, head_dim], got shape "
                             f"{tuple(t.shape)}")
        if t.dtype not in DTYPES:
            raise TypeError(f"{name} has dtype {t.dtype}; spattn supports float16, bfloat16, float32")
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not q.device == k.device == v.device:
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if q.device.type not in ("cuda", "cpu"):
        raise ValueError(f"spattn runs on CUDA GPUs (or the CPU for testing), got {q.device}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[0] != k.shape[0]:
        raise ValueError(f"q and k have different batch sizes: {q.shape[0]} and {k.shape[0]}")
    if q.shape[3] != k.shape[3]:
        raise ValueError(f"q and k have different head_dim: {q.shape[3]} and {k.shape[3]}")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of key/value heads "
                         f"({k.shape[1]})")
    if not head_dims[0] <= q.shape[3] <= head_dims[1]:
        raise ValueError(f"head_dim must be between {head_dims[0]} and {head_dims[1]}, got {q.shape[3]}")
    if q.shape[2] > k.shape[2]:
        raise ValueError(f"more queries than keys ({q.shape[2]} > {k.shape[2]}): queries are the "
                         "last n_q positions of the key sequence")
    return q.shape[3] ** -0.5 if scale is None else check_scale(scale)


def check_scale(scale) -> float:
    """``scale`` as a float: a finite positive real number (a Python or NumPy int or float;
    not a bool, a string or a tensor, which would be read or broadcast silently)."""
    if isinstance(scale, (bool, torch.Tensor)) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real number (float) or None, got "
                        f"{type(scale).__name__} {scale!r}")
    value = float(scale)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"scale must be a finite positive number, got {value!r}")
    return value


def check_document_ids(documents, q, k):
    """``documents`` as a contiguous int64 ``[batch, n_k]`` tensor on q's device (ValueError
    naming ``documents`` otherwise). Under ``torch.compile`` only shape and dtype are checked
    here; the op checks the ids themselves when it runs."""
    shape = (k.shape[0], k.shape[2])
    if torch.compiler.is_compiling():
        if not isinstance(documents, torch.Tensor) or tuple(documents.shape) != shape or \
                documents.dtype == torch.bool or documents.is_floating_point():
            raise ValueError(f"documents must be an integer tensor [batch, n_k] = {list(shape)}")
        return documents.to(device=q.device, dtype=torch.int64).contiguous()
    ids = check_documents(documents, shape[1], batch=shape[0])
    return ids.to(q.device).contiguous()


def check_padding(key_padding, q, k):
    """None, or ``key_padding`` as a contiguous bool ``[batch, n_k]`` tensor on q's device."""
    if key_padding is None:
        return None
    if not isinstance(key_padding, torch.Tensor):
        raise TypeError(f"key_padding must be a torch.Tensor, got {type(key_padding).__name__}")
    shape = (k.shape[0], k.shape[2])
    if tuple(key_padding.shape) != shape:
        raise ValueError(f"key_padding must be [batch, n_k] = {list(shape)} (False = padding), "
                         f"got {list(key_padding.shape)}")
    if key_padding.dtype != torch.bool:
        raise TypeError(f"key_padding must be a bool tensor (True = a real key), got {key_padding.dtype}")
    return key_padding.to(q.device).contiguous()


def _problem(q, k) -> tuple:
    return (q.shape[2], k.shape[2], q.shape[0], q.shape[1], k.shape[1], q.shape[3], q.dtype,
            str(q.device))


def _use_reference(q, warn: bool = True) -> bool:
    """On a CPU without ``TRITON_INTERPRET``: the tiled reference (warned about once)."""
    if q.device.type != "cpu" or interpreting():
        return False
    if warn and "cpu" not in _WARNED:
        _WARNED.add("cpu")
        from ..warn import warn_at_caller  # the caller's line, not the op's or autograd's
        warn_at_caller("spattn: tensors on the CPU and TRITON_INTERPRET is not set; using the "
                       "reference attention in PyTorch, tile by tile on torch's threads (no Triton kernels)")
    return True


def _reference_layout(pattern, q, k, forward: bool = False) -> BlockLayout:
    """The CPU path's layout (cached like the kernels'), at ``cpu_tiles``'s tile sizes (the
    forward's and the backward's may differ: the forward multiplies a band's tiles at once)."""
    def cached(pattern, n_q, n_k, block_m, block_n):
        return layout_for(pattern, n_q, n_k, TileConfig(block_m, block_n, 4, 1))

    n_q, n_k = q.shape[2], k.shape[2]
    tiles = cpu_tiles(pattern, n_q, n_k, q.shape[0] * q.shape[1], cached, forward)
    return cached(pattern, n_q, n_k, *tiles)


def reference_forward(pattern, q, k, v, key_padding, scale, documents=None):
    """The CPU path's (out, lse): fp32 attention over the pattern's block layout, one query
    tile at a time (memory grows with the allowed pairs, not n_q x n_k). With documents: the
    dense reference of each document alone (memory grows with the longest document)."""
    if documents is not None:
        out = torch.zeros(q.shape, device=q.device, dtype=torch.float32)
        lse = torch.full(q.shape[:3], float("-inf"), device=q.device, dtype=torch.float32)
        for b, rows, keys in _document_pieces(documents, q.shape[2]):
            pad = None if key_padding is None else key_padding[b:b + 1, keys]
            out[b:b + 1, :, rows], lse[b:b + 1, :, rows] = attention_reference(
                pattern, q[b:b + 1, :, rows], k[b:b + 1, :, keys], v[b:b + 1, :, keys], scale,
                torch.float32, pad)
        return out.to(q.dtype).contiguous(), lse.contiguous()
    layout = _reference_layout(pattern, q, k, forward=True)
    out, lse = attention_tiled(pattern, q, k, v, scale, torch.float32, key_padding, layout)
    return out.to(q.dtype).contiguous(), lse.contiguous()  # the strides the fake promises


def reference_backward(pattern, grad_out, grad_lse, q, k, v, key_padding, scale, documents=None,
                       out=None, lse=None):
    """The CPU path's (dq, dk, dv): the closed-form softmax gradient, tile by tile from the
    forward's ``out`` and ``lse`` (with documents: dense, document by document)."""
    if documents is not None:
        grads = tuple(torch.zeros(t.shape, device=t.device, dtype=torch.float32)
                      for t in (q, k, v))
        for b, rows, keys in _document_pieces(documents, q.shape[2]):
            pad = None if key_padding is None else key_padding[b:b + 1, keys]
            g_lse = None if grad_lse is None else grad_lse[b:b + 1, :, rows]
            dq, dk, dv = attention_reference_backward(
                pattern, grad_out[b:b + 1, :, rows], q[b:b + 1, :, rows], k[b:b + 1, :, keys],
                v[b:b + 1, :, keys], scale, torch.float32, pad, g_lse)
            grads[0][b:b + 1, :, rows] = dq
            grads[1][b:b + 1, :, keys] = dk
            grads[2][b:b + 1, :, keys] = dv
        return tuple(g.to(t.dtype).contiguous() for g, t in zip(grads, (q, k, v)))
    layout = _reference_layout(pattern, q, k)
    grads = attention_tiled_backward(pattern, grad_out, q, k, v, scale, torch.float32,
                                     key_padding, grad_lse, layout, out, lse)
    return tuple(g.to(t.dtype).contiguous() for g, t in zip(grads, (q, k, v)))


def _document_pieces(documents, n_q: int):
    """(batch row, query rows, key positions) as slices, for every document that holds
    queries: each document is its own sequence, its queries bottom-right aligned in it."""
    n_k = documents.shape[1]
    offset = n_k - n_q
    for b, row in enumerate(documents.cpu()):
        starts, lengths = document_runs(row)
        for start, length in zip(starts.tolist(), lengths.tolist()):
            first = max(start, offset)
            if first < start + length:
                end = start + length
                yield b, slice(first - offset, end - offset), slice(start, end)
