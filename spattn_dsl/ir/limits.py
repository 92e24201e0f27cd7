"""The documented limits of the language; past each, a located ``PatternError``.

- Integers: every integer the language computes (a literal, a parameter value, a default, an
  argument, a layer count, every intermediate result) lies in ``[-(2**63 - 1), 2**63 - 1]``.
  Arithmetic inside that range is exact (Python integers).
- Primitive parameters are clamped to the sequence where that changes nothing: a window,
  band, stride, chunk, dilation, block size, global or sink count, prefix or random draw
  count wider than the grid's ``n`` means the same as ``n`` (``window(2**62)`` is dense).
- ``where(...)``: at a sequence length, every sub-expression of a comparison must stay within
  ``[-(2**63 - 1), 2**63 - 1]`` for all ``q, k`` in ``[0, n)`` (by interval arithmetic), and a
  divisor or the argument of ``isqrt``/``log2`` must be valid for all of them, so every stage
  can evaluate it exactly in 64-bit integers.
- Nesting: an expression nests at most ``MAX_DEPTH`` operators deep, in the file and once
  pattern references are inlined (a chain of references counts its nesting too).
- Size: a bound pattern (references inlined, shared sub-patterns counted each time they are
  used) has at most ``MAX_NODES`` nodes.
- Models: a model has at most ``2**63 - 1`` layers; its schedule is kept run-length encoded,
  so ``layers 1000000000: causal`` costs no more than ``layers 1: causal``.
- Sequence length: ``Pattern.at``/``mask`` take ``0 <= n <= MAX_LENGTH``.
"""
INT_LIMIT = 2**63 - 1
MAX_DEPTH = 100
MAX_NODES = 4096
MAX_LENGTH = 2**48


def in_range(value: int) -> bool:
    return -INT_LIMIT <= value <= INT_LIMIT


RANGE_TEXT = "[-(2**63 - 1), 2**63 - 1]"
