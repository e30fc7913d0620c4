"""The Core Lightning calls superscalar uses, behind one small interface.

Everything the roles need from lightningd goes through `ClnNode`: keys (`makesecret`), the wallet
(`fundpsbt`/`addpsbtoutput`/`signpsbt`/`sendpsbt`/`unreserveinputs`, `newaddr`), channel opens (`fundchannel_start`/`_complete`/`_cancel`),
peer messages (`sendcustommsg`), the datastore and a few queries. Amounts cross this interface as
integer satoshis or msat, scripts as bytes, transactions as hex.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

from ..bitcoin.address import address_to_script, segwit_address
from ..bitcoin.script import is_native_segwit
from ..protocol.lsps0 import LSPS_MESSAGE_TYPE
from ..protocol.wire import SUPERSCALAR_MSG_TYPE

if TYPE_CHECKING:
    from ..bitcoin.tx import OutPoint, Tx


# BIP-141 vsize of a CPFP child: version, counts, locktime and segwit marker (10.5 vB), the P2A
# input with its empty witness (41.25), the wallet coin's input (P2TR key path 57.5, P2WPKH 68) and
# one P2TR output (43), rounded up.
CHILD_VSIZE_P2TR = 153
CHILD_VSIZE_P2WPKH = 163


@dataclass(frozen=True)
class AnchorChild:
    """A signed CPFP child of a tree transaction (not broadcast): its txid, signed PSBT, the wallet
    coin it spends ("txid:vout"), its fee, and its unsigned PSBT (what `release` takes)."""

    txid: str
    signed_psbt: str
    coin: str
    fee: int
    reserved_psbt: str


@dataclass(frozen=True)
class PreparedTx:
    """A wallet transaction built and reserved but not signed: its txid and PSBT (base64)."""

    txid: str
    psbt: str

    @property
    def tx(self) -> "Tx":
        from ..bitcoin.psbt import Psbt

        return Psbt.from_base64(self.psbt).tx


def msat(value: Any) -> int:
    """An msat amount as lightningd reports it (an integer, or a string ending in 'msat')."""
    if isinstance(value, int):
        return value
    text = str(value)
    return int(text[:-4]) if text.endswith("msat") else int(text)


class ClnNode:
    """lightningd through pyln's RPC client (`plugin.rpc`)."""

    def __init__(self, rpc: Any, network: str) -> None:
        self.rpc = rpc
        self.network = network

    # --- identity and keys ---

    def node_id(self) -> str:
        return str(self.rpc.getinfo()["id"])

    def blockheight(self) -> int:
        return int(self.rpc.getinfo()["blockheight"])

    def secret(self, label: str) -> bytes:
        """A 32-byte secret derived by the HSM from the node seed and `label` (recoverable)."""
        return bytes.fromhex(self.rpc.call("makesecret", {"string": label})["secret"])

    # --- wallet ---

    def new_script(self) -> bytes:
        """A fresh P2TR script of the node's wallet."""
        return address_to_script(self.rpc.call("newaddr", {"addresstype": "p2tr"})["p2tr"], self.network)

    def address(self, script_pubkey: bytes) -> str:
        return segwit_address(self.network, script_pubkey)

    def prepare_payment(self, script_pubkey: bytes, amount_sat: int) -> "PreparedTx":
        """An unsigned wallet transaction paying `amount_sat` to `script_pubkey`, its inputs reserved
        (`fundpsbt` with the excess as change, then `addpsbtoutput`). Its txid is final already:
        `nonwrapped` keeps P2SH-wrapped coins out, and every input is checked to be native segwit."""
        from ..bitcoin.psbt import Psbt

        weight = 4 * (8 + 1 + len(script_pubkey))  # the output we add (BIP-141 weight of a TxOut)
        funded = self.rpc.call("fundpsbt", {"satoshi": amount_sat, "feerate": "normal", "startweight": weight,
                                            "excess_as_change": True, "nonwrapped": True})
        try:
            added = self.rpc.call("addpsbtoutput", {"satoshi": amount_sat, "initialpsbt": funded["psbt"],
                                                    "destination": self.address(script_pubkey)})
            psbt = str(added["psbt"])
            parsed = Psbt.from_base64(psbt)
            for i, inp in enumerate(parsed.inputs):
                # BIP-141: only native segwit spends keep the txid fixed before signing.
                script = inp.witness_utxo.script_pubkey if inp.witness_utxo is not None else b""
                if not is_native_segwit(script):
                    raise ValueError(f"funding input {i} is not native segwit: its txid could change when signed")
            return PreparedTx(parsed.tx.txid, psbt)
        except Exception:
            self.rpc.call("unreserveinputs", {"psbt": funded["psbt"]})
            raise

    def send_prepared(self, prepared: "PreparedTx") -> str:
        """Sign a prepared transaction's wallet inputs and broadcast it; returns its txid."""
        signed = self.rpc.call("signpsbt", {"psbt": prepared.psbt})["signed_psbt"]
        return str(self.rpc.call("sendpsbt", {"psbt": signed})["txid"])

    def discard_prepared(self, prepared: "PreparedTx") -> None:
        """Release a prepared transaction's inputs."""
        self.rpc.call("unreserveinputs", {"psbt": prepared.psbt})

    def spendable_wallet_sat(self) -> int:
        """Confirmed, unreserved on-chain coins of this node's wallet."""
        return sum(msat(o["amount_msat"]) // 1000 for o in self.rpc.listfunds()["outputs"]
                   if o.get("status") == "confirmed" and not o.get("reserved"))

    def reserved_outputs(self) -> int:
        return sum(1 for o in self.rpc.listfunds()["outputs"] if o.get("reserved"))

    def broadcast(self, tx_hex: str, prevouts: list[tuple[int, bytes]]) -> Optional[str]:
        """Broadcast a fully signed transaction through lightningd (`sendpsbt`); `prevouts` are the
        (value, script) of its inputs. Returns None on success or when it is already known, else
        bitcoind's reason."""
        from ..bitcoin.psbt import Psbt, PsbtInput, PsbtOutput
        from ..bitcoin.tx import Tx, TxOut

        tx = Tx.from_hex(tx_hex)
        inputs = tuple(PsbtInput(witness_utxo=TxOut(v, s), final_script_witness=i.witness)
                       for (v, s), i in zip(prevouts, tx.inputs))
        psbt = Psbt(tx.without_witnesses(), inputs, tuple(PsbtOutput() for _ in tx.outputs))
        try:
            self.rpc.call("sendpsbt", {"psbt": psbt.to_base64()})
            return None
        except Exception as e:  # RpcError: bitcoind refused it
            text = str(e)
            if "already" in text or "txn-already-known" in text:
                return None
            return text

    def raw_block(self, height: int) -> str:
        """The block at `height`, hex."""
        return str(self.rpc.call("getrawblockbyheight", {"height": height})["block"])

    def anchor_child(self, anchor: "OutPoint", anchor_value: int, anchor_script: bytes,
                     fee_for: Callable[[int], int], version: int,
                     reuse_coin: Optional[str] = None) -> Optional["AnchorChild"]:
        """A signed CPFP child, not broadcast: it spends the P2A `anchor` and one confirmed wallet coin
        (`reuse_coin`, "txid:vout", when it is still ours and big enough: a replacement then conflicts
        with the child it replaces on both inputs), pays `fee_for(its vsize)` and returns the rest to
        the wallet. The coin is reserved (`reserveinputs`); `release` gives it back. None when the
        wallet has no coin big enough."""
        from ..bitcoin.psbt import Psbt, PsbtInput, PsbtOutput
        from ..bitcoin.tx import OutPoint, Tx, TxIn, TxOut

        most = fee_for(CHILD_VSIZE_P2WPKH)

        def usable(o: dict[str, Any]) -> bool:
            return bool(o["status"] == "confirmed" and o["amount_msat"] // 1000 + anchor_value - most >= 330)

        outputs = self.rpc.listfunds()["outputs"]
        coins = [o for o in outputs if f"{o['txid']}:{o['output']}" == reuse_coin and usable(o)]
        coins = coins or sorted((o for o in outputs if usable(o) and not o.get("reserved")),
                                key=lambda o: o["amount_msat"])
        if not coins:
            return None
        coin = coins[0]
        value = coin["amount_msat"] // 1000
        script = bytes.fromhex(coin["scriptpubkey"])
        child_fee = fee_for(CHILD_VSIZE_P2TR if script[:2] == b"\x51\x20" else CHILD_VSIZE_P2WPKH)
        tx = Tx(version, (TxIn(anchor), TxIn(OutPoint.from_hex(coin["txid"], coin["output"]))),
                (TxOut(value + anchor_value - child_fee, self.new_script()),))
        psbt = Psbt(tx, (PsbtInput(witness_utxo=TxOut(anchor_value, anchor_script), final_script_witness=()),
                         PsbtInput(witness_utxo=TxOut(value, script))),
                    (PsbtOutput(),)).to_base64()
        self.rpc.call("reserveinputs", {"psbt": psbt, "exclusive": False})
        try:
            signed = self.rpc.call("signpsbt", {"psbt": psbt, "signonly": [1]})["signed_psbt"]
            return AnchorChild(tx.txid, signed, f"{coin['txid']}:{coin['output']}", child_fee, psbt)
        except Exception:
            self.release(psbt)
            raise

    def release(self, psbt: str) -> None:
        """Give back the wallet inputs of `psbt` (`unreserveinputs`)."""
        self.rpc.call("unreserveinputs", {"psbt": psbt})

    def feerate_estimates(self) -> tuple[dict[int, int], int]:
        """lightningd's fee estimates ({blocks: sat/kvB}) and its floor (the mempool's minimum)."""
        res = self.rpc.call("feerates", {"style": "perkb"})["perkb"]
        return ({int(e["blockcount"]): int(e["feerate"]) for e in res.get("estimates", [])},
                int(res.get("floor", 1000)))

    def output_exists(self, txid: str, vout: int) -> bool:
        """Is txid:vout unspent (confirmed or in the mempool), as bitcoind sees it?"""
        res = self.rpc.call("getutxout", {"txid": txid, "vout": str(vout)})
        return res.get("amount") is not None

    def connected(self, peer: str) -> bool:
        """Is `peer` connected now? (False if lightningd cannot say.)"""
        try:
            return any(p.get("connected") for p in self.rpc.call("listpeers", {"id": peer})["peers"])
        except Exception:
            return False

    def new_address(self) -> str:
        """A fresh address of lightningd's wallet (P2WPKH: any SegWit wallet can pay it)."""
        res = self.rpc.call("newaddr", {"addresstype": "bech32"})
        return str(res["bech32"])

    def wallet_outputs(self, addresses: frozenset[str]) -> list[dict[str, Any]]:
        """lightningd's wallet outputs to `addresses`, spent ones included (`listfunds spent`): each
        with `outpoint` (txid:vout), `sat`, `address`, `height` (None unconfirmed) and `spent` (its
        spend confirmed)."""
        found = []
        for o in self.rpc.call("listfunds", {"spent": True})["outputs"]:
            if o.get("address") in addresses:
                found.append({"outpoint": f"{o['txid']}:{o['output']}", "sat": msat(o["amount_msat"]) // 1000,
                              "address": o["address"], "height": o.get("blockheight"),
                              "spent": o.get("status") == "spent"})
        return found

    def spent_outputs(self) -> frozenset[str]:
        """Our wallet's outputs whose spend is confirmed (txid:vout)."""
        return frozenset(f"{o['txid']}:{o['output']}" for o in self.rpc.call("listfunds", {"spent": True})["outputs"]
                         if o.get("status") == "spent")

    def feerate_perkw(self, blocks: int) -> int:
        """lightningd's estimate to confirm within `blocks` (its nearest at or below), in sat per 1000
        weight; its floor when it has none."""
        res = self.rpc.call("feerates", {"style": "perkw"})["perkw"]
        near = [e for e in res.get("estimates", []) if int(e["blockcount"]) <= blocks]
        if not near:
            return int(res.get("floor", 253))
        return int(max(near, key=lambda e: int(e["blockcount"]))["feerate"])

    def sweep(self, utxos: tuple[str, ...], address: str, feerate: str) -> Optional[tuple[str, int]]:
        """Send the whole of our wallet outputs `utxos` (less the fee at `feerate`, lightningd's form:
        "normal", "1000perkw") to `address`, replacing an earlier sweep of the same outputs
        (`reservedok`). Returns (txid, feerate per kw), or None when what is left is dust."""
        weight = 4 * (8 + 1 + len(address_to_script(address, self.network)))  # the one output
        funded = self.rpc.call("utxopsbt", {"satoshi": 0, "feerate": feerate, "startweight": weight,
                                            "utxos": list(utxos), "reservedok": True, "reserve": 2016,
                                            "excess_as_change": False})
        value = msat(funded["excess_msat"]) // 1000
        if value < 546:
            self.rpc.call("unreserveinputs", {"psbt": funded["psbt"]})
            return None
        added = self.rpc.call("addpsbtoutput", {"satoshi": value, "initialpsbt": funded["psbt"],
                                                "destination": address})
        signed = self.rpc.call("signpsbt", {"psbt": added["psbt"]})["signed_psbt"]
        return str(self.rpc.call("sendpsbt", {"psbt": signed})["txid"]), int(funded["feerate_per_kw"])

    def prepare_payout(self, address: str, value_sat: int, feerate: str) -> tuple[str, str]:
        """A payment of `value_sat` from our wallet to `address`, signed and not sent: (txid, signed
        PSBT). Its inputs stay reserved for 2016 blocks, so the caller can record it first and send
        it (`send_signed`) as often as it must, after a restart too, without ever paying twice."""
        from ..bitcoin.psbt import Psbt

        weight = 4 * (8 + 1 + len(address_to_script(address, self.network)))  # the one output
        funded = self.rpc.call("fundpsbt", {"satoshi": value_sat, "feerate": feerate, "startweight": weight,
                                            "reserve": 2016, "excess_as_change": True})
        try:
            added = self.rpc.call("addpsbtoutput", {"satoshi": value_sat, "initialpsbt": funded["psbt"],
                                                    "destination": address})
            signed = str(self.rpc.call("signpsbt", {"psbt": added["psbt"]})["signed_psbt"])
        except Exception:
            self.release(funded["psbt"])
            raise
        return Psbt.from_base64(signed).tx.txid, signed

    def send_signed(self, signed_psbt: str) -> str:
        """Publish a signed PSBT (`sendpsbt`); sending one already published is harmless."""
        return str(self.rpc.call("sendpsbt", {"psbt": signed_psbt})["txid"])

    def wallet_txids(self) -> frozenset[str]:
        """The transactions lightningd's wallet knows (`listtransactions`: those it sent or that pay it)."""
        return frozenset(str(t["hash"]) for t in self.rpc.call("listtransactions", {})["transactions"])

    def close(self, channel_id: str, unilateral_after: int = 1) -> dict[str, Any]:
        return dict(self.rpc.call("close", {"id": channel_id, "unilateraltimeout": unilateral_after}))

    # --- channels ---

    def fundchannel_start(self, peer: str, capacity_sat: int, push_msat: int) -> bytes:
        """Start a zero-conf, unannounced channel open; returns the funding script_pubkey."""
        res = self.rpc.call("fundchannel_start", {
            "id": peer, "amount": capacity_sat, "announce": False, "push_msat": push_msat, "mindepth": 0,
        })
        return bytes.fromhex(res["scriptpubkey"])

    def fundchannel_complete(self, peer: str, psbt_b64: str) -> str:
        res = self.rpc.call("fundchannel_complete", {"id": peer, "psbt": psbt_b64})
        if not res.get("commitments_secured"):
            raise RuntimeError(f"fundchannel_complete with {peer}: commitments not secured")
        return str(res["channel_id"])

    def fundchannel_cancel(self, peer: str) -> None:
        self.rpc.call("fundchannel_cancel", {"id": peer})

    def peer_channels(self, peer: Optional[str] = None) -> list[dict[str, Any]]:
        params = {"id": peer} if peer else {}
        return list(self.rpc.call("listpeerchannels", params)["channels"])

    def channel_named(self, name: str) -> list[dict[str, Any]]:
        """The channel whose short channel id or local alias is `name` (a list of at most one)."""
        return list(self.rpc.call("listpeerchannels", {"short_channel_id": name})["channels"])

    def peer_channels_fields(self, fields: tuple[str, ...]) -> list[dict[str, Any]]:
        """Every channel, with only `fields` of each (a JSON-RPC `filter`: lightningd sends less)."""
        return list(self.rpc.call("listpeerchannels", {}, filter={"channels": [{f: True for f in fields}]})
                    .get("channels", []))

    def incoming_fulfilled(self, names: tuple[str, ...], htlc_id: int, payment_hash: str) -> bool:
        """Did this node fulfil incoming HTLC `htlc_id` of the channel known by `names` (its short channel
        id and aliases)? A forward of it settled, or we were the payee and the invoice is paid."""
        for name in names:
            for fwd in self.rpc.call("listforwards", {"in_channel": name})["forwards"]:
                if int(fwd.get("in_htlc_id", -1)) == htlc_id:
                    return bool(fwd.get("status") == "settled")
        invoices = self.rpc.call("listinvoices", {"payment_hash": payment_hash})["invoices"]
        return any(i.get("status") == "paid" for i in invoices)

    # --- peers ---

    def send_message(self, peer: str, payload: bytes) -> None:
        """Send one custom message (`payload` starts with its 2-byte type: ours, or LSPS0's)."""
        assert int.from_bytes(payload[:2], "big") in (SUPERSCALAR_MSG_TYPE, LSPS_MESSAGE_TYPE)
        self.rpc.call("sendcustommsg", {"node_id": peer, "msg": payload.hex()})

    def debug_log(self) -> list[dict[str, Any]]:
        """lightningd's in-memory log at debug level and above (`getlog`), oldest first."""
        return list(self.rpc.call("getlog", {"level": "debug"})["log"])

    # --- datastore ---

    def datastore_get(self, key: list[str]) -> Optional[tuple[str, int]]:
        """(string, generation) stored under exactly `key`, or None."""
        for entry in self.rpc.call("listdatastore", {"key": key})["datastore"]:
            if entry["key"] == key and "string" in entry:
                return str(entry["string"]), int(entry.get("generation", 0))
        return None

    def datastore_put(self, key: list[str], value: str, generation: Optional[int]) -> int:
        """Create (generation None) or replace the value at exactly `generation`; returns the new one."""
        params: dict[str, Any] = {"key": key, "string": value}
        if generation is None:
            params["mode"] = "must-create"
        else:
            params["mode"] = "must-replace"
            params["generation"] = generation
        return int(self.rpc.call("datastore", params)["generation"])

    def datastore_del(self, key: list[str]) -> None:
        self.rpc.call("deldatastore", {"key": key})

    def datastore_values(self, prefix: list[str]) -> list[tuple[list[str], str]]:
        """The (key, string) of each entry directly under `prefix` that holds a value."""
        return [(list(e["key"]), str(e["string"])) for e in self.rpc.call("listdatastore", {"key": prefix})["datastore"]
                if "string" in e and len(e["key"]) == len(prefix) + 1]

    def datastore_list(self, prefix: list[str]) -> list[list[str]]:
        return [list(e["key"]) for e in self.rpc.call("listdatastore", {"key": prefix})["datastore"]]
