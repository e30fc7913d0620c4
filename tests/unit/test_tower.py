"""The helper's watchtower and a client's side of it: sealed penalties, bounds, and the penalty sent
when (and only when) the revoked commitment it answers is in a block."""

from __future__ import annotations

import json
from typing import Any, Optional

import pytest

from superscalar.bitcoin.tx import OutPoint, Tx, TxIn, TxOut
from superscalar.chain.blocks import BlockView
from superscalar.client.tower import ROOT as OUT_ROOT, TowerClient, session_of
from superscalar.crypto.tower_blob import locator, seal, unseal
from superscalar.helper.tower import RESPONSE_BLOCKS, Tower, TowerLimits
from superscalar.protocol.wire import Message, TowerAnswer, TowerStore

from ..fakes import MemoryDatastore

CLIENT, OTHER = "02" + "11" * 32, "03" + "22" * 32
CHANNEL = bytes.fromhex("cc" * 32)


def commitment(n: int) -> Tx:
    """A stand-in for a revoked commitment: to_remote and to_local outputs."""
    return Tx(2, (TxIn(OutPoint.from_hex(f"{n:064x}", 0), b"", 0x80000000),),
              (TxOut(40_000, bytes.fromhex("0014" + "aa" * 20)), TxOut(150_000, bytes.fromhex("0020" + "bb" * 32))))


def penalty_of(c: Tx, value: int = 149_000) -> Tx:
    return Tx(2, (TxIn(OutPoint.from_hex(c.txid, 1), b"", 0xFFFFFFFF, (b"sig", b"\x01", b"script")),),
              (TxOut(value, bytes.fromhex("0014" + "dd" * 20)),))


def view(height: int, *txs: Tx) -> BlockView:
    return BlockView(height, txs, {t.txid: t for t in txs},
                     {f"{i.prevout.txid_hex}:{i.prevout.vout}": t.txid for t in txs for i in t.inputs})


class HelperNode(MemoryDatastore):
    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, list[tuple[int, bytes]]]] = []

    def datastore_values(self, prefix: list[str]) -> list[tuple[list[str], str]]:
        return [(list(k), v) for k, (v, _) in self.data.items() if list(k[:-1]) == prefix]

    def broadcast(self, tx_hex: str, prevouts: list[tuple[int, bytes]]) -> Optional[str]:
        self.sent.append((tx_hex, prevouts))
        return None


class Chain:
    def __init__(self) -> None:
        self.views: dict[int, BlockView] = {}

    def at(self, height: int) -> BlockView:
        return self.views.get(height) or view(height)


def helper(node: HelperNode, chain: Chain, limits: TowerLimits = TowerLimits()) -> Tower:
    return Tower(node, chain, limits, lambda *a, **k: None)  # type: ignore[arg-type]


def store_msg(c: Tx, blob: Optional[bytes] = None) -> TowerStore:
    loc, sealed = seal(c.txid, penalty_of(c).serialize())
    return TowerStore(CHANNEL, session_of(loc), loc, sealed if blob is None else blob)


def test_a_sealed_penalty_opens_only_under_its_commitments_txid() -> None:
    c, other = commitment(1), commitment(2)
    loc, blob = seal(c.txid, penalty_of(c).serialize())
    assert loc == bytes.fromhex(c.txid)[:16] == locator(c.txid)
    assert penalty_of(c).serialize() not in blob
    assert unseal(c.txid, blob) == penalty_of(c).serialize()
    assert unseal(other.txid, blob) is None
    assert unseal(c.txid, blob[:-1] + bytes([blob[-1] ^ 1])) is None  # tampered: the tag fails
    assert unseal(c.txid, b"short") is None


def test_the_helper_publishes_the_penalty_when_the_commitment_confirms() -> None:
    node, chain = HelperNode(), Chain()
    tower = helper(node, chain)
    old, newer = commitment(1), commitment(2)
    for c in (old, newer):
        answer = tower.keep(CLIENT, store_msg(c))
        assert answer.accepted == 1 and answer.session_id == session_of(locator(c.txid))
    assert tower.keep(CLIENT, store_msg(old)).accepted == 1  # the same again (an answer was lost): kept once
    assert tower.info()["blobs"] == 2
    tower.on_block(100)
    assert node.sent == []  # nothing on chain yet
    chain.views[101] = view(101, old)
    tower.on_block(101)
    assert len(node.sent) == 1
    tx_hex, prevouts = node.sent[0]
    assert Tx.from_hex(tx_hex).txid == penalty_of(old).txid
    assert prevouts == [(150_000, old.outputs[1].script_pubkey)]  # what sendpsbt needs of the spent output
    tower.on_block(102)  # not confirmed: sent again
    assert len(node.sent) == 2
    chain.views[103] = view(103, penalty_of(old))
    tower.on_block(103)
    assert len(node.sent) == 2
    [done] = tower.info()["penalties"]
    assert done["confirmed_height"] == 103 and done["client"] == CLIENT and done["channel_id"] == CHANNEL.hex()
    # a restart keeps the blobs and the response
    again = helper(node, chain)
    assert again.info()["blobs"] == 2 and again.info()["penalties"][0]["confirmed_height"] == 103
    again.on_block(104)
    assert len(node.sent) == 2


