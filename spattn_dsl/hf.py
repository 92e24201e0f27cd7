"""Hugging Face backend: ``register(name, pattern_or_model)``, then ``attn_implementation=name``.

The pattern replaces the model's own mask (include ``causal`` in it for a decoder). A Model
gives each decoder layer its own pattern, chosen by the attention module's ``layer_idx``.
Padding reaches the kernels as a per-key mask; decoding with the default dynamic KV cache
works through spattn's bottom-right query alignment. Caches that drop or pre-allocate keys
(sliding-window and static caches) are refused with a clear error: a pattern's positions count
from the first token of the sequence, so it needs every key, in order, and no others.

Packed rows (several documents per row, as ``DataCollatorWithFlattening`` makes them: position
ids that restart within a row) become a ``documents`` id tensor, so that every document is its
own sequence. They reach the kernels only through an attention callable that takes
``documents=``; otherwise they are refused, never attended across documents.

    spattn_dsl.hf.register("spattn_longformer", "examples/longformer.spattn:longformer")
    model = AutoModelForCausalLM.from_config(config, attn_implementation="spattn_longformer")

Generation with spattn's own KV cache (``hf.cache(model)``, a transformers ``Cache`` of
per-layer ``KVCache``s): each layer keeps only the positions its pattern can still reach, so a
windowed model's cache memory stays flat as it generates (docs/python.md, KV cache):

    model.generate(ids, cache=spattn_dsl.hf.cache(model), max_new_tokens=64)
"""
from __future__ import annotations

import functools
import inspect

import torch

from .decorator import LayerPatterns

_REGISTERED: dict = {}  # name -> LayerPatterns, for hf.cache


def register(name: str, pattern_or_model, **compile_hints) -> str:
    """Register ``name`` with transformers' attention and mask interfaces; returns ``name``.

    ``pattern_or_model``: a Pattern or Model, ``"file.spattn:name"``, or pattern text.
    ``compile_hints`` go to ``spattn_dsl.compile`` (tile sizes, ``autotune``, ...).
    """
    try:
        from transformers import AttentionInterface, AttentionMaskInterface
    except ImportError as error:  # an optional extra
        raise ImportError("spattn_dsl.hf needs transformers: pip install 'spattn_dsl[hf]'") from error
    layers = LayerPatterns(pattern_or_model, **compile_hints)
    attention = functools.partial(spattn_attention_forward, layers)
    functools.update_wrapper(attention, spattn_attention_forward)
    AttentionInterface.register(name, attention)
    AttentionMaskInterface.register(name, key_padding_mask)
    _REGISTERED[name] = layers
    return name


def cache(model, page_size: int = 64):
    """A fresh spattn KV cache for one ``generate()`` call of ``model``, whose attention was
    registered through ``register``: pass it as ``cache=`` (``past_key_values=``)."""
    from .decode.hf_cache import SpattnCache

    name = getattr(model.config, "_attn_implementation", None)
    if name not in _REGISTERED:
        raise ValueError(f"hf.cache: the model's attention is {name!r}, not one registered "
                         "through spattn_dsl.hf.register")
    layers = _REGISTERED[name]
    count = model.config.get_text_config(decoder=True).num_hidden_layers
    return SpattnCache([layers.pattern(i) for i in range(count)], page_size)


