"""Pattern.live against brute force over masks (docs/python.md, KV cache)."""
import random
from pathlib import Path

import pytest
import torch

from spattn_dsl import load, loads
from spattn_dsl.semantics.liveness import UNBOUNDED, last_query

EXAMPLES = Path(__file__).parents[2] / "examples"

HORIZON = 480  # rows of the brute force: past every reach and period of the patterns here


def pattern(text):
    return loads(f"pattern p {{ {text} }}").pattern("p")


def union_mask(p, horizon=HORIZON):
    """The mask of every head together, ``horizon`` x ``horizon``."""
    union = torch.zeros(horizon, horizon, dtype=torch.bool)
    for head in range(p.heads):
        union |= p.mask(horizon, horizon, head=head)
    return union


def brute_live(union, t):
    """Keys 0..t-1 that some query in t..horizon-1 may attend."""
    return union[t:, :t].any(dim=0)


EXACT = [
    "causal & window(5)", "window(3)", "causal & stride(4)", "causal & (window(3) | stride(4))",
    "causal & (sink(2) | window(4))", "band(3, 1)", "causal & dilated(3, 2)", "causal & chunk(5)",
    "summary(4, 1) & causal", "global(first = 3)", "global(2, 9)", "causal | prefix(7)",
    "blocks(4) { band(1, 1) | global(first = 1) }", "!causal", "causal - window(3)",
    "heads { causal & window(3); causal & stride(3) }",
    "blocks(3) { causal & stride(2) } & window(10)", "chunk(4) | (stride(3) - global(first = 2))",
    "(causal & chunk(8)) | (global(first = 100) & stride(5))",
    "blocks(4) { chunk(3) & stride(2) } - prefix(60)", "band(2, 5) | dilated(4, 3) & !chunk(6)",
    # the examples' shapes with small parameters
    "causal & (sink(3) | window(9))", "band(6, 6) | global(first = 2)",
    "blocks(4) { band(1, 1) | global(first = 2) }", "causal & (window(8) | summary(8, 2))",
]


@pytest.mark.parametrize("text", EXACT)
def test_live_equals_brute_force_at_every_short_length(text):
    p = pattern(text)
    union = union_mask(p)
    for t in [*range(0, 70), 97, 120, 160]:
        assert torch.equal(p.live(t), brute_live(union, t)), (text, t)


@pytest.mark.parametrize("file", sorted(EXAMPLES.glob("*.spattn")), ids=lambda f: f.stem)
def test_every_example_pattern_at_sampled_lengths(file):
    """The examples at their own parameters; the brute force looks 4096 + 256 rows ahead (past
    every window plus period they have)."""
    program = load(file)
    ahead = 4096 + 256
    for name in program.patterns:
        p = program.pattern(name)
        if p.dynamic:  # the mask needs a selection; live() keeps every position
            assert bool(p.live(130).all())
            continue
        for t in (130, 4200):
            brute = torch.zeros(t, dtype=torch.bool)
            for head in range(p.heads):
                brute |= p.mask(ahead, t + ahead, head=head)[:, :t].any(dim=0)
            if name in ("bigbird", "prefix_lm"):  # random links; a parameter that mentions n
                assert bool(p.live(t).all())
            else:
                assert torch.equal(p.live(t), brute), (name, t)


def random_closed_form(rng, depth=0):
    leaves = [lambda: f"window({rng.randint(1, 9)})", lambda: f"band({rng.randint(0, 6)}, {rng.randint(0, 6)})",
              lambda: f"dilated({rng.randint(1, 4)}, {rng.randint(1, 3)})", lambda: f"stride({rng.randint(1, 6)})",
              lambda: f"chunk({rng.randint(1, 9)})", lambda: f"summary({rng.randint(2, 6)}, 1)",
              lambda: f"global(first = {rng.randint(0, 40)})", lambda: f"global({rng.randint(0, 90)})",
              lambda: f"sink({rng.randint(0, 4)})", lambda: f"prefix({rng.randint(0, 60)})",
              lambda: "causal", lambda: "dense"]
    if depth >= 2 or rng.random() < 0.3:
        return rng.choice(leaves)()
    roll = rng.random()
    if roll < 0.1:
        return f"!({random_closed_form(rng, depth + 1)})"
    if roll < 0.2:
        return f"blocks({rng.randint(2, 4)}) {{ {random_closed_form(rng, depth + 1)} }}"
    op = rng.choice(["|", "&", "-"])
    return f"({random_closed_form(rng, depth + 1)}) {op} ({random_closed_form(rng, depth + 1)})"


def test_live_equals_brute_force_on_random_closed_form_patterns():
    rng = random.Random(9)
    for _ in range(30):
        p = pattern(random_closed_form(rng))
        union = union_mask(p)
        for t in sorted(rng.sample(range(1, 200), 12)):
            assert torch.equal(p.live(t), brute_live(union, t)), (p.text, t)


@pytest.mark.parametrize("text", ["causal & random(2, seed = 1)", "causal & window(n // 4)",
                                  "causal & where(q - k < 3)"])
def test_unknown_liveness_keeps_everything(text):
    assert bool(pattern(text).live(57).all())


def test_sampled_positions_at_a_large_length():
    """Windows, sinks and strides at 200,000 tokens: the counts follow from the pattern, and
    sampled keys agree with a brute force over the next rows."""
    t = 200_000
    assert int(pattern("causal & window(4096)").live(t).sum()) == 4095
    assert pattern("causal & (sink(4) | window(1024))").live(t).nonzero().flatten().tolist() == \
        [0, 1, 2, 3] + list(range(t - 1023, t))
    strided = pattern("causal & (stride(64) | window(64))")
    assert bool(strided.live(t).all())
    keys = torch.tensor([0, 5, 199_000, 199_999])
    assert bool((last_query(strided, keys) == UNBOUNDED).all())
    chunked = pattern("causal & chunk(100)")
    assert last_query(chunked, torch.tensor([0, 150, 199_999])).tolist() == [99, 199, 199_999]


def test_t_is_checked():
    with pytest.raises(ValueError, match="t must be an integer"):
        pattern("causal").live(-1)


@pytest.mark.parametrize("text", ["causal & window(8)", "random(2)"])
def test_live_refuses_lengths_it_cannot_answer(text):
    """Past the documented 2**48 a ValueError that says so; past 2**32 positions the bool
    result alone is 4 GiB: a ValueError before anything is allocated (this used to try ~2 PB
    and fail with torch's RuntimeError)."""
    with pytest.raises(ValueError, match="2\\*\\*48"):
        pattern(text).live(2**48 + 1)
    with pytest.raises(ValueError, match="2\\*\\*32 positions"):
        pattern(text).live(2**32 + 1)


def test_plan_picture_names_the_case_a_head_wraps_to():
    from spattn_dsl.runtime.plan_picture import draw_plan

    p = pattern("heads { causal & window(8); causal & stride(4) }")
    assert "head 2 (case 0 of 2: heads wrap)" in draw_plan(p, 64, head=2, width=8).splitlines()[0]
