"""Masks with documents (docs/language.md §4) against the block diagonal of per-document masks."""
import random
from pathlib import Path

import pytest
import torch

from spattn_dsl import load
from spattn_dsl.api import pattern_from
from spattn_dsl.semantics.documents import check_documents, document_bounds, document_lengths, \
    document_random_keys
from tests.oracle import allowed

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.spattn"))

# The example patterns at their defaults, and at parameters that matter on short documents.
SMALL = {
    "bigbird": dict(b=4, r=2, seed=3), "strided": dict(l=5), "fixed": dict(l=6, c=2),
    "longformer": dict(half=3, g=2), "longformer_dilated": dict(w=3, d=2),
    "mistral_swa": dict(w=5), "gemma_local": dict(w=4), "streaming": dict(sinks=2, recent=5),
}
LENGTHS = [[1, 7, 13, 20], [20, 13, 1, 1, 7], [33], [2, 1, 30, 1]]


def example_patterns():
    for path in EXAMPLES:
        program = load(path)
        for name in program.patterns:
            if program.pattern(name).dynamic:  # the mask needs a selection (docs/language.md §5)
                continue
            yield f"{path.stem}:{name}", program.pattern(name)
            if name in SMALL:
                yield f"{path.stem}:{name}-small", program.pattern(name, **SMALL[name])


PATTERNS = dict(example_patterns())
PATTERNS.update({text: pattern_from(text) for text in [
    "random(3, seed = 5)", "blocks(3) { band(1, 0) | random(1) }", "causal | prefix(n // 2)",
    "where(k >= n // 3) & causal", "causal & (chunk(4) | summary(4, 1))", "global(0, 5)",
]})


def ids_of(lengths, first=0, gap=1):
    """Ids for documents of these lengths: ``first``, ``first + gap``, ..."""
    return torch.cat([torch.full((length,), first + gap * i, dtype=torch.int64)
                      for i, length in enumerate(lengths)])


def block_diagonal(pattern, lengths, n_q, head):
    """Each document's full square mask on the diagonal, then the last ``n_q`` rows."""
    squares = [pattern.mask(length, length, head) for length in lengths]
    return torch.block_diag(*squares)[sum(lengths) - n_q:]


@pytest.mark.parametrize("name", sorted(PATTERNS))
@pytest.mark.parametrize("lengths", LENGTHS, ids=lambda ls: "-".join(map(str, ls)))
def test_mask_is_block_diagonal_of_documents(name, lengths):
    pattern = PATTERNS[name]
    n_k = sum(lengths)
    ids = ids_of(lengths, first=3, gap=2)  # ids need not start at 0 or be consecutive
    for n_q in sorted({n_k, n_k - 1, n_k - lengths[-1] - 1, 1} - {0}):
        if n_q < 1:
            continue
        for head in range(max(pattern.heads, 2)):
            got = pattern.mask(n_q, n_k, head, documents=ids)
            want = block_diagonal(pattern, lengths, n_q, head)
            assert torch.equal(got, want), f"{name} lengths={lengths} n_q={n_q} head={head}"


@pytest.mark.parametrize("seed", range(6))
def test_mask_pair_by_pair_on_random_boundaries(seed):
    """Straight from docs/language.md §4, pair by pair, with the independent oracle."""
    rng = random.Random(seed)
    name = rng.choice(sorted(PATTERNS))
    pattern = PATTERNS[name]
    n_k = rng.randint(1, 40)
    cuts = sorted(rng.sample(range(1, n_k), rng.randint(0, min(6, n_k - 1)))) if n_k > 1 else []
    lengths = [b - a for a, b in zip([0] + cuts, cuts + [n_k])]
    ids = ids_of(lengths, first=rng.randint(-5, 5), gap=rng.randint(1, 3))
    n_q = rng.randint(1, n_k)
    head = rng.randrange(pattern.heads)
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    concrete = {length: pattern.at(length) for length in lengths}
    got = pattern.mask(n_q, n_k, head, documents=ids.tolist())
    for i in range(n_q):
        q = i + n_k - n_q
        for k in range(n_k):
            d = int(ids[q])
            same = d == int(ids[k])
            s = starts[[sum(lengths[:j + 1]) > q for j in range(len(lengths))].index(True)]
            length = lengths[starts.index(s)]
            want = same and allowed(concrete[length], q - s, k - s, length, head)
            assert bool(got[i, k]) == want, f"{name} ids={ids.tolist()} n_q={n_q} q={q} k={k}"


