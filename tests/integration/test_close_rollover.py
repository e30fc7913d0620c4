"""The cooperative close and the rollover of a factory, on real lightningd and bitcoind (regtest profile)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import pytest
from pyln.client import RpcError
from pyln.testing.utils import sync_blockheight, wait_for

from superscalar.bitcoin.tx import Tx
from superscalar.chain.exits import CLOSING_STATES
from superscalar.factory.params import FactoryParams
from superscalar.cln.node import msat

from .test_dishonest_lsp import killed
from .test_factory_plugin import BALANCE_SAT, INBOUND_SAT, create_factory, start_network

pytestmark = pytest.mark.lightningd
CAPACITY_MSAT = (BALANCE_SAT + INBOUND_SAT) * 1000


def record(node: Any, factory_id: str) -> dict[str, Any]:
    store = node.rpc.call("listdatastore", {"key": ["superscalar", "factories", factory_id, "factory"]})
    return dict(json.loads(store["datastore"][0]["string"])["data"])


def factory_ids(node: Any) -> list[str]:
    return [e["key"][2] for e in node.rpc.call("listdatastore", {"key": ["superscalar", "factories"]})["datastore"]]


def has_record(node: Any, factory_id: str) -> bool:
    key = ["superscalar", "factories", factory_id, "factory"]
    return bool(node.rpc.call("listdatastore", {"key": key})["datastore"])


def channels_in(node: Any, peer: Any, outpoint: Optional[str] = None) -> list[dict[str, Any]]:
    return [c for c in node.rpc.listpeerchannels(peer.info["id"])["channels"]
            if outpoint is None or f"{c['funding_txid']}:{c['funding_outnum']}" == outpoint]


def one_channel(node: Any, peer: Any, outpoint: str) -> dict[str, Any]:
    [ch] = channels_in(node, peer, outpoint)
    return ch


def pay_msat(payer: Any, payee: Any, amount_msat: int, label: str) -> int:
    """payee invoices (route hints through its normal channels), payer pays; returns the fee in msat."""
    normal = [c for c in payee.rpc.listpeerchannels()["channels"] if c["state"] == "CHANNELD_NORMAL"]
    wait_for(lambda: all("remote" in c.get("updates", {}) for c in payee.rpc.listpeerchannels()["channels"]
                         if c["state"] == "CHANNELD_NORMAL"))
    inv = payee.rpc.call("invoice", {"amount_msat": amount_msat, "label": label, "description": label,
                                     "exposeprivatechannels": [c.get("short_channel_id") or c["alias"]["local"]
                                                               for c in normal]})["bolt11"]
    res = payer.rpc.xpay(inv)
    return int(msat(res["amount_sent_msat"])) - amount_msat


def settled(lsp: Any, clients: list[Any]) -> None:
    wait_for(lambda: all(not c["htlcs"] for n in (lsp, *clients) for c in n.rpc.listpeerchannels()["channels"]))


def wallet_sat(node: Any) -> int:
    return sum(msat(o["amount_msat"]) // 1000 for o in node.rpc.listfunds()["outputs"] if o["status"] == "confirmed")


def payments(lsp: Any, clients: list[Any]) -> None:
    """Uneven payments, some with msat, one routed through the LSP (a fee in msat)."""
    for i, c in enumerate(clients):
        pay_msat(lsp, c, 7_000_000 + 1_234 * (i + 1), f"to-{i}")
        pay_msat(c, lsp, 2_000_000 + 999 * i, f"from-{i}")
    pay_msat(clients[0], clients[1], 1_000_777, "0-to-1")
    settled(lsp, clients)


def no_broken(nodes: list[Any]) -> None:
    assert not any(n.daemon.is_in_log(r"\*\*BROKEN\*\*") for n in nodes)


def mine_until(bitcoind: Any, nodes: list[Any], done: Any, blocks: int = 8) -> None:
    for _ in range(blocks):
        if done():
            return
        bitcoind.generate_block(1)
        sync_blockheight(bitcoind, nodes)
    wait_for(done)


def test_superscalar_close_pays_each_client_its_balance(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    lsp, clients = start_network(node_factory, plugin_path, 4)
    res = create_factory(lsp, clients, bitcoind)
    fid = res["factory_id"]
    payments(lsp, clients)
    outpoints = {ch["peer_id"]: ch["funding_outpoint"] for ch in res["channels"]}
    balances = [msat(one_channel(c, lsp, outpoints[c.info["id"]])["to_us_msat"]) for c in clients]
    assert any(b % 1000 for b in balances)  # the floor matters
    before = {c.info["id"]: wallet_sat(c) for c in clients}
    lsp_before = wallet_sat(lsp)

    out = lsp.rpc.call("superscalar-close", {"factory_id": fid})
    print("close:", out)
    assert out["status"] == "broadcast"
    close_txid = out["close_txid"]
    assert close_txid in bitcoind.rpc.getrawmempool()
    entry = bitcoind.rpc.getmempoolentry(close_txid)
    tx = Tx.from_hex(bitcoind.rpc.getrawtransaction(close_txid))
    funding_value = record(lsp, fid)["funding_value_sat"]
    assert int(round(entry["fees"]["base"] * 100_000_000)) == out["fee_sat"] == funding_value - sum(o.value for o in tx.outputs)
    # the pre-agreed fee: the factory's fee rate times the close's size as bitcoind measures it
    assert out["fee_sat"] == FactoryParams.deserialize(record(lsp, fid)["params"].encode()).fee(entry["vsize"])
    # Both sides hold the fully signed close; every channel is frozen.
    for n in (lsp, *clients):
        rec = record(n, fid)
        assert rec["frozen"] and rec["close"]["txid"] == close_txid and rec["close"]["status"] in ("signed", "broadcast")

    bitcoind.generate_block(1)
    sync_blockheight(bitcoind, [lsp, *clients])
    for c, b in zip(clients, balances):
        wait_for(lambda: wallet_sat(c) - before[c.info["id"]] == b // 1000)
    wait_for(lambda: wallet_sat(lsp) - lsp_before == out["lsp_sat"])
    assert out["payouts_sat"] == {c.info["id"]: b // 1000 for c, b in zip(clients, balances)}
    assert sum(b // 1000 for b in balances) + out["lsp_sat"] + out["anchor_sat"] + out["fee_sat"] == funding_value
    lsp_side = sum(CAPACITY_MSAT - b for b in balances) // 1000
    print(f"clients {[b // 1000 for b in balances]} sat, LSP {out['lsp_sat']} sat (its channel sides {lsp_side} sat), "
          f"fee {out['fee_sat']} sat, anchor {out['anchor_sat']} sat, funding {funding_value} sat")

    # The close confirmed on both sides; the factory's channels are retired.
    mine_until(bitcoind, [lsp, *clients], lambda: all(record(n, fid)["close"]["status"] == "confirmed"
                                                      for n in (lsp, *clients)))
    mine_until(bitcoind, [lsp, *clients], lambda: all(ch["state"] in CLOSING_STATES or ch["state"] == "CLOSED"
                                                      for n in (lsp, *clients)
                                                      for ch in n.rpc.listpeerchannels()["channels"]))
    mine_until(bitcoind, [lsp, *clients], lambda: all(record(n, fid)["close"]["retired"] for n in (lsp, *clients)))
    mined_at = bitcoind.rpc.getblockcount() - bitcoind.rpc.getrawtransaction(close_txid, True)["confirmations"] + 1
    for n in (lsp, *clients):
        [view] = n.rpc.call("superscalar-list")["factories"]
        assert view["close"] == {"frozen": True, "status": "confirmed", "txid": close_txid,
                                 "confirmed_height": mined_at, "next_factory": None}
    no_broken([lsp, *clients])


def test_rollover_carries_balances_to_the_msat(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    lsp, clients = start_network(node_factory, plugin_path, 4)
    nodes = [lsp, *clients]
    res = create_factory(lsp, clients, bitcoind)
    fid = res["factory_id"]
    payments(lsp, clients)
    outpoints = {ch["peer_id"]: ch["funding_outpoint"] for ch in res["channels"]}
    balances = {c.info["id"]: msat(one_channel(c, lsp, outpoints[c.info["id"]])["to_us_msat"]) for c in clients}
    rolling, leaver = clients[:3], clients[3]
    leaver_before, lsp_before = wallet_sat(leaver), wallet_sat(lsp)

    out = lsp.rpc.call("superscalar-rollover", {"factory_id": fid, "leave": [leaver.info["id"]]})
    print("rollover:", out)
    nxt = out["next_factory"]
    assert out["status"] == "broadcast" and out["next_funding_outpoint"] == f"{out['close_txid']}:0"
    assert out["payouts_sat"] == {leaver.info["id"]: balances[leaver.info["id"]] // 1000}
    tx = Tx.from_hex(bitcoind.rpc.getrawtransaction(out["close_txid"]))
    assert tx.outputs[0].value == out["next_funding_sat"] and len(tx.outputs) == 4  # B, leaver, LSP, anchor
    funding_value = record(lsp, fid)["funding_value_sat"]
    assert out["next_funding_sat"] + sum(out["payouts_sat"].values()) + out["lsp_sat"] + out["anchor_sat"] + out["fee_sat"] \
        == funding_value == sum(o.value for o in tx.outputs) + out["fee_sat"]
    entry = bitcoind.rpc.getmempoolentry(out["close_txid"])
    assert int(round(entry["fees"]["base"] * 100_000_000)) == out["fee_sat"]
    assert out["fee_sat"] == FactoryParams.deserialize(record(lsp, fid)["params"].encode()).fee(entry["vsize"])

    # Each rolling client has a B channel of its A capacity holding exactly its A balance, frozen until
    # the close confirms; the leaver has none.
    b_lsp = record(lsp, nxt)
    assert b_lsp["stage"] == "rolling" and b_lsp["frozen"] and b_lsp["funding_outpoint"] == out["next_funding_outpoint"]
    for c in rolling:
        ch_rec = next(ch for ch in b_lsp["channels"] if ch["peer_id"] == c.info["id"])
        mine, theirs = one_channel(c, lsp, ch_rec["funding_outpoint"]), one_channel(lsp, c, ch_rec["funding_outpoint"])
        assert msat(mine["to_us_msat"]) == balances[c.info["id"]]
        assert msat(theirs["to_us_msat"]) == CAPACITY_MSAT - balances[c.info["id"]]
        assert msat(mine["total_msat"]) == CAPACITY_MSAT and mine["state"] == "CHANNELD_NORMAL"
        b_client = record(c, nxt)
        assert b_client["frozen"] and b_client["rollover_of"] == fid and b_client["push_msat"] == balances[c.info["id"]]
    assert nxt not in factory_ids(leaver)
    # Until the close confirms, neither A's frozen channel nor B's takes an HTLC.
    with pytest.raises(RpcError):
        pay_msat(lsp, rolling[0], 1_000_000, "while-frozen")
    assert rolling[0].daemon.is_in_log("channel is frozen")
    settled(lsp, clients)
    b0 = next(ch["funding_outpoint"] for ch in b_lsp["channels"] if ch["peer_id"] == rolling[0].info["id"])
    assert msat(one_channel(rolling[0], lsp, b0)["to_us_msat"]) == balances[rolling[0].info["id"]]
    assert msat(one_channel(rolling[0], lsp, outpoints[rolling[0].info["id"]])["to_us_msat"]) == balances[rolling[0].info["id"]]

    bitcoind.generate_block(1)
    sync_blockheight(bitcoind, nodes)
    mine_until(bitcoind, nodes, lambda: all(record(n, fid)["close"]["status"] == "confirmed" for n in nodes))
    wait_for(lambda: wallet_sat(leaver) - leaver_before == balances[leaver.info["id"]] // 1000)
    wait_for(lambda: wallet_sat(lsp) - lsp_before == out["lsp_sat"])
    assert record(lsp, nxt)["stage"] == "funded" and not record(lsp, nxt).get("frozen")
    for c in rolling:
        wait_for(lambda: not record(c, nxt).get("frozen"))
        assert record(c, nxt)["funding"]["status"] == "confirmed"
    # A's channels are retired on both sides; B's carry payments.
    mine_until(bitcoind, nodes, lambda: all(record(n, fid)["close"]["retired"] for n in nodes))
    for c in clients:
        a_out = outpoints[c.info["id"]]
        assert all(ch["state"] != "CHANNELD_NORMAL" for ch in channels_in(lsp, c, a_out) + channels_in(c, lsp, a_out))
    pay_msat(lsp, rolling[0], 3_000_123, "in-b")
    pay_msat(rolling[1], lsp, 1_000_001, "from-b")
    settled(lsp, rolling)
    b_chans = {ch["peer_id"]: ch["funding_outpoint"] for ch in record(lsp, nxt)["channels"]}
    assert msat(one_channel(rolling[0], lsp, b_chans[rolling[0].info["id"]])["to_us_msat"]) == \
        balances[rolling[0].info["id"]] + 3_000_123
    assert msat(one_channel(rolling[1], lsp, b_chans[rolling[1].info["id"]])["to_us_msat"]) == \
        balances[rolling[1].info["id"]] - 1_000_001
    print(f"B funding {out['next_funding_sat']} sat, leaver {out['payouts_sat']} sat, LSP {out['lsp_sat']} sat, "
          f"fee {out['fee_sat']} sat, anchor {out['anchor_sat']} sat, A funding {funding_value} sat; "
          f"carried {[balances[c.info['id']] for c in rolling]} msat")
    no_broken(nodes)


# --- restarts and hostile proposals ---


def network(node_factory: Any, plugin_path: Path, n: int, fail: dict[int, str]) -> tuple[Any, list[Any]]:
    """An LSP (node 0) and n clients (nodes 1..n); `fail` sets superscalar-dev-fail-at per node index."""
    common = {"plugin": str(plugin_path), "superscalar-profile": "regtest"}

    def opts(i: int, extra: dict[str, str]) -> dict[str, str]:
        return {**common, **extra, **({"superscalar-dev-fail-at": fail[i]} if i in fail else {})}

    lsp = node_factory.get_node(options=opts(0, {"superscalar-lsp": "true"}), may_reconnect=True)
    clients = [node_factory.get_node(options=opts(i, {"superscalar-join": lsp.info["id"]}), may_reconnect=True)
               for i in range(1, n + 1)]
    for c in clients:
        c.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    lsp.fundwallet(10_000_000)
    return lsp, clients


def restart(node: Any, lsp: Any, clients: list[Any]) -> None:
    """`node` was SIGKILLed by its plugin: start it again without the crash point and reconnect."""
    killed(node)
    del node.daemon.opts["superscalar-dev-fail-at"]
    node.start()
    for c in clients:
        wait_for(lambda: bool(c.rpc.connect(lsp.info["id"], "localhost", lsp.port)))


def prepared(node_factory: Any, bitcoind: Any, plugin_path: Path, fail: dict[int, str]) -> tuple[Any, list[Any], str, dict[str, str], dict[str, int]]:
    lsp, clients = network(node_factory, plugin_path, 3, fail)
    res = create_factory(lsp, clients, bitcoind)
    payments(lsp, clients)
    outpoints = {ch["peer_id"]: ch["funding_outpoint"] for ch in res["channels"]}
    balances = {c.info["id"]: msat(one_channel(c, lsp, outpoints[c.info["id"]])["to_us_msat"]) for c in clients}
    return lsp, clients, res["factory_id"], outpoints, balances


def assert_aborted(bitcoind: Any, lsp: Any, clients: list[Any], fid: str, outpoints: dict[str, str],
                   balances: dict[str, int]) -> None:
    """Nothing went out: every side unfrozen, no next factory left usable, balances as before the
    ceremony, and the factory carries payments again."""
    nodes = [lsp, *clients]
    mine_until(bitcoind, nodes, lambda: all(not record(n, fid).get("frozen") and "close" not in record(n, fid)
                                            for n in nodes))
    txid, vout = record(lsp, fid)["funding_outpoint"].split(":")
    assert bitcoind.rpc.gettxout(txid, int(vout)) is not None  # A's funding output is unspent
    for n in nodes:
        for other in factory_ids(n):
            if other != fid and has_record(n, other):
                rec = record(n, other)
                assert rec.get("stage") == "abandoned" or rec.get("funding", {}).get("status") == "unfunded", rec
    peers_of = {c.info["id"]: c for c in clients}

    def only_a_normal() -> bool:
        return all(ch["state"] != "CHANNELD_NORMAL" or f"{ch['funding_txid']}:{ch['funding_outnum']}" == outpoints[p]
                   for p, c in peers_of.items() for ch in channels_in(c, lsp) + channels_in(lsp, c))

    mine_until(bitcoind, nodes, only_a_normal)
    for c in clients:
        wait_for(lambda: one_channel(c, lsp, outpoints[c.info["id"]])["peer_connected"])
        assert msat(one_channel(c, lsp, outpoints[c.info["id"]])["to_us_msat"]) == balances[c.info["id"]]
        assert one_channel(c, lsp, outpoints[c.info["id"]])["state"] == "CHANNELD_NORMAL"
    pay_msat(lsp, clients[0], 1_000_001, "after-abort")
    pay_msat(clients[1], lsp, 500_003, "after-abort-back")
    settled(lsp, clients)
    assert msat(one_channel(clients[0], lsp, outpoints[clients[0].info["id"]])["to_us_msat"]) == \
        balances[clients[0].info["id"]] + 1_000_001
    no_broken(nodes)


def assert_rolled(bitcoind: Any, lsp: Any, clients: list[Any], fid: str, balances: dict[str, int],
                  leaver: Optional[Any]) -> None:
    """The signed close confirmed: A retired, B funded with every rolling client's balance, payments in B."""
    nodes = [lsp, *clients]
    mine_until(bitcoind, nodes, lambda: all((record(n, fid).get("close") or {}).get("status") == "confirmed"
                                            for n in nodes))
    nxt = record(lsp, fid)["close"]["next_factory"]
    wait_for(lambda: record(lsp, nxt)["stage"] == "funded")
    rolling = [c for c in clients if c is not leaver]
    b_chans = {ch["peer_id"]: ch["funding_outpoint"] for ch in record(lsp, nxt)["channels"]}
    for c in rolling:
        wait_for(lambda: not record(c, nxt).get("frozen"))
        wait_for(lambda: one_channel(c, lsp, b_chans[c.info["id"]])["peer_connected"])
        assert msat(one_channel(c, lsp, b_chans[c.info["id"]])["to_us_msat"]) == balances[c.info["id"]]
    mine_until(bitcoind, nodes, lambda: all(record(n, fid)["close"]["retired"] for n in nodes))
    pay_msat(lsp, rolling[0], 2_000_002, "in-b-after-restart")
    settled(lsp, rolling)
    assert msat(one_channel(rolling[0], lsp, b_chans[rolling[0].info["id"]])["to_us_msat"]) == \
        balances[rolling[0].info["id"]] + 2_000_002
    no_broken(nodes)


