"""spattn: a compiler for sparse attention patterns."""
