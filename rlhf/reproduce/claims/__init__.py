"""One module per claim; each calls rlhf.reproduce.register at import."""
