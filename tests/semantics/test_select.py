"""select() and mask(selection=) (docs/language.md §5) against an independent brute force.

The brute force below reads docs/language.md §5 literally, one query row, unit and head at a time,
and gets its static masks from the pattern with each dynamic term replaced by dense or none
(``Pattern.mask``, the static reference), not from the code under test.
"""
import dataclasses
import itertools
import math

import pytest
import torch

from spattn_dsl import loads
from spattn_dsl.ir import nodes as N
from spattn_dsl.ir.program import Pattern
from spattn_dsl.semantics.select import Selection, select

SOURCE = """
pattern moba { causal & (window(4) | topk(2, unit = 4)) }
pattern tokens { causal & (sink(1) | topk(3)) }
pattern quest { causal & (window(2) | topk(2, unit = 3, rows = 4, by = minmax, shared = group)) }
pattern indexer { causal & topk(4, unit = 2, rows = 2, by = scores, shared = all) }
pattern free { topk(2, unit = 5, rows = 3, shared = group) | window(1) }
pattern vs { causal & (sink(1) | vertical(2, probe = 3) | slash(2, probe = 4, shared = all)) }
pattern open_slash { window(3) | slash(3, probe = 2) }
pattern per_head { heads { causal & topk(1, unit = 2); window(2) | topk(2, unit = 3) } }
pattern minus { dense - topk(2) }
"""
PROGRAM = loads(SOURCE)


# ---------------------------------------------------------------- the brute force
def replaced(pattern, on: set) -> Pattern:
    """The pattern with the dynamic terms in ``on`` replaced by dense, the others by none."""
    def sub(e):
        if isinstance(e, N.DYNAMIC):
            return N.Dense() if e in on else N.Empty()
        kids = N.children(e)
        if isinstance(e, N.Heads):
            return N.Heads(tuple(sub(b) for b in kids))
        if not kids:
            return e
        names = [f.name for f in dataclasses.fields(e) if f.name != "span"]
        return dataclasses.replace(e, **dict(zip(names, map(sub, kids))))
    return Pattern(sub(pattern.expr))


def doc_of(ids, pos):
    """(start, length) of the document holding ``pos``."""
    if ids is None:
        return 0, len_k[0]
    start = pos
    while start > 0 and ids[start - 1] == ids[pos]:
        start -= 1
    end = pos
    while end + 1 < len(ids) and ids[end + 1] == ids[pos]:
        end += 1
    return start, end - start + 1


len_k = [0]  # n_k for doc_of without documents


