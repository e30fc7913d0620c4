"""A factory ceremony that cannot finish aborts cleanly: a clear error, no funding transaction, the
LSP's reserved inputs free again, no channel left behind. Malformed messages change nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pyln.client import RpcError
from pyln.testing.utils import wait_for


pytestmark = pytest.mark.lightningd

MODES = ["propose-refuse", "propose-disconnect", "aggnonces-disconnect", "signatures-disconnect"]


def reserved(node: Any) -> int:
    return sum(1 for o in node.rpc.listfunds()["outputs"] if o.get("reserved"))


def test_failed_ceremonies_leave_nothing_behind(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    common = {"plugin": str(plugin_path), "superscalar-profile": "regtest", "superscalar-timeout": "30"}
    lsp = node_factory.get_node(options={**common, "superscalar-lsp": "true"}, may_reconnect=True)
    good = node_factory.get_node(options={**common, "superscalar-join": lsp.info["id"]}, may_reconnect=True)
    failing = [node_factory.get_node(options={**common, "superscalar-join": lsp.info["id"],
                                              "superscalar-dev-fail-at": mode}, may_reconnect=True)
               for mode in MODES]
    stranger = node_factory.get_node(options={**common, "superscalar-join": "02" + "33" * 32})
    lsp.fundwallet(10_000_000)
    for c in (good, *failing, stranger):
        c.rpc.connect(lsp.info["id"], "localhost", lsp.port)

    def attempt(client: Any) -> str:
        spec = [{"id": n.info["id"], "balance_sat": 10_000, "inbound_sat": 100_000} for n in (good, client)]
        with pytest.raises(RpcError) as exc:
            lsp.rpc.call("superscalar-create", {"clients": spec})
        assert exc.value.error["code"] == 1700
        return str(exc.value.error["message"])

    # A client that does not join factories of this LSP never says hello: it is not even invited.
    assert "have not spoken SuperScalar" in attempt(stranger)
    for mode, client in zip(MODES, failing):
        message = attempt(client)
        if mode == "propose-refuse":
            assert "refusing the proposal" in message
        else:
            assert "disconnected" in message, message
        # Nothing was broadcast, every reserved input is free again, no channel is left open.
        assert bitcoind.rpc.getrawmempool() == []
        wait_for(lambda: reserved(lsp) == 0)
        wait_for(lambda: lsp.rpc.listpeerchannels()["channels"] == [])
        assert good.rpc.listpeerchannels()["channels"] == []
        assert lsp.rpc.call("superscalar-list")["factories"] == []
        # The ceremony's scratch records are gone from the LSP's datastore.
        assert lsp.rpc.listdatastore(["superscalar", "factories"])["datastore"] == []
        if "disconnect" in mode:
            client.rpc.connect(lsp.info["id"], "localhost", lsp.port)

    # The same LSP and client still create a factory afterwards.
    spec = [{"id": good.info["id"], "balance_sat": 10_000, "inbound_sat": 100_000}]
    assert lsp.rpc.call("superscalar-create", {"clients": spec})["funding_txid"] in bitcoind.rpc.getrawmempool()


def test_malformed_and_stray_messages_change_nothing(node_factory: Any, plugin_path: Path) -> None:
    from superscalar.protocol.wire import Done, Nonces, SUPERSCALAR_MSG_TYPE, encode_message

    a, b = node_factory.line_graph(2, opts={"plugin": str(plugin_path), "superscalar-lsp": "true"}, fundchannel=False)
    header = SUPERSCALAR_MSG_TYPE.to_bytes(2, "big")
    junk = [
        header,  # no version
        header + b"\x09\x00\x01",  # unsupported version
        header + b"\x01\xff\xff",  # unknown message kind
        header + b"\x01\x00\x02" + b"\x00" * 7,  # truncated TLV stream
        encode_message(Done(b"\x01" * 32, b"\x02" * 32)),  # well formed, for no known factory
        encode_message(Nonces(b"\x01" * 32, b"\x02" * 32, (b"\x02" + b"\x11" * 65,))),
    ]
    for payload in junk:
        b.rpc.sendcustommsg(a.info["id"], payload.hex())
    # The plugin logged and ignored them; it still answers, and knows of no factory.
    a.daemon.wait_for_log("malformed superscalar message")
    assert a.rpc.call("superscalar-getinfo")["factories"] == 0
    assert a.rpc.call("superscalar-list") == {"factories": []}


def test_lsp_restart_before_funding_resumes_broadcast(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    from .test_factory_plugin import channel_with, pay

    common = {"plugin": str(plugin_path), "superscalar-profile": "regtest"}
    lsp = node_factory.get_node(options={**common, "superscalar-lsp": "true",
                                         "superscalar-dev-fail-at": "lsp-before-broadcast"},
                                may_reconnect=True)
    clients = [node_factory.get_node(options={**common, "superscalar-join": lsp.info["id"]}, may_reconnect=True)
               for _ in range(2)]
    lsp.fundwallet(10_000_000)
    for c in clients:
        c.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    spec = [{"id": c.info["id"], "balance_sat": 10_000, "inbound_sat": 100_000} for c in clients]
    # The plugin stops after every channel exists and before the funding goes out.
    with pytest.raises(RpcError):
        lsp.rpc.call("superscalar-create", {"clients": spec})
    assert bitcoind.rpc.getrawmempool() == []
    lsp.restart()
    for c in clients:
        c.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    # On its first block after the restart the LSP finds the recorded factory whose channels all
    # exist, and funds it.
    bitcoind.generate_block(1)
    wait_for(lambda: lsp.rpc.call("superscalar-list")["factories"][0]["state"] == "open")
    funding = lsp.rpc.call("superscalar-list")["factories"][0]["funding_outpoint"].split(":")[0]
    wait_for(lambda: funding in bitcoind.rpc.getrawmempool() or
             bitcoind.rpc.getrawtransaction(funding, True).get("confirmations", 0) > 0)
    bitcoind.generate_block(1)
    assert bitcoind.rpc.getrawtransaction(funding, True)["confirmations"] >= 1
    for c in clients:
        wait_for(lambda: channel_with(c, lsp)["state"] == "CHANNELD_NORMAL" and channel_with(c, lsp)["peer_connected"])
    assert pay(lsp, clients[0], 1_000, "after-resume") == 0


def test_client_refuses_payment_into_a_non_leaf_channel(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    from .test_factory_plugin import channel_with, pay

    common = {"plugin": str(plugin_path), "superscalar-profile": "regtest"}
    lsp = node_factory.get_node(options={**common, "superscalar-lsp": "true", "superscalar-dev-fail-at": "lsp-fake-leaf"})
    clients = [node_factory.get_node(options={**common, "superscalar-join": lsp.info["id"]}) for _ in range(2)]
    lsp.fundwallet(10_000_000)
    for c in clients:
        c.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    spec = [{"id": c.info["id"], "balance_sat": 10_000, "inbound_sat": 100_000} for c in clients]
    lsp.rpc.call("superscalar-create", {"clients": spec})
    # The misbehaving LSP completed its client 0's channel (the client with the lower factory key)
    # with some other transaction: that client does not count it as part of the factory, and refuses
    # to receive into it.
    views = [c.rpc.call("superscalar-list")["factories"] for c in clients]
    assert sorted(len(v[0]["channels"]) for v in views) == [0, 1]
    cheated, honest = sorted(clients, key=lambda c: len(views[clients.index(c)][0]["channels"]))
    assert channel_with(cheated, lsp)["state"] == "CHANNELD_NORMAL"
    with pytest.raises(RpcError):
        pay(lsp, cheated, 1_000, "into-fake")
    cheated.daemon.wait_for_log("not backed by a funded factory leaf")
    assert channel_with(cheated, lsp)["to_us_msat"] == 10_000_000
    # The honest leaf channel works.
    assert pay(lsp, honest, 1_000, "into-leaf") == 0
