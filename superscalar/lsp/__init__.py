"""The LSP's side: the creation ceremony it drives (creation.py) and what it risks on HTLCs (exposure.py)."""
