"""Exception hierarchy for the consensus-encoding layer.

Every parse failure of untrusted input raises :class:`DecodeError`; other
rule violations (bad constructor arguments, invalid sighash types, ...) raise
:class:`BitcoinError`. Both are ``ValueError`` subclasses so generic callers
can still catch them broadly.
"""

from __future__ import annotations


class BitcoinError(ValueError):
    """Base class for all errors raised by ``superscalar.bitcoin``."""


class DecodeError(BitcoinError):
    """Raised when bytes or text cannot be decoded into a valid object."""
