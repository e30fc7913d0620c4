"""The per-block close watch (chain/close_watch.py) and the frozen-channel HTLC rule, against in-process
fakes: rebroadcast until the close confirms, then retire and fund the next factory; a conflicting spend
unfreezes the factory and drops the next one; a node that only gave its partial signature still
recognises the close by its txid."""

from __future__ import annotations

import time
from typing import Any, Optional

from superscalar.bitcoin.encoding import ser_compact_size
from superscalar.bitcoin.tx import OutPoint, Tx, TxIn, TxOut
from superscalar.chain.close_watch import CloseWatch, new_close
from superscalar.cln.store import Store

from .test_htlc_index import CLIENT_ID, EWT, htlc, lsp_record, outpoint, setup
from ..fakes import ChannelNode, listed_channel

FUNDING = outpoint(901)  # lsp_record's funding outpoint


def spend(of: str, value: int) -> Tx:
    txid, vout = of.split(":")
    return Tx(3, (TxIn(OutPoint.from_hex(txid, int(vout))),), (TxOut(value, b"\x51\x20" + bytes(32)),))


class ChainNode(ChannelNode):
    def __init__(self, height: int) -> None:
        super().__init__(height)
        self.blocks: dict[int, list[Tx]] = {}
        self.headers: dict[int, bytes] = {}  # a block's 80-byte header (its hash tells a reorganisation)
        self.broadcasts: list[str] = []
        self.closed: list[str] = []

    def raw_block(self, height: int) -> str:
        txs = self.blocks.get(height, [])
        return (self.headers.get(height, bytes(80)) + ser_compact_size(len(txs)) + b"".join(t.serialize() for t in txs)).hex()

    def broadcast(self, tx_hex: str, prevouts: list[tuple[int, bytes]]) -> Optional[str]:
        self.broadcasts.append(Tx.from_hex(tx_hex).txid)
        return None

    def close(self, channel_id: str, unilateral_after: int = 1) -> dict[str, Any]:
        assert unilateral_after == 0  # a retired channel never closes unilaterally
        self.closed.append(channel_id)
        for c in self.channels:
            if c["channel_id"] == channel_id:
                c["state"] = "CLOSINGD_COMPLETE"
        return {"type": "mutual"}


def world(height: int = 100, depth: int = 1) -> tuple[ChainNode, Store, CloseWatch, Tx]:
    node = ChainNode(height)
    store = Store(node)  # type: ignore[arg-type]
    node.channels = [listed_channel(1, CLIENT_ID, outpoint(1)), listed_channel(2, CLIENT_ID, outpoint(2))]
    a = lsp_record([(CLIENT_ID, f"{1:064x}", outpoint(1))])
    close = spend(FUNDING, 90_000)
    a["frozen"] = {"reason": "rollover", "since_height": height, "next_factory": "b"}
    a["close"] = new_close(close, (100_000, b"\x51\x20" + bytes(32)), height, "b")
    b = lsp_record([(CLIENT_ID, f"{2:064x}", outpoint(2))], stage="rolling")
    b["funding_outpoint"] = f"{close.txid}:0"
    b["frozen"] = {"reason": "rollover-funding", "since_height": height, "next_factory": None}
    store.put("a", "factory", a)
    store.put("b", "factory", b)
    return node, store, CloseWatch(node, store, lambda _: None, depth), close  # type: ignore[arg-type]


