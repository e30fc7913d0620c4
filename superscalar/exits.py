"""Unilateral exits, for either role: publish signed factory transactions block by block and close each
leaf channel on chain once its leaf has confirmed.

An exit is a datastore record per factory (`exit`): the signed transactions to publish, parents first,
each with the output it spends; which are out; and which channels to close. Every block, each
transaction not yet out is offered to bitcoind through lightningd (`sendpsbt`): those whose parent is
missing or whose relative wait has not passed are refused and retried at the next block. So an exit
resumes by itself after a restart, and the record says how far it got.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from .node import ClnNode
from .store import Store

# A channel in one of these states is closing: its leaf must reach the chain for anyone to be paid.
CLOSING_STATES = {"AWAITING_UNILATERAL", "FUNDING_SPEND_SEEN", "ONCHAIN", "CHANNELD_SHUTTING_DOWN",
                  "CLOSINGD_SIGEXCHANGE", "CLOSINGD_COMPLETE"}


def path_entry(name: str, tx_hex: str, prevout_value: int, prevout_script: bytes) -> list[Any]:
    return [name, tx_hex, prevout_value, prevout_script.hex()]


class Exits:
    def __init__(self, node: ClnNode, store: Store, log: Callable[[str], None]) -> None:
        self.node, self.store, self.log = node, store, log
        self._lock = threading.Lock()

    def start(self, factory_id: str, txs: list[list[Any]], channels: list[str]) -> dict[str, Any]:
        """Add `txs` ([name, hex, prevout value, prevout script hex], parents first) and the leaf
        channels at outpoints `channels` to this factory's exit, and take the first step."""
        with self._lock:
            progress = self.store.get(factory_id, "exit") or {
                "status": "publishing", "txs": [], "published": [], "channels": [], "closed": [], "last_error": None}
            known = {t[0] for t in progress["txs"]}
            progress["txs"] += [t for t in txs if t[0] not in known]
            progress["channels"] += [c for c in channels if c not in progress["channels"]]
            progress["status"] = "publishing"
            self.store.put(factory_id, "exit", progress)
        return self.step(factory_id)

    def on_block(self) -> None:
        for fid in self.store.factory_ids():
            progress = self.store.get(fid, "exit")
            if progress is not None and progress["status"] != "closed":
                self.step(fid)

    def step(self, factory_id: str) -> dict[str, Any]:
        with self._lock:
            progress = self.store.get(factory_id, "exit")
            assert progress is not None
            for name, tx_hex, value, script in progress["txs"]:
                if name in progress["published"]:
                    continue
                error = self.node.broadcast(tx_hex, [(int(value), bytes.fromhex(script))])
                if error is None:
                    progress["published"].append(name)
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

    def _close(self, factory_id: str, channel_id: str) -> None:
        try:
            self.log(f"factory {factory_id}: leaf confirmed, closing channel {channel_id}: {self.node.close(channel_id)}")
        except Exception as e:
            self.log(f"factory {factory_id}: close of {channel_id} failed: {e}")