def sharers(shared, h, H, Hkv):
    if shared == "head":
        return [h]
    if shared == "all":
        return list(range(H))
    size = H // Hkv
    return [x for x in range(H) if x // size == h // size]


def expected_choice(pattern, term, q, k, scores, ids_b, b, h, i, env, static):
    """The set of units that docs/language.md §5 selects for batch b, head h, query row i."""
    B, H, n_q, D = q.shape
    Hkv, n_k = k.shape[1], k.shape[2]
    kv = lambda x: x // (H // Hkv)  # noqa: E731
    pos = i + n_k - n_q
    s, L = doc_of(ids_b, pos)
    heads = sharers(term.shared, h, H, Hkv)
    budget = term.k.value
    if isinstance(term, N.TopK):
        u, r = term.unit.value, term.rows.value
        group = [j for j in range(n_q) if doc_of(ids_b, j + n_k - n_q) == (s, L)
                 and (j + n_k - n_q - s) // r == (pos - s) // r]
        units = range(math.ceil(L / u))
        keys = {j: list(range(s + j * u, min(s + j * u + u, s + L))) for j in units}
        cands, est = [], {}
        for j in units:
            if any(env[x][a][c] and not static[x][a][c] for x in heads for a in group
                   for c in keys[j]):
                cands.append(j)
            est[j] = sum(estimate(term.by, q[b, x, group].double().mean(0),
                                  k[b, kv(x), keys[j]].double(),
                                  None if scores is None else
                                  scores[b, x if scores.shape[1] > 1 else 0, group, j])
                         for x in heads)
    else:
        rows = [j for j in range(n_q) if doc_of(ids_b, j + n_k - n_q) == (s, L)]
        probe = rows[-term.probe.value:]
        index = (lambda a, c: c - s) if isinstance(term, N.Vertical) else \
            (lambda a, c: (a + n_k - n_q) - c + n_k - 1)
        est, cands = {}, set()
        for x in heads:
            for a in rows:
                for c in range(s, s + L):
                    if env[x][a][c] and not static[x][a][c]:
                        cands.add(index(a, c))
            for a in probe:
                allowed = [c for c in range(s, s + L) if env[x][a][c]]
                if not allowed:
                    continue
                logits = [float(q[b, x, a].double() @ k[b, kv(x), c].double()) / math.sqrt(D)
                          for c in allowed]
                top = max(logits)
                weights = [math.exp(v - top) for v in logits]
                for c, w in zip(allowed, weights):
                    est[index(a, c)] = est.get(index(a, c), 0.0) + w / sum(weights)
        cands = sorted(cands)
    ranked = sorted(cands, key=lambda j: (-est.get(j, 0.0), j))
    return set(ranked[:budget])


def estimate(by, mean_q, keys, scores):
    if by == "mean_key":
        return float(mean_q @ keys.mean(0))
    if by == "minmax":
        lo, hi = keys.min(0).values, keys.max(0).values
        return float(sum(max(a * x, a * y) for a, x, y in zip(mean_q, lo, hi)))
    return float(scores.double().mean())


def brute_force_check(pattern, q, k, scores=None, documents=None):
    """select() equals the brute force for every (batch, head, row, term), and the mask under
    it is the expression evaluated with each term standing for its selected keys."""
    selection = select(pattern, q, k, scores, documents)
    B, H, n_q, _ = q.shape
    Hkv, n_k = k.shape[1], k.shape[2]
    len_k[0] = n_k
    terms = pattern.dynamic_terms
    mask = pattern.mask(n_q, n_k, documents=documents, selection=selection)
    assert mask.shape == (B, H, n_q, n_k) and mask.dtype == torch.bool
    for b in range(B):
        ids = None if documents is None else (documents[b] if documents.dim() == 2
                                              else documents).tolist()
        doc_ids = None if ids is None else torch.tensor(ids)
        static_masks = {}
        for h in range(H):
            variants = {on: replaced(pattern, set(on)).mask(n_q, n_k, head=h,
                                                            documents=doc_ids).tolist()
                        for size in range(len(terms) + 1)
                        for on in itertools.combinations(terms, size)}
            static_masks[h] = variants
        chosen = {}  # (term index, h, i) -> set of chosen units
        for t, term in enumerate(terms):
            ts = selection.terms[t]
            envs = {x: static_masks[x][(term,)] for x in range(H)}
            statics = {x: static_masks[x][()] for x in range(H)}
            for h in range(H):
                which = ts.selection_head(h, H, Hkv)
                for i in range(n_q):
                    row = ts.indices[b, which, ts.groups[b, i]].tolist()
                    got = [j for j in row if j >= 0]
                    assert got == sorted(got) and row == got + [-1] * (len(row) - len(got))
                    want = expected_choice(pattern, term, q, k, scores, ids, b, h, i, envs,
                                           statics)
                    assert set(got) == want, (term, b, h, i, got, want)
                    chosen[t, h, i] = want
        for h in range(H):
            for i in range(n_q):
                pos = i + n_k - n_q
                s, L = doc_of(ids, pos)
                for c in range(n_k):
                    picked = {t for t, term in enumerate(terms)
                              if s <= c < s + L and unit_of(term, pos, c, s, n_k)
                              in chosen[t, h, i]}
                    # monotone in each term: the union over the sets of terms that hold
                    want = any(static_masks[h][on][i][c] for size in range(len(terms) + 1)
                               for on in itertools.combinations(terms, size)
                               if all(terms.index(x) in picked for x in on))
                    if pattern.text.startswith("dense -"):
                        want = not picked and s <= c < s + L
                    assert bool(mask[b, h, i, c]) == want, (b, h, i, c)
    return selection


def unit_of(term, pos, c, s, n_k):
    if isinstance(term, N.TopK):
        return (c - s) // term.unit.value
    return c - s if isinstance(term, N.Vertical) else pos - c + n_k - 1


def inputs(B, H, Hkv, n_q, n_k, D=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, n_q, D, generator=g), torch.randn(B, Hkv, n_k, D, generator=g))


# ---------------------------------------------------------------- agreement
@pytest.mark.parametrize("name, n_q, n_k", [
    ("moba", 5, 5), ("moba", 17, 17), ("moba", 11, 63), ("tokens", 17, 17),
    ("quest", 17, 17), ("free", 17, 17), ("vs", 17, 17), ("open_slash", 5, 17),
    ("per_head", 17, 17), ("minus", 5, 5),
])
def test_select_matches_brute_force(name, n_q, n_k):
    q, k = inputs(2, 4, 2, n_q, n_k, seed=n_k)
    brute_force_check(PROGRAM.pattern(name), q, k)


@pytest.mark.parametrize("heads", [1, 4])
def test_scores_estimator(heads):
    q, k = inputs(2, 4, 1, 17, 17)
    scores = torch.randn(2, heads, 17, 9, generator=torch.Generator().manual_seed(3))
    brute_force_check(PROGRAM.pattern("indexer"), q, k, scores)


@pytest.mark.parametrize("name", ["moba", "quest", "vs", "free"])
def test_documents_select_within_each_document(name):
    q, k = inputs(2, 2, 1, 13, 17, seed=5)
    documents = torch.tensor([[0] * 6 + [1] * 9 + [2] * 2, [4] * 17])
    selection = brute_force_check(PROGRAM.pattern(name), q, k, documents=documents)
    assert selection.documents is not None


def test_shared_selections_agree_across_their_heads():
    q, k = inputs(1, 4, 2, 17, 17, seed=2)
    group = select(loads("pattern p { topk(2, shared = group) }").pattern("p"), q, k)
    assert group.terms[0].indices.shape == (1, 2, 17, 2)
    everyone = select(loads("pattern p { topk(2, shared = all) }").pattern("p"), q, k)
    assert everyone.terms[0].indices.shape == (1, 1, 17, 2)
    mask = loads("pattern p { topk(2, shared = all) }").pattern("p").mask(17, selection=everyone)
    assert torch.equal(mask[0, 0], mask[0, 3])


def test_ties_go_to_the_lower_index():
    q = torch.randn(1, 1, 9, 4, generator=torch.Generator().manual_seed(1))
    k = torch.ones(1, 1, 9, 4)  # every unit has the same estimate
    pattern = loads("pattern p { causal & (window(2) | topk(2, unit = 2)) }").pattern("p")
    indices = select(pattern, q, k).terms[0].indices[0, 0]
    assert indices[-1].tolist() == [0, 1]  # q = 8: units 0..3 are candidates
    assert indices[0].tolist() == [-1, -1]  # q = 0: none
    vs = loads("pattern p { causal & slash(2) }").pattern("p")
    assert select(vs, q, k).terms[0].indices[0, 0, 0].tolist() == [8, 9]  # offsets 0 and 1


def test_candidates_are_never_violated():
    pattern = PROGRAM.pattern("moba")
    q, k = inputs(2, 2, 2, 63, 63, seed=7)
    selection = select(pattern, q, k)
    chosen = selection.terms[0].indices  # [B, H, 63 groups, 2]
    for b, h, g in itertools.product(range(2), range(2), range(63)):
        for unit in chosen[b, h, g].tolist():
            if unit >= 0:  # a unit the window does not cover and not in the future
                assert unit * 4 <= g - 4, (g, unit)
    mask = pattern.mask(63, selection=selection)
    future = torch.ones(63, 63, dtype=torch.bool).triu(1)
    assert not mask[:, :, future].any()
    assert mask.sum(-1).max() <= 4 + 2 * 4  # window plus the budget


def test_fewer_candidates_than_the_budget_selects_them_all():
    pattern = loads("pattern p { causal & topk(50) }").pattern("p")
    q, k = inputs(1, 1, 1, 7, 7)
    selection = select(pattern, q, k)
    assert selection.terms[0].budget == 7  # clamped to the units at n_k
    assert torch.equal(pattern.mask(7, selection=selection)[0, 0],
                       torch.ones(7, 7, dtype=torch.bool).tril())


def test_static_patterns_take_a_selection_too():
    pattern = loads("pattern p { causal }").pattern("p")
    q, k = inputs(2, 3, 3, 5, 5)
    selection = select(pattern, q, k)
    assert selection.terms == ()
    mask = pattern.mask(5, selection=selection)
    assert mask.shape == (2, 3, 5, 5) and torch.equal(mask[1, 2], pattern.mask(5))
    assert pattern.mask(5).shape == (5, 5)


def test_repr_names_terms_and_shapes():
    q, k = inputs(1, 2, 1, 5, 5)
    text = repr(select(PROGRAM.pattern("vs"), q, k))
    assert "vertical(2, probe = 3): indices [1, 2, 1, 2]" in text and "shared = all" in text


# ---------------------------------------------------------------- bad inputs
def test_bad_inputs_are_value_errors_naming_the_argument():
    pattern = PROGRAM.pattern("moba")
    q, k = inputs(1, 2, 1, 5, 5)
    cases = [
        (lambda: select("moba", q, k), "pattern"),
        (lambda: select(pattern, q[0], k), "q must be"),
        (lambda: select(pattern, q, k.int()), "k must be floating"),
        (lambda: select(pattern, q, torch.randn(1, 3, 5, 4)), "k's heads"),
        (lambda: select(pattern, q, torch.randn(1, 1, 5, 3)), "k must share"),
        (lambda: select(pattern, q, torch.randn(1, 1, 4, 4)), "more positions"),
        (lambda: select(pattern, q, k, documents=torch.tensor([1, 0, 0, 0, 0])), "documents"),
        (lambda: select(pattern, q, k, documents=torch.zeros(2, 5, dtype=torch.int64)),
         "documents"),
        (lambda: select(pattern, q, k, scores=torch.zeros(1, 2, 5, 2)), "scores"),
        (lambda: pattern.mask(5), "selection"),
        (lambda: pattern.mask(5, selection="s"), "selection"),
        (lambda: pattern.mask(4, 5, selection=select(pattern, q, k)), "selection"),
        (lambda: PROGRAM.pattern("tokens").mask(5, selection=select(pattern, q, k)),
         "selection"),
        (lambda: pattern.mask(5, head=1, selection=select(pattern, q, k)), "head"),
        (lambda: pattern.mask(5, documents=[0, 0, 1, 1, 1], selection=select(pattern, q, k)),
         "documents"),
    ]
    indexer = PROGRAM.pattern("indexer")
    cases += [
        (lambda: select(indexer, q, k), "scores"),
        (lambda: select(indexer, q, k, scores=torch.zeros(1, 2, 5, 2)), "scores must have"),
        (lambda: select(indexer, q, k, scores=torch.zeros(1, 2, 5, 3, dtype=torch.int64)),
         "scores must be floating"),
        (lambda: select(indexer, q, k, scores=[[0.0]]), "scores must be a tensor"),
    ]
    for call, word in cases:
        with pytest.raises(ValueError, match=word):
            call()


def test_a_tampered_selection_is_refused():
    pattern = PROGRAM.pattern("moba")
    q, k = inputs(1, 2, 1, 9, 9)
    s = select(pattern, q, k)
    t = s.terms[0]
    for change in ({"indices": t.indices[..., :1]}, {"groups": t.groups.int()},
                   {"indices": t.indices + 10}):
        bad = dataclasses.replace(s, terms=(dataclasses.replace(t, **change),))
        with pytest.raises(ValueError, match="selection"):
            pattern.mask(9, selection=bad)
    assert isinstance(s, Selection)
