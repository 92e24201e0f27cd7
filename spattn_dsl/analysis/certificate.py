"""The universal-approximation certificate of Yun et al. (NeurIPS 2020).

C. Yun, Y.-W. Chang, S. Bhojanapalli, A. S. Rawat, S. J. Reddi, S. Kumar, "O(n) Connections
are Expressive Enough: Universal Approximability of Sparse Transformers", arXiv:2006.04862,
Assumption 1 and Theorem 1: a stack of sparse attention layers approximates any continuous
sequence-to-sequence function when

1. every token attends to itself in every layer's pattern;
2. the union of the layers' patterns holds a Hamiltonian path over the positions (a chain
   through every token, each next token attending its predecessor);
3. every token reaches every other within p layers (the schedule repeated).

The conditions are sufficient, not necessary. (1) and the sequential paths ``i -> i+1`` /
``i+1 -> i`` of (2) are read off the reference semantics on n pairs each (O(n), any length);
the general Hamiltonian-path problem is NP-hard, so where neither sequential path exists (2)
is "not found among sequential paths", never "false". (3) is the coverage depth over all
pairs; a causal stack fails it by construction.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from ..ir.evaluate import head_count, select_head
from ..layout.pairs import allowed as pair_allowed

SOURCE = "Yun et al., NeurIPS 2020, arXiv:2006.04862"


@dataclass(frozen=True)
class Certificate:
    self_loops: bool  # condition 1
    self_missing: str | None  # "token 3 in pattern p" where (1) fails
    path: str | None  # condition 2: "i -> i+1", "i+1 -> i", or None (not found)
    reach: bool | None  # condition 3; None where undecided (bounds)
    p: float | None  # the least such p (inf: never), None where undecided
    reach_reason: str

    @property
    def certified(self) -> bool:
        return self.self_loops and self.path is not None and bool(self.reach)

    def conditions(self) -> list:
        """(condition, finding) pairs, in the paper's order."""
        first = "yes" if self.self_loops else f"no ({self.self_missing} does not)"
        second = f"yes (sequential path {self.path})" if self.path else \
            "not found among sequential paths (i -> i+1, i+1 -> i)"
        third = f"yes, p = {self.p}" if self.reach else self.reach_reason
        return [("1. every token attends to itself in every layer", first),
                ("2. the union of the layers holds a Hamiltonian path", second),
                ("3. every token reaches every other within p layers", third)]

    def line(self) -> str:
        """The one-line verdict."""
        if self.certified:
            return f"certified: conditions 1-3 hold with p = {self.p}"
        reasons = []
        if not self.self_loops:
            reasons.append("1 fails")
        if self.path is None:
            reasons.append("2 not found among sequential paths")
        if self.reach is None:
            reasons.append("3 undecided")
        elif not self.reach:
            reasons.append("3 fails" + (" (causal)" if "causal" in self.reach_reason else ""))
        return "not certified: " + "; ".join(reasons)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["p"] = "inf" if self.p == math.inf else self.p
        out["certified"] = self.certified
        out["source"] = SOURCE
        return out


def certify(patterns, n: int, causal: bool, coverage_depth, exact: bool) -> Certificate:
    """The certificate of a stack of the distinct layer ``patterns`` at length ``n``.

    ``causal``, ``coverage_depth`` and ``exact`` are the report's: the coverage depth is over
    all pairs when the stack is not causal; None where it is only a lower bound.
    """
    concrete = [(p.name, p.at(n)) for p in patterns]
    positions = torch.arange(n, dtype=torch.int64)
    missing = None
    for name, expr in concrete:
        diagonal = allowed(expr, positions, positions, n)
        if not bool(diagonal.all()):
            missing = f"token {int((~diagonal).nonzero()[0])} in pattern {name}"
            break
    path = _sequential_path([e for _, e in concrete], n)
    reach, p, reason = _reach(n, causal, coverage_depth, exact)
    return Certificate(self_loops=missing is None, self_missing=missing, path=path,
                       reach=reach, p=p, reach_reason=reason)


def _sequential_path(exprs, n: int) -> str | None:
    if n == 1:
        return "i -> i+1"  # one token is a path
    lower, upper = torch.arange(n - 1, dtype=torch.int64), torch.arange(1, n, dtype=torch.int64)
    forward = torch.zeros(n - 1, dtype=torch.bool)  # token i+1 attends token i
    backward = torch.zeros(n - 1, dtype=torch.bool)  # token i attends token i+1
    for expr in exprs:
        forward |= allowed(expr, upper, lower, n)
        backward |= allowed(expr, lower, upper, n)
    if bool(forward.all()):
        return "i -> i+1"
    if bool(backward.all()):
        return "i+1 -> i"
    return None


def _reach(n, causal, coverage_depth, exact):
    if n == 1:
        return True, 0, ""
    if causal:
        return False, math.inf, ("no: every layer is causal, so no information flows from a "
                                 "later token to an earlier one (token 0 never sees token "
                                 f"{n - 1})")
    if coverage_depth is None:
        return None, None, "not shown (the coverage depth found is only a lower bound)"
    if coverage_depth != math.inf:
        return True, coverage_depth, ""
    if not exact:
        return None, None, "not shown (random keys were left out of the propagation)"
    return False, math.inf, "no: some pair is never connected (coverage depth inf)"


# ---------------------------------------------------------------- the mask on given pairs
def allowed(expr, q: torch.Tensor, k: torch.Tensor, n: int) -> torch.Tensor:
    """bool [len(q)]: whether pair (q[i], k[i]) is allowed in ANY head of a concrete
    expression at length ``n`` (the layout's pair predicate, evaluated on pairs only)."""
    out = torch.zeros(len(q), dtype=torch.bool)
    for head in range(head_count(expr)):
        out |= pair_allowed(select_head(expr, head), q, k, n)
    return out
