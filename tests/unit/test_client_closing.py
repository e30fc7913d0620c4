"""The client's side of a rollover invitation and a close proposal (client/closing.py), against fakes:
it freezes first, accepts only the exact carry-over of a quiet channel, and unfreezes when it refuses."""

from __future__ import annotations

from typing import Any, Optional

from superscalar.client.closing import STALE_FREEZE_BLOCKS, ClientCloser, next_channel_missing
from superscalar.protocol.rounds import Kind
from superscalar.protocol.wire import Abort, Invite, Propose
from superscalar.cln.store import Store

from ..fakes import ChannelNode, Outbox, listed_channel
from .test_htlc_index import LSP_ID, client_record, outpoint

A, B = "aa" * 32, "bb" * 32
BALANCE_MSAT = 54_000_446


class Node(ChannelNode):
    def secret(self, label: str) -> bytes:
        return bytes(31) + b"\x01"


def setup(htlcs: Optional[list[dict[str, Any]]] = None) -> tuple[Node, Store, ClientCloser, list[tuple[str, Any]]]:
    node = Node(100)
    store = Store(node)  # type: ignore[arg-type]
    journal: list[tuple[str, Any]] = []
    ch = listed_channel(1, LSP_ID, outpoint(1), htlcs=htlcs)
    ch.update(to_us_msat=BALANCE_MSAT, total_msat=250_000_000)
    node.channels = [ch]
    rec = client_record(outpoint(1))
    rec["capacity_sat"] = 250_000
    store.put(A, "factory", rec)
    return node, store, ClientCloser(node, store, Outbox(journal), lambda _: None), journal  # type: ignore[arg-type]


