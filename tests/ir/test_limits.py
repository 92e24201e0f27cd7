"""Exact integers (or a located refusal), clamped parameters and canonical comparisons."""
import random

import pytest
import torch

from spattn_dsl import PatternError, loads
from spattn_dsl.api import pattern_from
from spattn_dsl.codegen.predicate import Emitter
from spattn_dsl.ir import nodes as N
from spattn_dsl.ir.evaluate import select_head
from spattn_dsl.layout import states_from_mask
from spattn_dsl.layout.build import tile_states
from spattn_dsl.layout.pairs import allowed
from tests.oracle import brute_mask

HUGE = [2**31, 2**31 + 7, 2**40, 2**62, 2**63 - 1]


def spec_mask(predicate, n_q, n_k):
    """The documented definition on Python integers, pair by pair (no clamping, no int64)."""
    offset = n_k - n_q
    return torch.tensor([[bool(predicate(i + offset, k, n_k)) for k in range(n_k)]
                         for i in range(n_q)], dtype=torch.bool).reshape(n_q, n_k)


def assert_layout_matches_mask(pattern, n_q, n_k, tile=(8, 4)):
    concrete = pattern.at(n_k)
    for head in range(pattern.heads):
        got = tile_states(select_head(concrete, head), n_q, n_k, *tile)
        assert torch.equal(got, states_from_mask(pattern.mask(n_q, n_k, head), *tile)), pattern.text


