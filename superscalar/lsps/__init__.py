"""LSPS (bLIP-50 and the specifications on top of it) over lightningd's custom messages."""
