"""Peer protocol for SuperScalar factory ceremonies (pure, no I/O).

`wire` is the versioned TLV codec for the single odd custom peer message
exchanged between the LSP and its clients.
"""