def test_one_document_is_the_plain_mask():
    pattern = pattern_from("causal & window(4) | global(first = 2)")
    for n_q, n_k in [(9, 9), (3, 9), (1, 1)]:
        ids = torch.full((n_k,), 7)
        assert torch.equal(pattern.mask(n_q, n_k, documents=ids), pattern.mask(n_q, n_k))


def test_global_first_token_is_each_documents_first():
    pattern = pattern_from("global(first = 1)")
    got = pattern.mask(10, documents=ids_of([4, 6]))
    assert got[:, 0].tolist() == [True] * 4 + [False] * 6
    assert got[:, 4].tolist() == [False] * 4 + [True] * 6


@pytest.mark.parametrize("bad,message", [
    ([0, 0, 1, 0, 1], "must not decrease"),
    ([0, 0, 1], "shape"),
    ([[0, 0, 0, 1, 1]], "shape"),
    ([0.0, 0.0, 1.0, 1.0, 1.0], "integer"),
    (torch.tensor([0, 0, 1, 1, 1], dtype=torch.float32), "integer"),
    (torch.tensor([False, False, True, True, True]), "integer"),
    ("abcde", "integer"),
])
def test_bad_documents_are_value_errors_naming_documents(bad, message):
    pattern = pattern_from("causal")
    with pytest.raises(ValueError, match=message) as error:
        pattern.mask(5, documents=bad)
    assert "documents" in str(error.value)


def test_batched_check_reports_the_row():
    ids = torch.tensor([[0, 0, 1, 1], [0, 1, 0, 1]])
    assert torch.equal(check_documents(ids[:1], 4, batch=1), ids[:1])
    with pytest.raises(ValueError, match="row 1, position 2"):
        check_documents(ids, 4, batch=2)
    with pytest.raises(ValueError, match=r"\[batch, n_k\]"):
        check_documents(ids, 4, batch=3)


@pytest.mark.parametrize("seed", range(4))
def test_document_bounds_per_position(seed):
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(3):
        rows.append(torch.cumsum(torch.rand(37, generator=gen) < 0.2, 0) * 3 - 4)
    ids = torch.stack(rows)
    start, length = document_bounds(ids)
    for b in range(3):
        row = ids[b].tolist()
        for t, d in enumerate(row):
            members = [p for p, e in enumerate(row) if e == d]
            assert (int(start[b, t]), int(length[b, t])) == (members[0], len(members))
    assert document_lengths(ids[0]) == torch.unique_consecutive(ids[0], return_counts=True)[1].tolist()


@pytest.mark.parametrize("r", [0, 1, 3, 12])
def test_document_random_keys_are_the_reference_draws(r):
    """Draws for every position of a packed row, in one call: the keys the reference mask with
    documents allows for ``random(r, seed = 9)``."""
    lengths = [1, 7, 13, 20, 2, 5]
    ids = ids_of(lengths)
    start, length = document_bounds(ids)
    positions = torch.arange(len(ids))
    keys = document_random_keys(r, 9, (positions - start).numpy(), length.numpy())
    got = torch.zeros(len(ids), len(ids), dtype=torch.bool)
    for p in range(len(ids)):
        drawn = [k for k in keys[p].tolist() if k >= 0]
        assert keys.shape[1] == r and len(drawn) == min(r, int(length[p]))
        got[p, [int(start[p]) + k for k in drawn]] = True
    assert torch.equal(got, pattern_from(f"random({r}, seed = 9)").mask(len(ids), documents=ids))