def invite(push: int = BALANCE_MSAT, capacity: int = 250_000, of: str = A) -> Invite:
    return Invite(bytes.fromhex(B), b"\x01" * 32, b"{}", push // 1000, capacity - push // 1000, bytes.fromhex(of), push)


def test_rollover_accepted_only_for_the_exact_balance_of_a_quiet_channel() -> None:
    node, store, closer, _ = setup()
    assert closer.accept_rollover(LSP_ID, invite()) is None
    rec = store.get(A, "factory")
    assert rec is not None and rec["frozen"]["reason"] == "rollover" and rec["frozen"]["next_factory"] == B
    # A second invitation while frozen is refused.
    assert closer.accept_rollover(LSP_ID, invite()) == "that factory is already being closed"
    for bad, why in ((invite(push=BALANCE_MSAT + 1), "not pushed our balance"),
                     (invite(capacity=249_999), "capacity"),
                     (invite(of="cc" * 32), "not in")):
        node, store, closer, _ = setup()
        reason = closer.accept_rollover(LSP_ID, bad)
        assert reason is not None and why in reason
        assert not (store.get(A, "factory") or {}).get("frozen")  # unfrozen again
    node, store, closer, _ = setup()  # a bigger channel is more inbound (for our JIT balance): accepted
    assert closer.accept_rollover(LSP_ID, invite(capacity=250_001)) is None
    node, store, closer, _ = setup()
    assert closer.accept_rollover("02" + "dd" * 32, invite()) == "a rollover of a factory we are not in with this LSP"
    node, store, closer, _ = setup(htlcs=[{"id": 0}])
    assert closer.accept_rollover(LSP_ID, invite()) == "our channel in that factory has pending HTLCs"
    assert not (store.get(A, "factory") or {}).get("frozen")


def test_close_proposal_with_a_pending_htlc_is_refused_and_unfrozen() -> None:
    node, store, closer, journal = setup(htlcs=[{"id": 3}])
    proposal = Propose(bytes.fromhex(A), b"\x02" * 32, 0, b"{}", bytes(32), 0, 1, (), (), (), b"", int(Kind.CLOSE))
    assert closer.on_message(LSP_ID, proposal)
    [(kind, (peer, msg))] = journal
    assert kind == "send" and peer == LSP_ID and isinstance(msg, Abort) and "pending HTLCs" in msg.reason
    assert not (store.get(A, "factory") or {}).get("frozen")
    # A proposal from another node than the factory's LSP is ignored: nothing frozen, nothing sent.
    assert closer.on_message("02" + "dd" * 32, proposal) and len(journal) == 1


def test_freeze_given_up_after_an_lsp_goes_quiet_or_a_restart() -> None:
    node, store, closer, _ = setup()
    closer.on_block(100)  # the first block: nothing frozen yet
    assert closer.accept_rollover(LSP_ID, invite()) is None
    closer.on_block(100 + STALE_FREEZE_BLOCKS - 1)
    assert (store.get(A, "factory") or {}).get("frozen")
    closer.on_block(100 + STALE_FREEZE_BLOCKS)
    assert not (store.get(A, "factory") or {}).get("frozen")
    # A freeze found at start (left by a process that died) is given up at the first block...
    assert closer.accept_rollover(LSP_ID, invite()) is None
    restarted = ClientCloser(node, store, Outbox([]), lambda _: None)  # type: ignore[arg-type]
    restarted.on_block(101)
    assert not (store.get(A, "factory") or {}).get("frozen")
    # ...but never once this node gave its partial signature: the close may exist.
    rec = store.get(A, "factory")
    assert rec is not None
    rec["frozen"] = {"reason": "rollover", "since_height": 100, "next_factory": B, "partial_signed": True,
                     "close_txid": "ee" * 32}
    store.put(A, "factory", rec)
    ClientCloser(node, store, Outbox([]), lambda _: None).on_block(200)  # type: ignore[arg-type]
    assert (store.get(A, "factory") or {}).get("frozen")


def test_lsp_gives_up_and_unfreezes_when_htlcs_stay_pending() -> None:
    import pytest

    from superscalar.lsp.closing import CloseError, Closer
    from superscalar.lsp.creation import Lsp

    from .test_htlc_index import CLIENT_ID, lsp_record

    node = Node(100)
    store = Store(node)  # type: ignore[arg-type]
    ch = listed_channel(1, CLIENT_ID, outpoint(1), htlcs=[{"id": 7}])
    ch.update(peer_connected=True, to_us_msat=1, total_msat=2)
    node.channels = [ch]
    store.put(A, "factory", lsp_record([(CLIENT_ID, f"{1:064x}", outpoint(1))]))
    journal: list[tuple[str, Any]] = []
    lsp = Lsp(node, store, Outbox(journal), lambda n, h: None, lambda _: None, timeout=0.3)  # type: ignore[arg-type]
    closer = Closer(lsp, lambda _: None, timeout=0.3)
    with pytest.raises(CloseError, match="HTLCs still pending"):
        closer.close(A)
    assert not (store.get(A, "factory") or {}).get("frozen")
    assert [(k, p) for k, (p, m) in journal if isinstance(m, Abort)] == [("send", CLIENT_ID)]
    # A channel that is not connected: refused before anything is frozen or sent.
    ch.update(htlcs=[], peer_connected=False)
    with pytest.raises(CloseError, match="not connected"):
        closer.close(A)
    assert len(journal) == 1 and not (store.get(A, "factory") or {}).get("frozen")


def test_a_rolling_client_needs_its_next_channel_with_exactly_its_balance() -> None:
    nxt = {"leaf_outpoint": outpoint(7), "push_msat": BALANCE_MSAT}
    mine = {**listed_channel(7, LSP_ID, outpoint(7)), "to_us_msat": BALANCE_MSAT}
    other = {**listed_channel(8, LSP_ID, outpoint(8)), "to_us_msat": BALANCE_MSAT}
    assert next_channel_missing(nxt, [other, mine]) is None
    assert next_channel_missing(nxt, [{**mine, "state": "CHANNELD_AWAITING_LOCKIN"}]) is None  # before channel_ready
    assert next_channel_missing(nxt, [other]) == "our channel in the next factory was not completed"
    assert next_channel_missing(nxt, [{**mine, "state": "CLOSINGD_COMPLETE"}]) is not None
    assert next_channel_missing(nxt, [mine, mine]) is not None  # two channels claim one leaf: not ours to trust
    assert "holds" in str(next_channel_missing(nxt, [{**mine, "to_us_msat": BALANCE_MSAT - 1}]))


def test_exit_once_a_signed_close_stays_unfinished_too_long() -> None:
    """Frozen after our partial signature of a close nobody completed (a client withheld its own, or
    the LSP went quiet): no unfreeze (the close may exist), but our own exit after the bound, once."""
    node, store, _, _ = setup()
    exits: list[str] = []
    rec = store.get(A, "factory")
    assert rec is not None
    rec["frozen"] = {"reason": "close", "since_height": 95, "next_factory": None, "partial_signed": True,
                     "partial_signed_height": 100, "close_txid": "ee" * 32}
    store.put(A, "factory", rec)
    closer = ClientCloser(node, store, Outbox([]), lambda *a, **k: None,  # type: ignore[arg-type]
                          max_close_wait_blocks=6, start_exit=exits.append)
    closer.on_block(105)
    assert exits == [] and (store.get(A, "factory") or {}).get("frozen")
    closer.on_block(106)
    assert exits == [A]
    closer.on_block(107)
    restarted = ClientCloser(node, store, Outbox([]), lambda *a, **k: None,  # type: ignore[arg-type]
                             max_close_wait_blocks=6, start_exit=exits.append)
    restarted.on_block(108)
    assert exits == [A]  # started once, and recorded: a restart does not start it again
    assert (store.get(A, "factory") or {})["frozen"]["exit_started_height"] == 106


def test_close_proposal_is_refused_once_we_hold_the_close() -> None:
    """Once we hold the fully signed close, nothing more is signed for it. (Before, with only our partial
    signature given, the Participant signs the same close again and refuses any other:
    tests/unit/factory/test_spends.py.)"""
    node, store, closer, journal = setup()
    rec = store.get(A, "factory")
    assert rec is not None
    rec["frozen"] = {"reason": "close", "since_height": 100, "next_factory": None, "partial_signed": True,
                     "partial_signed_height": 100, "close_txid": "ee" * 32}
    rec["close"] = {"txid": "ee" * 32, "status": "signed"}
    store.put(A, "factory", rec)
    proposal = Propose(bytes.fromhex(A), b"\x02" * 32, 0, b"{}", bytes(32), 0, 1, (), (), (), b"", int(Kind.CLOSE))
    closer.on_message(LSP_ID, proposal)
    [(_, (_, msg))] = journal
    assert isinstance(msg, Abort) and "already hold the signed close" in msg.reason
