"""Interval rows of a pattern that uses another twice: each distinct sub-expression once."""
import numpy as np

from spattn_dsl import loads
from spattn_dsl.analysis import rows as R


def test_shared_sub_patterns_are_evaluated_once(monkeypatch):
    """``p_i { p_{i+1} | p_{i+1} & causal }`` nine deep expands to 2**10 - 1 operator nodes
    (the fuzzer's inputs that ran past 5 s in analyze); equal sub-expressions share rows."""
    levels = 9
    lines = [f"pattern p{i} {{ p{i + 1} | p{i + 1} & causal }}" for i in range(levels)]
    pattern = loads("\n".join(lines + [f"pattern p{levels} {{ window(3) }}"])).pattern("p0")
    calls = []
    real = R._rows_of_node
    monkeypatch.setattr(R, "_rows_of_node", lambda *a: calls.append(1) or real(*a))
    rows = R.rows_of(pattern.at(17), 17)
    assert len(calls) <= 4 * levels + 4  # not about 2 * 2**levels
    want = R.rows_of(loads("pattern w { window(3) }").pattern("w").at(17), 17)
    keys = np.broadcast_to(np.arange(17), (17, 17))
    assert (rows.contains(keys) == want.contains(keys)).all()  # p0 allows what window(3) does
