"""A client against an LSP that misbehaves on purpose (`superscalar-dev-fail-at`, honoured only in
developer mode): each case ends with the client refusing or detecting, its earlier factories and exit
paths untouched, and no balance credited that nothing backs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pyln.client import RpcError
from pyln.testing.utils import sync_blockheight, wait_for

from .test_factory_plugin import channel_with, create_factory, pay

pytestmark = pytest.mark.lightningd

FUNDING_TIMEOUT = 6  # the regtest profile's client policy
CLOSED_OR_CLOSING = {"CHANNELD_SHUTTING_DOWN", "CLOSINGD_SIGEXCHANGE", "CLOSINGD_COMPLETE", "AWAITING_UNILATERAL",
                     "FUNDING_SPEND_SEEN", "ONCHAIN", "CLOSED"}


def network(node_factory: Any, plugin_path: Path, n: int, lsp_fail: str = "", wallet_coins: int = 1) -> tuple[Any, list[Any]]:
    common = {"plugin": str(plugin_path), "superscalar-profile": "regtest"}
    lsp_opts = {**common, "superscalar-lsp": "true"}
    if lsp_fail:
        lsp_opts["superscalar-dev-fail-at"] = lsp_fail
    lsp = node_factory.get_node(options=lsp_opts, may_reconnect=True)
    clients = [node_factory.get_node(options={**common, "superscalar-join": lsp.info["id"]}, may_reconnect=True)
               for _ in range(n)]
    for _ in range(wallet_coins):
        lsp.fundwallet(5_000_000)
    for c in clients:
        c.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    return lsp, clients


def killed(node: Any) -> None:
    """Wait for `node`'s lightningd to die of the SIGKILL its plugin sent, and drop what the kill tore:
    the plugin I/O file lightningd (in developer mode) was writing at that instant, which pyln-testing
    would otherwise read as a malformed hook message."""
    assert node.daemon.wait() != 0
    for f in (Path(node.daemon.lightning_dir) / "plugin-io").iterdir():
        try:
            json.loads(f.read_text())
        except ValueError:
            f.unlink()


def spec(clients: list[Any]) -> list[dict[str, Any]]:
    return [{"id": c.info["id"], "balance_sat": 20_000, "inbound_sat": 100_000} for c in clients]


def views(node: Any) -> list[dict[str, Any]]:
    return list(node.rpc.call("superscalar-list")["factories"])


def usable(node: Any, peer: Any) -> list[dict[str, Any]]:
    """The node's channels with `peer` that can still carry a payment."""
    return [c for c in node.rpc.listpeerchannels(peer.info["id"])["channels"] if c["state"] == "CHANNELD_NORMAL"]


