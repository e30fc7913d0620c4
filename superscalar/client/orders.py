"""A client buying inbound with LSPS1 (bLIP-51): `superscalar-buy-inbound` asks the LSP's options,
places an order, checks its price and invoice, and pays the invoice from this node's channels.

Paying needs a way to pay: an existing channel (a plain one, or one in another factory) with enough
balance. A node with no channel and no coins cannot buy with LSPS1 (that is what LSPS2's JIT channel
is for). The LSP holds the payment until the factory holding the channel is published (a hold invoice),
so `pay` completes only then; the command returns as soon as the LSP reports the payment held (or the
order failed), and `superscalar-order` shows the order afterwards.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Optional

from ..lsps.client import LspsClient
from ..cln.node import ClnNode
from ..protocol.lsps0 import amount, parse_amount
from ..protocol.lsps1 import CREATED, EXPECT_PAYMENT

HELD_WAIT_SECONDS = 60.0  # how long the command waits for the LSP to report the payment held
POLL_SECONDS = 1.0


def order_request(info: dict[str, Any], lsp_balance_sat: int, client_balance_sat: int,
                  channel_expiry_blocks: Optional[int]) -> dict[str, Any]:
    """A create_order request within the LSP's options: the fewest confirmations and the soonest
    funding it allows, the longest lease unless one is given, an unannounced channel."""
    return {
        "lsp_balance_sat": amount(lsp_balance_sat),
        "client_balance_sat": amount(client_balance_sat),
        "required_channel_confirmations": int(info["min_required_channel_confirmations"]),
        "funding_confirms_within_blocks": int(info["min_funding_confirms_within_blocks"]),
        "channel_expiry_blocks": int(channel_expiry_blocks if channel_expiry_blocks is not None
                                     else info["max_channel_expiry_blocks"]),
        "token": "",
        "announce_channel": False,
    }


def check_order(node: ClnNode, lsp: str, order: dict[str, Any], client_balance_sat: int) -> dict[str, Any]:
    """bLIP-51 "Client SHOULD validate": fee_total_sat + client_balance_sat = order_total_sat, and the
    invoice is the LSP's, for order_total_sat. Returns the bolt11 payment option."""
    bolt11 = (order.get("payment") or {}).get("bolt11")
    if not isinstance(bolt11, dict):
        raise ValueError("the LSP offers no bolt11 payment for this order")
    fee = parse_amount(bolt11.get("fee_total_sat"), "fee_total_sat")
    total = parse_amount(bolt11.get("order_total_sat"), "order_total_sat")
    if fee + client_balance_sat != total:
        raise ValueError(f"order_total_sat {total} is not fee_total_sat {fee} + client_balance_sat {client_balance_sat}")
    decoded = node.rpc.call("decode", {"string": bolt11["invoice"]})
    if decoded.get("payee") != lsp or int(decoded.get("amount_msat", -1)) != total * 1000:
        raise ValueError("the order's invoice is not the LSP's for order_total_sat")
    return dict(bolt11)


def buy_inbound(node: ClnNode, lsps: LspsClient, allowed: Optional[set[str]], lsp: str, lsp_balance_sat: int,
                client_balance_sat: int, channel_expiry_blocks: Optional[int], log: Callable[..., None],
                held_wait: float = HELD_WAIT_SECONDS) -> dict[str, Any]:
    if allowed is not None and lsp not in allowed:
        raise ValueError(f"{lsp} is not an LSP whose factories this node joins (superscalar-join)")
    if lsp_balance_sat <= 0 or client_balance_sat < 0:
        raise ValueError("lsp_balance_sat must be positive and client_balance_sat not negative")
    lsps.request(lsp, "superscalar.get_info", {})  # the hello: the LSP sells factory channels to SuperScalar peers
    info = lsps.request(lsp, "lsps1.get_info", {})
    order = lsps.request(lsp, "lsps1.create_order",
                         order_request(info, lsp_balance_sat, client_balance_sat, channel_expiry_blocks))
    bolt11 = check_order(node, lsp, order, client_balance_sat)
    order_id = str(order["order_id"])
    paying: dict[str, Any] = {}

    def pay() -> None:
        try:
            paying["result"] = node.rpc.call("pay", {"bolt11": bolt11["invoice"]})
            log(f"LSPS1 order {order_id}: paid {bolt11['order_total_sat']} sat to {lsp}")
        except Exception as e:  # the LSP failed the HTLCs back (order failed), or no route
            paying["error"] = str(e)
            log(f"LSPS1 order {order_id}: payment did not complete: {e}", level="info")

    threading.Thread(target=pay, name="superscalar-lsps1-pay", daemon=True).start()
    deadline = time.monotonic() + held_wait
    while time.monotonic() < deadline and "error" not in paying:
        order = lsps.request(lsp, "lsps1.get_order", {"order_id": order_id})
        if order["order_state"] != CREATED or order["payment"]["bolt11"]["state"] != EXPECT_PAYMENT:
            break
        time.sleep(POLL_SECONDS)
    if "error" in paying and order["payment"]["bolt11"]["state"] == EXPECT_PAYMENT:
        raise RuntimeError(f"order {order_id} placed but not paid (it expires unpaid): {paying['error']}")
    return {"id": lsp, "order": order, "payment": paying.get("error", "held by the LSP" if "result" not in paying
                                                           else "complete")}


def get_order(lsps: LspsClient, lsp: str, order_id: str) -> dict[str, Any]:
    return {"id": lsp, "order": lsps.request(lsp, "lsps1.get_order", {"order_id": order_id})}
