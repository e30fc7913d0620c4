"""Pure consensus-encoding layer: transactions, scripts, taproot, sighashes,
addresses and PSBTs. No I/O, clock or randomness lives here."""

from .errors import BitcoinError, DecodeError
from .tx import OutPoint, Tx, TxIn, TxOut

__all__ = ["BitcoinError", "DecodeError", "OutPoint", "Tx", "TxIn", "TxOut"]
