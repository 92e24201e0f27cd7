"""Inputs of compiled attention: ``scale`` is a finite positive real number or None, and every
refusal names the argument. Valid scales give the reference result."""
import math

import numpy as np
import pytest
import torch

from spattn_dsl.codegen import attention_reference
from spattn_dsl.runtime import compile
from spattn_dsl.runtime.attention import check_scale

from ..layout.patterns import pattern
from .test_attention import inputs, rel_err

TILES = dict(block_m=16, block_n=16, num_warps=1, num_stages=1)

BAD_VALUES = [math.inf, -math.inf, math.nan, 0, 0.0, -0.0, -1, -0.125, 1e-400]
BAD_TYPES = ["0.125", b"1", True, False, torch.tensor(0.125), torch.tensor([0.1, 0.2]),
             np.array([0.125]), [0.125], 1j, object()]


@pytest.mark.parametrize("scale", BAD_VALUES, ids=repr)
def test_scale_out_of_range_is_a_value_error(scale):
    attn = compile(pattern("causal"), **TILES)
    q, k, v = inputs(1, 1, 20, 20, 16)
    with pytest.raises(ValueError, match="scale must be a finite positive number"):
        attn(q, k, v, scale=scale)


@pytest.mark.parametrize("scale", BAD_TYPES, ids=lambda s: type(s).__name__)
def test_scale_of_wrong_type_is_a_type_error(scale):
    attn = compile(pattern("causal"), **TILES)
    q, k, v = inputs(1, 1, 20, 20, 16)
    with pytest.raises(TypeError, match="scale must be a real number"):
        attn(q, k, v, scale=scale)


@pytest.mark.parametrize("scale", [0.3, 2, np.float32(0.5), np.float64(0.2), np.int64(1), 1e-3])
def test_valid_scales_match_the_reference(scale):
    p = pattern("longformer")
    attn = compile(p, **TILES)
    q, k, v = inputs(1, 2, 40, 40, 16)
    out = attn(q, k, v, scale=scale)
    want, _ = attention_reference(p, q.cpu(), k.cpu(), v.cpu(), scale=float(scale))
    assert rel_err(out, want) < 1e-5


def test_default_scale_is_inverse_sqrt_head_dim():
    p = pattern("causal")
    attn = compile(p, **TILES)
    q, k, v = inputs(1, 1, 30, 30, 32)
    assert rel_err(attn(q, k, v), attn(q, k, v, scale=32 ** -0.5)) == 0.0


def test_check_scale_returns_a_python_float():
    for scale in (np.float32(0.25), 3, 0.5):
        value = check_scale(scale)
        assert type(value) is float and value == float(scale)
