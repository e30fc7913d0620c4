"""Unilateral exits, for either role: publish signed factory transactions block by block and close each
leaf channel on chain once its leaf has confirmed.

An exit is a datastore record per factory (`exit`): the signed transactions to publish, parents first,
each with the output it spends; which are out and which confirmed; and which channels to close. Every
block, each transaction not yet out is offered to bitcoind through lightningd (`sendpsbt`): those whose
parent is missing or whose relative wait has not passed are refused and retried at the next block. So
an exit resumes by itself after a restart, and the record says how far it got.

Every factory transaction pays its pre-agreed fee; if one is still unconfirmed `bump_after` blocks after
it went out, the node bumps it once by CPFP: a child spends its P2A anchor and a coin of the node's
wallet so that the pair pays `BUMP_FEERATE`.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional

from .bitcoin.script import p2a_script
from .bitcoin.tx import Tx
from .node import ClnNode
from .store import Store

# A channel in one of these states is closing: its leaf must reach the chain for anyone to be paid.
CLOSING_STATES = {"AWAITING_UNILATERAL", "FUNDING_SPEND_SEEN", "ONCHAIN", "CHANNELD_SHUTTING_DOWN",
                  "CLOSINGD_SIGEXCHANGE", "CLOSINGD_COMPLETE"}


BUMP_FEERATE = 10  # sat/vB that a bumped transaction and its child pay together
CHILD_VSIZE = 155  # a child spending a P2A anchor and one P2WPKH/P2TR wallet coin into one P2TR output


def path_entry(name: str, tx_hex: str, prevout_value: int, prevout_script: bytes) -> list[Any]:
    return [name, tx_hex, prevout_value, prevout_script.hex()]


class Exits:
    def __init__(self, node: ClnNode, store: Store, log: Callable[[str], None]) -> None:
        self.node, self.store, self.log = node, store, log
        self._lock = threading.Lock()

    def start(self, factory_id: str, txs: list[list[Any]], channels: list[str], bump_after: int = 6,
              reason: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        """Add `txs` ([name, hex, prevout value, prevout script hex], parents first) and the leaf
        channels at outpoints `channels` to this factory's exit, and take the first step. `reason`, if
        given, is added to the record's `reasons` (why this exit started, e.g. an HTLC's deadline)."""
        with self._lock:
            progress = self.store.get(factory_id, "exit") or {
                "status": "publishing", "txs": [], "published": [], "channels": [], "closed": [], "last_error": None,
                "out_at": {}, "confirmed": [], "bumped": {}, "bump_after": bump_after}
            known = {t[0] for t in progress["txs"]}
            progress["txs"] += [t for t in txs if t[0] not in known]
            progress["channels"] += [c for c in channels if c not in progress["channels"]]
            progress["status"] = "publishing"
            if reason is not None:
                progress["reasons"] = [*progress.get("reasons", []), reason]
            self.store.put(factory_id, "exit", progress)
        return self.step(factory_id)

    def on_block(self, height: int) -> None:
        active = [fid for fid in self.store.factory_ids()
                  if (p := self.store.get(fid, "exit")) is not None and p["status"] not in ("closed", "cancelled")]
        block = self.node.raw_block(height) if active else ""
        for fid in active:
            self.step(fid, height, block)

    def step(self, factory_id: str, height: Optional[int] = None, block: str = "") -> dict[str, Any]:
        with self._lock:
            progress = self.store.get(factory_id, "exit")
            assert progress is not None
            height = self.node.blockheight() if height is None else height
            for name, tx_hex, value, script in progress["txs"]:
                if name in progress["published"]:
                    if name not in progress["confirmed"] and tx_hex in block:
                        progress["confirmed"].append(name)
                    elif name not in progress["confirmed"] and name not in progress["bumped"] \
                            and height - progress["out_at"].get(name, height) >= progress["bump_after"]:
                        self._bump(progress, name, tx_hex, int(value))
                    continue
                error = self.node.broadcast(tx_hex, [(int(value), bytes.fromhex(script))])
                if error is None:
                    progress["published"].append(name)
                    progress["out_at"][name] = height
                else:
                    progress["last_error"] = f"{name}: {error}"  # retried next block
            by_outpoint = {f"{c.get('funding_txid')}:{c.get('funding_outnum')}": c for c in self.node.peer_channels()}
            for outpoint in progress["channels"]:
                channel = by_outpoint.get(outpoint)
                if outpoint in progress["closed"] or channel is None or not channel.get("short_channel_id"):
                    continue  # the leaf has not confirmed yet (only aliases so far)
                progress["closed"].append(outpoint)
                if channel.get("state") not in CLOSING_STATES:
                    threading.Thread(target=self._close, args=(factory_id, str(channel["channel_id"])),
                                     daemon=True).start()
            if len(progress["published"]) == len(progress["txs"]):
                progress["status"] = "closed" if set(progress["closed"]) >= set(progress["channels"]) else "closing"
            self.store.put(factory_id, "exit", progress)
            return progress

    def _bump(self, progress: dict[str, Any], name: str, tx_hex: str, input_value: int) -> None:
        """CPFP `name` through its P2A anchor (its last output) with a coin of this node's wallet."""
        tx = Tx.from_hex(tx_hex)
        anchor = tx.outputs[-1]
        if anchor.script_pubkey != p2a_script():
            return
        parent_fee = input_value - sum(o.value for o in tx.outputs)
        child_fee = max(BUMP_FEERATE * (tx.vsize + CHILD_VSIZE) - parent_fee, BUMP_FEERATE * CHILD_VSIZE)
        try:
            child = self.node.bump_with_anchor(tx.outpoint(len(tx.outputs) - 1), anchor.value, anchor.script_pubkey,
                                               child_fee, tx.version)
        except Exception as e:
            progress["last_error"] = f"{name}: bump failed: {e}"
            return
        if child is None:
            progress["last_error"] = f"{name}: no wallet coin to bump it with"
            return
        progress["bumped"][name] = child
        self.log(f"bumped {name} ({tx.txid}) with child {child} paying {child_fee} sat")

    def _close(self, factory_id: str, channel_id: str) -> None:
        try:
            self.log(f"factory {factory_id}: leaf confirmed, closing channel {channel_id}: {self.node.close(channel_id)}")
        except Exception as e:
            self.log(f"factory {factory_id}: close of {channel_id} failed: {e}")
