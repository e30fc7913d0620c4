"""A factory's whole life with the ladder on, on real lightningd and bitcoind (regtest profile): three
laddered factories alive at once; the first rolls over by itself when its dying period comes (four
clients carried to the msat, a fifth that asked to leave paid on chain in the same close); a client
that stays away from another factory is paid by that factory's distribution.

A cooperative close needs every client's signature (N-of-N), so an absent client and a rollover cannot
be in the same factory: the absent client is in the second factory here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pyln.testing.utils import sync_blockheight, wait_for

from superscalar.bitcoin.tx import Tx
from superscalar.factory.params import FactoryParams
from superscalar.cln.node import msat

from .test_close_rollover import no_broken, one_channel, pay_msat, record, settled, wallet_sat

pytestmark = pytest.mark.lightningd
INBOUND, BALANCE = 200_000, 20_000


def lsp_view(lsp: Any, fid: str) -> dict[str, Any]:
    return next(f for f in lsp.rpc.call("superscalar-list")["factories"] if f["factory_id"] == fid)


def ladder_round(lsp: Any, bitcoind: Any, nodes: list[Any], queue: list[Any]) -> str:
    """Queue `queue`, mine until the ladder starts their factory, confirm its funding; its id."""
    known = set(lsp.rpc.call("superscalar-ladder")["started"])
    for c in queue:
        lsp.rpc.call("superscalar-ladder-add", {"id": c.info["id"], "inbound_sat": INBOUND, "balance_sat": BALANCE})
    while len(lsp.rpc.call("superscalar-ladder")["started"]) == len(known):
        bitcoind.generate_block(1)
        sync_blockheight(bitcoind, nodes)
    [fid] = set(lsp.rpc.call("superscalar-ladder")["started"]) - known
    txid, vout = record(lsp, fid)["funding_outpoint"].split(":")
    # the ladder broadcast it when it recorded the factory: in the mempool, or already in the block just mined
    wait_for(lambda: txid in bitcoind.rpc.getrawmempool() or bitcoind.rpc.gettxout(txid, int(vout), False) is not None)
    bitcoind.generate_block(1)
    sync_blockheight(bitcoind, nodes)
    return str(fid)


def test_ladder_rolls_over_distributes_and_pays_leaver(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    common = {"plugin": str(plugin_path), "superscalar-profile": "regtest"}
    lsp = node_factory.get_node(options={**common, "superscalar-lsp": "true", "superscalar-ladder": "true",
                                         "superscalar-ladder-interval-blocks": "4"}, may_reconnect=True)
    c = node_factory.get_nodes(6, opts={**common, "may_reconnect": True, "superscalar-join": lsp.info["id"]})
    for n in c:
        n.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    lsp.fundwallet(10_000_000)
    nodes = [lsp, *c]
    rolling, absent, leaver = c[:4], c[4], c[5]

    f1 = ladder_round(lsp, bitcoind, nodes, [*rolling, leaver])
    f2 = ladder_round(lsp, bitcoind, nodes, [absent, c[0]])
    f3 = ladder_round(lsp, bitcoind, nodes, [c[1]])
    alive = lsp.rpc.call("superscalar-ladder")["alive"]
    assert {f["factory_id"] for f in alive} == {f1, f2, f3}
    starts = sorted(f["start_height"] for f in alive)
    assert starts[1] - starts[0] >= 4 and starts[2] - starts[1] >= 4
    assert {lsp_view(lsp, f)["phase"] for f in (f1, f2, f3)} == {"active"}

    # Payments in the first factory, some in msat; then the leaver asks to leave and one client goes away.
    a_out = {ch["peer_id"]: ch["funding_outpoint"] for ch in record(lsp, f1)["channels"]}
    for i, n in enumerate(rolling):
        pay_msat(lsp, n, 5_000_000 + 777 * (i + 1), f"to-{i}")
    pay_msat(rolling[1], lsp, 2_000_333, "from-1")
    pay_msat(leaver, lsp, 3_000_000, "from-leaver")
    settled(lsp, c)
    balances = {n.info["id"]: msat(one_channel(n, lsp, a_out[n.info["id"]])["to_us_msat"]) for n in [*rolling, leaver]}
    leaver.rpc.call("superscalar-leave", {"factory_id": f1})
    lsp.daemon.wait_for_log("asked to leave")
    absent.stop()
    leaver_before, lsp_before = wallet_sat(leaver), wallet_sat(lsp)
    live = [n for n in nodes if n is not absent]

    # The first factory enters its dying period: the ladder rolls it over by itself.
    params1 = FactoryParams.deserialize(record(lsp, f1)["params"].encode())
    while not (record(lsp, f1).get("close") or {}).get("txid"):
        assert bitcoind.rpc.getblockcount() < params1.distribution_height, "no rollover before the distribution"
        bitcoind.generate_block(1)
        sync_blockheight(bitcoind, live)
    assert bitcoind.rpc.getblockcount() >= params1.expiry_height
    close = record(lsp, f1)["close"]
    wait_for(lambda: close["txid"] in bitcoind.rpc.getrawmempool())
    entry = bitcoind.rpc.getmempoolentry(close["txid"])
    tx = Tx.from_hex(bitcoind.rpc.getrawtransaction(close["txid"]))
    f4 = close["next_factory"]
    bitcoind.generate_block(1)
    sync_blockheight(bitcoind, live)
    wait_for(lambda: all(record(n, f1)["close"]["status"] == "confirmed" for n in [lsp, *rolling, leaver]))

    # Four clients carried over to the msat; the leaver paid floor(balance) on chain in that close.
    for n in rolling:
        b_out = next(ch["funding_outpoint"] for ch in record(lsp, f4)["channels"] if ch["peer_id"] == n.info["id"])
        assert msat(one_channel(n, lsp, b_out)["to_us_msat"]) == balances[n.info["id"]]
    assert {ch["peer_id"] for ch in record(lsp, f4)["channels"]} == {n.info["id"] for n in rolling}
    wait_for(lambda: wallet_sat(leaver) - leaver_before == balances[leaver.info["id"]] // 1000)
    # The LSP's wallet: A's funding less B's funding, the leaver's payout, the anchor and the close's fee,
    # which is the pre-agreed rate times bitcoind's size of it.
    fee = record(lsp, f1)["funding_value_sat"] - sum(o.value for o in tx.outputs)
    assert fee == params1.fee(entry["vsize"]) == int(round(entry["fees"]["base"] * 100_000_000))
    lsp_out = record(lsp, f1)["funding_value_sat"] - tx.outputs[0].value - balances[leaver.info["id"]] // 1000 \
        - params1.anchor_sat - fee
    wait_for(lambda: wallet_sat(lsp) - lsp_before == lsp_out)
    assert lsp_view(lsp, f1)["phase"] == "closed"

    # Payments work in the new factory.
    pay_msat(lsp, rolling[0], 1_000_001, "in-b")
    pay_msat(rolling[2], lsp, 2_000_002, "from-b")
    settled(lsp, rolling)

    # The second factory's absent client never comes back before the distribution height: every
    # participant that can broadcasts the distribution, which pays each client its channels' capacity.
    params2 = FactoryParams.deserialize(record(lsp, f2)["params"].encode())
    while bitcoind.rpc.getblockcount() < params2.distribution_height + 2:
        bitcoind.generate_block(1)
        sync_blockheight(bitcoind, live)
    wait_for(lambda: lsp_view(lsp, f2)["phase"] == "distributed")
    assert lsp.daemon.is_in_log(f"factory {f2} is in its dying period")
    # Its channels are backed by nothing now: they are retired (the LSP's close waits for the absent peer).
    f2_channels = {ch["channel_id"] for ch in record(lsp, f2)["channels"]}
    wait_for(lambda: all(ch["state"] != "CHANNELD_NORMAL" for ch in lsp.rpc.listpeerchannels()["channels"]
                         if ch["channel_id"] in f2_channels))
    absent.start()
    wait_for(lambda: wallet_sat(absent) == BALANCE + INBOUND)
    wait_for(lambda: all(ch["state"] != "CHANNELD_NORMAL" for ch in absent.rpc.listpeerchannels()["channels"]))
    no_broken(nodes)
