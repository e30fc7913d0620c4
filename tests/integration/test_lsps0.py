"""LSPS0 (bLIP-50) on real lightningd: the LSP answers requests over message 37913 with the spec's
results and errors, leaves other plugins' methods alone, publishes its SuperScalar terms, queues a
client that asks to join, and invites no peer that has not spoken SuperScalar."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from pyln.client import RpcError
from pyln.testing.utils import wait_for

pytestmark = pytest.mark.lightningd

PROBE = Path(__file__).parent / "lsps_probe_plugin.py"


def answers(node: Any, count: int) -> list[dict[str, Any]]:
    wait_for(lambda: len(node.rpc.call("probe-inbox")["messages"]) >= count)
    return [m["body"] for m in node.rpc.call("probe-inbox")["messages"]]


def test_lsps0_answers_errors_and_passes_through(node_factory: Any, plugin_path: Path) -> None:
    lsp = node_factory.get_node(options={"plugin": [str(plugin_path), str(PROBE)], "superscalar-profile": "regtest",
                                         "superscalar-lsp": "true", "superscalar-lsps-others": "lsps5"})
    raw = node_factory.get_node(options={"plugin": str(PROBE)})  # a wallet speaking LSPS by hand
    raw.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    lsp_id = lsp.info["id"]
    sent = [
        '{"jsonrpc":"2.0","method":"lsps0.list_protocols","params":{},"id":"a1"}',
        '{"jsonrpc":"2.0","method":"lsps0.list_protocols","params":{},',  # cut short
        '{} {}',
        '[{"jsonrpc":"2.0","method":"lsps0.list_protocols","params":{},"id":"batch"}]',
        "hex:" + b'{"jsonrpc":"2.0","method":"lsps0.list_protocols","id":"nul"}\x00'.hex(),
        '{"method":"lsps0.list_protocols","params":{},"id":"a2"}',
        '{"jsonrpc":"2.0","method":"lsps0.list_protocols","params":[],"id":"a3"}',
        '{"jsonrpc":"2.0","method":"lsps9.unknown","params":{},"id":"a4"}',
        '{"jsonrpc":"2.0","method":"superscalar.get_info","params":{"future":1},"id":"a5"}',
        '{"jsonrpc":"2.0","method":"superscalar.join","params":{"inbound_sat":"100000"},"id":"a6"}',
        '{"jsonrpc":"2.0","method":"lsps5.list_webhooks","params":{},"id":"a7"}',
        '{"jsonrpc":"2.0","method":"superscalar.get_info","params":{},"id":"a8"}',
    ]
    for text in sent:
        raw.rpc.call("probe-send", {"peer": lsp_id, "text": text})
    answers(raw, len(sent))
    time.sleep(1)  # nothing more comes: exactly one answer per request, the lsps5 one from the probe alone
    got = answers(raw, len(sent))
    assert len(got) == len(sent), got
    by_id: dict[Any, list[dict[str, Any]]] = {}
    for body in got:
        by_id.setdefault(body.get("id"), []).append(body)
    # LSPS2 (JIT channels), and LSPS5 answered by the other plugin; our own methods in a field of their own
    assert by_id["a1"] == [{"jsonrpc": "2.0", "id": "a1", "result": {
        "protocols": [2, 5], "superscalar": {"methods": ["superscalar.get_info", "superscalar.join"]}}}]
    parse_errors = by_id[None]
    # cut short, two objects, an array, a NUL byte, no jsonrpc, params an array: not a request (bLIP-50)
    assert len(parse_errors) == 6 and "a2" not in by_id and "a3" not in by_id
    assert all(b["error"] == {"code": -32700, "message": "parse error"} for b in parse_errors)
    assert by_id["a4"][0]["error"]["code"] == -32601
    assert by_id["a5"][0]["error"] == {"code": -32602, "message": "Invalid params", "data": {"unrecognized": ["future"]}}
    assert by_id["a6"][0]["error"]["code"] == -31001  # no ladder: this LSP forms no factory by itself
    assert by_id["a7"] == [{"jsonrpc": "2.0", "id": "a7", "result": {"answered_by": "probe"}}]
    terms = by_id["a8"][0]["result"]
    assert terms["version"] == 1 and terms["network"] == "regtest"
    assert terms["factory"]["lifetime_blocks"] == terms["factory"]["active_blocks"] + terms["factory"]["dying_blocks"]
    assert terms["join"]["offered"] is False
    assert lsp.daemon.is_in_log("LSPS: bad message format from")
    # the LSP's own probe saw every request too: the message type is shared, nothing is swallowed
    assert len(lsp.rpc.call("probe-inbox")["messages"]) == len(sent)


def test_client_terms_join_and_ladder_start(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    common = {"plugin": str(plugin_path), "superscalar-profile": "regtest"}
    lsp = node_factory.get_node(options={**common, "superscalar-lsp": "true", "superscalar-ladder": "true",
                                         "superscalar-ladder-interval-blocks": "3",
                                         "superscalar-lsp-join-max-inbound-sat": "300000"})
    clients = node_factory.get_nodes(2, opts={**common, "superscalar-join": lsp.info["id"]})
    for c in clients:
        c.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    lsp.fundwallet(10_000_000)
    seen = clients[0].rpc.call("superscalar-terms", {"id": lsp.info["id"]})
    # a ladder with a wait bound sells LSPS1; LSPS5 (webhooks) is served by default
    assert seen["protocols"] == [1, 2, 5] and seen["terms"]["join"] == {
        "offered": True, "interval_blocks": 3, "min_inbound_sat": "20000", "max_inbound_sat": "300000",
        "max_waiting": 100}
    with pytest.raises(RpcError) as e:
        clients[0].rpc.call("superscalar-join-next", {"id": lsp.info["id"], "inbound_sat": 300_001})
    assert e.value.error["code"] == 1702 and "error -31002" in e.value.error["message"]
    assert lsp.rpc.call("superscalar-ladder")["waiting"] == []  # nothing queued by a refused join
    for c, inbound in zip(clients, (150_000, 250_000)):
        joined = c.rpc.call("superscalar-join-next", {"id": lsp.info["id"], "inbound_sat": inbound})
        assert joined["inbound_sat"] == str(inbound)
    waiting = lsp.rpc.call("superscalar-ladder")["waiting"]
    assert sorted((w["node_id"], w["inbound_sat"]) for w in waiting) == sorted(
        (c.info["id"], i) for c, i in zip(clients, (150_000, 250_000)))
    bitcoind.generate_block(1)  # the ladder starts a factory for them by itself
    wait_for(lambda: len(lsp.rpc.call("superscalar-ladder")["started"]) == 1)
    for c, inbound in zip(clients, (150_000, 250_000)):
        [ch] = c.rpc.listpeerchannels(lsp.info["id"])["channels"]
        assert ch["total_msat"] == inbound * 1000 and ch["to_us_msat"] == 0


def test_create_refuses_a_silent_peer_at_once(node_factory: Any, plugin_path: Path) -> None:
    lsp = node_factory.get_node(options={"plugin": str(plugin_path), "superscalar-profile": "regtest",
                                         "superscalar-lsp": "true"})
    plain = node_factory.get_node()  # no plugin: it never speaks SuperScalar
    plain.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    lsp.fundwallet(1_000_000)
    start = time.monotonic()
    with pytest.raises(RpcError) as e:
        lsp.rpc.call("superscalar-create", {"clients": [{"id": plain.info["id"], "inbound_sat": 100_000}]})
    took = time.monotonic() - start
    assert e.value.error["code"] == 1700 and "have not spoken SuperScalar" in e.value.error["message"]
    print(f"superscalar-create refused a plain peer after {took:.1f} s (the ceremony timeout is 60 s)")
    assert not any(o.get("reserved") for o in lsp.rpc.listfunds()["outputs"])
    assert lsp.rpc.listpeerchannels()["channels"] == [] and lsp.rpc.call("superscalar-list")["factories"] == []
    assert json.dumps(plain.rpc.listpeerchannels()["channels"]) == "[]"


def test_client_moves_to_another_lsps_factory(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    """A client of two LSPs chooses where it rolls over: a place in LSP 2's next factory, then paid on
    chain by LSP 1's rollover; its leaf-mate is carried over by LSP 1 as usual."""
    from .test_close_rollover import mine_until, record, wallet_sat
    from .test_factory_plugin import create_factory

    common = {"plugin": str(plugin_path), "superscalar-profile": "regtest"}
    lsp1 = node_factory.get_node(options={**common, "superscalar-lsp": "true"}, may_reconnect=True)
    lsp2 = node_factory.get_node(options={**common, "superscalar-lsp": "true", "superscalar-ladder": "true",
                                          "superscalar-ladder-interval-blocks": "3"}, may_reconnect=True)
    clients = node_factory.get_nodes(2, opts={**common, "may_reconnect": True,
                                              "superscalar-join": f"{lsp1.info['id']},{lsp2.info['id']}"})
    for c in clients:
        c.rpc.connect(lsp1.info["id"], "localhost", lsp1.port)
    lsp1.fundwallet(10_000_000)
    lsp2.fundwallet(10_000_000)
    fid = create_factory(lsp1, clients, bitcoind)["factory_id"]
    mover, stayer = clients
    mover.rpc.connect(lsp2.info["id"], "localhost", lsp2.port)
    with pytest.raises(RpcError, match="own LSP"):
        mover.rpc.call("superscalar-move", {"factory_id": fid, "id": lsp1.info["id"], "inbound_sat": 100_000})
    moved = mover.rpc.call("superscalar-move", {"factory_id": fid, "id": lsp2.info["id"], "inbound_sat": 120_000})
    assert moved["join"]["inbound_sat"] == "120000" and moved["leave"]["lsp"] == lsp1.info["id"]
    lsp1.daemon.wait_for_log(f"client {mover.info['id']} asked to leave")
    [mover_ch] = mover.rpc.listpeerchannels(lsp1.info["id"])["channels"]
    balance_sat = int(mover_ch["to_us_msat"]) // 1000
    before = wallet_sat(mover)
    out = lsp1.rpc.call("superscalar-rollover", {"factory_id": fid, "leave": [mover.info["id"]]})
    assert out["payouts_sat"] == {mover.info["id"]: balance_sat}
    nodes = [lsp1, lsp2, *clients]
    mine_until(bitcoind, nodes, lambda: record(lsp1, fid)["close"]["status"] == "confirmed")
    wait_for(lambda: wallet_sat(mover) - before == balance_sat)
    # LSP 2's ladder formed its factory with the mover by itself; the stayer is in LSP 1's next factory
    mine_until(bitcoind, nodes, lambda: len(lsp2.rpc.call("superscalar-ladder")["started"]) == 1)
    wait_for(lambda: [c["state"] for c in mover.rpc.listpeerchannels(lsp2.info["id"])["channels"]]
             == ["CHANNELD_NORMAL"])
    [new] = mover.rpc.listpeerchannels(lsp2.info["id"])["channels"]
    assert int(new["total_msat"]) == 120_000_000 and int(new["to_us_msat"]) == 0
    assert any(f["role"] == "client" and f["factory_id"] == out["next_factory"]
               for f in stayer.rpc.call("superscalar-list")["factories"])
    assert out["next_factory"] not in [f["factory_id"] for f in mover.rpc.call("superscalar-list")["factories"]]


