"""Every integer function of the language at the edges of its range (issue 25, item 2), by
every evaluator: the constant folder (``ir.evaluate``), the vectorised torch code of the
reference mask (``semantics.reference``) and of the layout (``layout.pairs``), and the Triton
helpers of the kernels' predicate (``codegen.predicate.int_code``, under the interpreter on a
CPU), all against Python's exact integers.

The ranges are where(...)'s (``where_range``): values in [-(2**63 - 1), 2**63 - 1], isqrt on
[0, 2**62], log2 on [1, 2**62], nonzero divisors."""
import importlib.util
import math

import pytest
import torch

from spattn_dsl import loads
from spattn_dsl.codegen.predicate import int_code
from spattn_dsl.codegen.template import HELPERS
from spattn_dsl.ir import nodes as N
from spattn_dsl.ir.evaluate import eval_int
from spattn_dsl.layout.pairs import int_value
from spattn_dsl.runtime import compile
from spattn_dsl.semantics import reference

TOP = 2**63 - 1
ROOT_TOP = 2**62
EXACT = {"min": min, "max": max, "isqrt": math.isqrt, "log2": lambda x: x.bit_length() - 1,
         "+": int.__add__, "-": int.__sub__, "*": int.__mul__, "//": int.__floordiv__,
         "%": int.__mod__}


def _around(values, lo, hi):
    """Each value and its neighbours, kept inside [lo, hi], sorted, no repeats."""
    return sorted({v + d for v in values for d in (-1, 0, 1) if lo <= v + d <= hi})


POWERS = [2**e for e in (0, 1, 2, 3, 26, 31, 32, 52, 53, 61, 62)]
SQUARES = [s * s for s in (2, 3, 2**26 + 1, 2**31 - 1, 3037000499 // 2, 2**31)]
# one argument: (function, values it accepts, edges first)
UNARY = [("log2", _around(POWERS, 1, ROOT_TOP)),
         ("isqrt", [0] + _around(SQUARES + POWERS, 0, ROOT_TOP))]
SIGNED = [-TOP, -TOP + 1, -(2**62) - 1, -(2**62), -(2**31), -7, -2, -1, 0, 1, 2, 7, 2**31,
          2**62, 2**62 + 1, TOP - 1, TOP]
# two arguments: (operator, left values, right values, whether the pair is in range)
BINARY = [("min", SIGNED, SIGNED), ("max", SIGNED, SIGNED), ("//", SIGNED, SIGNED),
          ("%", SIGNED, SIGNED), ("+", SIGNED, SIGNED), ("-", SIGNED, SIGNED),
          ("*", SIGNED, [-2, -1, 0, 1, 2])]


def _valid(op, a, b) -> bool:
    if op in ("//", "%") and b == 0:
        return False
    return -TOP <= EXACT[op](a, b) <= TOP


def _expr(op, left, right=None):
    if right is None:
        return N.Call(op, (left,))
    if op in ("min", "max"):
        return N.Call(op, (left, right))
    return N.BinOp(op, left, right)


CASES = [(op, [(x,) for x in xs]) for op, xs in UNARY] + \
    [(op, [(a, b) for a in left for b in right if _valid(op, a, b)]) for op, left, right in BINARY]


def folded(op, args):
    """The constant folder on ``op`` of constants."""
    return [eval_int(_expr(op, *(N.Num(a) for a in pair))) for pair in args]


def vectorised(evaluate, op, args):
    """A torch evaluator on ``op(k)`` or ``op(q, k)``, q and k int64 vectors of the arguments."""
    columns = [torch.tensor(c, dtype=torch.int64) for c in zip(*args)]
    q, k = (columns[0], columns[0]) if len(columns) == 1 else columns
    var = [N.Var("k")] if len(columns) == 1 else [N.Var("q"), N.Var("k")]
    return torch.as_tensor(evaluate(_expr(op, *var), q, k)).expand(len(args)).tolist()


KERNEL = '''
@triton.jit
def _evaluate(Q, K, Out, size, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    q_pos = tl.load(Q + offs, mask=offs < size, other=1)
    k_pos = tl.load(K + offs, mask=offs < size, other=1)
    tl.store(Out + offs, ({code}).to(tl.int64), mask=offs < size)
'''


def in_triton(op, args, tmp_path):
    """The kernels' integer code (``int_code`` and the template's helpers) on each argument
    pair, from a real source file as the runtime loads kernels."""
    import triton
    columns = [torch.tensor(c, dtype=torch.int64) for c in zip(*args)]
    q, k = (columns[0], columns[0]) if len(columns) == 1 else columns
    var = [N.Var("k")] if len(columns) == 1 else [N.Var("q"), N.Var("k")]
    code = int_code(_expr(op, *var), "q_pos", "k_pos")
    path = tmp_path / f"int_{abs(hash((op, code))) % 10**8}.py"
    path.write_text("import triton\nimport triton.language as tl\n" + HELPERS
                    + KERNEL.replace("{code}", code))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = torch.empty(len(args), dtype=torch.int64, device=device)
    block = triton.next_power_of_2(len(args))
    module._evaluate[(1,)](q.to(device), k.to(device), out, len(args), BLOCK=block)
    return out.cpu().tolist()


def _check(got, op, args, who):
    want = [EXACT[op](*pair) for pair in args]
    wrong = [(pair, g, w) for pair, g, w in zip(args, got, want) if g != w]
    assert not wrong, f"{who}: {op}{wrong[0][0]} gives {wrong[0][1]}, not {wrong[0][2]} " \
                      f"({len(wrong)} wrong)"


@pytest.mark.parametrize("op,args", CASES, ids=[c[0] for c in CASES])
def test_every_evaluator_is_exact_at_the_edges(op, args, tmp_path):
    _check(folded(op, args), op, args, "constant folder")
    _check(vectorised(reference._int, op, args), op, args, "reference mask")
    _check(vectorised(int_value, op, args), op, args, "layout pairs")
    _check(in_triton(op, args, tmp_path), op, args, "Triton predicate")


PROGRAM = loads("""
pattern log2_top { where(log2(k + 4611686018427387904) == 62) }
pattern log2_folded(x = log2(4611686018427387904)) { where(k + 62 == x) }
pattern isqrt_top { where(isqrt(k + 4611686018427387904) == 2147483648) }
pattern log2_below { where(log2(q + 4611686018427387903) == 61) }
""")


@pytest.mark.parametrize("name", ["log2_top", "log2_folded", "isqrt_top", "log2_below"])
def test_the_top_of_the_range_in_masks_and_kernels(name):
    """The issue's case: log2(2**62) is 62 in the mask, in a folded parameter and in the
    kernel (a one-token sequence: the key is seen, so the output is its value)."""
    pattern = PROGRAM.pattern(name)
    assert pattern.mask(1).tolist() == [[True]]
    q, k, v = (torch.randn(1, 1, 1, 16) for _ in range(3))
    out = compile(pattern, block_m=16, block_n=16, num_warps=1, num_stages=1)(q, k, v)
    torch.testing.assert_close(out, v)
