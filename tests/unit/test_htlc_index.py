"""The HTLC index and the hook's check over it: the same verdicts as reading every record and listing
every channel, with no lightningd call for an HTLC on a channel the index knows; the LSP's bound on
short-headroom HTLCs from its clients; the per-block watch that starts an exit before an HTLC's deadline."""

from __future__ import annotations

from typing import Any, Optional

import pytest

from superscalar.cln.htlc_exposure import PendingHtlc, ShortHtlcExposure, ShortHtlcLimits
from superscalar.factory.params import regtest_params
from superscalar.cln.htlc_guard import HtlcGuard
from superscalar.cln.htlc_index import HtlcIndex, IndexUnreadable, PeerRefresh
from superscalar.chain.htlc_watch import HtlcWatch
from superscalar.cln.store import Store

from ..fakes import ChannelNode, listed_channel

LSP_ID = "02" + "aa" * 32
CLIENT_ID = "03" + "bb" * 32
PLAIN_PEER = "02" + "cc" * 32
HEIGHT = 100
EWT = 16
PARAMS = regtest_params(2, 50).serialize().decode()


def outpoint(n: int) -> str:
    return f"{n:064x}:0"


def client_record(leaf: str, funding: str = "confirmed", leaf_script: str = "verified") -> dict[str, Any]:
    return {"role": "client", "lsp": LSP_ID, "params": PARAMS, "client_index": 0, "pubkey": "03" + "22" * 32,
            "leaf_outpoint": leaf, "funding_outpoint": outpoint(900), "early_warning_blocks": EWT,
            "signed_path": ["00"], "path_prevouts": [[1, "00"]],
            "funding": {"status": funding}, "verified": {"leaf_script": {"status": leaf_script}}}


def lsp_record(channels: list[tuple[str, str, str]], stage: str = "funded") -> dict[str, Any]:
    """channels: (peer, channel id, leaf outpoint)"""
    return {"role": "lsp", "params": PARAMS, "stage": stage, "funding_outpoint": outpoint(901),
            "channels": [{"peer_id": p, "channel_id": cid, "funding_outpoint": op, "early_warning_blocks": EWT}
                         for p, cid, op in channels],
            "txs": [["path/0", "00", 1, "00"]], "paths": [["path/0"]] * len(channels)}


class Leaf:
    def __init__(self, verdict: Optional[bool] = True) -> None:
        self.verdict = verdict
        self.asked: list[str] = []

    def verify_leaf(self, fid: str, outpoint: Optional[str] = None) -> Optional[bool]:
        self.asked.append(fid)
        return self.verdict


def setup(limits: ShortHtlcLimits = ShortHtlcLimits()) -> tuple[ChannelNode, Store, HtlcIndex, HtlcGuard, Leaf]:
    node = ChannelNode(HEIGHT)
    store = Store(node)  # type: ignore[arg-type]
    index = HtlcIndex()
    store.listen(index.on_record)
    leaf = Leaf()
    return node, store, index, HtlcGuard(node, index, leaf, ShortHtlcExposure(limits)), leaf  # type: ignore[arg-type]


