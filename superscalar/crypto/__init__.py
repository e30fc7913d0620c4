"""The cryptography, pure: secp256k1 arithmetic, BIP-340 Schnorr signatures, BIP-327 MuSig2 (musig2.py),
BIP-328 key derivation for MuSig2 aggregates, and the nonce memo that keeps a signing session's secret
nonce from being used twice."""