def test_client_refuses_a_factory_starting_at_zero(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    lsp, clients = network(node_factory, plugin_path, 2, "lsp-start-height-zero")
    with pytest.raises(RpcError, match="start height 0 is more than 6 blocks from ours"):
        lsp.rpc.call("superscalar-create", {"clients": spec(clients)})
    assert bitcoind.rpc.getrawmempool() == []
    for c in clients:
        assert views(c) == [] and c.rpc.listpeerchannels()["channels"] == []
    wait_for(lambda: lsp.rpc.listpeerchannels()["channels"] == [])


def test_client_refuses_a_reused_factory_id(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    lsp, clients = network(node_factory, plugin_path, 2, wallet_coins=2)
    first = create_factory(lsp, clients, bitcoind)
    before = [c.rpc.listdatastore(["superscalar", "factories", first["factory_id"], "factory"])["datastore"]
              for c in clients]
    # The LSP restarts as a cheat that proposes the same id again (any co-client knows it).
    lsp.stop()
    lsp.daemon.opts["superscalar-dev-fail-at"] = f"lsp-reuse-id={first['factory_id']}"
    lsp.start()
    for c in clients:
        c.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    with pytest.raises(RpcError, match="factory id already used"):
        lsp.rpc.call("superscalar-create", {"clients": spec(clients)})
    # The funded factory's record, exit path included, is exactly what it was; it still works.
    for c, old in zip(clients, before):
        assert c.rpc.listdatastore(["superscalar", "factories", first["factory_id"], "factory"])["datastore"] == old
        [view] = views(c)
        assert view["state"] == "open" and view["verified"]["funding"]["status"] == "confirmed"
    assert pay(lsp, clients[0], 1_000, "after-reuse") == 0


def test_client_gives_up_on_funding_never_broadcast(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    lsp, clients = network(node_factory, plugin_path, 2, "lsp-never-broadcast")
    created = lsp.rpc.call("superscalar-create", {"clients": spec(clients)})
    assert bitcoind.rpc.getrawmempool() == []
    for c in clients:
        [view] = views(c)
        assert view["state"] == "awaiting_funding" and "not confirmed yet" in view["safety"]
    bitcoind.generate_block(FUNDING_TIMEOUT)
    sync_blockheight(bitcoind, [lsp, *clients])
    for c in clients:
        wait_for(lambda: views(c)[0]["state"] == "unfunded")
        assert "no funding output by height" in views(c)[0]["safety"]
        # Its channel was closed: nothing can be paid into or out of it any more.
        wait_for(lambda: usable(c, lsp) == [])
        assert all(ch["state"] in CLOSED_OR_CLOSING for ch in c.rpc.listpeerchannels()["channels"])
    wait_for(lambda: all(usable(lsp, c) == [] for c in clients))
    # No exit is started for a factory whose funding output never existed.
    assert all(v["exit_progress"]["status"] == "none" for c in clients for v in views(c))
    # The signed funding goes out after all: the clients' closed channels can only pay out through
    # their leaves, so each client publishes its path.
    [entry] = lsp.rpc.listdatastore(["superscalar", "factories", created["factory_id"], "factory"])["datastore"]
    psbt = json.loads(entry["string"])["data"]["funding_psbt"]
    assert lsp.rpc.sendpsbt(lsp.rpc.signpsbt(psbt)["signed_psbt"])["txid"] == created["funding_txid"]
    bitcoind.generate_block(1)
    sync_blockheight(bitcoind, [lsp, *clients])
    for c in clients:
        wait_for(lambda: views(c)[0]["state"] == "exiting" and views(c)[0]["exit_progress"]["published"] != [])
        assert "funding output confirmed as signed" in views(c)[0]["safety"]


def test_client_detects_a_funding_txid_not_signed(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    lsp, clients = network(node_factory, plugin_path, 2, "lsp-wrong-funding", wallet_coins=2)
    res = lsp.rpc.call("superscalar-create", {"clients": spec(clients)})
    signed_txid = res["funding_txid"]
    lsp.daemon.wait_for_log("instead of the signed")
    mempool = bitcoind.rpc.getrawmempool()
    assert len(mempool) == 1 and signed_txid not in mempool  # another transaction pays the same output
    bitcoind.generate_block(FUNDING_TIMEOUT)
    sync_blockheight(bitcoind, [lsp, *clients])
    for c in clients:
        wait_for(lambda: views(c)[0]["state"] == "unfunded")
        wait_for(lambda: usable(c, lsp) == [])


def test_lsp_killed_mid_completion_leaves_no_channel(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    lsp, clients = network(node_factory, plugin_path, 4, "lsp-mid-completion")
    with pytest.raises(RpcError):
        lsp.rpc.call("superscalar-create", {"clients": spec(clients)})
    # One channel was completed on its (unfunded) leaf before the LSP's lightningd was killed (SIGKILL).
    killed(lsp)
    assert sum(len(usable(c, lsp)) for c in clients) == 1
    lsp.start()
    for c in clients:
        c.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    bitcoind.generate_block(1)
    # The LSP abandons the factory: it releases the funding inputs and closes the completed channel.
    lsp.daemon.wait_for_log("abandoned after a restart")
    wait_for(lambda: not any(o.get("reserved") for o in lsp.rpc.listfunds()["outputs"]))
    wait_for(lambda: all(usable(lsp, c) == [] and usable(c, lsp) == [] for c in clients))
    assert bitcoind.rpc.getrawmempool() == []
    # Every client that signed gives the factory up once its funding timeout passes.
    bitcoind.generate_block(FUNDING_TIMEOUT)
    sync_blockheight(bitcoind, [lsp, *clients])
    for c in clients:
        wait_for(lambda: all(v["state"] == "unfunded" for v in views(c)))
        assert usable(c, lsp) == []
    assert lsp.rpc.call("superscalar-list")["factories"] == []  # abandoned factories are not listed


def test_client_refuses_htlcs_if_leaf_is_not_its_2of2(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    """The check on the HTLC path, with a stock-CLN LSP: its fundchannel_complete refuses a leaf without
    the channel's 2-of-2, so here the client plays the discrepancy (`client-other-leaf-script`: it
    believes its signed leaf pays another P2WSH). The real attack, by an LSP that is not CLN, is
    `test_client_catches_a_leaf_paying_the_lsps_script`."""
    common = {"plugin": str(plugin_path), "superscalar-profile": "regtest"}
    lsp = node_factory.get_node(options={**common, "superscalar-lsp": "true"})
    join = {**common, "superscalar-join": lsp.info["id"]}
    cheated = node_factory.get_node(options={**join, "superscalar-dev-fail-at": "client-other-leaf-script"})
    # lightningd's default log level: the check reads the in-memory log, which keeps debug lines anyway.
    honest = node_factory.get_node(options={**join, "log-level": "info"})
    lsp.fundwallet(5_000_000)
    for c in (cheated, honest):
        c.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    create_factory(lsp, [cheated, honest], bitcoind)
    before = channel_with(cheated, lsp)["to_us_msat"]
    with pytest.raises(RpcError):
        pay(lsp, cheated, 1_000, "into-foreign-leaf")
    cheated.daemon.wait_for_log("LEAF SCRIPT MISMATCH")
    [view] = views(cheated)
    assert view["state"] == "leaf_script_mismatch" and "not backed" in view["safety"]
    assert view["verified"]["leaf_script"]["status"] == "mismatch"
    wait_for(lambda: usable(cheated, lsp) == [])
    assert channel_with(cheated, lsp)["to_us_msat"] == before  # nothing was credited
    # The leaf-mate's channel verifies and takes payments.
    assert pay(lsp, honest, 1_000, "into-own-leaf") == 0
    assert views(honest)[0]["verified"]["leaf_script"]["status"] == "verified"


def test_client_catches_a_leaf_paying_the_lsps_script(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    """The real attack, by an LSP that is not Core Lightning (rogue_lsp.py): the leaf output the client
    signed pays a 2-of-2 of two keys of the LSP's, and the LSP opens the client's channel on exactly that
    outpoint, with valid commitment signatures. Once the client's channeld has signed a commitment (its
    first payment), the client sees that its channel's 2-of-2 is not what the leaf pays."""
    import hashlib

    from superscalar.factory.params import regtest_params

    from .rogue_lsp import RogueLsp, point

    secret = hashlib.sha256(b"rogue lsp node").digest()
    client = node_factory.get_node(options={"plugin": str(plugin_path), "superscalar-profile": "regtest",
                                            "superscalar-join": point(secret).hex()})
    rogue = RogueLsp(secret, client.info["id"], "127.0.0.1", client.port)
    try:
        rogue.handshake()
        done = rogue.run(regtest_params(1, client.rpc.getinfo()["blockheight"]), 20_000, 100_000)
        # The client took the channel as its factory channel: its funding outpoint is the signed leaf's.
        wait_for(lambda: [ch["state"] for ch in views(client)[0]["channels"]] == ["CHANNELD_NORMAL"])
        [view] = views(client)
        assert view["channels"][0]["funding_outpoint"] == done["leaf_outpoint"]
        assert view["verified"]["leaf_script"]["status"] == "unverified"
        # Its first payment makes its channeld sign a commitment (the LSP never answers it).
        [ch] = client.rpc.listpeerchannels()["channels"]
        route = [{"id": rogue.node_id, "channel": ch["alias"]["local"], "amount_msat": 1_000, "delay": 20}]
        client.rpc.sendpay(route, "00" * 32, payment_secret="11" * 32)
        client.daemon.wait_for_log("Creating commit_sig signature")
        bitcoind.generate_block(1)
        client.daemon.wait_for_log("LEAF SCRIPT MISMATCH")
        [view] = views(client)
        assert view["state"] == "leaf_script_mismatch"
        assert done["leaf_script"] in view["verified"]["leaf_script"]["reason"]
        wait_for(lambda: usable(client, rogue_peer(rogue)) == [])
    finally:
        rogue.close()


class rogue_peer:
    """Stands in for a pyln node where a helper wants `peer.info["id"]`."""

    def __init__(self, rogue: Any) -> None:
        self.info = {"id": rogue.node_id}


def test_lsp_killed_mid_ceremony_leaves_nothing(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    """kill -9 of the LSP's lightningd while the clients sign: after its restart no input stays reserved,
    no channel or record is left on either side, and the next factory is created and funded."""
    lsp, clients = network(node_factory, plugin_path, 2, "lsp-kill-mid-ceremony")
    with pytest.raises(Exception):
        lsp.rpc.call("superscalar-create", {"clients": spec(clients)})
    killed(lsp)
    assert bitcoind.rpc.getrawmempool() == []
    del lsp.daemon.opts["superscalar-dev-fail-at"]
    lsp.start()
    wait_for(lambda: lsp.daemon.is_in_log("released the inputs of a funding whose ceremony never completed"))
    assert not any(o.get("reserved") for o in lsp.rpc.listfunds()["outputs"])
    for node in (lsp, *clients):
        wait_for(lambda: node.rpc.listpeerchannels()["channels"] == [])
        assert node.rpc.listdatastore(["superscalar", "factories"])["datastore"] == []
        assert views(node) == []
    for c in clients:
        c.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    res = lsp.rpc.call("superscalar-create", {"clients": spec(clients)})
    assert res["funding_txid"] in bitcoind.rpc.getrawmempool()


def test_htlc_check_that_errors_fails_closed(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    """If the client's HTLC check itself fails (here: a factory record it cannot read, found when the
    plugin starts and indexes its records), the HTLC is failed, not let through: it may be one that
    nothing backs. The plugin still starts (it does not leave every HTLC unchecked)."""
    common = {"plugin": str(plugin_path), "superscalar-profile": "regtest"}
    lsp = node_factory.get_node(options={**common, "superscalar-lsp": "true"}, may_reconnect=True)
    client = node_factory.get_node(options={**common, "superscalar-join": lsp.info["id"]}, may_reconnect=True,
                                   broken_log="htlc_accepted check|funding watch|unknown schema version")
    lsp.fundwallet(5_000_000)
    client.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    create_factory(lsp, [client], bitcoind)
    assert pay(lsp, client, 1_000, "before") == 0
    wait_for(lambda: channel_with(client, lsp)["to_us_msat"] == (50_000 + 1_000) * 1000)  # settled on its side too
    client.rpc.datastore(key=["superscalar", "factories", "ff" * 32, "factory"],
                         string='{"schema": 99, "data": {}}')
    client.restart()
    client.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    wait_for(lambda: channel_with(client, lsp)["state"] == "CHANNELD_NORMAL" and channel_with(client, lsp)["peer_connected"])
    before = channel_with(client, lsp)["to_us_msat"]
    with pytest.raises(RpcError):
        pay(lsp, client, 1_000, "after")
    client.daemon.wait_for_log("the factory channel check failed")
    assert channel_with(client, lsp)["to_us_msat"] == before
