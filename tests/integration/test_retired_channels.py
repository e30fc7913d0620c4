"""Retiring channels whose funding (leaf) transaction will never exist, on stock Core Lightning.

After a cooperative close or a rollover, a factory's leaf channels spend tree outputs that will never
be on chain. These tests measure what each way of closing such a channel leaves behind on both sides
(channel state, rebroadcast attempts per block, whether lightningd ever forgets it), and print the
figures; docs/retiring-channels.md records them. Leaves are made impossible with
`superscalar-dev-fail-at=lsp-never-broadcast` (the factory's funding transaction never goes out, so
every leaf spends a missing output, exactly as after a cooperative close), and the clients' funding
timeout is raised so their plugins do not close the channels themselves.

Behaviour this depends on (lightningd v26.06.6): `drop_to_chain` deletes a channel at once only when
its funding is withheld (lightningd/peer_control.c); otherwise a closed channel's closing or commitment
transaction joins `outgoing_txs` and `rebroadcast_txs` (lightningd/chaintopology.c) sends it to
bitcoind on every block and every 30-60 s, logging "Expected error broadcasting tx" at debug level.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from pyln.testing.utils import sync_blockheight, wait_for

from superscalar.chain.forget import ARCHIVE_AFTER_BLOCKS
from superscalar.chain.retire import Retired, close_channels
from superscalar.cln.node import ClnNode, msat

from .test_factory_plugin import pay

pytestmark = pytest.mark.lightningd

REBROADCAST = "Expected error broadcasting tx"
ZEROCONF = Path(__file__).resolve().parent / "zeroconf_plugin.py"
CLOSING = {"CHANNELD_SHUTTING_DOWN", "CLOSINGD_SIGEXCHANGE", "CLOSINGD_COMPLETE", "AWAITING_UNILATERAL",
           "FUNDING_SPEND_SEEN", "ONCHAIN"}


def factory_network(node_factory: Any, plugin_path: Path, n: int) -> tuple[Any, list[Any]]:
    common = {"plugin": str(plugin_path), "superscalar-profile": "regtest"}
    lsp = node_factory.get_node(options={**common, "superscalar-lsp": "true",
                                         "superscalar-dev-fail-at": "lsp-never-broadcast"}, may_reconnect=True)
    clients = node_factory.get_nodes(n, opts={"may_reconnect": True, **common, "superscalar-join": lsp.info["id"],
                                              "superscalar-client-funding-timeout-blocks": 100_000})
    for c in clients:
        c.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    lsp.fundwallet(10_000_000)
    return lsp, clients


def states(node: Any, peer: Any) -> list[str]:
    return [c["state"] for c in node.rpc.listpeerchannels(peer.info["id"])["channels"]]


def closed(node: Any, peer: Any) -> list[dict[str, Any]]:
    return [c for c in node.rpc.listclosedchannels()["closedchannels"] if c.get("peer_id") == peer.info["id"]]


def rebroadcasts(node: Any, since: int) -> tuple[int, int]:
    """(attempts, distinct transactions) rebroadcast by `node` in its log lines from `since` on."""
    node.daemon.logs_catchup()
    lines = [line for line in node.daemon.logs[since:] if REBROADCAST in line]
    return len(lines), len({line.split(REBROADCAST)[1].split(":")[0] for line in lines})


def per_block(bitcoind: Any, nodes: list[Any], blocks: int = 3) -> list[list[tuple[int, int]]]:
    """Mine `blocks` blocks one at a time; for each, every node's (attempts, distinct txs) rebroadcast
    in the two seconds after it saw the block."""
    out = []
    for _ in range(blocks):
        for n in nodes:
            n.daemon.logs_catchup()
        marks = [len(n.daemon.logs) for n in nodes]
        bitcoind.generate_block(1)
        sync_blockheight(bitcoind, nodes)
        time.sleep(2)  # the block's sendrawtransaction answers come back within a moment
        out.append([rebroadcasts(n, m) for n, m in zip(nodes, marks)])
    return out


def attempts_on_block(figures: list[list[tuple[int, int]]], i: int) -> int:
    """The fewest attempts node i made on one block (a 30-60 s timer round can fall into any block)."""
    return min(f[i][0] for f in figures)


def test_factory_channels_closed_three_ways(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    lsp, clients = factory_network(node_factory, plugin_path, 4)
    spec = [{"id": c.info["id"], "balance_sat": 50_000, "inbound_sat": 200_000} for c in clients]
    created = lsp.rpc.call("superscalar-create", {"clients": spec})
    assert bitcoind.rpc.getrawmempool() == []  # the funding never goes out: no leaf can ever exist
    for c in clients:
        wait_for(lambda: states(c, lsp) == ["CHANNELD_NORMAL"] and states(lsp, c) == ["CHANNELD_NORMAL"])
    # Both sides have balance; payments in both directions move it.
    for i, c in enumerate(clients):
        pay(c, lsp, 3_000, f"out-{i}")
        pay(lsp, c, 1_000, f"in-{i}")
    for c in clients:
        wait_for(lambda: not lsp.rpc.listpeerchannels(c.info["id"])["channels"][0]["htlcs"])
        assert msat(lsp.rpc.listpeerchannels(c.info["id"])["channels"][0]["to_us_msat"]) == 202_000_000
    print(f"factory {created['factory_id']}: 4 leaf channels on a funding never broadcast, balances 48k/202k sat")

    nodes = [lsp, *clients]
    baseline = per_block(bitcoind, nodes, 2)
    print("no channel retired, rebroadcasts per block (lsp, c0..c3):", baseline)
    assert all(attempts_on_block(baseline, i) == 0 for i in range(len(nodes)))

    # (a) LSP `close` while the client is connected: a mutual close, negotiated.
    a = clients[0]
    cid_a = lsp.rpc.listpeerchannels(a.info["id"])["channels"][0]["channel_id"]
    res = lsp.rpc.close(cid_a)
    print("(a) lsp close, client connected:", res["type"], "txids", res.get("txids"))
    assert res["type"] == "mutual"
    wait_for(lambda: states(lsp, a) == ["CLOSINGD_COMPLETE"] and states(a, lsp) == ["CLOSINGD_COMPLETE"])
    one = per_block(bitcoind, nodes, 3)
    print("(a) 1 retired: rebroadcasts per block (lsp, c0..c3):", one)
    assert attempts_on_block(one, 0) == 1 and attempts_on_block(one, 1) == 1

    # (b) LSP `close` with unilateraltimeout while the client is offline, then the client comes back.
    b = clients[1]
    cid_b = lsp.rpc.listpeerchannels(b.info["id"])["channels"][0]["channel_id"]
    b.stop()
    res = lsp.rpc.close(cid_b, unilateraltimeout=1)
    print("(b) lsp close, client offline:", res["type"], "txids", res.get("txids"))
    assert res["type"] == "unilateral"
    wait_for(lambda: states(lsp, b) == ["AWAITING_UNILATERAL"])
    b.start()
    print("(b) client back, before reconnecting:", states(b, lsp))
    b.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    wait_for(lambda: states(b, lsp) != ["CHANNELD_NORMAL"])
    print("(b) after reconnecting: lsp", states(lsp, b), "client", states(b, lsp))

    # (c) client-initiated `close` while connected.
    c = clients[2]
    res = c.rpc.close(c.rpc.listpeerchannels(lsp.info["id"])["channels"][0]["channel_id"])
    print("(c) client close, connected:", res["type"], "txids", res.get("txids"))
    wait_for(lambda: states(lsp, c) == ["CLOSINGD_COMPLETE"] and states(c, lsp) == ["CLOSINGD_COMPLETE"])

    three = per_block(bitcoind, nodes, 3)
    print("3 retired: rebroadcasts per block (lsp, c0..c3):", three)
    for who, node in (("lsp", lsp), *((f"c{i}", n) for i, n in enumerate(clients))):
        print(f"  {who}: channels {[ch['state'] for ch in node.rpc.listpeerchannels()['channels']]}, "
              f"closed records {len(node.rpc.listclosedchannels()['closedchannels'])}")
    # lightningd's per-block work grows with the number of retired channels: one attempt each.
    assert attempts_on_block(three, 0) == 3
    assert [attempts_on_block(three, i) for i in (1, 2, 3, 4)] == [1, 1, 1, 0]

    # Nothing is forgotten: not after more blocks, not after a restart of every node.
    bitcoind.generate_block(20)
    for n in nodes:
        n.restart()
    for n in clients:
        n.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    sync_blockheight(bitcoind, nodes)
    after = per_block(bitcoind, nodes, 2)
    print("after 23 more blocks and a restart: rebroadcasts per block:", after)
    retired_states = [ch["state"] for ch in lsp.rpc.listpeerchannels()["channels"] if ch["state"] != "CHANNELD_NORMAL"]
    print("lsp retired channels still listed:", retired_states, "closed records:", len(closed(lsp, a) + closed(lsp, b) + closed(lsp, c)))
    assert len(retired_states) == 3 and all(s in CLOSING for s in retired_states)
    assert attempts_on_block(after, 0) == 3
    assert states(lsp, clients[3]) == ["CHANNELD_NORMAL"]
    assert not any(n.daemon.is_in_log(r"\*\*BROKEN\*\*") for n in nodes)


def zeroconf_pair(node_factory: Any, bitcoind: Any) -> tuple[Any, Any]:
    lsp = node_factory.get_node(may_reconnect=True)
    client = node_factory.get_node(options={"plugin": str(ZEROCONF)}, may_reconnect=True)
    lsp.rpc.connect(client.info["id"], "localhost", client.port)
    lsp.fundwallet(5_000_000)
    return lsp, client


def withheld_channel(lsp: Any, client: Any, amount_sat: int = 250_000) -> str:
    """A zero-conf channel completed with `withhold`: its funding PSBT is valid but never sent."""
    start = lsp.rpc.call("fundchannel_start", {"id": client.info["id"], "amount": amount_sat, "announce": False,
                                               "push_msat": 50_000_000, "mindepth": 0})
    psbt = lsp.rpc.call("fundpsbt", {"satoshi": 0, "feerate": "normal", "startweight": 0, "reserve": 6,
                                     "excess_as_change": True})["psbt"]
    psbt = lsp.rpc.call("addpsbtoutput", {"satoshi": amount_sat, "initialpsbt": psbt,
                                          "destination": start["funding_address"]})["psbt"]
    done = lsp.rpc.call("fundchannel_complete", {"id": client.info["id"], "psbt": psbt, "withhold": True})
    assert done["commitments_secured"]
    wait_for(lambda: "CHANNELD_NORMAL" in states(lsp, client) and "CHANNELD_NORMAL" in states(client, lsp))
    return str(done["channel_id"])


def test_withheld_channel_closes_without_a_trace(node_factory: Any, bitcoind: Any) -> None:
    lsp, client = zeroconf_pair(node_factory, bitcoind)
    nodes = [lsp, client]
    # (d) connected: the LSP deletes its channel at once; the client signs a mutual close and keeps it.
    cid = withheld_channel(lsp, client)
    pay(client, lsp, 3_000, "d-out")
    res = lsp.rpc.close(cid)
    print("(d) withheld, connected: lsp close ->", res)
    assert res["txids"] == [] and res["type"] == "mutual"
    assert states(lsp, client) == []
    [rec] = closed(lsp, client)
    assert rec["funding_withheld"] is True
    wait_for(lambda: states(client, lsp) == ["CLOSINGD_COMPLETE"])
    d1 = per_block(bitcoind, nodes, 3)
    print("(d) connected: rebroadcasts per block (lsp, client):", d1, "client keeps", states(client, lsp))
    assert attempts_on_block(d1, 0) == 0 and attempts_on_block(d1, 1) == 1

    # (d') client offline: the LSP deletes its channel; what does the client do when it comes back?
    cid2 = withheld_channel(lsp, client)
    client.stop()
    res = lsp.rpc.close(cid2, unilateraltimeout=1)
    print("(d') withheld, client offline: lsp close ->", res)
    assert res["txids"] == []
    client.start()
    print("(d') client back, before reconnecting:", states(client, lsp))
    lsp.rpc.connect(client.info["id"], "localhost", client.port)
    wait_for(lambda: "CHANNELD_NORMAL" not in states(client, lsp))
    print("(d') after reconnecting: lsp", states(lsp, client), "client", states(client, lsp))
    d2 = per_block(bitcoind, nodes, 3)
    print("(d') rebroadcasts per block (lsp, client):", d2)
    assert states(lsp, client) == [] and len(closed(lsp, client)) == 2
    assert attempts_on_block(d2, 0) == 0 and attempts_on_block(d2, 1) == 2
    # The LSP's inputs were unreserved by the withheld close: its wallet lost nothing.
    assert lsp.rpc.call("listfunds")["outputs"] and all(not o["reserved"] for o in lsp.rpc.listfunds()["outputs"])
    assert not any(n.daemon.is_in_log(r"\*\*BROKEN\*\*") for n in nodes)


def rebroadcast_span_ms(node: Any, since: int) -> int:
    """Milliseconds from lightningd's "Adding block" line to its last rebroadcast failure after it."""
    node.daemon.logs_catchup()
    lines = node.daemon.logs[since:]
    stamps = [(line.split()[1], REBROADCAST in line, "Adding block" in line) for line in lines if len(line.split()) > 1]
    start = next((t for t, _, added in stamps if added), None)
    end = max((t for t, sent, _ in stamps if sent), default=None)
    if start is None or end is None:
        return 0
    from datetime import datetime
    parse = lambda t: datetime.strptime(t, "%Y-%m-%dT%H:%M:%S.%fZ")  # noqa: E731
    return int((parse(end) - parse(start)).total_seconds() * 1000)


