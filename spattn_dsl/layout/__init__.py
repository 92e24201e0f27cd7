"""Block layouts: which tiles of the attention matrix a kernel visits, with or without the
pattern's predicate (``lower``), classified analytically per primitive."""
from .build import BlockLayout, from_states, lower, pair_count, states_from_mask, tile_states
from .classify import EMPTY, FULL, PARTIAL, classify
from .pairs import allowed

__all__ = ["BlockLayout", "lower", "from_states", "tile_states", "states_from_mask",
           "pair_count", "classify", "allowed", "EMPTY", "PARTIAL", "FULL"]