def htlc(scid: str, relative: int, out: Optional[str] = None, out_relative: int = 0, amount: int = 1_000_000,
         htlc_id: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    onion: dict[str, Any] = {}
    payment_hash = f"{htlc_id:064x}"
    if out is not None:
        onion = {"short_channel_id": out, "outgoing_cltv_value": HEIGHT + out_relative}
    return onion, {"short_channel_id": scid, "cltv_expiry": HEIGHT + relative, "cltv_expiry_relative": relative,
                   "amount_msat": amount, "id": htlc_id, "payment_hash": payment_hash}


def test_client_headroom_verification_and_backing_come_from_the_index() -> None:
    node, store, index, guard, leaf = setup()
    node.channels = [listed_channel(1, LSP_ID, outpoint(1)), listed_channel(2, LSP_ID, outpoint(2)),
                     listed_channel(3, LSP_ID, outpoint(3)), listed_channel(4, LSP_ID, outpoint(4), scid="4x1x0"),
                     listed_channel(5, PLAIN_PEER, outpoint(5))]
    store.put("f1", "factory", client_record(outpoint(1), leaf_script="unverified"))
    store.put("f2", "factory", client_record(outpoint(2), funding="unfunded"))
    index.load(store)
    index.set_channels(node.peer_channels())
    node.listings.clear()
    # Unverified leaf: checked before the HTLC comes in; cannot be verified yet → refused.
    leaf.verdict = None
    assert guard.failure(*htlc("1x0x1", EWT)) is not None and leaf.asked == ["f1"]
    # The client's check writes the record: the index follows, and no check is asked again.
    store.put("f1", "factory", client_record(outpoint(1)))
    assert guard.failure(*htlc("1x0x2", EWT)) is None and leaf.asked == ["f1"]
    # Headroom below the early-warning time: refused, payee-style failure.
    fail = guard.failure(*htlc("1x0x1", EWT - 1))
    assert fail is not None and fail[0].startswith("400f") and f"needs {EWT} blocks" in fail[1]
    # Unfunded factory, or a zero-conf channel from the LSP that is no leaf: unbacked.
    for name in ("2x0x1", "3x0x1"):
        fail = guard.failure(*htlc(name, 100))
        assert fail is not None and "not backed" in fail[1]
    # The LSP's channel with a real scid, and a plain peer's channel: no rule.
    assert guard.failure(*htlc("4x1x0", 1)) is None
    assert guard.failure(*htlc("5x0x1", 1)) is None
    # Nothing was asked of lightningd for HTLCs on channels the index knows.
    assert node.listings == []


def test_lsp_forwards_into_factory_channels_with_headroom_only_and_never_into_abandoned_ones() -> None:
    node, store, index, guard, _ = setup()
    cid = [f"{n:064x}" for n in range(10)]
    node.channels = [listed_channel(1, CLIENT_ID, outpoint(1)), listed_channel(2, CLIENT_ID, outpoint(2)),
                     listed_channel(3, PLAIN_PEER, outpoint(3), scid="3x1x0")]
    store.put("f1", "factory", lsp_record([(CLIENT_ID, cid[1], outpoint(1))]))
    store.put("f2", "factory", lsp_record([(CLIENT_ID, cid[2], outpoint(2))], stage="abandoned"))
    index.set_channels(node.peer_channels())
    node.listings.clear()
    fail = guard.failure(*htlc("3x1x0", 40, out="1x0x1", out_relative=EWT - 1))
    assert fail is not None and fail[0] == "2002" and "outgoing factory channel needs" in fail[1]
    assert guard.failure(*htlc("3x1x0", 40, out="1x0x1", out_relative=EWT)) is None
    fail = guard.failure(*htlc("3x1x0", 40, out="2x0x1", out_relative=100))
    assert fail is not None and fail[0] == "2002" and "not backed" in fail[1]
    # A record changing stage moves its channels at once.
    store.put("f1", "factory", lsp_record([(CLIENT_ID, cid[1], outpoint(1))], stage="funding-mismatch"))
    assert "not backed" in (guard.failure(*htlc("3x1x0", 40, out="1x0x1", out_relative=100)) or ("", ""))[1]
    assert node.listings == []


def test_unknown_short_channel_ids_refresh_at_most_once_per_block() -> None:
    node, store, index, guard, _ = setup()
    store.put("f1", "factory", client_record(outpoint(1)))
    index.set_channels(node.peer_channels())
    node.listings.clear()
    # A channel lightningd has but the index has not seen: that channel is asked for, and found.
    node.channels = [listed_channel(1, LSP_ID, outpoint(1)), listed_channel(2, LSP_ID, outpoint(2), scid="2x1x0")]
    assert guard.failure(*htlc("1x0x1", EWT - 1)) is not None
    assert node.listings == ["1x0x1"]
    assert index.lookup("1x0x2") is not None and index.lookup("2x1x0") is None  # that channel only
    # A name nobody has: asked once per block, then treated as no factory channel.
    for _ in range(3):
        assert guard.failure(*htlc("9x9x9", 1)) is None
    assert node.listings == ["1x0x1", "9x9x9"]
    later = htlc("9x9x9", 1)
    later[1]["cltv_expiry"] += 1  # the next block
    assert guard.failure(*later) is None
    assert node.listings == ["1x0x1", "9x9x9", "9x9x9"]


def test_an_unreadable_record_fails_every_lookup() -> None:
    node, store, index, guard, _ = setup()
    node.channels = [listed_channel(5, PLAIN_PEER, outpoint(5))]
    node.datastore_put(["superscalar", "factories", "ff", "factory"], '{"schema": 99, "data": {}}', None)
    index.load(store)
    index.set_channels(node.peer_channels())
    with pytest.raises(IndexUnreadable, match="ff"):
        guard.failure(*htlc("5x0x1", 100))
    # A record the index cannot make sense of, written through the store: the same.
    index2 = HtlcIndex()
    index2.on_record("f1", "factory", {"role": "client"})
    with pytest.raises(IndexUnreadable, match="malformed"):
        index2.lookup("5x0x1")
    index2.on_record("f1", "factory", client_record(outpoint(1)))
    assert index2.lookup("5x0x1") is None


def test_lsp_takes_short_htlcs_from_clients_within_its_bounds() -> None:
    other = "03" + "dd" * 32
    node, store, index, guard, _ = setup(ShortHtlcLimits(per_client_msat=3_000_000, total_msat=5_000_000))
    cids = [f"{n:064x}" for n in range(3)]
    node.channels = [listed_channel(1, CLIENT_ID, outpoint(1)), listed_channel(2, other, outpoint(2)),
                     listed_channel(9, PLAIN_PEER, outpoint(9), scid="9x1x0")]
    store.put("f1", "factory", lsp_record([(CLIENT_ID, cids[1], outpoint(1)), (other, cids[2], outpoint(2))]))
    index.set_channels(node.peer_channels())
    # A client pays a plain payee: 5 + 34 blocks, far below the early-warning time.
    short = EWT - 1
    assert guard.failure(*htlc("1x0x1", short, out="9x1x0", out_relative=5, htlc_id=0)) is None
    assert guard.failure(*htlc("1x0x1", short, out="9x1x0", out_relative=5, amount=2_000_000, htlc_id=1)) is None
    fail = guard.failure(*htlc("1x0x1", short, out="9x1x0", out_relative=5, htlc_id=2))
    assert fail is not None and fail[0] == "2002" and "per-client" in fail[1]
    # Another client has its own bound, but the total binds.
    assert guard.failure(*htlc("2x0x1", short, out="9x1x0", out_relative=5, amount=2_000_000, htlc_id=0)) is None
    fail = guard.failure(*htlc("2x0x1", short, out="9x1x0", out_relative=5, htlc_id=1))
    assert fail is not None and "total" in fail[1]
    # One resolves (forward_event): room again.
    guard.exposure.resolved(cids[1], f"{1:064x}")
    assert guard.exposure.pending_msat(CLIENT_ID) == 1_000_000
    assert guard.failure(*htlc("2x0x1", short, out="9x1x0", out_relative=5, htlc_id=1)) is None
    # HTLCs with the full headroom do not count.
    assert guard.failure(*htlc("1x0x1", EWT, out="9x1x0", out_relative=5, amount=10_000_000, htlc_id=7)) is None
    assert guard.exposure.pending_msat() == 4_000_000
    # A client's own node keeps the early-warning rule for what comes in.
    _, cstore, cindex, cguard, _ = setup()
    cstore.put("c1", "factory", client_record(outpoint(1)))
    cindex.set_channels([listed_channel(1, LSP_ID, outpoint(1))])
    assert cguard.failure(*htlc("1x0x1", EWT - 1)) is not None


def test_exposure_recount_replaces_the_running_sums() -> None:
    exposure = ShortHtlcExposure(ShortHtlcLimits(per_client_msat=10, total_msat=10))
    assert exposure.admit("a", ("c", 0), 4, HEIGHT) is None
    assert exposure.admit("a", ("c", 1), 4, HEIGHT + 1) is None
    # At HEIGHT + 1 lightningd lists HTLC 0 only (HTLC 1 came in after the listing): both still count.
    exposure.recount([PendingHtlc("a", ("c", 0), 4)], HEIGHT + 1)
    assert exposure.pending_msat("a") == 8
    assert exposure.admit("a", ("c", 0), 4, HEIGHT + 1) is None  # replayed: counted once
    assert exposure.pending_msat("a") == 8
    # Next block: nothing listed, so nothing is pending any more (resolved without a forward_event).
    exposure.recount([], HEIGHT + 2)
    assert exposure.pending_msat() == 0
    with pytest.raises(ValueError):
        ShortHtlcLimits(per_client_msat=-1)


class Started:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str], dict[str, Any]]] = []

    def start(self, fid: str, txs: list[list[Any]], channels: list[str], bump: int, timeout_height: Optional[int],
              htlc_expiry: Optional[int], known: dict[str, str], dw_step: Optional[int],
              reason: Optional[dict[str, Any]] = None, lstock_csv: Optional[int] = None) -> dict[str, Any]:
        assert reason is not None and htlc_expiry == reason["cltv_expiry"]
        self.calls.append((fid, channels, reason))
        return {}


