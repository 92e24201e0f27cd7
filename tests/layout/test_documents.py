"""Tile layouts over packed documents against the reference mask with documents."""
import random

import pytest
import torch

from spattn_dsl.api import pattern_from
from spattn_dsl.ir.evaluate import select_head
from spattn_dsl.layout import EMPTY, FULL, PARTIAL, lower, states_from_mask
from spattn_dsl.layout.documents import DocumentRules, document_layout
from spattn_dsl.semantics.documents import document_bounds

from .patterns import pattern, random_tree

# Leaves the tile classifier decides exactly without knowing a document's length.
EXACT_LEAVES = ["dense", "none", "causal", "window5", "window40", "band3-9", "dilated4-3",
                "stride7", "chunk10", "summary9-2", "global3", "tokens", "sink4", "prefix20"]
EXAMPLES = {
    "mistral": "causal & window(16)",
    "longformer": "band(5, 5) | global(first = 2)",
    "bigbird": "blocks(8) { band(1, 1) | global(first = 2) | random(3, seed = 1) }",
    "strided": "heads { causal & window(9); causal & stride(9) }",
    "fixed": "causal & (chunk(16) | summary(16, 4))",
    "streaming": "causal & (sink(4) | window(20))",
    "prefix_lm": "causal | prefix(n // 2)",
    "blocks-where": "blocks(4) { causal & where(q - k < 3) }",
}
# where three-valued logic may leave a tile PARTIAL that is really FULL or EMPTY
INEXACT_EXAMPLES = {"bigbird", "prefix_lm"}
TILES = [(8, 8), (16, 32), (32, 16)]


def random_ids(rng, batch, n_k, documents):
    """``batch`` rows of ``n_k`` ids, each with up to ``documents`` random boundaries and
    random (increasing, not consecutive) id values."""
    rows = []
    for _ in range(batch):
        cuts = sorted(rng.sample(range(1, n_k), min(rng.randint(0, documents), n_k - 1)))
        row, value = [], rng.randint(-3, 3)
        for a, b in zip([0] + cuts, cuts + [n_k]):
            row += [value] * (b - a)
            value += rng.randint(1, 4)
        rows.append(row)
    return torch.tensor(rows)


def reference_states(p, ids, n_q, head, bm, bn):
    return states_from_mask(p.mask(n_q, ids.shape[0], head, documents=ids), bm, bn)


