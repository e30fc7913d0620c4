"""A client's JIT wallet channels migrate into its factory channel with the same LSP.

An LSPS2 JIT channel that could not come out of a factory's L-stock is an ordinary channel from the
LSP's wallet (`lsp/jit.py`). Once this client holds a usable channel with that LSP in its *next*
factory (one it was invited into after the JIT channel came: the LSP's ladder gives it the client's
JIT balance as extra inbound; funding confirmed, not frozen), its balance in the JIT channel moves
there, and the JIT channel is then closed mutually, which gives the LSP its wallet coins back. A
factory channel older than the JIT channel is left alone: the JIT channel was bought because its
inbound was not enough.

- The move is one circular payment of our own: an invoice of ours, routed out over the JIT channel to
  the LSP and back to us over the factory channel (`sendpay` with that route). It is atomic as any
  Lightning payment is: the HTLC either settles on both hops or fails on both, so at no moment is the
  amount in neither channel or in both. We pay the LSP's forwarding fee on the factory channel (its
  `channel_update` to us), nothing else.
- Each move is at most what the JIT channel can send and what the factory channel can receive; a
  factory channel without enough inbound takes part of it, and the rest waits for a later block (more
  inbound, e.g. a liquidity sale).
- Once what is left to move is below `MIN_MOVE_MSAT` (the channel reserve the LSP asks us to keep, and
  change), the JIT channel is closed mutually: the rest is paid to our wallet on chain, the LSP's side to
  its wallet; the LSP, as the opener, pays the closing fee. An LSP that does not negotiate within
  `CLOSE_UNILATERAL_AFTER` seconds gets a unilateral close (our rest comes back after our delay).

The JIT channels are the ones each buy's HTLCs arrived on (`client/jit.py` records the channel). This
runs as a block step in a worker thread of its own, one move at a time: `sendpay` waits on the LSP.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional

from ..chain.exits import CLOSING_STATES
from ..cln.htlc_index import LiveChannel
from ..cln.node import ClnNode, msat
from ..cln.store import Store
from .jit import JitClient
from ..records import CONFIRMED, sale_outpoints

MIN_MOVE_MSAT = 1_000_000  # below this a move is not worth an HTLC: the channel is closed instead
CLOSE_UNILATERAL_AFTER = 300  # seconds the LSP has to negotiate the mutual close of a drained JIT channel
PAY_TIMEOUT_SECONDS = 60
CLTV_MARGIN_BLOCKS = 2  # a block found while the HTLC is on its way must not make it too short

Log = Callable[..., None]


def forward_fee_msat(update: dict[str, Any], amount_msat: int) -> int:
    """BOLT-7 fee of forwarding `amount_msat` under a channel_update (`fee_base_msat`, `fee_proportional_millionths`)."""
    return int(update.get("fee_base_msat", 0)) + amount_msat * int(update.get("fee_proportional_millionths", 0)) // 1_000_000


def move_amount_msat(spendable_msat: int, receivable_msat: int, update: dict[str, Any]) -> int:
    """The most that can go out over a channel that can send `spendable_msat` and come back over one that
    can receive `receivable_msat`, paying the fee of `update` on the way: 0 when below MIN_MOVE_MSAT."""
    # the fee grows with the amount, so the fee of all of `spendable_msat` leaves room for any smaller amount's
    amount = min(receivable_msat, spendable_msat - forward_fee_msat(update, spendable_msat))
    return amount if amount >= MIN_MOVE_MSAT else 0


class JitMigration:
    def __init__(self, node: ClnNode, store: Store, jit: JitClient, log: Log) -> None:
        self.node, self.store, self.jit, self.log = node, store, jit, log
        self._busy = threading.Lock()

    def on_block(self, height: int) -> None:
        """Start a migration pass in a worker thread, unless one is still running."""
        if not any(b.get("channel_scid") and not b.get("migrated") for b in self.jit.buys()):
            return
        if self._busy.acquire(blocking=False):
            threading.Thread(target=self._pass, name="superscalar-jit-migration", daemon=True).start()

    def _pass(self) -> None:
        try:
            for buy in self.jit.buys():
                if buy.get("channel_scid") and not buy.get("migrated"):
                    try:
                        self._migrate(buy)
                    except Exception as e:  # the next block tries again
                        self.log(f"JIT channel {buy['channel_scid']}: migration: {e}", level="info")
        finally:
            self._busy.release()

    def _migrate(self, buy: dict[str, Any]) -> None:
        lsp, scid = str(buy["lsp"]), str(buy["channel_scid"])
        chans = self.node.peer_channels(lsp)
        jit = next((ch for ch in chans if scid in LiveChannel.from_listing(ch).names), None)
        if jit is None or jit.get("state") in CLOSING_STATES or jit.get("state") == "CLOSED":
            self.jit.mark(str(buy["payment_hash"]), migrated="closed")
            return
        if self._on_a_sale(jit):  # a factory channel already: a rollover carries it (lsp/closing.py)
            self.jit.mark(str(buy["payment_hash"]), migrated="factory")
            return
        target = self._factory_channel(lsp, chans, int(buy.get("channel_height", 0)))
        if jit.get("state") != "CHANNELD_NORMAL" or jit.get("htlcs") or target is None:
            return
        update = (target.get("updates") or {}).get("remote")
        if update is None:
            return  # the LSP's channel_update for it has not arrived yet: its fee is unknown
        spendable = msat(jit["spendable_msat"])
        amount = move_amount_msat(spendable, msat(target["receivable_msat"]), update)
        if amount:
            self._move(lsp, jit, target, amount, forward_fee_msat(update, amount), int(update["cltv_expiry_delta"]))
        elif spendable < MIN_MOVE_MSAT:
            closed = self.node.close(str(jit["channel_id"]), unilateral_after=CLOSE_UNILATERAL_AFTER)
            self.jit.mark(str(buy["payment_hash"]), migrated="closed")
            self.log(f"JIT channel {scid}: balance moved into our factory channel; closed mutually ({closed.get('type')})")

    def _on_a_sale(self, ch: dict[str, Any]) -> bool:
        """Is `ch` a channel on one of our liquidity sales (the LSP served the JIT buy out of an L-stock)?"""
        outpoint = f"{ch.get('funding_txid')}:{ch.get('funding_outnum')}"
        for fid in self.store.factory_ids():
            rec = self.store.get(fid, "factory")
            if rec is not None and rec.get("role") == "client" and outpoint in sale_outpoints(rec):
                return True
        return False

    def _factory_channel(self, lsp: str, chans: list[dict[str, Any]], since: int) -> Optional[dict[str, Any]]:
        """Our usable leaf channel with `lsp` in a factory we were invited into at height `since` or later
        (a next factory: one that was formed knowing of the JIT channel; an older factory channel's inbound is
        what the JIT channel was bought to add to), the one that can receive the most, if any."""
        leaves = set()
        for fid in self.store.factory_ids():
            rec = self.store.get(fid, "factory")
            if (rec is not None and rec.get("role") == "client" and rec.get("lsp") == lsp and not rec.get("frozen")
                    and rec.get("close") is None and rec.get("funding", {}).get("status") == CONFIRMED
                    and int(rec.get("verified", {}).get("params_at_height", 0)) >= since):
                leaves.add(str(rec["leaf_outpoint"]))
        usable = [ch for ch in chans if f"{ch.get('funding_txid')}:{ch.get('funding_outnum')}" in leaves
                  and ch.get("state") == "CHANNELD_NORMAL" and not ch.get("htlcs")]
        return max(usable, key=lambda ch: msat(ch["receivable_msat"]), default=None)

    def _move(self, lsp: str, jit: dict[str, Any], target: dict[str, Any], amount: int, fee: int, delta: int) -> None:
        """One circular payment of `amount` msat: out over `jit`, back over `target`."""
        label = f"superscalar-migrate-{jit['channel_id'][:16]}-{self.node.blockheight()}-{amount}"
        inv = self.node.rpc.call("invoice", {"amount_msat": amount, "label": label,
                                             "description": "JIT channel balance moved into a factory channel"})
        final = int(self.node.rpc.call("decode", {"string": inv["bolt11"]})["min_final_cltv_expiry"]) + CLTV_MARGIN_BLOCKS
        back = target.get("short_channel_id") or target["alias"]["remote"]  # the LSP knows it by its own alias
        out = jit.get("short_channel_id") or jit["alias"]["local"]
        route = [{"id": lsp, "channel": out, "amount_msat": amount + fee, "delay": final + delta},
                 {"id": self.node.node_id(), "channel": back, "amount_msat": amount, "delay": final}]
        try:
            self.node.rpc.call("sendpay", {"route": route, "payment_hash": inv["payment_hash"],
                                           "payment_secret": inv["payment_secret"], "amount_msat": amount})
            done = self.node.rpc.call("waitsendpay", {"payment_hash": inv["payment_hash"],
                                                      "timeout": PAY_TIMEOUT_SECONDS})
        except Exception:
            # failed (the LSP did not forward it): no invoice is left behind per attempt. One still
            # pending after the timeout keeps its invoice, so it can still settle.
            if not any(p.get("status") == "pending" for p in
                       self.node.rpc.call("listsendpays", {"payment_hash": inv["payment_hash"]})["payments"]):
                self.node.rpc.call("delinvoice", {"label": label, "status": "unpaid"})
            raise
        self.log(f"JIT channel {out}: moved {amount} msat into factory channel {back} (fee {fee} msat): {done['status']}")
