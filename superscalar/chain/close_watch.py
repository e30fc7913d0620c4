"""The cooperative close of a factory, followed block by block for either role (one ChainFollower step).

A factory record carries the close in two fields (both roles):
  record["frozen"]  set when the close (or rollover) starts: the factory's channels take no HTLC.
                    {"reason": "close"|"rollover", "since_height", "next_factory": id|None,
                     "close_txid": the close this node signed over (once it gave a partial signature),
                     "partial_signed": True once this node's partial signature went out}
  record["close"]   set once this node holds the fully signed close, before it is broadcast:
                    {"tx", "txid", "status": "signed"|"broadcast"|"confirmed"|"conflicted",
                     "confirmed_height", "next_factory", "prevout": [value, script hex], "scanned_height",
                     "retired"}
Each block, for every close not yet settled, the new blocks are scanned for the spend of the factory's
funding output. The close itself: "confirmed", the channels are retired (`retire.retire_channels`) and
the next factory (rollover) is unfrozen and funded. Any other spend (a tree transaction: someone
exited): "conflicted", the factory's channels stay backed by the tree and are unfrozen, and the next
factory, whose funding can now never exist, is dropped (its channels closed as unbacked). Until one
of them confirms, the signed close is rebroadcast every block, moving up its fee variants
(`variants.offer`); once the last one (a rollover's close has only the base: the next factory is
signed over its txid) is refused for its fee or stays unconfirmed `escalate_blocks`, a node with a
coin bumps it by CPFP through its P2A anchor (`cpfp`), aiming at the factory's distribution height:
the LSP first, a client after twice as long (the LSP is the party whose job the close is). A node that gave its partial signature
but never received the full close (a crash between the two) still follows the funding output: the close
it signed may confirm, and then it is recognised by its txid.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional, Sequence

from ..bitcoin.block import block_hash, block_transactions
from ..bitcoin.tx import OutPoint, Tx
from ..cln.bitcoind import Bitcoind, BitcoindError
from ..factory.params import FactoryParams
from ..cln.node import ClnNode
from ..records import UNFUNDED
from ..cln.store import Store
from . import cpfp
from .exits import btc_to_sat
from .fee_schedule import DEFAULT_MAX_FEERATE_PERKVB, estimate_for, target_feerate
from .retire import factory_channel_ids, retire_channels
from .variants import escalate_blocks, fee_refusal, offer, rate_of

SIGNED, BROADCAST, SEEN, CONFIRMED, CONFLICTED = "signed", "broadcast", "seen", "confirmed", "conflicted"
MAX_BLOCKS_PER_SCAN = 32


def frozen(record: dict[str, Any]) -> bool:
    return bool(record.get("frozen"))


def close_pending(record: dict[str, Any]) -> bool:
    """Does this node hold (or may another hold) a signed close of this factory not yet settled?"""
    close = record.get("close")
    if close is not None:
        return close.get("status") in (SIGNED, BROADCAST, SEEN)
    return bool((record.get("frozen") or {}).get("partial_signed"))


def closed(record: dict[str, Any]) -> bool:
    """Was this factory closed cooperatively (its funding output spent by the close)?"""
    return (record.get("close") or {}).get("status") == CONFIRMED


def new_close(tx: Tx, prevout: tuple[int, bytes], height: int, next_factory: Optional[str],
              variants: Sequence[Tx] = ()) -> dict[str, Any]:
    """The `close` field of a record, for a close this node holds fully signed (with its fee variants,
    for a plain close: `factory.graph.fee_variants`)."""
    return {"tx": tx.to_hex(), "txid": tx.txid, "status": SIGNED, "confirmed_height": None,
            "next_factory": next_factory, "prevout": [prevout[0], prevout[1].hex()], "scanned_height": height,
            "retired": False, "variants": [v.to_hex() for v in variants], "variant": 0, "variant_since_height": None}


def close_txids(record: dict[str, Any]) -> frozenset[str]:
    """Every txid under which the close this node signed (fully or partially) may confirm: the close and
    its fee variants."""
    close = record.get("close") or {}
    freeze = record.get("frozen") or {}
    txids = {close.get("txid"), freeze.get("close_txid"), *freeze.get("close_txids", ())}
    txids |= {Tx.from_hex(h).txid for h in close.get("variants", ())}
    return frozenset(t for t in txids if t)


def _active(record: dict[str, Any]) -> bool:
    close = record.get("close") or {}
    return close_pending(record) or (close.get("status") == CONFIRMED and not close.get("retired"))


class CloseWatch:
    """Per block, only the factories with a close to follow or channels to retire are read: the set is
    found by one scan of the records at the first block, then kept by `Store`'s write listener."""

    def __init__(self, node: ClnNode, store: Store, log: Callable[[str], None], depth: int = 1,
                 bitcoind: Optional[Bitcoind] = None, max_feerate: int = DEFAULT_MAX_FEERATE_PERKVB) -> None:
        self.node, self.store, self.log = node, store, log
        self.bitcoind, self.max_feerate = bitcoind, max_feerate  # for CPFP (none without bitcoind's settings)
        self.depth = max(1, depth)  # confirmations before a spend of the funding output is acted on
        self._retiring: set[str] = set()  # channel ids with a `close` under way
        self._watched: Optional[set[str]] = None  # factory ids with a close to follow or retire
        self._lock = threading.Lock()  # the listener runs in the writer's thread
        store.listen(self._on_record)

    def _on_record(self, factory_id: str, record: str, data: Optional[dict[str, Any]]) -> None:
        with self._lock:
            if record != "factory" or self._watched is None:
                return
            if data is not None and _active(data):
                self._watched.add(factory_id)
            else:
                self._watched.discard(factory_id)

    def on_block(self, height: int) -> None:
        blocks: dict[int, tuple[str, tuple[Tx, ...]]] = {}
        if self._watched is None:
            watched = set()
            for fid in self.store.factory_ids():
                rec = self.store.get(fid, "factory")
                if rec is not None and _active(rec):
                    watched.add(fid)
            with self._lock:
                self._watched = watched
        with self._lock:
            due = sorted(self._watched)
        for fid in due:
            rec = self.store.get(fid, "factory")
            if rec is None:
                continue
            if close_pending(rec):
                self._follow(fid, rec, height, blocks)
            close = rec.get("close") or {}
            if close.get("status") == CONFIRMED and not close.get("retired"):
                if retire_channels(self.node, self._channels(rec), self.log, self._retiring) == 0:
                    close["retired"] = True
                    self.store.put(fid, "factory", rec)

    def _channels(self, rec: dict[str, Any]) -> list[str]:
        return factory_channel_ids(self.node, rec)

    def _block(self, h: int, blocks: dict[int, tuple[str, tuple[Tx, ...]]]) -> tuple[str, tuple[Tx, ...]]:
        """The hash and transactions of the block at height h (fetched once per step)."""
        if h not in blocks:
            raw = bytes.fromhex(self.node.raw_block(h))
            blocks[h] = (block_hash(raw), block_transactions(raw))
        return blocks[h]

    def _follow(self, fid: str, rec: dict[str, Any], height: int, blocks: dict[int, tuple[str, tuple[Tx, ...]]]) -> None:
        close = rec.get("close")
        if close is not None and close.get("status") == SEEN:
            self._at_depth(fid, rec, height, blocks)
            return
        txid, vout = rec["funding_outpoint"].split(":")
        funding = OutPoint.from_hex(txid, int(vout))
        freeze = rec.get("frozen") or {}
        expected = close_txids(rec)
        scanned = int(close["scanned_height"]) if close else int(freeze.get("scanned_height", freeze["since_height"]))
        first = scanned + 1
        for h in range(first, min(height, first + MAX_BLOCKS_PER_SCAN - 1) + 1):
            hash_, txs = self._block(h, blocks)
            spend = next((tx for tx in txs if any(i.prevout == funding for i in tx.inputs)), None)
            scanned = h
            if spend is not None:
                self._see(fid, rec, spend, h, hash_, spend.txid in expected)
                self._at_depth(fid, rec, height, blocks)
                return
        if close is None:
            freeze["scanned_height"] = scanned
            self.store.put(fid, "factory", rec)
            return
        close["scanned_height"] = scanned
        if scanned >= height:  # caught up and still unspent: (re)broadcast the close, escalating its variants
            value, script = close["prevout"]
            prevouts = [(int(value), bytes.fromhex(script))]
            txs = (Tx.from_hex(close["tx"]), *(Tx.from_hex(h) for h in close.get("variants", ())))
            step = escalate_blocks(self._margin(rec))
            tx, why = offer(lambda t: self.node.broadcast(t.to_hex(), prevouts), txs, close, height, step,
                            lambda text: self.log(f"factory {fid}: the cooperative close {text}"))
            if int(close["variant"]) == len(txs) - 1:  # no variant left to move to: CPFP, if we hold a coin
                wait = step if rec.get("role") == "lsp" else 2 * step
                refused = why is not None and fee_refusal(why)
                if refused or (why is None and height - int(close["variant_since_height"]) >= wait):
                    if self._bump(fid, rec, close, tx, int(value), height) is None and refused:
                        why = None
            if why is None and close["status"] == SIGNED:
                close["status"] = BROADCAST
                self.log(f"factory {fid}: cooperative close {tx.txid} broadcast ({rate_of(int(close['variant']))})")
            elif why is not None:
                self.log(f"factory {fid}: broadcasting the cooperative close {tx.txid}: {why}")
        self.store.put(fid, "factory", rec)

    def _bump(self, fid: str, rec: dict[str, Any], close: dict[str, Any], tx: Tx, input_value: int,
              height: int) -> Optional[str]:
        """CPFP `tx` (the close or its last variant) through its anchor at the rate the distribution
        height asks for now; None once a child of ours pays at least that (in the mempool), else why not."""
        if self.bitcoind is None:
            return "no bitcoind RPC settings to send a package"
        parent_fee = input_value - sum(o.value for o in tx.outputs)
        old = close.get("child")
        if old is not None and (old.get("parent") != tx.txid or not cpfp.alive(self.bitcoind, old)):
            cpfp.release(self.node, old, self.log)
            close.pop("child", None)
            old = None
        deadline = FactoryParams.deserialize(rec["params"].encode()).distribution_height
        estimates, floor = self.node.feerate_estimates()
        rate = target_feerate(deadline - height, estimate_for(deadline - height, estimates), floor, self.max_feerate)
        if old is not None and rate < cpfp.paying(tx, parent_fee, old) * cpfp.REBUMP_RATIO:
            return None
        try:
            incremental = btc_to_sat(self.bitcoind.mempool_info()["incrementalrelayfee"])
        except (BitcoindError, KeyError):
            incremental = 1000
        child = cpfp.build_child(self.node, self.bitcoind, tx, parent_fee, rate, old, incremental, height)
        error = child if isinstance(child, str) else cpfp.submit(self.node, self.bitcoind, tx.to_hex(), child, old,
                                                                 self.log)
        if error is not None:
            if close.get("bump_error") != error:  # said once, not every block
                self.log(f"factory {fid}: bumping the cooperative close {tx.txid} by CPFP failed: {error}")
            close["bump_error"] = error
            return error
        close.pop("bump_error", None)
        assert not isinstance(child, str)
        close["child"] = {**child, "parent": tx.txid}
        self.log(f"factory {fid}: bumped the cooperative close {tx.txid} with child {child['txid']} paying "
                 f"{child['fee']} sat ({child['feerate']} sat/kvB for both, {deadline - height} blocks before "
                 f"the distribution height{', replacing ' + old['txid'] if old else ''})")
        return None

    @staticmethod
    def _margin(rec: dict[str, Any]) -> int:
        return FactoryParams.deserialize(rec["params"].encode()).timeout_margin_blocks

    def _see(self, fid: str, rec: dict[str, Any], spend: Tx, height: int, hash_: str, ours: bool) -> None:
        """The funding output's spend is in the block at `height`: recorded, not yet acted on."""
        freeze = rec.get("frozen") or {}
        close = rec.get("close") or {"tx": spend.to_hex(), "txid": spend.txid, "prevout": None, "retired": False,
                                     "next_factory": freeze.get("next_factory"), "status": BROADCAST}
        close.update(scanned_height=height, seen={"height": height, "hash": hash_, "txid": spend.txid, "ours": ours,
                                                  "was": close["status"]}, status=SEEN)
        rec["close"] = close
        self.store.put(fid, "factory", rec)
        self.log(f"factory {fid}: its funding output is spent by {spend.txid} at height {height}"
                 f"{' (our cooperative close)' if ours else ''}; acting on it at {self.depth} confirmations")

    def _at_depth(self, fid: str, rec: dict[str, Any], height: int, blocks: dict[int, tuple[str, tuple[Tx, ...]]]) -> None:
        """A seen spend: reorganised away (back to watching), or deep enough (settled), or still waiting."""
        close = rec["close"]
        seen = close["seen"]
        if height < int(seen["height"]) or self._block(int(seen["height"]), blocks)[0] != seen["hash"]:
            was = seen.get("was", BROADCAST)
            self.log(f"factory {fid}: the block at height {seen['height']} holding {seen['txid']} was reorganised "
                     "away; watching the funding output again")
            if close.get("prevout") is None:  # a close we never held fully signed: back to our partial signature
                rec.pop("close", None)
                if rec.get("frozen") is not None:
                    rec["frozen"]["scanned_height"] = int(seen["height"]) - 1
            else:
                close.pop("seen", None)
                close.update(status=was, scanned_height=int(seen["height"]) - 1)
            self.store.put(fid, "factory", rec)
            return
        if height >= int(seen["height"]) + self.depth - 1:
            close.pop("seen", None)
            self._settle(fid, rec, seen["txid"], int(seen["height"]), bool(seen["ours"]))

    def _settle(self, fid: str, rec: dict[str, Any], spend_txid: str, height: int, ours: bool) -> None:
        close = rec["close"]
        close["scanned_height"] = height
        child = close.get("child")
        if child is not None and child.get("parent") != spend_txid:  # its parent lost: the coin is ours again
            cpfp.release(self.node, close.pop("child"), self.log)
        next_factory = close.get("next_factory")
        if ours:
            close.update(status=CONFIRMED, confirmed_height=height, confirmed_txid=spend_txid)
            rec["close"] = close
            self.store.put(fid, "factory", rec)
            self.log(f"factory {fid}: cooperative close {spend_txid} confirmed at height {height}; retiring its channels"
                     + (f"; factory {next_factory} is funded" if next_factory else ""))
            if next_factory:
                self._next_funded(next_factory)
            return
        close.update(status=CONFLICTED, confirmed_height=None, conflict_txid=spend_txid, conflict_height=height)
        rec["close"] = close
        rec.pop("frozen", None)  # the tree backs the channels again; the close can never confirm
        self.store.put(fid, "factory", rec)
        self.log(f"factory {fid}: its funding output was spent by {spend_txid}, not the cooperative close; "
                 "its channels follow the tree" + (f"; factory {next_factory} is dropped" if next_factory else ""))
        if next_factory:
            drop_next_factory(self.store, next_factory, f"the close of {fid} was conflicted by {spend_txid}")

    def _next_funded(self, fid: str) -> None:
        rec = self.store.get(fid, "factory")
        if rec is None:
            return
        rec.pop("frozen", None)
        if rec.get("role") == "lsp" and rec.get("stage") == "rolling":
            rec["stage"] = "funded"
        self.store.put(fid, "factory", rec)


def drop_next_factory(store: Store, fid: str, reason: str) -> None:
    """A rollover's next factory whose funding (the close) can never exist: an LSP abandons it and a
    client gives it up as unfunded; either way its channels are then closed as unbacked (the roles'
    per-block steps) and take no HTLC."""
    rec = store.get(fid, "factory")
    if rec is None:
        return
    if rec.get("role") == "lsp":
        if rec.get("stage") in ("rollover-completing", "rolling"):
            rec["stage"] = "abandoned"
            rec["abandoned_reason"] = reason
            store.put(fid, "factory", rec)
    elif rec.get("funding", {}).get("status") != UNFUNDED:
        rec["funding"].update(status=UNFUNDED, reason=reason)
        store.put(fid, "factory", rec)
