"""Small helpers that let tests talk to a real regtest bitcoind: fund an output, ask the mempool,
mine, and read what confirmed. Nothing here judges validity; bitcoind does."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Sequence

from superscalar.bitcoin.address import segwit_address
from superscalar.bitcoin.tx import OutPoint, Tx, TxOut


def btc(sat: int) -> str:
    return str(Decimal(sat) / Decimal(10**8))


def sat(btc_amount: Any) -> int:
    return int(Decimal(str(btc_amount)) * 10**8)


class Chain:
    """A thin view of pyln-testing's `bitcoind` fixture."""

    def __init__(self, bitcoind: Any) -> None:
        self.bitcoind = bitcoind
        self.rpc = bitcoind.rpc

    @property
    def height(self) -> int:
        return int(self.rpc.getblockcount())

    def mine(self, n: int = 1) -> None:
        self.bitcoind.generate_block(n)

    def fund(self, script_pubkey: bytes, amount_sat: int, confirm: bool = True) -> tuple[OutPoint, TxOut]:
        """Pay `amount_sat` from bitcoind's wallet to `script_pubkey`; return the new outpoint."""
        address = segwit_address("regtest", script_pubkey)
        txid = self.rpc.sendtoaddress(address, btc(amount_sat))
        raw = self.rpc.getrawtransaction(txid, True)
        for out in raw["vout"]:
            if out["scriptPubKey"]["hex"] == script_pubkey.hex():
                assert sat(out["value"]) == amount_sat
                if confirm:
                    self.mine(1)
                return OutPoint.from_hex(txid, out["n"]), TxOut(amount_sat, script_pubkey)
        raise AssertionError("funding output not found")

    def accept(self, txs: Sequence[Tx]) -> list[dict[str, Any]]:
        """bitcoind's testmempoolaccept verdicts for `txs`."""
        return list(self.rpc.testmempoolaccept([tx.to_hex() for tx in txs]))

    def assert_rejected(self, tx: Tx, reason: str) -> None:
        [verdict] = self.accept([tx])
        assert verdict["allowed"] is False, verdict
        assert verdict["reject-reason"] == reason, verdict

    def assert_accepted(self, tx: Tx) -> None:
        [verdict] = self.accept([tx])
        assert verdict["allowed"] is True, verdict
        assert verdict["txid"] == tx.txid, verdict

    def broadcast_and_confirm(self, tx: Tx) -> int:
        """Send `tx`, mine it, and return the height of the block that holds it."""
        assert self.rpc.sendrawtransaction(tx.to_hex()) == tx.txid
        self.mine(1)
        return self.confirmed_height(tx)

    def confirmed_height(self, tx: Tx) -> int:
        info = self.rpc.getrawtransaction(tx.txid, True)
        assert info.get("confirmations", 0) >= 1, f"{tx.txid} not confirmed"
        block = self.rpc.getblockheader(info["blockhash"])
        return int(block["height"])

    def output_on_chain(self, txid: str, vout: int) -> TxOut:
        """The confirmed output `txid:vout` as bitcoind reports it."""
        out = self.rpc.getrawtransaction(txid, True)["vout"][vout]
        return TxOut(sat(out["value"]), bytes.fromhex(out["scriptPubKey"]["hex"]))
