"""Analysis per document length (docs/language.md §4)."""
import pytest
import torch

from spattn_dsl import analyze, loads
from spattn_dsl.analysis.documents import analyze_documents
from spattn_dsl.api import pattern_from

PROGRAM = loads("""
pattern local(w = 4) { causal & window(w) }
model mixed { layers 2: local; layers 1: causal }
""")


def test_one_report_per_distinct_length_equal_to_analyze():
    pattern = PROGRAM.pattern("local")
    reports = analyze_documents(pattern, [20, 7, 13, 7, 1, 20, 20])
    assert list(reports) == [1, 7, 13, 20] and reports.scope == "each"
    assert reports.counts == {1: 1, 7: 2, 13: 1, 20: 3}
    for n, report in reports.items():
        assert report.n == n
        assert report.to_dict() == analyze(pattern, n).to_dict()
    # a window's diameter grows with the document: the lengths really differ
    assert reports[7].diameter < reports[20].diameter
    assert "each distinct document length: 1, 7, 13, 20 (7 documents)" in reports.describe()


def test_longest_only_says_so():
    reports = analyze_documents(PROGRAM.model("mixed"), [5, 30, 12], longest=True)
    assert list(reports) == [30] and reports.scope == "longest"
    assert reports[30].to_dict() == analyze(PROGRAM.model("mixed"), 30).to_dict()
    assert "longest document only: 30 tokens" in reports.describe()
    assert "longest" in reports.to_markdown() and reports.to_dict()["scope"] == "longest"


def test_lengths_from_an_id_row():
    ids = torch.tensor([4] * 3 + [9] * 11 + [10] * 3)
    reports = analyze_documents(pattern_from("causal & window(3)"), documents=ids, layers=2)
    assert list(reports) == [3, 11] and reports.counts == {3: 2, 11: 1}
    assert all(len(r.layers) == 2 for r in reports.values())
    assert set(reports.to_dict()["reports"]) == {"3", "11"}


@pytest.mark.parametrize("lengths,documents,message", [
    (None, None, "one of the two"), ([3], [0, 0, 0], "one of the two"), ([], None, "no document"),
    ([3, 0], None, ">= 1"), ([2.5], None, ">= 1"), ([True], None, ">= 1"),
])
def test_bad_lengths(lengths, documents, message):
    with pytest.raises(ValueError, match=message):
        analyze_documents(pattern_from("causal"), lengths, documents=documents)