class ClientPath:
    def exit_path(self, fid: str) -> tuple[list[list[Any]], list[str]]:
        return [["path/0", "00", 1, "00"]], [outpoint(1)]


def pending_htlc(n: int, direction: str, expiry: int, state: str = "RCVD_ADD_ACK_REVOCATION") -> dict[str, Any]:
    return {"id": n, "direction": direction, "expiry": expiry, "payment_hash": f"{n:064x}",
            "amount_msat": 5_000, "state": state}


def watch(node: ChannelNode, store: Store, index: HtlcIndex, allowance: int = 4) -> tuple[HtlcWatch, Started]:
    started = Started()
    exposure = ShortHtlcExposure()
    return HtlcWatch(node, store, index, ClientPath(), started, exposure, lambda *a, **k: None,  # type: ignore[arg-type]
                     allowance), started


def test_client_starts_its_exit_an_early_warning_time_and_allowance_before_an_htlc_expires() -> None:
    node, store, index, _, _ = setup()
    store.put("f1", "factory", client_record(outpoint(1)))
    expiry = HEIGHT + 40
    node.channels = [listed_channel(1, LSP_ID, outpoint(1), htlcs=[pending_htlc(0, "in", expiry, "SENT_REMOVE_HTLC")]),
                     listed_channel(5, PLAIN_PEER, outpoint(5), htlcs=[pending_htlc(1, "in", HEIGHT + 1)])]
    w, started = watch(node, store, index)
    exit_height = expiry - EWT - 4
    assert w.on_block(exit_height - 1) == [] and started.calls == []
    assert w.on_block(exit_height) == ["f1"]
    [(fid, channels, reason)] = started.calls
    assert fid == "f1" and channels == [outpoint(1)]
    assert reason["reason"] == f"htlc {0:064x} expires at {expiry}" and reason["exit_height"] == exit_height
    assert reason["early_warning_blocks"] == EWT and reason["allowance_blocks"] == 4
    # An outgoing HTLC of the client counts as well; an exit already under way is not started again.
    store.put("f1", "exit", {"status": "publishing", "channels": [outpoint(1)]})
    assert w.on_block(exit_height + 1) == []