def test_rebroadcast_until_confirmed_then_retire_and_fund_the_next() -> None:
    node, store, watch, close = world()
    watch.on_block(101)
    watch.on_block(102)
    assert node.broadcasts == [close.txid, close.txid]  # every block until it confirms
    assert store.get("a", "factory")["close"]["status"] == "broadcast"  # type: ignore[index]
    node.blocks[103] = [spend(outpoint(555), 1), close]
    watch.on_block(103)
    a, b = store.get("a", "factory"), store.get("b", "factory")
    assert a is not None and b is not None
    assert a["close"]["status"] == "confirmed" and a["close"]["confirmed_height"] == 103
    assert b["stage"] == "funded" and "frozen" not in b
    assert node.broadcasts == [close.txid, close.txid]
    deadline = time.monotonic() + 5
    while node.closed != [f"{1:064x}"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert node.closed == [f"{1:064x}"]  # only A's channel is retired
    watch.on_block(104)
    assert store.get("a", "factory")["close"]["retired"] is True  # type: ignore[index]


def test_conflicting_spend_unfreezes_and_drops_the_next_factory() -> None:
    node, store, watch, close = world()
    tree_root = spend(FUNDING, 99_000)
    node.blocks[101] = [tree_root]
    watch.on_block(101)
    a, b = store.get("a", "factory"), store.get("b", "factory")
    assert a is not None and b is not None
    assert a["close"]["status"] == "conflicted" and a["close"]["conflict_txid"] == tree_root.txid
    assert "frozen" not in a and b["stage"] == "abandoned"
    assert node.broadcasts == [] and node.closed == []


def test_partial_signer_recognises_the_close_by_its_txid() -> None:
    node, store, watch, close = world()
    a = store.get("a", "factory")
    assert a is not None
    del a["close"]
    a["frozen"].update(partial_signed=True, close_txid=close.txid, scanned_height=100)
    store.put("a", "factory", a)
    watch.on_block(101)
    assert node.broadcasts == []  # it has no signed close to send
    node.blocks[102] = [close]
    watch.on_block(102)
    a = store.get("a", "factory")
    assert a is not None and a["close"]["status"] == "confirmed" and a["close"]["tx"] == close.to_hex()


def test_frozen_factory_channels_take_no_htlc() -> None:
    node, store, index, guard, _ = setup()
    node.channels = [listed_channel(1, CLIENT_ID, outpoint(1))]
    rec = lsp_record([(CLIENT_ID, f"{1:064x}", outpoint(1))])
    store.put("f1", "factory", rec)
    index.set_channels(node.peer_channels())
    assert guard.failure(*htlc("1x0x1", EWT)) is None
    rec["frozen"] = {"reason": "close", "since_height": 100}
    store.put("f1", "factory", rec)
    fail = guard.failure(*htlc("1x0x1", EWT))
    assert fail is not None and "frozen" in fail[1]
    del rec["frozen"]
    store.put("f1", "factory", rec)
    assert guard.failure(*htlc("1x0x1", EWT)) is None


def test_close_acted_on_at_depth_and_reorganised_back_to_pending() -> None:
    """With a confirmation depth of 3, a close in block 103 is only seen until block 105; its block
    reorganised away before that puts it back to broadcast (and rebroadcast); found again in 106, it is
    acted on at 108: A's channels retired, B funded."""
    node, store, watch, close = world(depth=3)
    node.blocks[103], node.headers[103] = [close], b"\x01" * 80
    watch.on_block(103)
    watch.on_block(104)
    a, b = store.get("a", "factory"), store.get("b", "factory")
    assert a is not None and b is not None
    assert a["close"]["status"] == "seen" and a["close"]["seen"]["height"] == 103
    assert b["stage"] == "rolling" and b.get("frozen") and node.closed == []
    node.blocks[103], node.headers[103] = [], b"\x02" * 80  # another block 103, without the close
    watch.on_block(104)
    a = store.get("a", "factory")
    assert a is not None and a["close"]["status"] == "signed" and "seen" not in a["close"]  # as before it was seen
    broadcasts = len(node.broadcasts)
    watch.on_block(105)
    assert len(node.broadcasts) == broadcasts + 1  # pending again: rebroadcast
    node.blocks[106] = [close]
    for h in (106, 107):
        watch.on_block(h)
        assert store.get("a", "factory")["close"]["status"] == "seen"  # type: ignore[index]
    watch.on_block(108)
    a, b = store.get("a", "factory"), store.get("b", "factory")
    assert a is not None and b is not None
    assert a["close"]["status"] == "confirmed" and a["close"]["confirmed_height"] == 106
    assert b["stage"] == "funded" and "frozen" not in b


def test_partial_signer_back_to_waiting_after_a_reorganisation() -> None:
    node, store, watch, close = world(depth=2)
    a = store.get("a", "factory")
    assert a is not None
    a.pop("close")
    a["frozen"].update(partial_signed=True, close_txid=close.txid, scanned_height=100)
    store.put("a", "factory", a)
    node.blocks[101], node.headers[101] = [close], b"\x03" * 80
    watch.on_block(101)
    assert store.get("a", "factory")["close"]["status"] == "seen"  # type: ignore[index]
    node.headers[101] = b"\x04" * 80
    node.blocks[101] = []
    watch.on_block(101)
    a = store.get("a", "factory")
    assert a is not None and "close" not in a and a["frozen"]["partial_signed"]