# primitive text with {v} (a huge value) -> its documented condition on Python ints
WIDE = [
    ("window({v})", lambda v: lambda q, k, n: abs(q - k) < v),
    ("band({v}, 2)", lambda v: lambda q, k, n: q - v <= k <= q + 2),
    ("band(1, {v})", lambda v: lambda q, k, n: q - 1 <= k <= q + v),
    ("dilated({v}, 2)", lambda v: lambda q, k, n: abs(q - k) < v * 2 and (q - k) % 2 == 0),
    ("dilated(2, {v})", lambda v: lambda q, k, n: abs(q - k) < 2 * v and (q - k) % v == 0),
    ("stride({v})", lambda v: lambda q, k, n: (q - k) % v == 0),
    ("chunk({v})", lambda v: lambda q, k, n: q // v == k // v),
    ("summary({v}, 3)", lambda v: lambda q, k, n: k % v >= v - 3),
    ("summary({v}, {v} - 5)", lambda v: lambda q, k, n: k % v >= 5),
    ("global(first = {v})", lambda v: lambda q, k, n: q < v or k < v),
    ("global(3, {v})", lambda v: lambda q, k, n: q in (3, v) or k in (3, v)),
    ("sink({v})", lambda v: lambda q, k, n: k < v),
    ("prefix({v})", lambda v: lambda q, k, n: q < v and k < v),
    ("blocks({v}) {{ causal }}", lambda v: lambda q, k, n: k // v <= q // v),
    ("causal & where(q * {v} >= k * {v})", lambda v: lambda q, k, n: k <= q),
]


@pytest.mark.parametrize("value", HUGE + ["n - 1", "n", "n + 1", "n + 2"])
@pytest.mark.parametrize("text, condition", WIDE, ids=[t for t, _ in WIDE])
def test_huge_parameters_are_exact(text, condition, value):
    """Values past int32/int64 arithmetic or past n: the mask and the layout are as documented."""
    rng = random.Random(hash((text, str(value))))
    for _ in range(2):
        n_k = rng.randint(8, 30)  # summary's c = v - 5 needs v >= 6
        n_q = rng.randint(0, n_k)
        v = eval(str(value), {"n": n_k})  # noqa: S307  (our own small expressions)
        try:
            pattern = loads(f"pattern p {{ {text.format(v=f'({value})')} }}").pattern("p")
            got = pattern.mask(n_q, n_k)
        except PatternError as error:  # refused: only where(...) arithmetic past the range
            assert "where(...) arithmetic can reach" in error.message and v * n_k > 2**63 - 1
            continue
        assert torch.equal(got, spec_mask(condition(v), n_q, n_k)), (text, value, n_q, n_k)
        assert_layout_matches_mask(pattern, n_q, n_k)


def test_window_of_int64_max_allows_every_pair():
    assert int(pattern_from("window(9223372036854775807)").mask(4).sum()) == 16


def test_random_with_more_draws_than_keys_is_every_key_once():
    wide, exact = pattern_from("random(4611686018427387904, seed = 3)"), pattern_from("random(9, seed = 3)")
    assert torch.equal(wide.mask(5, 9), exact.mask(5, 9)) and bool(wide.mask(5, 9).all())


@pytest.mark.parametrize("source, column, message", [
    ("pattern p { window(9223372036854775808) }", 20, "integer literal too large"),
    ("pattern p(a = 4611686018427387904 * 2) { window(a) }", 35, "integer out of range"),
    ("pattern p(a = 0 - 9223372036854775807 - 1) { window(a) }", 39, "integer out of range"),
    ("model m { repeat 3074457345618258603 { layers 3: causal } }", 18, r"at most 2\*\*63 - 1 layers"),
])
def test_integers_past_the_range_are_refused_where_they_arise(source, column, message):
    with pytest.raises(PatternError, match=message) as info:
        program = loads(source, "f.spattn")
        for name in program.patterns:
            program.pattern(name)
        for name in program.models:
            program.model(name)
    assert (info.value.filename, info.value.line, info.value.column) == ("f.spattn", 1, column)


def test_python_parameters_past_the_range_are_refused():
    program = loads("pattern p(w = 4) { window(w) }")
    assert program.pattern("p", w=2**63 - 1).mask(3).all()
    with pytest.raises(PatternError, match="must lie in"):
        program.pattern("p", w=2**63)


def test_where_arithmetic_is_exact_or_refused_at_the_operator():
    # exact: products past 2**53 (float) but inside int64
    pattern = pattern_from("where(q * 1000000000007 - k * 1000000000006 >= q)")
    assert torch.equal(pattern.mask(9, 20), spec_mask(
        lambda q, k, n: q * 1000000000007 - k * 1000000000006 >= q, 9, 20))
    big = pattern_from("where(q * 4611686018427387904 >= k)")
    assert big.mask(1, 1).all()  # q = 0 only: in range
    with pytest.raises(PatternError, match="where.*can reach 9223372036854775808") as info:
        big.mask(3)  # q = 2 reaches 2**63
    assert info.value.column == 9


@pytest.mark.parametrize("text, message", [
    ("where(q // (q - k) == 0)", "divisor of '//'"),
    ("where(q % (k - 3) == 0)", "divisor of '%'"),
    ("where(isqrt(q - 2) < k)", "isqrt"),
    ("where(log2(q) < k)", "log2"),
])
def test_where_refuses_divisors_and_roots_that_can_be_invalid(text, message):
    with pytest.raises(PatternError, match=message):
        pattern_from(text).mask(6)


def test_valid_roots_and_divisors_in_where_pass():
    pattern = pattern_from("where(log2(q + 1) == log2(k + 1) & q % (k + 1) == 0)")
    assert torch.equal(pattern.mask(17), brute_mask(pattern, 17))


# ---------------------------------------------------------------- where with a constant side
@pytest.mark.parametrize("constant, mirrored", [
    ("where(5 <= q - k)", "where(q - k >= 5)"),
    ("where(3 > k)", "where(k < 3)"),
    ("where(n - 1 == k)", "where(k == n - 1)"),
    ("where(2 != q % 3)", "where(q % 3 != 2)"),
    ("causal & !where(4 < q + k)", "causal & !where(q + k > 4)"),
])
def test_constant_sided_where_means_the_mirrored_comparison(constant, mirrored):
    a, b = pattern_from(constant), pattern_from(mirrored)
    assert a == b and a.text == b.text  # one canonical form, one cache key
    for n_q, n_k in [(7, 7), (3, 11)]:
        assert torch.equal(a.mask(n_q, n_k), brute_mask(b, n_q, n_k))
        assert_layout_matches_mask(a, n_q, n_k)
    concrete = a.at(11)
    q, k = torch.arange(11)[:, None], torch.arange(11)[None, :]
    assert torch.equal(allowed(concrete, q, k, 11).expand(11, 11), a.mask(11))
    assert "q" in Emitter().emit(concrete) or "k" in Emitter().emit(concrete)


@pytest.mark.parametrize("text, n, dense", [
    ("where(0 < 1)", 5, True), ("where(1 < 0)", 5, False), ("where(2 == 2)", 3, True),
    ("where(n < 5)", 4, True), ("where(n < 5)", 8, False), ("where(n % 2 == 0)", 6, True),
])
def test_constant_where_is_dense_or_none(text, n, dense):
    pattern = pattern_from(text)
    assert isinstance(pattern.at(n), N.Dense if dense else N.Empty)
    assert bool(pattern.mask(n).all()) is dense and bool(pattern.mask(n).any()) is dense
    assert_layout_matches_mask(pattern, n, n)
    Emitter().emit(pattern.at(n))


def test_constant_where_passes_analysis():
    from spattn_dsl.analysis import analyze

    for text in ["where(5 <= q - k)", "where(n - 1 == k) | causal", "causal & where(0 < 1)"]:
        analyze(pattern_from(text), 16)
