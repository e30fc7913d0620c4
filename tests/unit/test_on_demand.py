"""client/on_demand.py: which parts short by an on-demand sale's price a client takes, and what it hands
lightningd for them."""

from __future__ import annotations

from typing import Any, Optional

import pytest

from superscalar.client.on_demand import InboundFeeLimit, OnDemandPayments
from superscalar.protocol import tlv

SALE_TXID = "ab" * 32
PRICE = 1_226_000
AMOUNT = 40_000_000


class FakeStore:
    def __init__(self) -> None:
        sale = {"txid": SALE_TXID, "mine": True, "channel_outpoint": f"{SALE_TXID}:0", "price_msat": PRICE,
                "price_paid_msat": 0}
        self.records = {"f1": {"role": "client", "sales": [sale]}}
        self.puts = 0

    def factory_ids(self) -> list[str]:
        return list(self.records)

    def get(self, fid: str, name: str) -> Optional[dict[str, Any]]:
        return self.records.get(fid)

    def put(self, fid: str, name: str, data: dict[str, Any]) -> None:
        self.records[fid], self.puts = data, self.puts + 1


class FakeRpc:
    def __init__(self, status: str = "unpaid", amount: int = AMOUNT) -> None:
        self.invoice = {"label": "inv", "status": status, "amount_msat": amount}

    def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        assert method == "listinvoices"
        return {"invoices": [self.invoice]}


class FakeNode:
    def __init__(self, rpc: FakeRpc) -> None:
        self.rpc = rpc

    def channel_named(self, name: str) -> list[dict[str, Any]]:
        return [{"funding_txid": SALE_TXID, "funding_outnum": 0}] if name == "1x2x3" else []


def part(extra: int, total: int = AMOUNT, onion: int = AMOUNT, arrived: Optional[int] = None,
         scid: str = "1x2x3") -> tuple[dict[str, Any], dict[str, Any]]:
    records = [(tlv.AMT_TO_FORWARD, tlv.tu64(onion)), (tlv.OUTGOING_CLTV_VALUE, tlv.tu64(500)),
               (tlv.PAYMENT_DATA, bytes(32) + tlv.tu64(total))]
    stream = tlv.serialize_stream(records)
    htlc = {"short_channel_id": scid, "amount_msat": onion - extra if arrived is None else arrived,
            "cltv_expiry": 520, "cltv_expiry_relative": 20, "payment_hash": "cd" * 32,
            "extra_tlvs": tlv.serialize_stream([(tlv.EXTRA_FEE, extra.to_bytes(8, "big"))]).hex() if extra else ""}
    return {"payload": (tlv.bigsize(len(stream)) + stream).hex(), "forward_msat": onion}, htlc


def payments(rpc: Optional[FakeRpc] = None) -> tuple[OnDemandPayments, FakeStore]:
    store = FakeStore()
    return OnDemandPayments(FakeNode(rpc or FakeRpc()), store, lambda *a, **k: None), store  # type: ignore[arg-type]


def test_single_part_short_by_the_price_is_taken_and_recorded() -> None:
    od, store = payments()
    answer = od.on_htlc(*part(PRICE))
    assert answer is not None and answer["result"] == "continue" and answer["invoice_msat"] == AMOUNT - PRICE
    payload = tlv.parse_stream(bytes.fromhex(answer["payload"]))
    assert tlv.read_tu64(tlv.get(payload, tlv.AMT_TO_FORWARD) or b"") == AMOUNT - PRICE
    assert tlv.read_tu64((tlv.get(payload, tlv.PAYMENT_DATA) or b"")[32:]) == AMOUNT - PRICE
    assert store.records["f1"]["sales"][0]["price_paid_msat"] == PRICE and store.puts == 1
    # lightningd hands the same part again after a restart: taken again, counted once
    again = od.on_htlc(*part(PRICE))
    assert again is not None and again["result"] == "continue"
    assert store.records["f1"]["sales"][0]["price_paid_msat"] == PRICE
    # the price is paid: a short part of another payment is refused
    onion, htlc = part(1)
    refused = od.on_htlc(onion, {**htlc, "payment_hash": "ef" * 32})
    assert refused is not None and refused["result"] == "fail"


@pytest.mark.parametrize("why", ["mpp", "more-than-price", "wrong-arrival", "paid-invoice", "other-amount"])
def test_other_short_parts_are_refused(why: str) -> None:
    rpc = FakeRpc("paid") if why == "paid-invoice" else FakeRpc(amount=AMOUNT + 1) if why == "other-amount" else FakeRpc()
    od, store = payments(rpc)
    args = {"mpp": part(PRICE, total=AMOUNT * 2), "more-than-price": part(PRICE + 1),
            "wrong-arrival": part(PRICE, arrived=AMOUNT - PRICE - 1)}.get(why, part(PRICE))
    answer = od.on_htlc(*args)
    assert answer is not None and answer["result"] == "fail" and answer["failure_message"].startswith("400f")
    assert store.puts == 0 and store.records["f1"]["sales"][0]["price_paid_msat"] == 0


def test_parts_that_are_not_short_or_not_over_a_priced_sale_go_on() -> None:
    od, store = payments()
    assert od.on_htlc(*part(0)) is None  # not short: lightningd's normal handling
    assert od.on_htlc(*part(PRICE, scid="9x9x9")) is None  # not over a sale of ours: lightningd fails it
    onion, htlc = part(PRICE)
    assert od.on_htlc({**onion, "short_channel_id": "5x5x5"}, htlc) is None  # a forward, not for us
    assert store.puts == 0


def test_fee_limit() -> None:
    assert InboundFeeLimit().max_msat(90_400) == (2_000 + 904) * 1000
    assert InboundFeeLimit(500, 0).max_msat(90_400) == 500_000