def test_lsp_sets_feature_bit_729_clients_do_not(node_factory: Any, plugin_path: Path) -> None:
    """bLIP-50: an LSP MAY set bit 729 in init and node_announcement; clients MUST NOT. The bit comes
    from superscalar_lsps_feature.py, which the LSP loads; a client (the main plugin alone) sets none,
    and one that loads it by mistake is told to remove it."""
    feature = plugin_path.parent / "superscalar_lsps_feature.py"
    lsp = node_factory.get_node(options={"plugin": [str(plugin_path), str(feature)], "superscalar-profile": "regtest",
                                         "superscalar-lsp": "true"})
    client = node_factory.get_node(options={"plugin": str(plugin_path), "superscalar-profile": "regtest"})
    client.rpc.connect(lsp.info["id"], "localhost", lsp.port)

    def has_729(hexbits: str) -> bool:
        return (int(hexbits or "0", 16) >> 729) & 1 == 1
    ours = lsp.rpc.getinfo()["our_features"]
    assert has_729(ours["init"]) and has_729(ours["node"])
    assert not any(has_729(bits) for bits in client.rpc.getinfo()["our_features"].values())
    [peer] = client.rpc.listpeers(lsp.info["id"])["peers"]
    assert has_729(peer["features"])  # sent in init
    [back] = lsp.rpc.listpeers(client.info["id"])["peers"]
    assert not has_729(back["features"])
    wrong = node_factory.get_node(options={"plugin": [str(plugin_path), str(feature)],
                                           "superscalar-profile": "regtest"}, allow_broken_log=False)
    assert wrong.daemon.is_in_log("superscalar_lsps_feature.py: Killing plugin: disabled itself at init: "
                                  "this node is not an LSP")
    assert wrong.daemon.is_in_log("UNUSUAL.*remove this plugin from the configuration")
