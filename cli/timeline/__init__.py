"""`timeline`, `critical-chain`, `blame` (SPEC §9): the model and its views."""
