"""Liquidity sales as the factory records keep them (pure: no I/O).

A sale spends a leaf's current L-stock (the leaf state transaction's L-stock output, or output 1 of the
leaf's previous sale) into output 0, a new channel for one client of the leaf, output 1, the rest of the
L-stock (same script), and output 2, the P2A anchor. Both roles keep a `sales` list in their `factory`
record, in signing order; each entry:

  leaf              the leaf node index                       (LSP and client)
  peer_id           the buyer (LSP record)                    mine: is this client the buyer (client record)
  txid, tx          the fully signed sale transaction
  prevout           [value, script hex] of the L-stock it spends
  lstock_outpoint   "txid:vout" it spends
  capacity_sat      output 0; rest_sat: output 1; fee_sat: the transaction's fee (pre-agreed rate × vsize)
  channel_outpoint  "txid:0"
  channel_id        once the channel was completed (LSP), or seen (client)
  status            "signed" (stored by the LSP, the clients' Done not in yet), "open", "unopened" (an
                    unfinished sale signed again after its channel was gone, or a record from before the
                    channel was completed ahead of signing: output 0 backs no channel, the chain goes on
                    from output 1)

A channel on a sale output can only be exited by publishing the leaf's path and then every sale of that
leaf up to and including its own: `exit_additions` lists them.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

from .bitcoin.tx import OutPoint, Tx, TxOut

SIGNED, OPEN, UNOPENED = "signed", "open", "unopened"


def sale_fee_sat(capacity_sat: int, base_sat: int, ppm: int) -> int:
    """The price of `capacity_sat` of inbound liquidity: `base_sat` plus `ppm` millionths of the
    capacity, rounded up. (The sale transaction's own on-chain fee is paid from the L-stock.)"""
    if capacity_sat <= 0 or base_sat < 0 or ppm < 0:
        raise ValueError("capacity must be positive, base and ppm not negative")
    return base_sat + (capacity_sat * ppm + 999_999) // 1_000_000


def leaf_lstock(leaf_tx: Tx) -> tuple[OutPoint, TxOut]:
    """The L-stock output of a leaf state transaction (its last output but the anchor)."""
    vout = len(leaf_tx.outputs) - 2
    return leaf_tx.outpoint(vout), leaf_tx.outputs[vout]


def current_lstock(leaf_tx: Tx, sales: Iterable[dict[str, Any]], leaf: int) -> tuple[OutPoint, TxOut]:
    """The leaf's L-stock now: output 1 of its last sale, or the leaf transaction's own."""
    last: Optional[dict[str, Any]] = None
    for s in sales:
        if int(s["leaf"]) == leaf:
            last = s
    if last is None:
        return leaf_lstock(leaf_tx)
    tx = Tx.from_hex(last["tx"])
    return tx.outpoint(1), tx.outputs[1]


def sale_entry(leaf: int, tx: Tx, prevout: TxOut, lstock: OutPoint, **extra: Any) -> dict[str, Any]:
    return {"leaf": leaf, "txid": tx.txid, "tx": tx.to_hex(), "prevout": [prevout.value, prevout.script_pubkey.hex()],
            "lstock_outpoint": f"{lstock.txid_hex}:{lstock.vout}", "capacity_sat": tx.outputs[0].value,
            "rest_sat": tx.outputs[1].value, "fee_sat": prevout.value - sum(o.value for o in tx.outputs),
            "channel_outpoint": f"{tx.txid}:0", **extra}


def exit_additions(sales: list[dict[str, Any]], wanted: Iterable[int]) -> tuple[list[list[Any]], list[str]]:
    """The sale transactions ([name, hex, prevout value, prevout script hex], parents first) an exit of
    the channels of sales `wanted` (indices into `sales`) must publish after the leaves' paths, and
    those channels' outpoints. Each wanted channel needs every earlier sale of its leaf."""
    want = sorted(set(wanted))
    last_of_leaf: dict[int, int] = {}
    for k in want:
        last_of_leaf[int(sales[k]["leaf"])] = k
    txs = [[f"sale/{s['leaf']}/{k}", s["tx"], int(s["prevout"][0]), s["prevout"][1]]
           for k, s in enumerate(sales) if k <= last_of_leaf.get(int(s["leaf"]), -1)]
    channels = [sales[k]["channel_outpoint"] for k in want if sales[k].get("status") != UNOPENED]
    return txs, channels


def sale_position(sales: list[dict[str, Any]], k: int) -> int:
    """How many sale transactions an exit of sale `k`'s channel publishes (k and the earlier ones of its leaf)."""
    leaf = int(sales[k]["leaf"])
    return sum(1 for s in sales[:k + 1] if int(s["leaf"]) == leaf)


def open_sales(sales: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The sales of an LSP record whose channel exists (completed and recorded): the ones a close pays
    and a rollover carries, with their client's leaf channel."""
    return [s for s in sales if s.get("status") == OPEN and s.get("channel_id")]


def sold_capacity_sat(sales: Iterable[dict[str, Any]], peer: str) -> int:
    """The capacity of `peer`'s open sale channels (LSP record): what a rollover adds to its leaf channel's."""
    return sum(int(s["capacity_sat"]) for s in open_sales(sales) if s["peer_id"] == peer)


def sale_chain(sales: list[dict[str, Any]], leaf: int) -> list[int]:
    """The sales of `leaf` (indices into `sales`, in chain order) up to the last one that backs a channel
    (not `unopened`): what must be on chain before that leaf's remaining L-stock is output 1 of the last."""
    mine = [k for k, s in enumerate(sales) if int(s["leaf"]) == leaf]
    backed = [k for k in mine if sales[k].get("status") != UNOPENED]
    return [k for k in mine if backed and k <= backed[-1]]
