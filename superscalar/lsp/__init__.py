"""The LSP's side: the creation ceremony it drives (creation.py)."""
