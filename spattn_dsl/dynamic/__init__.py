"""Dynamic terms at run time (SPEC section 8): the selection on the device and the attention
over the static part plus the selected units."""
