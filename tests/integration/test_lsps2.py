"""LSPS2 (bLIP-52) JIT channels on real lightningd and bitcoind: a client with no channel and no coins
buys a JIT channel, a plain node pays its invoice in 3 MPP parts (and in one part, variable amount),
the LSP opens a zero-conf channel from its wallet and forwards the payment minus the opening fee; bad
`lsps2.buy` requests get the spec's errors and reserve nothing."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pyln.testing.utils import sync_blockheight, wait_for
from superscalar.cln.node import msat

pytestmark = pytest.mark.lightningd

PROBE = Path(__file__).parent / "lsps_probe_plugin.py"
ANCHORS_BIT = 22  # BOLT-9 option_anchors
ZEROCONF_BIT = 50


def jit_network(node_factory: Any, bitcoind: Any, plugin_path: Path, **lsp_opts: Any) -> tuple[Any, Any, Any]:
    """(lsp, client, payer): the LSP with wallet coins, a fresh client connected to it (no channel, no
    coins), a plain CLN node (no plugin) with an announced channel to the LSP."""
    lsp = node_factory.get_node(options={"plugin": [str(plugin_path), str(PROBE)], "superscalar-profile": "regtest",
                                         "superscalar-lsp": "true", **lsp_opts}, may_reconnect=True)
    client = node_factory.get_node(options={"plugin": str(plugin_path), "superscalar-profile": "regtest"},
                                   may_reconnect=True)
    lsp.fundwallet(10_000_000)
    payer = plain_payer(node_factory, bitcoind, lsp)
    client.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    assert client.rpc.listfunds()["outputs"] == [] and client.rpc.listpeerchannels()["channels"] == []
    return lsp, client, payer


def plain_payer(node_factory: Any, bitcoind: Any, lsp: Any) -> Any:
    """A plain CLN node (no plugin) with an announced 5,000,000-sat channel to `lsp`, confirmed and normal."""
    payer = node_factory.get_node(may_reconnect=True)
    payer.fundwallet(10_000_000)
    payer.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    payer.rpc.fundchannel(lsp.info["id"], 5_000_000)
    bitcoind.generate_block(6)
    wait_for(lambda: all(c["state"] == "CHANNELD_NORMAL" for c in payer.rpc.listpeerchannels()["channels"]))
    return payer


def pay_in_parts(payer: Any, lsp: Any, bolt11: str, amount_msat: int, parts: int) -> None:
    """Pay `bolt11` with exactly `parts` HTLCs (sendpay by hand: payer → LSP → JIT scid → client)."""
    inv = payer.rpc.decode(bolt11)
    [[hint]] = inv["routes"]
    [ch] = payer.rpc.listpeerchannels(lsp.info["id"])["channels"]
    final = int(inv["min_final_cltv_expiry"])
    shares = [amount_msat // parts] * (parts - 1)
    shares.append(amount_msat - sum(shares))
    for partid, share in enumerate(shares, start=1):
        route = [{"id": lsp.info["id"], "channel": ch["short_channel_id"], "amount_msat": share,
                  "delay": final + int(hint["cltv_expiry_delta"])},
                 {"id": inv["payee"], "channel": hint["short_channel_id"], "amount_msat": share, "delay": final}]
        payer.rpc.call("sendpay", {"route": route, "payment_hash": inv["payment_hash"], "bolt11": bolt11,
                                   "payment_secret": inv["payment_secret"], "amount_msat": amount_msat,
                                   "partid": partid, "groupid": 1})
    for partid in range(1, parts + 1):
        res = payer.rpc.call("waitsendpay", {"payment_hash": inv["payment_hash"], "partid": partid, "groupid": 1,
                                             "timeout": 120})
        assert res["status"] == "complete"


def assert_jit_channel(lsp: Any, client: Any, receive_msat: int) -> dict[str, Any]:
    """The client's only channel: from the LSP, zero-conf (no block since), holding exactly `receive_msat`."""
    # the payer has the preimage once the client sent update_fulfill_htlc; the balance moves when the
    # commitments that remove the HTLCs are signed
    wait_for(lambda: not client.rpc.listpeerchannels()["channels"][0].get("htlcs"))
    [ch] = client.rpc.listpeerchannels()["channels"]
    assert ch["peer_id"] == lsp.info["id"] and ch["state"] == "CHANNELD_NORMAL"
    assert msat(ch["to_us_msat"]) == receive_msat
    assert ZEROCONF_BIT in ch["channel_type"]["bits"]
    assert "short_channel_id" not in ch  # not confirmed: it was used at zero confirmations
    [lsp_side] = lsp.rpc.listpeerchannels(client.info["id"])["channels"]
    assert ZEROCONF_BIT in lsp_side["channel_type"]["bits"] and lsp_side["private"] is True
    assert ANCHORS_BIT not in ch["channel_type"]["bits"]  # a coinless wallet could not keep an anchor reserve
    return dict(ch)


