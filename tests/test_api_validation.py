"""Arguments of mask, analyze and compile are checked, each error naming the call and the
argument (issue 25, items 6 and 12): no TypeError from deep inside torch, no allocator error."""
import numpy as np
import pytest

import spattn_dsl
from spattn_dsl import loads
from spattn_dsl.ir.program import MASK_MAX_PAIRS


@pytest.fixture(scope="module")
def pattern():
    return loads("pattern a { causal & window(4) }").pattern("a")


@pytest.mark.parametrize("args, kwargs, error, message", [
    ((4.0,), {}, TypeError, "mask: n_q must be an integer, got 4.0 (float)"),
    (("4",), {}, TypeError, "mask: n_q must be an integer, got '4' (str)"),
    ((True,), {}, TypeError, "mask: n_q must be an integer, got True (bool)"),
    ((4, 4.0), {}, TypeError, "mask: n_k must be an integer, got 4.0 (float)"),
    ((4,), {"head": 1.5}, TypeError, "mask: head must be an integer, got 1.5"),
    ((-1,), {}, ValueError, "mask: n_q must be >= 0, got -1"),
    ((4,), {"head": -1}, ValueError, "mask: head must be >= 0, got -1"),
    ((5, 4), {}, ValueError, "mask: need n_q <= n_k"),
    ((1, 2**48 + 1), {}, ValueError, "mask: n_k must be <= 2**48"),
])
def test_mask_arguments_are_named(pattern, args, kwargs, error, message):
    with pytest.raises(error) as caught:
        pattern.mask(*args, **kwargs)
    assert type(caught.value) is error  # not a PatternError about a "sequence length"
    assert message in str(caught.value)


def test_mask_too_large_to_allocate_names_its_size(pattern):
    # torch's allocator error before (8 TiB); refused before any allocation
    with pytest.raises(ValueError, match=r"mask: a \[1, 1099511627776\] bool mask would take "
                                         r"1,099,511,627,776 bytes, past the limit of 2\*\*32"):
        pattern.mask(1, 2**40)
    assert MASK_MAX_PAIRS == 2**32


def test_mask_allocation_failure_is_a_clear_error(pattern, monkeypatch):
    import spattn_dsl.semantics.reference as reference

    def fail(*_args):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't "
                           "allocate memory")
    monkeypatch.setattr(reference, "mask", fail)
    with pytest.raises(ValueError, match=r"mask: a \[8, 8\] bool mask takes 64 bytes"):
        pattern.mask(8)


def test_mask_takes_numpy_integers_and_empty_sizes(pattern):
    assert pattern.mask(np.int64(6)).equal(pattern.mask(6))
    assert pattern.mask(0, 5).shape == (0, 5)


@pytest.mark.parametrize("n, layers, error, message", [
    (4.0, None, TypeError, "analyze: n must be an integer, got 4.0 (float)"),
    ("8", None, TypeError, "analyze: n must be an integer, got '8' (str)"),
    (0, None, ValueError, "analyze: n must be >= 1, got 0"),
    (2**48 + 1, None, ValueError, "analyze: n must be <= 2**48"),
    (8, 2.5, TypeError, "analyze: layers must be an integer, got 2.5 (float)"),
    (8, 0, ValueError, "analyze: layers must be >= 1, got 0"),
])
def test_analyze_arguments_are_named(pattern, n, layers, error, message):
    with pytest.raises(error) as caught:
        spattn_dsl.analyze(pattern, n, layers=layers)
    assert type(caught.value) is error and message in str(caught.value)


def test_analyze_still_answers(pattern):
    assert spattn_dsl.analyze(pattern, np.int64(16), layers=2).layers[0].rf_max == 4


@pytest.mark.parametrize("hints, error, message", [
    ({"block_m": 48}, ValueError, "compile: block_m must be a power of two from 16 to 256, got 48"),
    ({"block_n": 1 << 20}, ValueError, "compile: block_n must be a power of two from 16 to 256"),
    ({"block_m": 32.0}, TypeError, "compile: block_m must be an integer, got 32.0 (float)"),
    ({"block_n": "32"}, TypeError, "compile: block_n must be an integer, got '32' (str)"),
    ({"num_warps": 3}, ValueError, "compile: num_warps must be a power of two from 1 to 32"),
    ({"num_warps": -1}, ValueError, "compile: num_warps must be a power of two from 1 to 32"),
    ({"num_stages": 0.5}, TypeError, "compile: num_stages must be an integer"),
    ({"num_stages": 0}, ValueError, "compile: num_stages must be an integer from 1 to 8"),
    ({"autotune": "no"}, TypeError, "compile: autotune must be True or False, got 'no'"),
    ({"merged": 1}, TypeError, "compile: merged must be True or False, got 1"),
])
def test_compile_hints_are_named(pattern, hints, error, message):
    with pytest.raises(error) as caught:
        spattn_dsl.compile(pattern, **hints)
    assert type(caught.value) is error and message in str(caught.value)


def test_compile_takes_good_hints(pattern):
    attn = spattn_dsl.compile(pattern, block_m=32, block_n=16, num_warps=2, num_stages=3)
    assert (attn.forced.block_m, attn.forced.block_n, attn.forced.num_warps) == (32, 16, 2)


# ------------------------------------------------------------------ heads wrap (item 11)
FOUR_CASES = "pattern h { heads { causal; dense; causal & window(2); none } }"


def _head_warnings(attn, heads):
    import warnings

    import torch

    q = torch.randn(1, heads, 8, 16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        attn(q, q, q)
    return [str(w.message) for w in caught if "head cases" in str(w.message)]


def test_head_count_not_a_multiple_of_the_cases_warns_once():
    attn = spattn_dsl.compile(loads(FOUR_CASES).pattern("h"))
    assert _head_warnings(attn, 2) == [
        "spattn: pattern 'h' has 4 head cases but the tensors have 2 heads, not a multiple: "
        "head h uses case h mod 4; cases 2 to 3 are never used"]
    assert _head_warnings(attn, 2) == []  # once per compiled object and head count
    assert len(_head_warnings(attn, 6)) == 1
    assert "case 3 is never used" in _head_warnings(attn, 3)[0]
    assert _head_warnings(attn, 8) == [] and _head_warnings(attn, 4) == []


def test_show_names_the_case_a_head_wraps_to(tmp_path, capsys):
    from spattn_dsl.cli import main

    path = tmp_path / "two.spattn"
    path.write_text("pattern two { heads { causal; dense } }\n")
    assert main(["show", str(path), "--seq-len", "4", "--head", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "two: heads { causal; dense }  (n = 4, head 2 (case 0 of 2: heads wrap))"
    assert lines[1:3] == ["|██· · · |", "|████· · |"]  # head 2 draws case 0: causal
    assert main(["show", str(path), "--seq-len", "4", "--head", "1"]) == 0
    assert "(n = 4, head 1)" in capsys.readouterr().out