def test_lsp_exits_for_htlcs_it_offered_and_incoming_ones_it_fulfilled() -> None:
    node, store, index, _, _ = setup()
    cid = f"{1:064x}"
    store.put("f1", "factory", lsp_record([(CLIENT_ID, cid, outpoint(1))]))
    expiry = HEIGHT + 40
    at = expiry - EWT - 4
    # Incoming, removed by us but not fulfilled (a failure), or not removed yet: no exit.
    node.channels = [listed_channel(1, CLIENT_ID, outpoint(1), htlcs=[
        pending_htlc(0, "in", expiry, "SENT_REMOVE_COMMIT"), pending_htlc(1, "in", expiry)])]
    w, started = watch(node, store, index)
    assert w.on_block(at) == [] and w.on_block(at + 1) == []
    # The same incoming HTLC once we know we fulfilled it.
    node.fulfilled.add(("1x0x1", 0))
    assert w.on_block(at + 2) == ["f1"]
    # An HTLC the LSP offered: it must be able to time it out.
    store2 = Store(ChannelNode(HEIGHT))  # type: ignore[arg-type]
    index2 = HtlcIndex()
    store2.listen(index2.on_record)
    store2.put("f1", "factory", lsp_record([(CLIENT_ID, cid, outpoint(1))]))
    node2 = store2.node
    node2.channels = [listed_channel(1, CLIENT_ID, outpoint(1), htlcs=[pending_htlc(3, "out", expiry)])]  # type: ignore[attr-defined]
    w2, started2 = watch(node2, store2, index2)  # type: ignore[arg-type]
    assert w2.on_block(at - 1) == [] and w2.on_block(at) == ["f1"]
    assert started2.calls[0][1] == [outpoint(1)]