def test_jit_channel_paid_in_three_mpp_parts(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    lsp, client, payer = jit_network(node_factory, bitcoind, plugin_path)
    amount_msat = 300_000_000
    res = client.rpc.call("superscalar-jit-invoice", {"lsp_id": lsp.info["id"], "amount_msat": amount_msat,
                                                      "description": "first receive"})
    # defaults: 546 000 msat minimum, 1000 ppm: 300 000 000 * 1000 / 1e6 = 300 000 < 546 000
    assert res["opening_fee_msat"] == 546_000 and res["receive_msat"] == amount_msat - 546_000
    decoded = payer.rpc.decode(res["bolt11"])
    assert decoded["amount_msat"] == amount_msat and decoded["payee"] == client.info["id"]
    [[hint]] = decoded["routes"]
    assert hint == {"pubkey": lsp.info["id"], "short_channel_id": res["jit_channel_scid"], "fee_base_msat": 0,
                    "fee_proportional_millionths": 0, "cltv_expiry_delta": res["lsp_cltv_expiry_delta"]}
    assert int(decoded["min_final_cltv_expiry"]) == 5 + 2  # cltv-final (pyln-testing: 5) + bLIP-52's margin
    height = bitcoind.rpc.getblockcount()

    pay_in_parts(payer, lsp, res["bolt11"], amount_msat, 3)

    assert bitcoind.rpc.getblockcount() == height
    assert_jit_channel(lsp, client, amount_msat - 546_000)
    [paid] = client.rpc.listinvoices(res["label"])["invoices"]
    assert paid["status"] == "paid" and msat(paid["amount_received_msat"]) == amount_msat - 546_000
    [sold] = lsp.rpc.call("superscalar-jit-list")["sold"]
    [bought] = client.rpc.call("superscalar-jit-list")["bought"]
    assert sold["state"] == "open" and sold["channel_id"] == bought_channel(client)
    assert sold["opening_fee_charged_msat"] == 546_000 and sorted(sold["forwarded_msat"]) == \
        sorted([100_000_000 - 546_000, 100_000_000, 100_000_000])
    assert bought["jit_channel_scid"] == sold["jit_channel_scid"] == res["jit_channel_scid"]
    assert lsp.daemon.is_in_log("holding part 3")
    # the funding transaction is in the mempool: it confirms like any other
    bitcoind.generate_block(1, wait_for_mempool=sold["funding_txid"])
    wait_for(lambda: "short_channel_id" in client.rpc.listpeerchannels()["channels"][0])


def bought_channel(client: Any) -> str:
    [ch] = client.rpc.listpeerchannels()["channels"]
    return str(ch["channel_id"])


def test_jit_channel_no_mpp_variable_amount(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    lsp, client, payer = jit_network(node_factory, bitcoind, plugin_path,
                                     **{"superscalar-lsps2-proportional": "5000"})
    res = client.rpc.call("superscalar-jit-invoice", {"lsp_id": lsp.info["id"], "amount_msat": "any",
                                                      "description": "any amount"})
    assert res["opening_fee_msat"] is None and res["payment_size_msat"] is None
    decoded = payer.rpc.decode(res["bolt11"])
    assert "amount_msat" not in decoded
    assert not int(decoded.get("features", "0") or "0", 16) & (3 << 16)  # basic_mpp off
    # the buy is durable: the LSP restarts before the payment comes
    lsp.restart()
    client.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    wait_for(lambda: all(c["peer_connected"] and c["state"] == "CHANNELD_NORMAL"
                         for c in payer.rpc.listpeerchannels()["channels"]))
    amount_msat = 200_000_000
    pay_in_parts(payer, lsp, res["bolt11"], amount_msat, 1)
    fee = 200_000_000 * 5000 // 1_000_000  # 1 000 000 msat, above the 546 000 minimum
    assert_jit_channel(lsp, client, amount_msat - fee)
    [sold] = lsp.rpc.call("superscalar-jit-list")["sold"]
    assert sold["opening_fee_charged_msat"] == fee and sold["payment_size_msat"] is None


def probe_request(raw: Any, lsp: Any, method: str, params: dict[str, Any]) -> dict[str, Any]:
    before = len(raw.rpc.call("probe-inbox")["messages"])
    request_id = f"t{before}-{time.time()}"
    raw.rpc.call("probe-send", {"peer": lsp.info["id"], "text": json.dumps(
        {"jsonrpc": "2.0", "method": method, "params": params, "id": request_id})})
    wait_for(lambda: any(m["body"].get("id") == request_id for m in raw.rpc.call("probe-inbox")["messages"]))
    return next(m["body"] for m in raw.rpc.call("probe-inbox")["messages"] if m["body"].get("id") == request_id)


def test_lsps2_buy_errors_reserve_nothing(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    # the LSP's inbound from the network: the payer's 5,000,000 sat channel, less its reserve
    lsp, _, payer = jit_network(node_factory, bitcoind, plugin_path,
                            **{"superscalar-lsps2-max-payment-msat": "9000000000"})
    raw = node_factory.get_node(options={"plugin": str(PROBE)})
    raw.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    protocols = probe_request(raw, lsp, "lsps0.list_protocols", {})["result"]["protocols"]
    assert 2 in protocols
    [offer] = probe_request(raw, lsp, "lsps2.get_info", {})["result"]["opening_fee_params_menu"]
    assert set(offer) == {"min_fee_msat", "proportional", "valid_until", "min_lifetime", "max_client_to_self_delay",
                          "min_payment_size_msat", "max_payment_size_msat", "promise"}
    assert offer["min_fee_msat"] == "546000" and offer["min_payment_size_msat"] == "1000000"
    assert probe_request(raw, lsp, "lsps2.get_info", {"token": "SECRETDISCOUNTCOUPON100"})["error"]["code"] == 200

    def code(params: dict[str, Any]) -> int:
        return int(probe_request(raw, lsp, "lsps2.buy", params)["error"]["code"])

    assert code({"opening_fee_params": {**offer, "promise": "00" * 32}, "payment_size_msat": "5000000"}) == 201
    assert code({"opening_fee_params": {**offer, "min_fee_msat": "1"}, "payment_size_msat": "5000000"}) == 201
    assert code({"opening_fee_params": offer, "payment_size_msat": "999999"}) == 202  # below min_payment_size
    assert code({"opening_fee_params": offer, "payment_size_msat": "546000"}) == 202  # below min and the fee
    assert code({"opening_fee_params": offer, "payment_size_msat": "9000000001"}) == 203  # above max
    short = probe_request(raw, lsp, "lsps2.buy", {"opening_fee_params": offer, "payment_size_msat": "6000000000"})
    assert short["error"]["code"] == 203 and "public network" in short["error"]["message"]  # above its inbound
    assert code({"opening_fee_params": offer, "payment_size_msat": 5000000}) == -32602  # not a string
    assert code({"opening_fee_params": offer, "extra": True}) == -32602
    assert lsp.rpc.call("superscalar-jit-list")["sold"] == []
    good = probe_request(raw, lsp, "lsps2.buy", {"opening_fee_params": offer, "payment_size_msat": "5000000"})
    assert good["result"]["client_trusts_lsp"] is False and good["result"]["jit_channel_scid"].count("x") == 2
    # a promise buys once: the replay is refused and records nothing more
    assert code({"opening_fee_params": offer, "payment_size_msat": "5000000"}) == 201
    assert len(lsp.rpc.call("superscalar-jit-list")["sold"]) == 1
    assert [c["peer_id"] for c in lsp.rpc.listpeerchannels()["channels"]] == [payer.info["id"]]  # no JIT channel


def test_lsps2_buy_expired_promise(node_factory: Any, plugin_path: Path) -> None:
    lsp = node_factory.get_node(options={"plugin": str(plugin_path), "superscalar-profile": "regtest",
                                         "superscalar-lsp": "true", "superscalar-lsps2-valid-seconds": "2"})
    raw = node_factory.get_node(options={"plugin": str(PROBE)})
    raw.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    [offer] = probe_request(raw, lsp, "lsps2.get_info", {})["result"]["opening_fee_params_menu"]
    time.sleep(3)  # past valid_until
    error = probe_request(raw, lsp, "lsps2.buy", {"opening_fee_params": offer, "payment_size_msat": "5000000"})["error"]
    assert error["code"] == 201 and "past" in error["message"]
    assert lsp.rpc.call("superscalar-jit-list")["sold"] == [] and lsp.rpc.listpeerchannels()["channels"] == []


WALLET = Path(__file__).parent / "blip52_wallet_plugin.py"


def test_plain_wallet_jit_one_two_payers_no_mpp(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    """A wallet that does not run superscalar, its LSPS2 client written from bLIP-52 (the test drives
    get_info and buy over message 37913, puts the JIT scid in its invoice's route hint and signs it with
    `createinvoice`; blip52_wallet_plugin.py takes the parts short by their extra_fee): paid once by one
    payer, once in two parts by two payers (MPP, each `sendpay` carrying part of the total), and once
    with a variable-amount invoice (no-MPP mode, no payment_size_msat)."""
    import math
    import os

    from superscalar.protocol.bolt11 import RouteHop, with_route_hint, without_features

    lsp = node_factory.get_node(options={"plugin": [str(plugin_path), str(PROBE)], "superscalar-profile": "regtest",
                                         "superscalar-lsp": "true"}, may_reconnect=True)
    lsp.fundwallet(10_000_000)
    payers = [plain_payer(node_factory, bitcoind, lsp), plain_payer(node_factory, bitcoind, lsp)]
    wallet = node_factory.get_node(options={"plugin": [str(PROBE), str(WALLET)]}, may_reconnect=True)
    wallet.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    lsp_id, wallet_id = lsp.info["id"], wallet.info["id"]

    def scid_int(text: str) -> int:
        block, tx, out = (int(x) for x in text.split("x"))
        return (block << 40) | (tx << 16) | out

    def buy(label: str, size: Any, paid_msat: int) -> tuple[str, dict[str, Any], int]:
        """bLIP-52 §1-3: the menu, a buy, an invoice through the JIT scid; returns (bolt11, buy, fee)."""
        [offer] = probe_request(wallet, lsp, "lsps2.get_info", {})["result"]["opening_fee_params_menu"]
        params: dict[str, Any] = {"opening_fee_params": offer}
        if size is not None:
            params["payment_size_msat"] = str(size)
        answer = probe_request(wallet, lsp, "lsps2.buy", params)
        assert "result" in answer, answer
        bought = answer["result"]
        fee = max(int(offer["min_fee_msat"]), math.ceil(paid_msat * int(offer["proportional"]) / 1_000_000))
        preimage = os.urandom(32).hex()
        draft = wallet.rpc.call("invoice", {"amount_msat": size if size is not None else "any", "label": label + "-draft",
                                            "description": label, "preimage": preimage, "cltv": 24})
        wallet.rpc.call("delinvoice", {"label": label + "-draft", "status": "unpaid"})
        text = with_route_hint(draft["bolt11"], RouteHop(bytes.fromhex(lsp_id), scid_int(bought["jit_channel_scid"]),
                                                           0, 0, int(bought["lsp_cltv_expiry_delta"])))
        if size is None:
            text = without_features(text)  # "no-MPP+var-invoice": the payer must not split it
        signed = wallet.rpc.call("createinvoice", {"invstring": text, "label": label, "preimage": preimage})["bolt11"]
        wallet.rpc.call("wallet-expect", {"payment_hash": draft["payment_hash"], "preimage": preimage,
                                          "max_fee_msat": fee})
        return signed, {**bought, "payment_hash": draft["payment_hash"]}, fee

    def received(bought: dict[str, Any]) -> dict[str, Any]:
        return dict(wallet.rpc.call("wallet-received", {"payment_hash": bought["payment_hash"]}))

    # 1. one payer
    bolt11, bought, fee = buy("one", 5_000_000, 5_000_000)
    assert payers[0].rpc.decode(bolt11)["payee"] == wallet_id
    assert payers[0].rpc.call("xpay", {"invstring": bolt11})["amount_msat"] == 5_000_000
    got = received(bought)
    assert got["done"] and sum(p["extra_fee_msat"] for p in got["parts"]) == fee == 546_000
    [jit] = wallet.rpc.listpeerchannels(lsp_id)["channels"]
    assert msat(jit["to_us_msat"]) == 5_000_000 - fee

    # 2. two payers, each paying part of the total (MPP across senders)
    bitcoind.generate_block(1)  # the JIT channel's funding, and the LSP's change with it
    sync_blockheight(bitcoind, [lsp, wallet, *payers])
    total = 8_000_000
    bolt11, bought, fee = buy("two", total, total)
    decoded = payers[0].rpc.decode(bolt11)
    final = int(decoded["min_final_cltv_expiry"])
    delta = int(bought["lsp_cltv_expiry_delta"])

    def send(payer: Any, part: int, partid: int) -> dict[str, Any]:
        [ch] = payer.rpc.listpeerchannels(lsp_id)["channels"]
        route = [{"id": lsp_id, "channel": ch["short_channel_id"], "direction": int(payer.info["id"] > lsp_id),
                  "amount_msat": part, "delay": final + delta, "style": "tlv"},
                 {"id": wallet_id, "channel": bought["jit_channel_scid"], "direction": int(lsp_id > wallet_id),
                  "amount_msat": part, "delay": final, "style": "tlv"}]
        payer.rpc.call("sendpay", {"route": route, "payment_hash": bought["payment_hash"], "amount_msat": total,
                                   "payment_secret": decoded["payment_secret"], "bolt11": bolt11,
                                   "partid": partid, "groupid": 1})
        return dict(payer.rpc.call("waitsendpay", {"payment_hash": bought["payment_hash"], "partid": partid,
                                                   "groupid": 1, "timeout": 90}))

    results: dict[int, dict[str, Any]] = {}
    threads = [threading.Thread(target=lambda i=i, part=part: results.update({i: send(payers[i], part, i + 1)}))
               for i, part in enumerate((5_000_000, 3_000_000))]
    threads[0].start()
    time.sleep(1)  # the first part waits at the LSP for the second
    threads[1].start()
    for t in threads:
        t.join(120)
    assert [results[i]["status"] for i in (0, 1)] == ["complete", "complete"], results
    got = received(bought)
    assert got["done"] and sorted(p["onion_msat"] for p in got["parts"]) == [3_000_000, 5_000_000]
    assert sum(p["extra_fee_msat"] for p in got["parts"]) == fee

    # 3. no-MPP, variable amount: the fee is taken from the one part that comes
    bitcoind.generate_block(1)
    sync_blockheight(bitcoind, [lsp, wallet, *payers])
    bolt11, bought, fee = buy("any", None, 4_000_000)
    assert payers[1].rpc.call("xpay", {"invstring": bolt11, "amount_msat": 4_000_000})["amount_msat"] == 4_000_000
    got = received(bought)
    assert got["done"] and [p["onion_msat"] for p in got["parts"]] == [4_000_000]
    assert got["parts"][0]["extra_fee_msat"] == fee
    assert not any(n.daemon.is_in_log(r"\*\*BROKEN\*\*") for n in (lsp, wallet, *payers))