def test_a_penalty_that_never_confirms_is_sent_for_a_bounded_time() -> None:
    node, chain = HelperNode(), Chain()
    tower = helper(node, chain)
    c = commitment(1)
    tower.keep(CLIENT, store_msg(c))
    chain.views[10] = view(10, c)
    tower.on_block(10)
    for h in range(11, 10 + RESPONSE_BLOCKS + 5, 97):
        tower.on_block(h)
    sent = len(node.sent)
    tower.on_block(10 + RESPONSE_BLOCKS + 100)
    assert len(node.sent) == sent


def test_a_wrong_blob_makes_the_helper_publish_nothing() -> None:
    node, chain = HelperNode(), Chain()
    tower = helper(node, chain)
    c, other = commitment(1), commitment(2)
    _, sealed_for_other = seal(other.txid, penalty_of(other).serialize())
    assert tower.keep(CLIENT, store_msg(c, blob=sealed_for_other)).accepted == 1  # sealed: it cannot tell
    # and a penalty, sealed right, that spends something else than the commitment
    unrelated = penalty_of(other)
    loc, blob = seal(other.txid, Tx(2, (TxIn(OutPoint.from_hex("ee" * 32, 0), b""),), unrelated.outputs).serialize())
    assert tower.keep(OTHER, TowerStore(CHANNEL, session_of(loc), loc, blob)).accepted == 1
    chain.views[5] = view(5, c, other)
    tower.on_block(5)
    assert node.sent == [] and tower.info()["penalties"] == []


def test_what_a_client_may_make_a_helper_keep_is_bounded() -> None:
    node, chain = HelperNode(), Chain()
    tower = helper(node, chain, TowerLimits(blobs_per_client=3, blob_bytes=300, clients=1))
    for n in range(3):
        assert tower.keep(CLIENT, store_msg(commitment(n))).accepted == 1
    full = tower.keep(CLIENT, store_msg(commitment(9)))
    assert full.accepted == 0 and "3 blobs" in str(full.reason) and full.stored == 3
    assert tower.keep(OTHER, store_msg(commitment(10))).accepted == 0  # one client only
    big = store_msg(commitment(11), blob=bytes(301))
    assert tower.keep(CLIENT, big).accepted == 0
    c = commitment(0)
    changed = tower.keep(CLIENT, store_msg(c, blob=seal(c.txid, b"other")[1]))
    assert changed.accepted == 0 and "another blob" in str(changed.reason)
    assert len([k for k in node.data if k[1] == "tower"]) == 3
    assert helper(node, chain, TowerLimits(blobs_per_client=3)).keep(CLIENT, store_msg(commitment(12))).accepted == 0


class ClientNode(HelperNode):
    def datastore_del(self, key: list[str]) -> None:
        super().datastore_del(key)


def test_a_client_keeps_each_penalty_until_its_helper_answers() -> None:
    node = ClientNode()
    sent: list[tuple[str, Message]] = []
    online = {"h1": False}

    def send(peer: str, msg: Message) -> None:
        if not online[peer]:
            raise OSError("not connected")
        sent.append((peer, msg))
    client = TowerClient(node, send, ("h1",), lambda *a, **k: None)  # type: ignore[arg-type]
    c = commitment(1)
    client.on_revocation(c.txid, penalty_of(c).serialize().hex(), CHANNEL.hex(), 7)
    client._worker.submit(lambda: None).result()
    assert sent == [] and client.pending() == 1  # the helper is away: kept
    stored = json.loads(node.data[(*OUT_ROOT, "h1", locator(c.txid).hex())][0])
    assert stored["commitnum"] == 7 and unseal(c.txid, bytes.fromhex(stored["blob"])) == penalty_of(c).serialize()
    online["h1"] = True
    client.on_connect("h1")
    client._worker.submit(lambda: None).result()
    [(peer, msg)] = sent
    assert isinstance(msg, TowerStore) and msg.locator == locator(c.txid) and msg.factory_id == CHANNEL
    # what the helper does with it, and its answer
    tower = helper(HelperNode(), Chain())
    answer = tower.keep("client", msg)
    assert client.on_message("stranger", answer) and client.pending() == 1  # only a helper's answer counts
    assert client.on_message("h1", answer)
    client._worker.submit(lambda: None).result()
    assert client.pending() == 0 and client.info()["helpers"][0]["acknowledged_blobs"] == 1
    # a refusal is logged and not retried
    c2 = commitment(2)
    client.on_revocation(c2.txid, penalty_of(c2).serialize().hex(), CHANNEL.hex(), 8)
    client._worker.submit(lambda: None).result()
    msg2 = sent[-1][1]
    assert isinstance(msg2, TowerStore)
    client.on_message("h1", TowerAnswer(msg2.factory_id, msg2.session_id, 0, 1, "full"))
    client._worker.submit(lambda: None).result()
    assert client.pending() == 0 and client.info()["helpers"][0]["last_refusal"] == "full"
    assert not client.on_message("h1", TowerStore(CHANNEL, bytes(32), bytes(16), b""))  # not an answer


@pytest.mark.parametrize("helpers", [(), ("h1",)])
def test_no_helper_no_work(helpers: tuple[str, ...]) -> None:
    node = ClientNode()
    client = TowerClient(node, lambda p, m: None, helpers, lambda *a, **k: None)  # type: ignore[arg-type]
    c = commitment(1)
    client.on_revocation(c.txid, penalty_of(c).serialize().hex(), CHANNEL.hex(), 1)
    client._worker.submit(lambda: None).result()
    assert (client.pending() == 1) == bool(helpers)