def test_an_htlc_caught_mid_settlement_by_a_block_starts_no_exit() -> None:
    node, store, index, _, _ = setup()
    store.put("f1", "factory", client_record(outpoint(1)))
    # Accepted with less headroom than EWT + allowance: its exit height has passed already.
    node.channels = [listed_channel(1, LSP_ID, outpoint(1), htlcs=[pending_htlc(0, "in", HEIGHT + EWT, "SENT_REMOVE_HTLC")])]
    w, started = watch(node, store, index)
    assert w.on_block(HEIGHT) == []  # first seen at this block: being settled, most likely
    node.channels = [listed_channel(1, LSP_ID, outpoint(1))]
    assert w.on_block(HEIGHT + 1) == [] and started.calls == []
    # Still pending a block later: stuck, the exit starts.
    node.channels = [listed_channel(1, LSP_ID, outpoint(1), htlcs=[pending_htlc(1, "in", HEIGHT + EWT, "SENT_REMOVE_HTLC")])]
    assert w.on_block(HEIGHT + 2) == [] and w.on_block(HEIGHT + 3) == ["f1"]


def test_lsp_recounts_short_htlcs_pending_in_its_factory_channels_each_block() -> None:
    node, store, index, _, _ = setup()
    cid = f"{1:064x}"
    store.put("f1", "factory", lsp_record([(CLIENT_ID, cid, outpoint(1))]))
    node.channels = [listed_channel(1, CLIENT_ID, outpoint(1), htlcs=[
        pending_htlc(0, "in", HEIGHT + EWT - 1), pending_htlc(1, "in", HEIGHT + EWT + 50),
        pending_htlc(2, "out", HEIGHT + 2)])]
    w, _ = watch(node, store, index, allowance=0)
    w.on_block(HEIGHT)
    assert w.exposure.pending_msat(CLIENT_ID) == 5_000  # only the incoming one below the early-warning time


def test_an_older_listing_keeps_a_channel_an_htlc_lookup_added_since() -> None:
    node, store, index, guard, _ = setup()
    store.put("f1", "factory", client_record(outpoint(1)))
    taken = index.mark()
    old_listing = node.peer_channels()  # before the leaf channel existed
    node.channels = [listed_channel(1, LSP_ID, outpoint(1))]
    assert guard.lookup("1x0x1", HEIGHT) is not None  # an HTLC named it: asked for, added
    index.set_channels(old_listing, LSP_ID, taken)  # the older per-peer refresh lands after
    assert index.lookup("1x0x1") is not None and index.lookup("1x0x1").factory is not None
    index.set_channels([], LSP_ID, index.mark())  # a listing taken after it: the channel is gone
    assert index.lookup("1x0x1") is None


def test_peer_refresh_coalesces_marks_off_the_notification_thread() -> None:
    import threading

    index = HtlcIndex()
    asked: list[str] = []
    gate = threading.Event()
    listed = threading.Event()

    def list_peer(peer: str) -> list[dict[str, Any]]:
        asked.append(peer)
        listed.set()
        gate.wait(5)
        return [listed_channel(len(asked), peer, outpoint(len(asked)))]

    errors: list[Exception] = []
    refresh = PeerRefresh(index, list_peer, errors.append)
    refresh.mark(LSP_ID)  # returns at once: the listing runs in the refresh thread
    assert listed.wait(5)
    for _ in range(5):  # marked again while the first refresh is under way: one more refresh
        refresh.mark(LSP_ID)
    gate.set()
    for _ in range(500):
        if len(asked) == 2 and index.lookup("2x0x1") is not None:
            break
        threading.Event().wait(0.01)
    assert asked == [LSP_ID, LSP_ID] and errors == []
    assert index.lookup("2x0x1") is not None and index.lookup("1x0x1") is None  # the newer listing stands