def test_ten_rollovers_of_four_clients_cost(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    """Ten rollovers of a 4-client factory, each retiring the old factory's 4 channels with
    `close_channels`: what the LSP's lightningd keeps, and its rebroadcast work per block."""
    lsp, clients = factory_network(node_factory, plugin_path, 4)
    for _ in range(10):
        lsp.fundwallet(2_000_000)  # each never-broadcast funding keeps its inputs reserved
    node = ClnNode(lsp.rpc, "regtest")
    spec = [{"id": c.info["id"], "balance_sat": 50_000, "inbound_sat": 200_000} for c in clients]
    figures: list[tuple[int, int, int]] = []  # (retired channels, LSP attempts on one block, ms)
    live: list[str] = []
    for rollover in range(11):
        created = lsp.rpc.call("superscalar-create", {"clients": spec})
        outpoints = {ch["funding_outpoint"] for ch in created["channels"]}
        wait_for(lambda: len([ch for ch in lsp.rpc.listpeerchannels()["channels"] if ch["state"] == "CHANNELD_NORMAL"
                              and f"{ch['funding_txid']}:{ch['funding_outnum']}" in outpoints]) == 4)
        new = [ch["channel_id"] for ch in lsp.rpc.listpeerchannels()["channels"]
               if f"{ch['funding_txid']}:{ch['funding_outnum']}" in outpoints]
        pay(clients[rollover % 4], lsp, 2_000, f"r{rollover}")  # the new factory carries payments
        if live:  # the old factory was closed cooperatively: its channels retire
            got = close_channels(node, live)
            assert [r.outcome for r in got] == ["mutual"] * 4, got
            assert all(isinstance(r, Retired) and r.txid for r in got)
            assert close_channels(node, live) == [Retired(cid, "already") for cid in live]  # idempotent
        live = new
        retired = 4 * rollover
        lsp.daemon.logs_catchup()
        mark = len(lsp.daemon.logs)
        [[(attempts, _), *_]] = per_block(bitcoind, [lsp, *clients], 1)
        figures.append((retired, attempts, rebroadcast_span_ms(lsp, mark)))
    print("retired channels, LSP rebroadcast attempts on one block, ms from block to last attempt:")
    for f in figures:
        print(f"  {f[0]:3d} {f[1]:3d} {f[2]:5d}")
    chans = lsp.rpc.listpeerchannels()["channels"]
    kept = sorted({ch["state"] for ch in chans if ch["channel_id"] not in live})
    print(f"LSP listpeerchannels: {len(chans)} channels, {len(live)} live, others {kept}; "
          f"listclosedchannels: {len(lsp.rpc.listclosedchannels()['closedchannels'])}")
    for c in clients:
        print(f"  client {c.info['id'][:8]}: {[ch['state'] for ch in c.rpc.listpeerchannels()['channels']].count('CLOSINGD_COMPLETE')}"
              " CLOSINGD_COMPLETE channels")
    # The bound does not hold on stock lightningd: the 40 retired channels stay listed
    # (CLOSINGD_COMPLETE, not CLOSED), and each costs one sendrawtransaction per block.
    assert len(chans) == 44 and kept == ["CLOSINGD_COMPLETE"]
    assert all(attempts >= retired for retired, attempts, _ in figures)
    assert [a for r, a, _ in figures][-1] >= 40
    assert not any(n.daemon.is_in_log(r"\*\*BROKEN\*\*") for n in [lsp, *clients])


def test_forget_retired_channels_after_a_close(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    """`superscalar-forget-retired` (lightningd with --developer, as pyln-testing runs it): once the
    close is confirmed and the channels retired, the LSP and the client that turned it on forget their
    channels (dev-forget-channel) and rebroadcast nothing for them; the client that did not keeps its
    retired channel and its rebroadcasts. A node without --developer refuses the option."""
    from .test_close_rollover import mine_until, record
    from .test_factory_plugin import create_factory

    common = {"plugin": str(plugin_path), "superscalar-profile": "regtest"}
    lsp = node_factory.get_node(options={**common, "superscalar-lsp": "true", "superscalar-forget-retired": "true"},
                                may_reconnect=True)
    forgetful = node_factory.get_node(options={**common, "superscalar-join": lsp.info["id"],
                                               "superscalar-forget-retired": "true"}, may_reconnect=True)
    keeper = node_factory.get_node(options={**common, "superscalar-join": lsp.info["id"]}, may_reconnect=True)
    clients = [forgetful, keeper]
    for c in clients:
        c.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    lsp.fundwallet(10_000_000)
    fid = create_factory(lsp, clients, bitcoind)["factory_id"]
    nodes = [lsp, *clients]
    out = lsp.rpc.call("superscalar-close", {"factory_id": fid})
    assert out["status"] == "broadcast"
    mine_until(bitcoind, nodes, lambda: all(record(n, fid)["close"]["status"] == "confirmed" for n in nodes))
    mine_until(bitcoind, nodes, lambda: all(record(n, fid)["close"].get("retired") for n in nodes))
    mine_until(bitcoind, nodes, lambda: lsp.rpc.listpeerchannels()["channels"] == []
               and forgetful.rpc.listpeerchannels()["channels"] == [])
    assert [c["state"] for c in keeper.rpc.listpeerchannels()["channels"]] == ["CLOSINGD_COMPLETE"]
    assert lsp.rpc.call("superscalar-getinfo")["channels_forgotten"] == 2
    assert forgetful.rpc.call("superscalar-getinfo")["channels_forgotten"] == 1
    assert keeper.rpc.call("superscalar-getinfo")["forget_retired"] is False
    assert all(record(n, fid)["channels_forgotten"] for n in (lsp, forgetful))
    figures = per_block(bitcoind, nodes, blocks=2)
    print("rebroadcast attempts per block (LSP, forgetful client, keeper):", [[a for a, _ in f] for f in figures])
    assert attempts_on_block(figures, 0) == 0 and attempts_on_block(figures, 1) == 0
    assert attempts_on_block(figures, 2) >= 1
    for n in (lsp, forgetful):
        n.restart()
        assert n.rpc.listpeerchannels()["channels"] == []  # gone from lightningd's database
    # ARCHIVE_AFTER_BLOCKS later the records of the factory are replaced by a summary on each forgetful
    # side (chain/forget.py); the keeper keeps them, as it keeps the channel
    bitcoind.generate_block(ARCHIVE_AFTER_BLOCKS)
    sync_blockheight(bitcoind, nodes)
    wait_for(lambda: all(n.rpc.call("superscalar-getinfo")["factories_archived"] == 1 for n in (lsp, forgetful)))
    for n in (lsp, forgetful):
        assert n.rpc.call("superscalar-getinfo")["factories"] == 0
        assert n.rpc.listdatastore(["superscalar", "factories"])["datastore"] == []
        [archive] = n.rpc.listdatastore(["superscalar", "docs", "archive"])["datastore"]
        [summary] = json.loads(archive["string"])["data"]["recent"]
        assert (summary["factory_id"], summary["funding_outpoint"]) == (fid, record(keeper, fid)["funding_outpoint"])
    info = keeper.rpc.call("superscalar-getinfo")
    assert (info["factories"], info["factories_archived"]) == (1, 0)

    plain = node_factory.get_node(options={**common, "superscalar-forget-retired": "true"}, start=False)
    plain.daemon.early_opts.remove("--developer")
    for dev in [k for k in plain.daemon.opts if k.startswith("dev-")]:
        del plain.daemon.opts[dev]
    plain.start()
    assert plain.daemon.is_in_log("superscalar-forget-retired=true is refused: lightningd is not running with --developer")
    assert plain.rpc.call("superscalar-getinfo")["forget_retired"] is False
    assert not any(n.daemon.is_in_log(r"\*\*BROKEN\*\*") for n in nodes)


def has_forgetchannel(node: Any) -> bool:
    try:
        node.rpc.call("help", {"command": "forgetchannel"})
        return True
    except Exception:
        return False


def test_upstream_forgetchannel_patch(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    """The reproducer for docs/upstream-forget-channel.md, run against a lightningd built with
    contrib/upstream/forgetchannel.patch (skipped on stock lightningd, which has no such command): leaf
    channels whose funding can never exist, closed mutually and unilaterally, are forgotten on both
    sides by `forgetchannel` with no --developer command, and rebroadcast nothing after; the command
    refuses a live channel, and a closing channel whose funding confirmed."""
    lsp, clients = factory_network(node_factory, plugin_path, 2)
    if not has_forgetchannel(lsp):
        pytest.skip("lightningd has no forgetchannel (build contrib/upstream/forgetchannel.patch to run this)")
    spec = [{"id": c.info["id"], "balance_sat": 50_000, "inbound_sat": 200_000} for c in clients]
    lsp.rpc.call("superscalar-create", {"clients": spec})
    assert bitcoind.rpc.getrawmempool() == []  # the funding never goes out: no leaf can ever exist
    for c in clients:
        wait_for(lambda: states(c, lsp) == ["CHANNELD_NORMAL"] and states(lsp, c) == ["CHANNELD_NORMAL"])
    a, b = clients
    cid_a = lsp.rpc.listpeerchannels(a.info["id"])["channels"][0]["channel_id"]
    cid_b = lsp.rpc.listpeerchannels(b.info["id"])["channels"][0]["channel_id"]
    with pytest.raises(Exception, match="only CLOSINGD_COMPLETE or AWAITING_UNILATERAL"):
        lsp.rpc.call("forgetchannel", {"id": a.info["id"], "channel_id": cid_a})  # live: refused
    assert lsp.rpc.close(cid_a)["type"] == "mutual"
    b.stop()
    assert lsp.rpc.close(cid_b, unilateraltimeout=1)["type"] == "unilateral"
    b.start()
    b.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    wait_for(lambda: states(lsp, a) == ["CLOSINGD_COMPLETE"] and states(a, lsp) == ["CLOSINGD_COMPLETE"])
    wait_for(lambda: states(lsp, b) == ["AWAITING_UNILATERAL"] and states(b, lsp) == ["AWAITING_UNILATERAL"])
    nodes = [lsp, a, b]
    before = per_block(bitcoind, nodes, 2)
    print("before forgetchannel, rebroadcasts per block (lsp, a, b):", [[x for x, _ in f] for f in before])
    assert attempts_on_block(before, 0) == 2
    for node, peer, cid in ((lsp, a, cid_a), (lsp, b, cid_b), (a, lsp, cid_a), (b, lsp, cid_b)):
        res = node.rpc.call("forgetchannel", {"id": peer.info["id"], "channel_id": cid})
        print("forgetchannel:", res)
    assert all(n.rpc.listpeerchannels()["channels"] == [] for n in nodes)
    after = per_block(bitcoind, nodes, 2)
    print("after forgetchannel, rebroadcasts per block (lsp, a, b):", [[x for x, _ in f] for f in after])
    assert all(attempts_on_block(after, i) == 0 for i in range(3))
    for n in nodes:
        n.restart()
        assert n.rpc.listpeerchannels()["channels"] == []

    # an ordinary channel closed mutually, its close not mined yet: its funding confirmed: refused
    x, y = node_factory.get_nodes(2)
    x.fundwallet(1_000_000)
    x.rpc.connect(y.info["id"], "localhost", y.port)
    x.rpc.fundchannel(y.info["id"], 200_000)
    bitcoind.generate_block(6)
    sync_blockheight(bitcoind, [x, y])
    wait_for(lambda: states(x, y) == ["CHANNELD_NORMAL"])
    cid = x.rpc.listpeerchannels(y.info["id"])["channels"][0]["channel_id"]
    x.rpc.close(cid)
    wait_for(lambda: states(x, y) == ["CLOSINGD_COMPLETE"])
    with pytest.raises(Exception, match="The funding transaction confirmed"):
        x.rpc.call("forgetchannel", {"id": y.info["id"], "channel_id": cid})
