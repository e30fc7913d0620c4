#!/usr/bin/env python3
"""Test-only plugin: the receiving side of a wallet that buys JIT channels, written from bLIP-52 alone
(none of superscalar's code): it accepts the LSP's channel zero-conf, and takes the parts of a payment
it registered (`wallet-expect`) that arrive short of their onion amount by their bLIP-25 `extra_fee`
(TLV 65537 of `update_add_htlc`): each part must be exactly its onion amount less its `extra_fee`, the
`extra_fee`s may sum to at most the opening fee, and once the onion amounts reach the payment's total
every part is settled with the preimage ("5. Channel Opening And Forwarding", client side)."""

import threading
from typing import Any

from pyln.client import Plugin

plugin = Plugin()
lock = threading.Lock()
expected: dict[str, dict[str, Any]] = {}  # payment hash -> {preimage, max_fee_msat, parts: [(request, onion, extra)]}
EXTRA_FEE = 65537


def bigsize(data: bytes, i: int) -> tuple[int, int]:
    first = data[i]
    if first < 0xFD:
        return first, i + 1
    width = {0xFD: 2, 0xFE: 4, 0xFF: 8}[first]
    return int.from_bytes(data[i + 1:i + 1 + width], "big"), i + 1 + width


def extra_fee(tlvs_hex: str) -> int:
    data, i = bytes.fromhex(tlvs_hex or ""), 0
    while i < len(data):
        kind, i = bigsize(data, i)
        length, i = bigsize(data, i)
        value, i = data[i:i + length], i + length
        if kind == EXTRA_FEE:
            assert length == 8
            return int.from_bytes(value, "big")
    return 0


def msat(value: Any) -> int:
    return int(str(value).removesuffix("msat"))


@plugin.hook("openchannel")
def on_openchannel(openchannel: dict[str, Any], plugin: Plugin, **kwargs: Any) -> dict[str, Any]:
    return {"result": "continue", "mindepth": 0}


@plugin.method("wallet-expect")
def wallet_expect(payment_hash: str, preimage: str, max_fee_msat: int, plugin: Plugin, **kwargs: Any) -> dict[str, Any]:
    """Take the parts of `payment_hash` (a JIT payment) as bLIP-52 says, settling them with `preimage`."""
    with lock:
        expected[payment_hash] = {"preimage": preimage, "max_fee_msat": int(max_fee_msat), "parts": [], "done": False}
    return {}


@plugin.method("wallet-received")
def wallet_received(payment_hash: str, plugin: Plugin, **kwargs: Any) -> dict[str, Any]:
    with lock:
        e = expected.get(payment_hash, {})
        return {"done": e.get("done", False), "parts": [{"onion_msat": o, "extra_fee_msat": x} for _, o, x in e.get("parts", [])]}


@plugin.async_hook("htlc_accepted")
def on_htlc_accepted(onion: dict[str, Any], htlc: dict[str, Any], request: Any, plugin: Plugin, **kwargs: Any) -> None:
    with lock:
        e = expected.get(htlc["payment_hash"])
    if e is None or "forward_msat" not in onion or onion.get("short_channel_id"):
        request.set_result({"result": "continue"})
        return
    arrived, onion_msat = msat(htlc["amount_msat"]), msat(onion["forward_msat"])
    extra = extra_fee(htlc.get("extra_tlvs", ""))
    total = msat(onion.get("total_msat", onion_msat))
    with lock:
        fees = sum(x for _, _, x in e["parts"]) + extra
        if arrived + extra != onion_msat or fees > e["max_fee_msat"]:
            request.set_result({"result": "fail", "failure_message": "400f"})
            return
        e["parts"].append((request, onion_msat, extra))
        if sum(o for _, o, _ in e["parts"]) < total:
            return  # held until the rest arrives
        e["done"] = True
        parts, e["parts"] = e["parts"], [(None, o, x) for _, o, x in e["parts"]]
    for req, _, _ in parts:
        req.set_result({"result": "resolve", "payment_key": e["preimage"]})


plugin.run()
