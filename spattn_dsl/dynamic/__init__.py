"""Dynamic terms at run time (docs/language.md §5): the selection on the device and the attention
over the static part plus the selected units."""
