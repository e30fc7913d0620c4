"""An LSP and clients, all CLN nodes running the plugin: a factory with real leaf channels on stock
Core Lightning, and payments through them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pyln.client import RpcError
from pyln.testing.utils import sync_blockheight, wait_for

from superscalar.cln.node import msat

pytestmark = pytest.mark.lightningd

BALANCE_SAT = 50_000
INBOUND_SAT = 200_000


def start_network(node_factory: Any, plugin_path: Path, n_clients: int, profile: str = "regtest") -> tuple[Any, list[Any]]:
    common = {"plugin": str(plugin_path), "superscalar-profile": profile}
    lsp = node_factory.get_node(options={**common, "superscalar-lsp": "true"}, may_reconnect=True)
    clients = node_factory.get_nodes(n_clients, opts={"may_reconnect": True, **common, "superscalar-join": lsp.info["id"]})
    for c in clients:
        c.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    lsp.fundwallet(10_000_000)
    return lsp, clients


def channel_with(node: Any, peer: Any) -> dict[str, Any]:
    [ch] = node.rpc.listpeerchannels(peer.info["id"])["channels"]
    return dict(ch)


def pay(payer: Any, payee: Any, amount_sat: int, label: str) -> int:
    """payee invoices, payer pays; returns the fee paid in msat."""
    # Leaf channels are unannounced: the invoice carries them as route hints.
    # The plugin raises the invoice's final CLTV to what the factory channels need (cltv 24 is below it).
    # A route hint needs the peer's channel_update, which can lag the channel's CHANNELD_NORMAL.
    wait_for(lambda: all("remote" in c.get("updates", {}) for c in payee.rpc.listpeerchannels()["channels"]
                         if c["state"] == "CHANNELD_NORMAL"))
    inv = payee.rpc.call("invoice", {"amount_msat": amount_sat * 1000, "label": label, "description": label,
                                     "cltv": 24,
                                     # a leaf confirmed on chain (a leaf-mate's exit) gives the channel a real scid
                                     "exposeprivatechannels": [c.get("short_channel_id") or c["alias"]["local"]
                                                               for c in payee.rpc.listpeerchannels()["channels"]]})["bolt11"]
    res = payer.rpc.xpay(inv)
    assert res["amount_msat"] == amount_sat * 1000
    return int(msat(res["amount_sent_msat"])) - amount_sat * 1000


def create_factory(lsp: Any, clients: list[Any], bitcoind: Any) -> dict[str, Any]:
    """superscalar-create with every client; checks the funding confirms and every leaf channel is
    CHANNELD_NORMAL on both sides at the leaf outpoint the engine computed."""
    spec = [{"id": c.info["id"], "balance_sat": BALANCE_SAT, "inbound_sat": INBOUND_SAT} for c in clients]
    res = lsp.rpc.call("superscalar-create", {"clients": spec})
    assert len(res["channels"]) == len(clients)
    lsp.daemon.wait_for_log("every client holds its signed exit path")  # a progress notification
    # The funding transaction is in the mempool; it confirms.
    funding_txid = res["funding_txid"]
    assert funding_txid in bitcoind.rpc.getrawmempool()
    bitcoind.generate_block(1)
    assert bitcoind.rpc.getrawtransaction(funding_txid, True)["confirmations"] == 1
    sync_blockheight(bitcoind, [lsp, *clients])

    for c, ch in zip(clients, res["channels"]):
        assert ch["peer_id"] == c.info["id"]
        mine, theirs = channel_with(c, lsp), channel_with(lsp, c)
        for side in (mine, theirs):
            assert side["state"] == "CHANNELD_NORMAL"
            assert f"{side['funding_txid']}:{side['funding_outnum']}" == ch["funding_outpoint"]
            assert msat(side["total_msat"]) == (BALANCE_SAT + INBOUND_SAT) * 1000
        assert msat(mine["to_us_msat"]) == BALANCE_SAT * 1000
        # The leaf transaction itself was never broadcast.
        leaf_txid = ch["funding_outpoint"].split(":")[0]
        assert leaf_txid not in bitcoind.rpc.getrawmempool()

    # Both sides list the factory, and the client holds its exit path.
    [lsp_view] = lsp.rpc.call("superscalar-list")["factories"]
    assert lsp_view["role"] == "lsp" and len(lsp_view["channels"]) == len(clients)
    for c, ch in zip(clients, res["channels"]):
        [view] = c.rpc.call("superscalar-list")["factories"]
        assert view["role"] == "client" and view["lsp"] == lsp.info["id"]
        assert view["funding_outpoint"] == res["funding_outpoint"]
        [cch] = view["channels"]
        assert cch["funding_outpoint"] == ch["funding_outpoint"] and cch["state"] == "CHANNELD_NORMAL"
        # leaf arity 2, arity 8: up to two clients the root is their leaf (kickoff and state); above,
        # a static root (one transaction) over the leaves.
        assert view["exit"]["transactions"] == (2 if len(clients) <= 2 else 3) and view["exit"]["vbytes"] > 0
    return res


def test_factory_of_four_clients_and_payments_flow(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    lsp, clients = start_network(node_factory, plugin_path, 4)
    create_factory(lsp, clients, bitcoind)

    # Payments: LSP → each client, each client → LSP, and client 0 → client 1 through the LSP.
    for i, c in enumerate(clients):
        assert pay(lsp, c, 10_000, f"lsp-to-{i}") == 0
        assert pay(c, lsp, 4_000, f"{i}-to-lsp") == 0
    fee = pay(clients[0], clients[1], 1_000, "0-to-1")
    expected = [BALANCE_SAT * 1000 + 6_000_000] * 4
    expected[0] -= 1_000_000 + fee
    expected[1] += 1_000_000
    assert_balances(lsp, clients, expected)
    # Before taking its first HTLC in, each client verified from its own channeld that its leaf output
    # is its channel's BOLT-3 2-of-2.
    for c in clients:
        [view] = c.rpc.call("superscalar-list")["factories"]
        assert view["verified"]["leaf_script"]["status"] == "verified", view["verified"]
        assert "leaf output verified" in view["safety"]
        assert "no confirmed coin in this node's wallet" in view["safety"]  # these clients have none

    # An HTLC into a factory channel that leaves less CLTV headroom than the channel's early-warning
    # time is failed by the client's plugin; the payment fails and moves nothing. (The client's own
    # invoices ask for enough: the LSP sends this one along a route it builds with a short final CLTV.)
    [view] = clients[3].rpc.call("superscalar-list")["factories"]
    ewt = view["channels"][0]["early_warning_blocks"]
    assert ewt == 1 + (2 * 3 + 2)  # regtest: the static root confirms, then the leaf's kickoff and state
    short = clients[3].rpc.call("invoice", {"amount_msat": 1_000_000, "label": "short-cltv", "description": "x",
                                            "cltv": 8})
    assert clients[3].rpc.decode(short["bolt11"])["min_final_cltv_expiry"] == ewt + 2 + 12  # not 8
    hop = {"id": clients[3].info["id"], "channel": channel_with(lsp, clients[3])["alias"]["local"], "direction": 0,
           "amount_msat": 1_000_000, "delay": 6, "style": "tlv"}  # below 9, above cltv-final (5)
    lsp.rpc.call("sendpay", {"route": [hop], "payment_hash": short["payment_hash"],
                             "payment_secret": short["payment_secret"], "amount_msat": 1_000_000})
    with pytest.raises(RpcError, match="WIRE_INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS|incorrect_or_unknown"):
        lsp.rpc.call("waitsendpay", {"payment_hash": short["payment_hash"], "timeout": 60})
    clients[3].daemon.wait_for_log(f"needs {ewt} blocks of CLTV headroom")
    assert_balances(lsp, clients, expected)

    # Restart all five nodes: the factory, its channels and every client's exit data survive.
    views = {c.info["id"]: c.rpc.call("superscalar-list") for c in clients}
    lsp_view = lsp.rpc.call("superscalar-list")
    for node in (lsp, *clients):
        node.restart()
    for c in clients:
        c.rpc.connect(lsp.info["id"], "localhost", lsp.port)
        wait_for(lambda: channel_with(c, lsp)["state"] == "CHANNELD_NORMAL" and channel_with(c, lsp)["peer_connected"])
        assert c.rpc.call("superscalar-list") == views[c.info["id"]]
    assert lsp.rpc.call("superscalar-list") == lsp_view
    assert_balances(lsp, clients, expected)
    assert pay(lsp, clients[2], 2_000, "after-restart") == 0
    expected[2] += 2_000_000
    assert_balances(lsp, clients, expected)


def assert_balances(lsp: Any, clients: list[Any], expected: list[int]) -> None:
    for c, want in zip(clients, expected):
        # xpay returns once it has the preimage; the commitments settle a moment later.
        wait_for(lambda: not channel_with(c, lsp)["htlcs"] and not channel_with(lsp, c)["htlcs"])
        assert msat(channel_with(c, lsp)["to_us_msat"]) == want
        assert msat(channel_with(lsp, c)["to_us_msat"]) == (BALANCE_SAT + INBOUND_SAT) * 1000 - want


def test_eight_clients_in_one_factory(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    lsp, clients = start_network(node_factory, plugin_path, 8)
    res = create_factory(lsp, clients, bitcoind)
    # Eight clients with leaf arity 2: four leaves, and every leaf channel carries a payment.
    assert len({ch["funding_outpoint"].split(":")[0] for ch in res["channels"]}) == 4
    for i, c in enumerate(clients):
        assert pay(lsp, c, 1_000 + i, f"eight-{i}") == 0
