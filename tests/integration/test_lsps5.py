"""LSPS5 (bLIP-55) on real lightningd: a wallet that sleeps registers a webhook (a plain node speaking
LSPS5 by hand, written from the bLIP; a SuperScalar client with `superscalar-webhook`), and the LSP posts
signed notifications to a local HTTP server started by the test, which checks each signature the way a
notification service would (lightningd's `checkmessage` against the LSP's node id)."""

from __future__ import annotations

import http.server
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pyln.testing.utils import sync_blockheight, wait_for

from superscalar.factory.params import FactoryParams

from .test_close_rollover import record
from .test_factory_plugin import create_factory
from .test_lsps2 import probe_request

pytestmark = pytest.mark.lightningd

PROBE = Path(__file__).parent / "lsps_probe_plugin.py"
TEMPLATE = "LSPS5: DO NOT SIGN THIS MESSAGE MANUALLY: LSP: At {} I notify {}"


class Service:
    """A notification delivery service: every POST kept, answered 200."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        posts = self.posts

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the standard library's name)
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                posts.append({"path": self.path, "body": body, "timestamp": self.headers.get("x-lsps5-timestamp"),
                              "signature": self.headers.get("x-lsps5-signature")})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def methods(self) -> list[str]:
        return [json.loads(p["body"])["method"] for p in self.posts]

    def check(self, node: Any, lsp_id: str) -> None:
        """Every post is a JSON-RPC notification signed by the LSP over its timestamp and exact body."""
        for p in self.posts:
            assert json.loads(p["body"])["jsonrpc"] == "2.0"
            res = node.rpc.call("checkmessage", {"message": TEMPLATE.format(p["timestamp"], p["body"]),
                                                 "zbase": p["signature"], "pubkey": lsp_id})
            assert res["verified"] is True


def lsp_node(node_factory: Any, plugin_path: Path) -> Any:
    return node_factory.get_node(options={"plugin": str(plugin_path), "superscalar-profile": "regtest",
                                          "superscalar-lsp": "true", "superscalar-lsps5-allow-http": "true"},
                                 may_reconnect=True)


def payer_lsp_wallet_channels(bitcoind: Any, payer: Any, lsp: Any, wallet: Any) -> None:
    """A public channel payer → LSP and a private one LSP → wallet, both normal."""
    lsp.fundwallet(2_000_000)
    lsp.rpc.fundchannel(wallet.info["id"], 500_000, announce=False)
    payer.fundwallet(2_000_000)
    payer.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    payer.rpc.fundchannel(lsp.info["id"], 1_000_000)
    bitcoind.generate_block(6)
    sync_blockheight(bitcoind, [lsp, wallet, payer])
    wait_for(lambda: all(c["state"] == "CHANNELD_NORMAL" for n in (wallet, payer) for c in n.rpc.listpeerchannels()["channels"]))


def test_sleeping_wallet_is_woken_for_a_payment(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    service = Service()
    lsp = lsp_node(node_factory, plugin_path)
    wallet = node_factory.get_node(options={"plugin": str(PROBE)}, may_reconnect=True)
    payer = node_factory.get_node()
    wallet.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    assert 5 in probe_request(wallet, lsp, "lsps0.list_protocols", {})["result"]["protocols"]
    hook = f"{service.url}/push?lsp={lsp.info['id']}&device=phone-1"
    registered = probe_request(wallet, lsp, "lsps5.set_webhook", {"app_name": "test wallet", "webhook": hook})
    assert registered["result"] == {"num_webhooks": 1, "max_webhooks": 4, "no_change": False}
    again = probe_request(wallet, lsp, "lsps5.set_webhook", {"app_name": "test wallet", "webhook": hook})
    assert again["result"]["no_change"] is True
    assert probe_request(wallet, lsp, "lsps5.list_webhooks", {})["result"] == {"app_names": ["test wallet"],
                                                                              "max_webhooks": 4}
    assert probe_request(wallet, lsp, "lsps5.remove_webhook", {"app_name": "nope"})["error"]["code"] == 1010
    assert probe_request(wallet, lsp, "lsps5.set_webhook", {"app_name": "x", "webhook": "ftp://a.example/"}
                         )["error"]["code"] == 502
    wait_for(lambda: service.methods() == ["lsps5.webhook_registered"])
    assert service.posts[0]["path"] == f"/push?lsp={lsp.info['id']}&device=phone-1"

    # the LSP has a private channel to the wallet; the payer a channel to the LSP
    payer_lsp_wallet_channels(bitcoind, payer, lsp, wallet)
    # an invoice with a route hint through the LSP (once the private channel's update is in)
    wait_for(lambda: bool(wallet.rpc.decode(wallet.rpc.invoice(1000, f"probe-{time.time()}", "x")["bolt11"]).get("routes")))
    inv = wallet.rpc.invoice(50_000_000, "woken", "paid while asleep")
    wallet.stop()  # asleep
    wait_for(lambda: not lsp.rpc.listpeers(wallet.info["id"])["peers"][0]["connected"])

    result: dict[str, Any] = {}
    paying = threading.Thread(target=lambda: result.update(payer.rpc.call("xpay", {"invstring": inv["bolt11"]})))
    paying.start()
    wait_for(lambda: "lsps5.payment_incoming" in service.methods())
    lsp.daemon.wait_for_log("waking .* \\(lsps5.payment_incoming\\)")
    assert paying.is_alive()  # the LSP holds the HTLC for the sleeping wallet
    wallet.start()  # woken by its notification service, it comes back
    wallet.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    paying.join(60)
    assert result.get("amount_msat") == 50_000_000
    assert wallet.rpc.listinvoices("woken")["invoices"][0]["status"] == "paid"
    service.check(payer, lsp.info["id"])
    assert not any(n.daemon.is_in_log(r"\*\*BROKEN\*\*") for n in (lsp, wallet, payer))


def test_client_gets_a_dying_period_notification(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    """A SuperScalar client registers a webhook (`superscalar-webhook`) and sleeps; when its factory
    enters the dying period the LSP tells it `lsps5.liquidity_management_request`, and (the regtest
    dying period being shorter than 24 blocks) `lsps5.expiry_soon` with the distribution height."""
    service = Service()
    lsp = lsp_node(node_factory, plugin_path)
    common = {"plugin": str(plugin_path), "superscalar-profile": "regtest", "superscalar-join": lsp.info["id"]}
    clients = node_factory.get_nodes(2, opts={"may_reconnect": True, **common})
    for c in clients:
        c.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    lsp.fundwallet(10_000_000)
    fid = create_factory(lsp, clients, bitcoind)["factory_id"]
    sleeper = clients[0]
    out = sleeper.rpc.call("superscalar-webhook", {"id": lsp.info["id"], "app_name": "phone",
                                                   "webhook": f"{service.url}/wake"})
    assert out["num_webhooks"] == 1
    wait_for(lambda: service.methods() == ["lsps5.webhook_registered"])
    params = FactoryParams.deserialize(record(lsp, fid)["params"].encode())
    sleeper.stop()
    height = bitcoind.rpc.getblockcount()
    bitcoind.generate_block(params.expiry_height - height)
    sync_blockheight(bitcoind, [lsp, clients[1]])
    wait_for(lambda: len(service.posts) == 3)
    assert sorted(service.methods()[1:]) == ["lsps5.expiry_soon", "lsps5.liquidity_management_request"]
    [notice] = [json.loads(p["body"]) for p in service.posts if "expiry_soon" in p["body"]]
    assert notice == {"jsonrpc": "2.0", "method": "lsps5.expiry_soon",
                      "params": {"timeout": params.distribution_height}}
    service.check(clients[1], lsp.info["id"])
    bitcoind.generate_block(2)
    sync_blockheight(bitcoind, [lsp])
    time.sleep(1)
    assert len(service.posts) == 3  # the connected client has no webhook; nothing else was posted
    assert not any(n.daemon.is_in_log(r"\*\*BROKEN\*\*") for n in (lsp, clients[1]))


def test_sleeping_wallet_is_woken_for_an_offer(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    """A payer asks a sleeping wallet's offer for an invoice: the onion message reaches the LSP, which
    cannot forward it (lightningd's onionmessage_forward_fail), keeps it and posts
    lsps5.onion_message_incoming; the wallet wakes, reconnects, and the kept message is forwarded: the
    payer gets its invoice and pays."""
    service = Service()
    lsp = lsp_node(node_factory, plugin_path)
    wallet = node_factory.get_node(options={"plugin": str(PROBE)}, may_reconnect=True)
    payer = node_factory.get_node(may_reconnect=True)
    wallet.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    hook = f"{service.url}/push?device=phone-2"
    assert probe_request(wallet, lsp, "lsps5.set_webhook", {"app_name": "w", "webhook": hook})["result"]["num_webhooks"] == 1
    wait_for(lambda: service.methods() == ["lsps5.webhook_registered"])
    payer_lsp_wallet_channels(bitcoind, payer, lsp, wallet)
    # the wallet knows the public channel to the payer (the invoice goes back through the LSP)
    wait_for(lambda: any(c["source"] == payer.info["id"] for c in wallet.rpc.listchannels()["channels"]))
    # and the payer's node_announcement (its onion-message feature): without it Core Lightning's offers
    # plugin finds no path for its answer and tries a direct connection, which the payer refuses
    wait_for(lambda: "features" in (wallet.rpc.listnodes(payer.info["id"])["nodes"] or [{}])[0])
    n = iter(range(1000))

    def offer_with_path() -> str:  # once the wallet's gossip shows the LSP public, its offer has a path through it
        made = wallet.rpc.call("offer", {"amount": "any", "description": "tips", "label": f"tips-{next(n)}"})["bolt12"]
        return str(made) if wallet.rpc.decode(made).get("offer_paths") else ""
    wait_for(lambda: bool(offer_with_path()))
    offer = offer_with_path()
    wallet.stop()
    wait_for(lambda: not lsp.rpc.listpeers(wallet.info["id"])["peers"][0]["connected"])

    result: dict[str, Any] = {}
    asking = threading.Thread(target=lambda: result.update(payer.rpc.call(
        "fetchinvoice", {"offer": offer, "amount_msat": 20_000_000, "timeout": 90})))
    asking.start()
    wait_for(lambda: "lsps5.onion_message_incoming" in service.methods())
    assert asking.is_alive()
    wallet.start()
    wallet.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    asking.join(90)
    assert "invoice" in result, result
    lsp.daemon.wait_for_log("forwarded 1 onion messages kept for")
    wait_for(lambda: all(c["state"] == "CHANNELD_NORMAL" for c in wallet.rpc.listpeerchannels()["channels"]))
    paid = payer.rpc.call("xpay", {"invstring": result["invoice"]})
    assert paid["amount_msat"] == 20_000_000
    service.check(payer, lsp.info["id"])
    assert not any(n.daemon.is_in_log(r"\*\*BROKEN\*\*") for n in (lsp, wallet, payer))