def inside_one_document(ids, n_q, bm, bn):
    """bool ``[T_q, T_k]``: tiles whose queries and keys all lie in one document."""
    n_k = len(ids)
    q_pos = torch.arange(n_k - n_q, n_k)
    t_q, t_k = -(-n_q // bm), -(-n_k // bn)
    q_first = ids[q_pos[::bm]]
    q_last = ids[q_pos[torch.clamp(torch.arange(t_q) * bm + bm - 1, max=n_q - 1)]]
    k_first = ids[torch.arange(t_k) * bn]
    k_last = ids[torch.clamp(torch.arange(t_k) * bn + bn - 1, max=n_k - 1)]
    return (q_first == q_last)[:, None] & (k_first == k_last)[None, :] & \
        (q_first[:, None] == k_first[None, :])


def assert_sound(p, layout, ids, n_q, exact_inside=False):
    """FULL tiles hold only allowed pairs, every tile with an allowed pair is visited, and
    (``exact_inside``) tiles inside one document are classified exactly."""
    bm, bn = layout.block_m, layout.block_n
    for b in range(ids.shape[0]):
        for head in range(p.heads):
            got = layout.states[b, head % layout.cases]
            want = reference_states(p, ids[b], n_q, head, bm, bn)
            where = f"{p.text} ids={ids[b].tolist()} n_q={n_q} tiles={bm}x{bn} head={head}"
            assert bool((want[got == FULL] == FULL).all()), f"FULL tile with a masked pair: {where}"
            assert bool((got[want != EMPTY] != EMPTY).all()), f"allowed pair not visited: {where}"
            if exact_inside:
                inside = inside_one_document(ids[b], n_q, bm, bn)
                assert torch.equal(got[inside], want[inside]), f"inexact inside: {where}"


@pytest.mark.parametrize("name", EXACT_LEAVES)
def test_exact_leaves_on_ragged_documents(name):
    rng = random.Random(name)
    p = pattern(name)
    for n_k, docs in [(111, 5), (63, 12), (232, 3), (50, 49)]:
        ids = random_ids(rng, 3, n_k, docs)
        for n_q in (n_k, rng.randint(1, n_k)):
            for bm, bn in TILES:
                layout = document_layout(DocumentRules(p), ids, n_q, bm, bn)
                assert_sound(p, layout, ids, n_q, exact_inside=True)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_patterns_on_ragged_documents(name):
    rng = random.Random(name)
    p = pattern_from(EXAMPLES[name])
    lengths = [1, 7, 13, 20, 33, 2, 41]
    fixed = torch.tensor([sum([[d] * n for d, n in enumerate(lengths)], [])])
    n_k = fixed.shape[1]
    ids = torch.cat([fixed, random_ids(rng, 2, n_k, 9)])
    for n_q in (n_k, 50, 1):
        for bm, bn in TILES:
            layout = document_layout(p, ids, n_q, bm, bn)
            assert_sound(p, layout, ids, n_q, exact_inside=name not in INEXACT_EXAMPLES)


@pytest.mark.parametrize("seed", range(40))
def test_random_trees_on_random_boundaries(seed):
    rng = random.Random(seed)
    p = pattern(random_tree(rng))
    n_k = rng.choice([37, 63, 111])
    ids = random_ids(rng, 2, n_k, rng.choice([1, 4, 15]))
    n_q = rng.choice([n_k, rng.randint(1, n_k)])
    bm, bn = rng.choice(TILES)
    assert_sound(p, document_layout(p, ids, n_q, bm, bn), ids, n_q)


def test_unknown_parts_are_named_and_the_rest_stays_exact():
    rules = DocumentRules(pattern_from("causal | prefix(n // 2)"))
    assert rules.unknown == ("prefix(n // 2)",) and not rules.exact
    assert DocumentRules(pattern_from("causal & window(8)")).exact
    assert DocumentRules(pattern_from("blocks(4) { random(2) }")).unknown == ("random(2, seed = 0)",)
    # causal's FULL tiles stay FULL; the unknown prefix only turns EMPTY tiles PARTIAL
    ids = torch.zeros(1, 64, dtype=torch.int64)
    layout = document_layout(rules, ids, 64, 16, 16)
    causal = lower(pattern_from("causal").at(64), 64, 64, 16, 16).states[0]
    assert torch.equal(layout.states[0, 0] == FULL, causal == FULL)
    assert bool((layout.states[0, 0][causal != FULL] == PARTIAL).all())


@pytest.mark.parametrize("name", EXACT_LEAVES + ["heads", "fixed", "longformer"])
def test_one_document_gives_the_document_free_layout(name):
    p = pattern(name)
    n_k, n_q = 111, 100
    layout = document_layout(p, torch.full((1, n_k), 5), n_q, 16, 32)
    plain = lower(p.at(n_k), n_q, n_k, 16, 32)
    assert torch.equal(layout.row(0).states, plain.states)
    for c in range(plain.cases):
        for field in ("full", "partial", "full_q", "partial_q"):
            counts = getattr(layout.row(0), f"{field}_counts")[c]
            assert torch.equal(counts, getattr(plain, f"{field}_counts")[c])
            for r, count in enumerate(counts.tolist()):
                assert torch.equal(getattr(layout.row(0), f"{field}_indices")[c, r, :count],
                                   getattr(plain, f"{field}_indices")[c, r, :count])


def test_lists_match_states_per_row():
    rng = random.Random(7)
    p = pattern("heads")
    n_k = 111  # not a multiple of 32: the ragged last key tile is listed PARTIAL
    ids = random_ids(rng, 3, n_k, 6)
    layout = document_layout(p, ids, 90, 16, 32)
    ragged = layout.states.shape[3] - 1
    for b in range(3):
        for c in range(layout.cases):
            states = layout.states[b, c]
            for r in range(states.shape[0]):
                full = layout.full_indices[b, c, r, :layout.full_counts[b, c, r]].tolist()
                part = layout.partial_indices[b, c, r, :layout.partial_counts[b, c, r]].tolist()
                cols = range(states.shape[1])
                assert full == [j for j in cols if states[r, j] == FULL and j != ragged]
                assert part == [j for j in cols if states[r, j] == PARTIAL or
                                (states[r, j] == FULL and j == ragged)]
            for col in range(states.shape[1]):
                full = layout.full_q_indices[b, c, col, :layout.full_q_counts[b, c, col]].tolist()
                want = [r for r in range(states.shape[0]) if states[r, col] == FULL
                        and col != ragged]
                assert full == want
        work = (layout.full_counts[b] + layout.partial_counts[b]).sum(0)
        order = layout.row_order[b].long()
        assert sorted(order.tolist()) == list(range(len(order)))
        assert bool((work[order][:-1] >= work[order][1:]).all())
        assert torch.equal(layout.col_order[b], layout.row(b).col_order)
    start, length = document_bounds(ids)
    assert torch.equal(layout.doc_start, start.int()) and torch.equal(layout.doc_length, length.int())


def test_crossing_tiles_are_never_full_and_other_documents_are_empty():
    ids = torch.tensor([[0] * 10 + [1] * 30 + [2] * 24])
    layout = document_layout(pattern_from("dense"), ids, 64, 16, 16)
    # tiles of 16: documents 0-9, 10-39, 40-63; tile 1 lies in document 1, tile 3 in document 2
    assert layout.states[0, 0].tolist() == [
        [PARTIAL, PARTIAL, PARTIAL, EMPTY],
        [PARTIAL, FULL, PARTIAL, EMPTY],
        [PARTIAL, PARTIAL, PARTIAL, PARTIAL],
        [EMPTY, EMPTY, PARTIAL, FULL],
    ]


def test_bad_ids_are_refused():
    p = pattern("causal")
    with pytest.raises(ValueError, match="documents"):
        document_layout(p, torch.tensor([[0, 1, 0]]), 3, 16, 16)
    with pytest.raises(ValueError, match="documents"):
        document_layout(p, torch.tensor([0, 0, 1]), 3, 16, 16)


def test_rules_cover_every_head_case():
    p = pattern("heads")
    rules = DocumentRules(p)
    assert rules.cases == 2 and len(rules.trees) == 2
    assert select_head(p.expr, 1) != select_head(p.expr, 0)


class CountCalls(torch.overrides.TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("text", ["causal & window(40)", "band(8, 8) | global(first = 1)",
                                  "heads { causal; blocks(16) { causal & window(2) } }"])
def test_torch_calls_do_not_grow_with_documents_or_tiles(text):
    """Vectorised: about the same number of torch calls for 1 or 300 documents and for 64 or
    1024 tiles per side (a loop over either would add hundreds; branches for empty lists and
    unsure tiles account for a few tens)."""
    rules = DocumentRules(pattern_from(text))
    rng = random.Random(0)
    counts = set()
    for n_k, docs in [(1024, 1), (1024, 300), (16384, 1), (16384, 300)]:
        ids = random_ids(rng, 2, n_k, docs)
        with CountCalls() as mode:
            document_layout(rules, ids, n_k, 16, 16)
        counts.add(mode.calls)
    assert max(counts) - min(counts) < 100, counts  # branches taken or not: tens of calls