def test_lsp_killed_before_close_signed_aborts(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    lsp, clients, fid, outpoints, balances = prepared(node_factory, bitcoind, plugin_path, {0: "lsp-close-before-sign"})
    with pytest.raises(Exception):
        lsp.rpc.call("superscalar-close", {"factory_id": fid})
    restart(lsp, lsp, clients)
    assert_aborted(bitcoind, lsp, clients, fid, outpoints, balances)


def test_lsp_killed_after_b_channels_aborts(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    lsp, clients, fid, outpoints, balances = prepared(node_factory, bitcoind, plugin_path, {0: "lsp-roll-after-b-channels"})
    with pytest.raises(Exception):
        lsp.rpc.call("superscalar-rollover", {"factory_id": fid, "leave": [clients[2].info["id"]]})
    restart(lsp, lsp, clients)
    assert_aborted(bitcoind, lsp, clients, fid, outpoints, balances)


def test_lsp_killed_after_close_signed_resumes(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    lsp, clients, fid, outpoints, balances = prepared(node_factory, bitcoind, plugin_path, {0: "lsp-close-after-sign"})
    with pytest.raises(Exception):
        lsp.rpc.call("superscalar-rollover", {"factory_id": fid, "leave": [clients[2].info["id"]]})
    killed(lsp)
    # The clients hold the signed close: they broadcast it themselves while the LSP is down.
    leaver_before = wallet_sat(clients[2])
    mine_until(bitcoind, clients, lambda: all(record(c, fid)["close"]["status"] == "confirmed" for c in clients))
    wait_for(lambda: wallet_sat(clients[2]) - leaver_before == balances[clients[2].info["id"]] // 1000)
    del lsp.daemon.opts["superscalar-dev-fail-at"]
    lsp.start()
    for c in clients:
        c.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    assert_rolled(bitcoind, lsp, clients, fid, balances, clients[2])


def test_client_killed_on_close_proposal_aborts(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    lsp, clients, fid, outpoints, balances = prepared(node_factory, bitcoind, plugin_path, {1: "client-close-on-propose"})
    with pytest.raises(Exception, match="factory not closed"):
        lsp.rpc.call("superscalar-rollover", {"factory_id": fid, "leave": [clients[2].info["id"]]})
    # the client died at the close's proposal, before its nonce: the next factory's channels were never
    # completed (their opens cancelled), so nothing is left behind in the LSP's lightningd
    assert "failed_rollovers" not in record(lsp, fid)
    assert all(len(channels_in(lsp, c)) == 1 for c in clients[1:])
    restart(clients[0], lsp, clients)
    assert_aborted(bitcoind, lsp, clients, fid, outpoints, balances)


def test_client_killed_after_close_signed_resumes(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    lsp, clients, fid, outpoints, balances = prepared(node_factory, bitcoind, plugin_path, {2: "client-close-after-sign"})
    # The close exists once everyone signed: the LSP broadcasts it although one client died before Done.
    out = lsp.rpc.call("superscalar-rollover", {"factory_id": fid, "leave": [clients[2].info["id"]]})
    assert out["status"] == "broadcast"
    restart(clients[1], lsp, clients)
    assert_rolled(bitcoind, lsp, clients, fid, balances, clients[2])


@pytest.mark.parametrize("fail", ["lsp-close-underpay", "lsp-roll-wrong-output0", "lsp-roll-skip-complete"])
def test_unfair_close_proposal_is_refused(node_factory: Any, bitcoind: Any, plugin_path: Path, fail: str) -> None:
    lsp, clients, fid, outpoints, balances = prepared(node_factory, bitcoind, plugin_path, {0: fail})
    if fail == "lsp-close-underpay":
        with pytest.raises(Exception, match="less than our"):
            lsp.rpc.call("superscalar-close", {"factory_id": fid})
    elif fail == "lsp-roll-wrong-output0":  # a close whose output 0 is not B's funding
        with pytest.raises(Exception, match="output 0 is not the next factory"):
            lsp.rpc.call("superscalar-rollover", {"factory_id": fid, "leave": [clients[2].info["id"]]})
    else:
        # A close that would fund a leaf with no channel on it: that client finds its B channel missing when
        # the aggregate nonces arrive and does not sign. The others may have signed (this LSP misbehaved
        # after they checked the close), so they stay frozen until their bound, and the LSP tries no other
        # close of the factory.
        with pytest.raises(Exception, match="was not completed"):
            lsp.rpc.call("superscalar-rollover", {"factory_id": fid, "leave": [clients[2].info["id"]]})
        assert bitcoind.rpc.getrawmempool() == []
        assert "abandoned_close" in record(lsp, fid)
        [refuser] = [c for c in clients if c.daemon.is_in_log("refusing to sign the close: our channel in the next")]
        wait_for(lambda: not record(refuser, fid).get("frozen"))
        assert signed_of_close(refuser, fid) == []
        for c in clients:
            if c is not refuser:
                assert record(c, fid)["frozen"]["partial_signed"]
        no_broken([lsp, *clients])
        return
    assert bitcoind.rpc.getrawmempool() == []
    assert_aborted(bitcoind, lsp, clients, fid, outpoints, balances)


def signed_of_close(node: Any, fid: str) -> list[str]:
    """The close txids in the node's ledger for factory `fid`."""
    return [kinds["close"]["txid"] for kinds in record(node, fid).get("signed_spends", {}).values() if "close" in kinds]


def test_rollover_carries_every_client(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    """Nobody leaves: the next factory needs what this one held, so its L-stock pays the close's cost."""
    lsp, clients = start_network(node_factory, plugin_path, 2)
    nodes = [lsp, *clients]
    res = create_factory(lsp, clients, bitcoind)
    fid = res["factory_id"]
    pay_msat(lsp, clients[0], 5_000_321, "to-0")
    settled(lsp, clients)
    outpoints = {ch["peer_id"]: ch["funding_outpoint"] for ch in res["channels"]}
    balances = {c.info["id"]: msat(one_channel(c, lsp, outpoints[c.info["id"]])["to_us_msat"]) for c in clients}
    a_params = FactoryParams.deserialize(record(lsp, fid)["params"].encode())
    out = lsp.rpc.call("superscalar-rollover", {"factory_id": fid})
    assert out["payouts_sat"] == {} and len(out["rolled"]) == 2
    b_params = FactoryParams.deserialize(record(lsp, out["next_factory"])["params"].encode())
    assert b_params.lstock_sat < a_params.lstock_sat
    tx = Tx.from_hex(bitcoind.rpc.getrawtransaction(out["close_txid"]))
    assert [o.value for o in tx.outputs] == [out["next_funding_sat"], out["lsp_sat"], out["anchor_sat"]]
    assert out["lsp_sat"] >= a_params.dust_limit_sat
    print(f"L-stock per leaf {a_params.lstock_sat} -> {b_params.lstock_sat} sat; close fee {out['fee_sat']} sat, "
          f"LSP rest {out['lsp_sat']} sat")
    mine_until(bitcoind, nodes, lambda: all(record(n, fid)["close"]["status"] == "confirmed" for n in nodes))
    b_chans = {ch["peer_id"]: ch["funding_outpoint"] for ch in record(lsp, out["next_factory"])["channels"]}
    for c in clients:
        wait_for(lambda: not record(c, out["next_factory"]).get("frozen"))
        assert msat(one_channel(c, lsp, b_chans[c.info["id"]])["to_us_msat"]) == balances[c.info["id"]]
    pay_msat(clients[1], lsp, 1_000_001, "from-1-in-b")
    settled(lsp, clients)
