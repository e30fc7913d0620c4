"""LSPS1 (bLIP-51) on real lightningd: clients buy inbound with superscalar-buy-inbound (get_info,
create_order, paying the LSP's hold invoice over a plain channel they funded), the LSP forms a factory
by itself when its batch is full, and every order shows COMPLETED with the factory channel that filled
it. Bad orders get the spec's errors and reserve nothing."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from pyln.client import RpcError
from pyln.testing.utils import sync_blockheight, wait_for

pytestmark = pytest.mark.lightningd

PROBE = Path(__file__).parent / "lsps_probe_plugin.py"
BATCH = 6
WAIT = 30  # batch-wait-blocks: never reached here, the size fills first


def lsp_options(plugin_path: Path, **more: Any) -> dict[str, Any]:
    return {"plugin": str(plugin_path), "superscalar-profile": "regtest", "superscalar-lsp": "true",
            "superscalar-ladder": "true", "superscalar-ladder-interval-blocks": "0",
            "superscalar-batch-size": str(BATCH), "superscalar-batch-wait-blocks": str(WAIT), **more}


def order_docs(lsp: Any) -> list[str]:
    docs = lsp.rpc.call("listdatastore", {"key": ["superscalar", "docs"]})["datastore"]
    return [e["key"][2] for e in docs if len(e["key"]) > 2 and e["key"][2].startswith("lsps1-order-")]


def paying_client(node_factory: Any, bitcoind: Any, plugin_path: Path, lsp: Any, **more: Any) -> Any:
    """A client that can pay: a plain channel to the LSP funded from its own wallet."""
    c = node_factory.get_node(options={"plugin": str(plugin_path), "superscalar-profile": "regtest",
                                       "superscalar-join": lsp.info["id"]}, **more)
    c.fundwallet(1_000_000)
    c.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    c.rpc.fundchannel(lsp.info["id"], 300_000)
    bitcoind.generate_block(6)
    sync_blockheight(bitcoind, [lsp, c])
    wait_for(lambda: [ch["state"] for ch in c.rpc.listpeerchannels(lsp.info["id"])["channels"]] == ["CHANNELD_NORMAL"])
    return c


def test_six_orders_paid_and_filled_by_one_factory(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    lsp = node_factory.get_node(options=lsp_options(plugin_path))
    lsp_id = lsp.info["id"]
    clients = node_factory.get_nodes(BATCH, opts={"plugin": str(plugin_path), "superscalar-profile": "regtest",
                                                  "superscalar-join": lsp_id})
    lsp.fundwallet(10_000_000)
    for c in clients:  # each client can pay: a plain channel to the LSP, funded from its own wallet
        c.fundwallet(1_000_000)
        c.rpc.connect(lsp_id, "localhost", lsp.port)
    for c in clients:
        c.rpc.fundchannel(lsp_id, 300_000)
    bitcoind.generate_block(6)
    sync_blockheight(bitcoind, [lsp, *clients])
    for c in clients:
        wait_for(lambda: all(ch["state"] == "CHANNELD_NORMAL" for ch in c.rpc.listpeerchannels(lsp_id)["channels"]))

    wanted = [(100_000 + 50_000 * i, 10_000 * (i % 3)) for i in range(BATCH)]  # (inbound, balance) per client
    fee = [1_000 + -(-inbound * 10_000 // 1_000_000) for inbound, _ in wanted]  # the default price
    orders = []
    for i, (c, (inbound, balance)) in enumerate(zip(clients, wanted)):
        bought = c.rpc.call("superscalar-buy-inbound", {"id": lsp_id, "lsp_balance_sat": inbound,
                                                        "client_balance_sat": balance})
        order = bought["order"]
        assert order["order_state"] == "CREATED" and order["channel"] is None
        assert order["payment"]["bolt11"]["state"] == "HOLD", bought  # paid, held by the LSP
        assert order["lsp_balance_sat"] == str(inbound) and order["client_balance_sat"] == str(balance)
        assert order["payment"]["bolt11"]["fee_total_sat"] == str(fee[i])
        assert order["payment"]["bolt11"]["order_total_sat"] == str(fee[i] + balance)
        assert set(order["payment"]) == {"bolt11"} and order["announce_channel"] is False
        orders.append(order)
        if i < BATCH - 1:  # fewer than the batch wait: the LSP starts nothing, whatever the blocks
            bitcoind.generate_block(1)
            sync_blockheight(bitcoind, [lsp])
            assert lsp.rpc.call("superscalar-ladder")["started"] == []
    waiting = lsp.rpc.call("superscalar-ladder")["waiting"]
    assert sorted((w["node_id"], w["inbound_sat"], w["balance_sat"]) for w in waiting) == sorted(
        (c.info["id"], inbound, balance) for c, (inbound, balance) in zip(clients, wanted))

    full_at = time.monotonic()
    bitcoind.generate_block(1)  # the batch is full: the LSP forms the factory by itself on this block
    wait_for(lambda: len(lsp.rpc.call("superscalar-ladder")["started"]) == 1)
    [factory_id] = lsp.rpc.call("superscalar-ladder")["started"]
    for c, order, (inbound, balance), f in zip(clients, orders, wanted, fee):
        wait_for(lambda: c.rpc.call("superscalar-order", {"id": lsp_id, "order_id": order["order_id"]})
                 ["order"]["order_state"] == "COMPLETED")
        done = c.rpc.call("superscalar-order", {"id": lsp_id, "order_id": order["order_id"]})["order"]
        assert done["payment"]["bolt11"]["state"] == "PAID"
        outpoint = done["channel"]["funding_outpoint"]
        [ch] = [ch for ch in c.rpc.listpeerchannels(lsp_id)["channels"]
                if f"{ch['funding_txid']}:{ch['funding_outnum']}" == outpoint]
        assert ch["total_msat"] == (inbound + balance) * 1000 and ch["to_us_msat"] == balance * 1000
        [mine] = [x for x in c.rpc.call("superscalar-list")["factories"] if x["factory_id"] == factory_id]
        [inv] = lsp.rpc.listinvoices(f"lsps1-{order['order_id']}")["invoices"]
        assert inv["status"] == "paid" and inv["amount_received_msat"] == (f + balance) * 1000
        wait_for(lambda: [p["status"] for p in c.rpc.listpays(inv["bolt11"])["pays"]] == ["complete"])
    completed_at = time.monotonic()
    # the inbound bought is usable: the LSP pays each client more than the plain channel could carry
    # to it (the LSP's side there is only what the client paid), so over the factory channel
    for i, c in enumerate(clients):
        wait_for(lambda: all(ch["state"] == "CHANNELD_NORMAL" for ch in c.rpc.listpeerchannels(lsp_id)["channels"]))
        inv = c.rpc.call("invoice", {"amount_msat": 60_000_000, "label": "inbound", "description": "inbound"})
        lsp.rpc.call("xpay", {"invstring": inv["bolt11"]})
        assert c.rpc.listinvoices("inbound")["invoices"][0]["status"] == "paid"
    print(f"LSPS1 on regtest: batch full -> {BATCH} orders COMPLETED {completed_at - full_at:.2f} s, -> inbound "
          f"used by every client {time.monotonic() - full_at:.2f} s")
    assert lsp.rpc.call("superscalar-ladder")["waiting"] == []
    assert not any(n.daemon.is_in_log(r"\*\*BROKEN\*\*") for n in [lsp, *clients])


def test_bad_orders_get_spec_errors_reserve_nothing(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    lsp = node_factory.get_node(options={**lsp_options(plugin_path), "plugin": [str(plugin_path), str(PROBE)]})
    raw = node_factory.get_node(options={"plugin": str(PROBE)})  # a wallet speaking LSPS1 by hand
    raw.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    good = {"lsp_balance_sat": "200000", "client_balance_sat": "0", "required_channel_confirmations": 1,
            "funding_confirms_within_blocks": WAIT + 6, "channel_expiry_blocks": 24, "announce_channel": False}
    sent: list[tuple[str, str, dict[str, Any]]] = [
        ("info", "lsps1.get_info", {}),
        ("unknown", "lsps1.get_order", {"order_id": "bb4b5d0a-8334-49d8-9463-90a6d413af7c"}),
        ("malformed", "lsps1.create_order", {**good, "lsp_balance_sat": 200000}),
        ("notbool", "lsps1.create_order", {**good, "announce_channel": "false"}),
        ("extra", "lsps1.create_order", {**good, "colour": "blue"}),
        ("missing", "lsps1.create_order", {k: v for k, v in good.items() if k != "channel_expiry_blocks"}),
        ("below", "lsps1.create_order", {**good, "lsp_balance_sat": "99999"}),
        ("above", "lsps1.create_order", {**good, "lsp_balance_sat": "10000001"}),
        ("client", "lsps1.create_order", {**good, "client_balance_sat": "1000001"}),
        ("zeroconf", "lsps1.create_order", {**good, "required_channel_confirmations": 0}),
        ("lease", "lsps1.create_order", {**good, "channel_expiry_blocks": 25}),
        ("token", "lsps1.create_order", {**good, "token": "SUMMER"}),
    ]
    for request_id, method, params in sent:
        raw.rpc.call("probe-send", {"peer": lsp.info["id"], "text": json.dumps(
            {"jsonrpc": "2.0", "method": method, "params": params, "id": request_id})})
    wait_for(lambda: len(raw.rpc.call("probe-inbox")["messages"]) >= len(sent))
    time.sleep(1)  # exactly one answer each
    got = {m["body"]["id"]: m["body"] for m in raw.rpc.call("probe-inbox")["messages"]}
    assert len(raw.rpc.call("probe-inbox")["messages"]) == len(sent)
    assert got["info"]["result"] == {
        "min_required_channel_confirmations": 1, "min_funding_confirms_within_blocks": WAIT + 6,
        "supports_zero_channel_reserve": False, "max_channel_expiry_blocks": 24,
        "min_initial_client_balance_sat": "0", "max_initial_client_balance_sat": "1000000",
        "min_initial_lsp_balance_sat": "100000", "max_initial_lsp_balance_sat": "10000000",
        "min_channel_balance_sat": "100000", "max_channel_balance_sat": "11000000"}
    assert got["unknown"]["error"] == {"code": 101, "message": "Not found", "data": {}}

    def error(request_id: str) -> tuple[int, Any]:
        return got[request_id]["error"]["code"], got[request_id]["error"].get("data")

    assert error("malformed") == (-32602, {"property": "lsp_balance_sat", "message": "Not an LSPS0.sat (a decimal string)"})
    assert error("notbool") == (-32602, {"property": "announce_channel", "message": "Not a boolean"})
    assert error("extra") == (-32602, {"unrecognized": ["colour"]})
    assert error("missing") == (-32602, {"property": "channel_expiry_blocks", "message": "Missing"})
    assert error("below")[0] == 100 and error("below")[1]["property"] == "min_initial_lsp_balance_sat"
    assert error("above")[0] == 100 and error("above")[1]["property"] == "max_initial_lsp_balance_sat"
    assert error("client")[1]["property"] == "max_initial_client_balance_sat"
    assert error("zeroconf")[1]["property"] == "min_required_channel_confirmations"
    assert error("lease")[1]["property"] == "max_channel_expiry_blocks"
    assert error("token") == (102, {})
    # nothing reserved: no invoice, no order, nobody queued for a factory
    assert lsp.rpc.listinvoices()["invoices"] == []
    assert order_docs(lsp) == []
    assert lsp.rpc.call("superscalar-ladder")["waiting"] == []
    # a client's command reports the LSP's error, and makes nothing either
    client = node_factory.get_node(options={"plugin": str(plugin_path), "superscalar-profile": "regtest",
                                            "superscalar-join": lsp.info["id"]})
    client.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    with pytest.raises(RpcError) as e:
        client.rpc.call("superscalar-buy-inbound", {"id": lsp.info["id"], "lsp_balance_sat": 50_000})
    assert "error 100" in e.value.error["message"] and "min_initial_lsp_balance_sat" in e.value.error["message"]
    with pytest.raises(RpcError) as e:
        client.rpc.call("superscalar-order", {"id": lsp.info["id"], "order_id": "nope"})
    assert "error 101" in e.value.error["message"]
    assert lsp.rpc.listinvoices()["invoices"] == [] and lsp.rpc.call("superscalar-ladder")["waiting"] == []
    assert not any(n.daemon.is_in_log(r"\*\*BROKEN\*\*") for n in [lsp, raw, client])


def test_unfilled_order_fails_and_refunds(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    """The LSP cannot form a factory (at most 0 alive): the held payment is failed back before it
    would time out, the order is FAILED, its payment REFUNDED, and the client keeps its money."""
    lsp = node_factory.get_node(options=lsp_options(plugin_path, **{"superscalar-ladder-max-alive": "0"}))
    lsp_id = lsp.info["id"]
    c = paying_client(node_factory, bitcoind, plugin_path, lsp)
    before = c.rpc.listpeerchannels(lsp_id)["channels"][0]["to_us_msat"]
    paid_height = bitcoind.rpc.getblockcount()
    bought = c.rpc.call("superscalar-buy-inbound", {"id": lsp_id, "lsp_balance_sat": 150_000,
                                                    "client_balance_sat": 5_000})
    order_id = bought["order"]["order_id"]
    assert bought["order"]["payment"]["bolt11"]["state"] == "HOLD"
    [htlc] = c.rpc.listpeerchannels(lsp_id)["channels"][0]["htlcs"]
    assert lsp.rpc.call("superscalar-ladder")["waiting"][0]["orders"] == [order_id]

    def state() -> tuple[str, str]:
        o = c.rpc.call("superscalar-order", {"id": lsp_id, "order_id": order_id})["order"]
        return o["order_state"], o["payment"]["bolt11"]["state"]

    # blocks pass (the batch wait too: the ladder may not start a factory) until the funding could no
    # longer confirm within the funding_confirms_within_blocks the order asked for
    deadline = paid_height + bought["order"]["funding_confirms_within_blocks"] - 1
    assert deadline < htlc["expiry"] - 6
    while bitcoind.rpc.getblockcount() < deadline - 1:
        bitcoind.generate_block(1)
    sync_blockheight(bitcoind, [lsp, c])
    assert state() == ("CREATED", "HOLD")
    bitcoind.generate_block(1)
    wait_for(lambda: state() == ("FAILED", "REFUNDED"))
    wait_for(lambda: c.rpc.listpeerchannels(lsp_id)["channels"][0]["htlcs"] == [])
    assert c.rpc.listpeerchannels(lsp_id)["channels"][0]["to_us_msat"] == before  # refunded to the msat
    wait_for(lambda: [p["status"] for p in c.rpc.listpays()["pays"]] == ["failed"])
    assert lsp.rpc.call("superscalar-ladder")["waiting"] == []  # withdrawn from the next factory
    assert [i["status"] for i in lsp.rpc.listinvoices()["invoices"]] == []  # cancelled
    assert lsp.rpc.call("superscalar-ladder")["started"] == []
    assert lsp.daemon.is_in_log(f"LSPS1: order {order_id} failed \\(no factory took the client within "
                                "funding_confirms_within_blocks\\); refunded")
    assert not any(n.daemon.is_in_log(r"\*\*BROKEN\*\*") for n in [lsp, c])


def test_held_order_survives_an_lsp_restart(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    """The order is durable and the held HTLC comes back through the hook after a restart: the batch
    fills after it and the order completes, its payment settled."""
    lsp = node_factory.get_node(options=lsp_options(plugin_path, **{"superscalar-batch-size": "2"}),
                                may_reconnect=True)
    lsp_id = lsp.info["id"]
    lsp.fundwallet(10_000_000)
    a, b = (paying_client(node_factory, bitcoind, plugin_path, lsp, may_reconnect=True) for _ in range(2))
    first = a.rpc.call("superscalar-buy-inbound", {"id": lsp_id, "lsp_balance_sat": 120_000})["order"]
    assert first["payment"]["bolt11"]["state"] == "HOLD"
    lsp.restart()
    for c in (a, b):
        c.rpc.connect(lsp_id, "localhost", lsp.port)
    lsp.daemon.wait_for_log(f"LSPS1: holding an HTLC of .* msat for order {first['order_id']}")  # replayed, held again
    wait_for(lambda: a.rpc.call("superscalar-order", {"id": lsp_id, "order_id": first["order_id"]})
             ["order"]["payment"]["bolt11"]["state"] == "HOLD")
    assert [w["orders"] for w in lsp.rpc.call("superscalar-ladder")["waiting"]] == [[first["order_id"]]]
    second = b.rpc.call("superscalar-buy-inbound", {"id": lsp_id, "lsp_balance_sat": 130_000})["order"]
    assert second["payment"]["bolt11"]["state"] == "HOLD"
    bitcoind.generate_block(1)
    wait_for(lambda: len(lsp.rpc.call("superscalar-ladder")["started"]) == 1)
    for c, order in ((a, first), (b, second)):
        wait_for(lambda: c.rpc.call("superscalar-order", {"id": lsp_id, "order_id": order["order_id"]})
                 ["order"]["order_state"] == "COMPLETED")
        done = c.rpc.call("superscalar-order", {"id": lsp_id, "order_id": order["order_id"]})["order"]
        assert done["payment"]["bolt11"]["state"] == "PAID"
        assert done["channel"]["funding_outpoint"] in {f"{ch['funding_txid']}:{ch['funding_outnum']}"
                                                       for ch in c.rpc.listpeerchannels(lsp_id)["channels"]}
        wait_for(lambda: [p["status"] for p in c.rpc.listpays()["pays"]] == ["complete"])
    assert [i["status"] for i in lsp.rpc.listinvoices()["invoices"]] == ["paid", "paid"]
    assert not any(n.daemon.is_in_log(r"\*\*BROKEN\*\*") for n in [lsp, a, b])


def test_batch_wait_forms_factory_for_one_order(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    """The other batching rule: a single paid order, the batch far from full, gets its factory once it
    has waited superscalar-batch-wait-blocks, with no operator command."""
    lsp = node_factory.get_node(options=lsp_options(plugin_path, **{"superscalar-batch-wait-blocks": "3"}))
    lsp_id = lsp.info["id"]
    lsp.fundwallet(10_000_000)
    c = paying_client(node_factory, bitcoind, plugin_path, lsp)
    order = c.rpc.call("superscalar-buy-inbound", {"id": lsp_id, "lsp_balance_sat": 100_000,
                                                   "client_balance_sat": 1_000})["order"]
    assert order["funding_confirms_within_blocks"] == 3 + 6  # the wait bound + 6, as get_info says
    [waiting] = lsp.rpc.call("superscalar-ladder")["waiting"]
    queued = waiting["since_height"]
    while bitcoind.rpc.getblockcount() < queued + 2:
        bitcoind.generate_block(1)
    sync_blockheight(bitcoind, [lsp])
    assert lsp.rpc.call("superscalar-ladder")["started"] == []  # waited 2 blocks of 3
    bitcoind.generate_block(1)
    wait_for(lambda: len(lsp.rpc.call("superscalar-ladder")["started"]) == 1)
    wait_for(lambda: c.rpc.call("superscalar-order", {"id": lsp_id, "order_id": order["order_id"]})
             ["order"]["order_state"] == "COMPLETED")
    done = c.rpc.call("superscalar-order", {"id": lsp_id, "order_id": order["order_id"]})["order"]
    [ch] = [ch for ch in c.rpc.listpeerchannels(lsp_id)["channels"]
            if f"{ch['funding_txid']}:{ch['funding_outnum']}" == done["channel"]["funding_outpoint"]]
    assert ch["total_msat"] == 101_000_000 and ch["to_us_msat"] == 1_000_000
    wait_for(lambda: [p["status"] for p in c.rpc.listpays()["pays"]] == ["complete"])
    assert not any(n.daemon.is_in_log(r"\*\*BROKEN\*\*") for n in [lsp, c])


def test_plain_wallet_order_gets_ordinary_channel(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    """A wallet that does not run SuperScalar (LSPS1 by hand, written from bLIP-51) orders inbound and
    pays the bolt11: it cannot join a factory, so the LSP opens it an ordinary channel from its own
    wallet, lsp_balance + client_balance with client_balance pushed, and releases the payment once the
    channel's funding is out; the order names that channel."""
    lsp = node_factory.get_node(options={**lsp_options(plugin_path), "plugin": [str(plugin_path), str(PROBE)]})
    lsp.fundwallet(10_000_000)
    raw = node_factory.get_node(options={"plugin": str(PROBE)})
    raw.fundwallet(1_000_000)
    raw.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    raw.rpc.fundchannel(lsp.info["id"], 300_000)  # to pay the order over
    bitcoind.generate_block(6)
    sync_blockheight(bitcoind, [lsp, raw])
    wait_for(lambda: [ch["state"] for ch in raw.rpc.listpeerchannels(lsp.info["id"])["channels"]] == ["CHANNELD_NORMAL"])

    def ask(request_id: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
        raw.rpc.call("probe-send", {"peer": lsp.info["id"], "text": json.dumps(
            {"jsonrpc": "2.0", "method": method, "params": params, "id": request_id})})
        wait_for(lambda: any(m["body"].get("id") == request_id for m in raw.rpc.call("probe-inbox")["messages"]))
        return next(m["body"] for m in raw.rpc.call("probe-inbox")["messages"] if m["body"].get("id") == request_id)

    assert 1 in ask("p", "lsps0.list_protocols", {})["result"]["protocols"]
    order = ask("o", "lsps1.create_order", {
        "lsp_balance_sat": "200000", "client_balance_sat": "10000", "required_channel_confirmations": 1,
        "funding_confirms_within_blocks": WAIT + 6, "channel_expiry_blocks": 24, "announce_channel": False})["result"]
    bolt11 = order["payment"]["bolt11"]
    assert order["order_state"] == "CREATED" and bolt11["state"] == "EXPECT_PAYMENT"
    paid = raw.rpc.call("xpay", {"invstring": bolt11["invoice"]})  # returns once the LSP released the HTLCs
    assert paid["amount_msat"] == int(bolt11["order_total_sat"]) * 1000
    done = ask("g", "lsps1.get_order", {"order_id": order["order_id"]})["result"]
    assert (done["order_state"], done["payment"]["bolt11"]["state"]) == ("COMPLETED", "PAID")
    outpoint = done["channel"]["funding_outpoint"]
    [ch] = [c for c in raw.rpc.listpeerchannels(lsp.info["id"])["channels"]
            if f"{c['funding_txid']}:{c['funding_outnum']}" == outpoint]
    assert ch["total_msat"] == 210_000_000 and ch["to_us_msat"] == 10_000_000 and ch["private"] is True
    assert lsp.rpc.call("superscalar-ladder")["waiting"] == []  # no factory for it
    bitcoind.generate_block(1)
    wait_for(lambda: [c["state"] for c in raw.rpc.listpeerchannels(lsp.info["id"])["channels"]
                      if f"{c['funding_txid']}:{c['funding_outnum']}" == outpoint] == ["CHANNELD_NORMAL"])
    inv = raw.rpc.call("invoice", {"amount_msat": 150_000_000, "label": "inbound", "description": "inbound"})
    lsp.rpc.call("xpay", {"invstring": inv["bolt11"]})  # more than the paying channel could take: the bought inbound
    assert raw.rpc.listinvoices("inbound")["invoices"][0]["status"] == "paid"
    assert not any(n.daemon.is_in_log(r"\*\*BROKEN\*\*") for n in [lsp, raw])


def test_plain_wallet_order_paid_on_chain(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    """bLIP-51 §3.3 from a plain wallet written from the spec: it gives a refund address, pays the
    order's on-chain address from its own wallet, and gets its ordinary channel once the payment has
    its confirmations. A second order, paid while the wallet is away and never filled, is swept back
    to its refund address, less the refund's fee, and shows REFUNDED."""
    lsp = node_factory.get_node(options={**lsp_options(plugin_path, **{"superscalar-batch-wait-blocks": "2"}),
                                         "plugin": [str(plugin_path), str(PROBE)]}, may_reconnect=True)
    lsp.fundwallet(10_000_000)
    raw = node_factory.get_node(options={"plugin": str(PROBE)}, may_reconnect=True)
    raw.fundwallet(1_000_000)
    raw.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    lsp_id = lsp.info["id"]

    def ask(request_id: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
        raw.rpc.call("probe-send", {"peer": lsp_id, "text": json.dumps(
            {"jsonrpc": "2.0", "method": method, "params": params, "id": request_id})})
        wait_for(lambda: any(m["body"].get("id") == request_id for m in raw.rpc.call("probe-inbox")["messages"]))
        return next(m["body"] for m in raw.rpc.call("probe-inbox")["messages"] if m["body"].get("id") == request_id)

    refund_to = raw.rpc.newaddr("bech32")["bech32"]
    within = ask("i", "lsps1.get_info", {})["result"]["min_funding_confirms_within_blocks"]
    order = ask("o", "lsps1.create_order", {
        "lsp_balance_sat": "200000", "client_balance_sat": "10000", "required_channel_confirmations": 1,
        "funding_confirms_within_blocks": within, "channel_expiry_blocks": 24, "announce_channel": False,
        "refund_onchain_address": refund_to})["result"]
    onchain = order["payment"]["onchain"]
    assert onchain["state"] == "EXPECT_PAYMENT" and onchain["refund_onchain_address"] == refund_to
    assert onchain["min_onchain_payment_confirmations"] == 1 and "min_fee_for_0conf" not in onchain
    raw.rpc.withdraw(onchain["address"], int(onchain["order_total_sat"]))
    bitcoind.generate_block(1, wait_for_mempool=1)

    def state(order_id: str, request_id: str) -> dict[str, Any]:
        return ask(request_id, "lsps1.get_order", {"order_id": order_id})["result"]

    n = iter(range(10_000))
    wait_for(lambda: state(order["order_id"], f"g{next(n)}")["order_state"] == "COMPLETED")
    done = state(order["order_id"], "done")
    assert (done["payment"]["onchain"]["state"], done["payment"]["bolt11"]["state"]) == ("PAID", "REFUNDED")
    outpoint = done["channel"]["funding_outpoint"]
    [ch] = [c for c in raw.rpc.listpeerchannels(lsp_id)["channels"]
            if f"{c['funding_txid']}:{c['funding_outnum']}" == outpoint]
    assert ch["total_msat"] == 210_000_000 and ch["to_us_msat"] == 10_000_000
    assert lsp.rpc.call("superscalar-ladder")["waiting"] == []
    bitcoind.generate_block(1, wait_for_mempool=1)  # the channel's funding

    # a second order, paid while the wallet is away: it cannot be opened in time and is swept back
    again = ask("o2", "lsps1.create_order", {
        "lsp_balance_sat": "200000", "client_balance_sat": "50000", "required_channel_confirmations": 1,
        "funding_confirms_within_blocks": within, "channel_expiry_blocks": 24, "announce_channel": False,
        "refund_onchain_address": refund_to})["result"]
    total = int(again["payment"]["onchain"]["order_total_sat"])
    raw.rpc.withdraw(again["payment"]["onchain"]["address"], total)
    wait_for(lambda: len(bitcoind.rpc.getrawmempool()) == 1)
    raw.stop()
    wait_for(lambda: not any(p["connected"] for p in lsp.rpc.listpeers(raw.info["id"])["peers"]))
    bitcoind.generate_block(1)
    sync_blockheight(bitcoind, [lsp])
    bitcoind.generate_block(within)
    sync_blockheight(bitcoind, [lsp])
    wait_for(lambda: len(bitcoind.rpc.getrawmempool()) == 1)  # the refund
    [refund_txid] = bitcoind.rpc.getrawmempool()
    refund = bitcoind.rpc.getrawtransaction(refund_txid, True)
    [out] = refund["vout"]
    paid_back = round(out["value"] * 100_000_000)
    assert out["scriptPubKey"]["address"] == refund_to and total - 5_000 < paid_back < total
    bitcoind.generate_block(1)
    raw.start()
    raw.rpc.connect(lsp_id, "localhost", lsp.port)
    gone = state(again["order_id"], "gone")
    assert (gone["order_state"], gone["payment"]["onchain"]["state"]) == ("FAILED", "REFUNDED")
    wait_for(lambda: any(o["txid"] == refund_txid for o in raw.rpc.listfunds()["outputs"]))
    assert not any(n.daemon.is_in_log(r"\*\*BROKEN\*\*") for n in [lsp, raw])


def test_wallet_refund_is_recorded_then_sent_once(node_factory: Any, bitcoind: Any) -> None:
    """The LSP's wallet pays a refund in two steps (lsp/orders.py `_publish`): signed, with its inputs
    reserved, and not sent (so it can be recorded first); then sent, as often as a restart makes it:
    the second send pays nothing more, and lightningd's wallet knows the transaction."""
    from superscalar.bitcoin.address import address_to_script
    from superscalar.cln.node import ClnNode

    lsp = node_factory.get_node()
    lsp.fundwallet(200_000)
    node = ClnNode(lsp.rpc, "regtest")
    refund_to = bitcoind.rpc.getnewaddress("", "bech32m")
    txid, signed = node.prepare_payout(refund_to, 40_000, "urgent")
    assert txid not in bitcoind.rpc.getrawmempool() and txid not in node.wallet_txids()
    assert all(o["reserved"] for o in lsp.rpc.listfunds()["outputs"])  # a restart cannot spend them elsewhere
    assert node.send_signed(signed) == txid
    try:
        node.send_signed(signed)  # sent again after a crash: the same transaction, nothing more
    except RpcError:
        pass
    assert bitcoind.rpc.getrawmempool() == [txid] and txid in node.wallet_txids()
    bitcoind.generate_block(1)
    tx = bitcoind.rpc.getrawtransaction(txid, True)
    script = address_to_script(refund_to, "regtest").hex()
    assert [round(o["value"] * 100_000_000) for o in tx["vout"] if o["scriptPubKey"]["hex"] == script] == [40_000]
