"""superscalar: a SuperScalar Lightning Service Provider for Core Lightning.

Pure layers (no I/O): `bitcoin` (consensus encodings), `secp256k1` (group arithmetic), `musig2`
(BIP-327). The CLN shell lives in `plugin`.
"""

__version__ = "0.1.0"