def spattn_attention_forward(layers: LayerPatterns, module, query, key, value, attention_mask,
                             dropout: float = 0.0, scaling: float | None = None, **kwargs):
    """transformers' attention signature: ``[b, h, s, d]`` in, ``([b, s, h, d], None)`` out.

    ``attention_mask`` is what ``key_padding_mask`` made: None or a ``[b, n_k]`` bool tensor.
    ``kwargs`` carry the model's ``position_ids``, from which packed rows are detected.
    """
    if dropout:
        raise NotImplementedError("spattn attention has no dropout; set the model's "
                                  "attention_dropout to 0")
    if attention_mask is not None and attention_mask.dim() != 2:
        raise ValueError("spattn received a prepared attention mask of shape "
                         f"{tuple(attention_mask.shape)}; it takes padding as a 2D [batch, keys] "
                         "mask (the pattern supplies the rest)")
    attn = layers.attention(getattr(module, "layer_idx", None))
    if getattr(key, "is_spattn_kv_cache", False):  # hf.cache: key is the layer's KVCache
        if attention_mask is not None:
            raise NotImplementedError("the spattn KV cache takes no padding: generate "
                                      "unpadded batches (or one sequence at a time)")
        return attn(query, key, scale=scaling).transpose(1, 2).contiguous(), None
    documents = documents_from_position_ids(kwargs.get("position_ids"), query.shape[0],
                                            key.shape[2], attention_mask)
    if documents is None:
        out = attn(query, key, value, scale=scaling, key_padding=attention_mask)
    elif takes_documents(attn):
        out = attn(query, key, value, scale=scaling, key_padding=attention_mask,
                   documents=documents)
    else:
        raise NotImplementedError(
            "spattn received packed rows (position_ids restart within a row, as "
            "DataCollatorWithFlattening makes them), but this attention does not take "
            "documents=, so it would attend across documents: pad the batch instead of "
            "flattening it, or give the attention a documents= parameter")
    return out.transpose(1, 2).contiguous(), None


def documents_from_position_ids(position_ids, batch: int, n_k: int, padding=None):
    """Document ids ``[batch, n_k]`` (int64, from 0) of packed rows, or None when no row is
    packed.

    A document starts wherever a position id is not its predecessor's plus one (a restart at 0,
    as ``DataCollatorWithFlattening`` makes them; the rule transformers applies to its own packed
    masks), between two real tokens: ``padding`` (``[batch, n_k]`` bool, True = a real token)
    keeps the position ids of left or right padding from counting. Position ids that cover only
    the new queries (decoding with a cache) are not packed rows: None.
    """
    if position_ids is None or position_ids.dim() != 2 or position_ids.shape[-1] != n_k:
        return None
    position_ids = position_ids.expand(batch, n_k)
    starts = position_ids[:, 1:] != position_ids[:, :-1] + 1
    if padding is not None:
        starts &= padding[:, 1:] & padding[:, :-1]
    if not bool(starts.any()):
        return None
    first = torch.zeros_like(position_ids[:, :1])
    return torch.cat([first, starts.cumsum(-1)], dim=-1).to(torch.int64)


def takes_documents(attn) -> bool:
    """Whether an attention callable has a ``documents`` parameter (a catch-all ``**kwargs``
    does not count: it could swallow the ids and attend across documents)."""
    try:
        parameters = inspect.signature(attn).parameters
    except (TypeError, ValueError):
        return False
    parameter = parameters.get("documents")
    return parameter is not None and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD,
                                                        parameter.KEYWORD_ONLY)


def key_padding_mask(batch_size: int, q_length: int, kv_length: int, q_offset=0, kv_offset=0,
                     attention_mask: torch.Tensor | None = None, **_):
    """transformers' mask-interface signature: None when no key is padding, else ``[b, n_k]``
    bool (True = a real token). The pattern itself is applied by the kernels."""
    if isinstance(kv_offset, int) and kv_offset != 0:
        raise ValueError("spattn needs every key from the first token on, but the KV cache dropped "
                         f"the first {kv_offset}: use a model config without sliding_window (the "
                         "pattern does the windowing) and the default dynamic cache")
    if isinstance(q_offset, int) and q_offset + q_length != kv_length:
        raise ValueError(f"spattn aligns queries with the last keys, but this cache holds {kv_length} "
                         f"key slots for {q_offset + q_length} tokens (a static cache?): use the "
                         "default dynamic cache")
    if attention_mask is None:
        return None
    padding = attention_mask[:, :kv_length].to(torch.bool)
    return None if bool(padding.all()) else padding
