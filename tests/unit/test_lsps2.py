"""LSPS2 (bLIP-52) pure core: fee formula, promise, buy checks, forwarding plan, client checks; the
BOLT-1 TLV helpers the htlc_accepted hook uses."""

from __future__ import annotations

from typing import Any

import pytest

from superscalar.protocol import tlv
from superscalar.protocol.lsps0 import INVALID_PARAMS, U64_MAX, LspsError, iso8601
from superscalar.protocol.lsps2 import (INVALID_OPENING_FEE_PARAMS, PAYMENT_SIZE_TOO_LARGE, PAYMENT_SIZE_TOO_SMALL,
                                        FeeTerms, FlowAborted, OpeningFeeParams, canonical, check_buy, check_order,
                                        cheapest, forward_plan, make_promise, menu, opening_fee, parse_buy_result,
                                        parse_menu, part_ok, promise_holds, variable_fee)

KEY = bytes(range(32))
NOW = 1_800_000_000.0
TERMS = FeeTerms(min_fee_msat=546_000, proportional=1200, valid_for_seconds=600, min_lifetime=1008,
                 max_client_to_self_delay=2016, min_payment_size_msat=1000, max_payment_size_msat=1_000_000_000)


def offered(**change: Any) -> dict[str, Any]:
    [p] = menu(KEY, [TERMS], NOW)
    return {**p.to_json(), **change}


# --- "Computing The opening_fee" ---

def test_fee_rounds_up_per_million() -> None:
    assert opening_fee(1_000_000, 0, 1) == 1
    assert opening_fee(1_000_001, 0, 1) == 2  # 1.000001 rounds up
    assert opening_fee(999_999, 0, 1) == 1
    assert opening_fee(0, 0, 1200) == 0
    assert opening_fee(42_000_000, 0, 1200) == 50_400  # 42 000 sat at 0.12 %


def test_fee_is_at_least_the_minimum() -> None:
    # the spec's example menu entry: min 546 000 msat, 1200 ppm; its example buy of 42 000 msat
    assert opening_fee(42_000, 546_000, 1200) == 546_000
    assert opening_fee(1_000_000_000, 546_000, 1200) == 1_200_000


def test_fee_overflow_in_each_step_is_none() -> None:
    assert opening_fee(U64_MAX, 0, 2) is None  # the multiplication
    assert opening_fee(U64_MAX, 0, 1) is None  # the + 999999
    assert opening_fee(U64_MAX - 999_999, 0, 1) == (U64_MAX - 999_999 + 999_999) // 1_000_000
    assert opening_fee(2**32, 0, 2**32 - 1) is not None


# --- the promise ---

def test_promise_commits_to_every_field() -> None:
    p = OpeningFeeParams.from_json(offered())
    assert promise_holds(KEY, p) and len(p.promise) == 64
    for name, value in (("min_fee_msat", "545999"), ("proportional", 1199), ("valid_until", iso8601(NOW + 601)),
                        ("min_lifetime", 1007), ("max_client_to_self_delay", 2017),
                        ("min_payment_size_msat", "999"), ("max_payment_size_msat", "1000000001")):
        assert not promise_holds(KEY, OpeningFeeParams.from_json(offered(**{name: value}))), name
    assert not promise_holds(bytes(32), p)


def test_canonical_serialisation_is_sorted_compact_json() -> None:
    p = OpeningFeeParams.from_json(offered())
    assert canonical(p).startswith(b'{"max_client_to_self_delay":2016,"max_payment_size_msat":"1000000000",')
    assert make_promise(KEY, p) == p.promise


def test_params_must_have_exactly_the_fields() -> None:
    with pytest.raises(ValueError):
        OpeningFeeParams.from_json({**offered(), "extra": 1})
    with pytest.raises(ValueError):
        OpeningFeeParams.from_json({k: v for k, v in offered().items() if k != "min_lifetime"})
    with pytest.raises(ValueError):
        OpeningFeeParams.from_json(offered(min_fee_msat=546000))  # amounts are strings
    with pytest.raises(ValueError):
        OpeningFeeParams.from_json(offered(proportional="1200"))
    with pytest.raises(ValueError):
        OpeningFeeParams.from_json(offered(promise="x" * 513))


def test_menu_order_rule() -> None:
    cheap = FeeTerms(1000, 100, 600, 1008, 2016, 1000, 10**9)
    check_order(menu(KEY, [cheap, FeeTerms(2000, 100, 600, 1008, 2016, 1000, 10**9),
                           FeeTerms(2000, 200, 600, 1008, 2016, 1000, 10**9),
                           FeeTerms(3000, 300, 600, 1008, 2016, 1000, 10**9)], NOW))
    with pytest.raises(ValueError):
        menu(KEY, [cheap, cheap], NOW)
    with pytest.raises(ValueError):
        menu(KEY, [cheap, FeeTerms(2000, 50, 600, 1008, 2016, 1000, 10**9)], NOW)


# --- lsps2.buy ---

def code_of(params: dict[str, Any], now: float = NOW) -> int:
    with pytest.raises(LspsError) as e:
        check_buy(KEY, params, now)
    return e.value.code


def test_buy_mpp_mode_computes_the_fee() -> None:
    buy = check_buy(KEY, {"opening_fee_params": offered(), "payment_size_msat": "100000000"}, NOW)
    assert buy.payment_size_msat == 100_000_000 and buy.opening_fee_msat == 546_000


def test_buy_no_mpp_mode() -> None:
    buy = check_buy(KEY, {"opening_fee_params": offered()}, NOW)
    assert buy.payment_size_msat is None and buy.opening_fee_msat is None


def test_buy_wrong_promise_is_201() -> None:
    assert code_of({"opening_fee_params": offered(promise="00" * 32)}) == INVALID_OPENING_FEE_PARAMS
    assert code_of({"opening_fee_params": offered(min_fee_msat="1")}) == INVALID_OPENING_FEE_PARAMS


def test_buy_expired_is_201() -> None:
    assert code_of({"opening_fee_params": offered()}, NOW + 600) == INVALID_OPENING_FEE_PARAMS
    assert code_of({"opening_fee_params": offered()}, NOW + 10_000) == INVALID_OPENING_FEE_PARAMS
    check_buy(KEY, {"opening_fee_params": offered()}, NOW + 599)


def test_buy_payment_size_limits() -> None:
    params = offered()
    assert code_of({"opening_fee_params": params, "payment_size_msat": "999"}) == PAYMENT_SIZE_TOO_SMALL
    assert code_of({"opening_fee_params": params, "payment_size_msat": "1000000001"}) == PAYMENT_SIZE_TOO_LARGE
    # in range, but the fee (the 546 000 msat minimum) is not strictly below the size
    assert code_of({"opening_fee_params": params, "payment_size_msat": "546000"}) == PAYMENT_SIZE_TOO_SMALL
    check_buy(KEY, {"opening_fee_params": params, "payment_size_msat": "546001"}, NOW)


def test_buy_fee_overflow_is_203() -> None:
    big = FeeTerms(0, 1_000_000, 600, 1008, 2016, 1, U64_MAX)
    [p] = menu(KEY, [big], NOW)
    assert code_of({"opening_fee_params": p.to_json(), "payment_size_msat": str(U64_MAX // 1_000_000 + 1)}) \
        == PAYMENT_SIZE_TOO_LARGE


def test_buy_malformed_is_invalid_params() -> None:
    assert code_of({}) == INVALID_PARAMS
    assert code_of({"opening_fee_params": offered(), "surprise": 1}) == INVALID_PARAMS
    assert code_of({"opening_fee_params": offered(), "payment_size_msat": 5000}) == INVALID_PARAMS
    assert code_of({"opening_fee_params": "nope"}) == INVALID_PARAMS


# --- payment and forwarding ---

def test_variable_fee_rules() -> None:
    p = OpeningFeeParams.from_json(offered())
    assert variable_fee(10_000_000, p, 0) == 546_000
    assert variable_fee(546_000, p, 0) == 546_000  # fee + htlc_minimum <= value: accepted
    assert variable_fee(546_000, p, 1) is None
    assert variable_fee(10**10, p, 0) is None  # above max_payment_size_msat


def test_forward_plan_is_the_spec_algorithm() -> None:
    assert forward_plan([4000, 3000, 3000], 546, 1) == [(3454, 546), (3000, 0), (3000, 0)]
    assert forward_plan([100, 200, 5000], 500, 10) == [(10, 90), (10, 190), (4780, 220)]
    plan = forward_plan([1000] * 3, 2970, 10)
    assert plan == [(10, 990)] * 3 and sum(f for _, f in plan) == 2970
    with pytest.raises(ValueError):
        forward_plan([1000] * 3, 2971, 10)


def test_client_part_check() -> None:
    assert part_ok(3454, 4000, 546)
    assert part_ok(3000, 3000, 0)
    assert not part_ok(3453, 4000, 546)
    assert not part_ok(3000, 4000, 0)


def test_client_picks_the_cheapest_valid_entry() -> None:
    entries = menu(KEY, [FeeTerms(1000, 5000, 600, 1008, 2016, 1000, 10**9),
                         FeeTerms(2000, 5000, 6000, 1008, 2016, 1000, 10**9)], NOW)
    assert cheapest(entries, 10**6, NOW) == (entries[0], 5000)
    assert cheapest(entries, 10**6, NOW + 590) == (entries[1], 5000)  # the first expires within the margin
    with pytest.raises(FlowAborted):
        cheapest(entries, 1000, NOW)  # the fee is not below the size anywhere


def test_client_aborts_on_unknown_fields() -> None:
    with pytest.raises(FlowAborted):
        parse_menu({"opening_fee_params_menu": [{**offered(), "bonus": True}]})
    assert parse_menu({"opening_fee_params_menu": []}) == []
    assert parse_buy_result({"jit_channel_scid": "29451x4815x1", "lsp_cltv_expiry_delta": 144}) \
        == ((29451 << 40) | (4815 << 16) | 1, 144, False)
    with pytest.raises(FlowAborted):
        parse_buy_result({"jit_channel_scid": "29451x4815x1", "lsp_cltv_expiry_delta": "144"})


# --- BOLT-1 TLV ---

def test_tlv_round_trip_and_rewrite() -> None:
    payload = tlv.serialize_stream([(2, tlv.tu64(4000)), (4, tlv.tu64(800)), (6, bytes(8))])
    records = tlv.hop_payload(tlv.bigsize(len(payload)) + payload)
    assert tlv.read_tu64(tlv.get(records, 2) or b"") == 4000
    rewritten = tlv.replace(records, tlv.AMT_TO_FORWARD, tlv.tu64(3454))
    assert tlv.parse_stream(tlv.serialize_stream(rewritten)) == [(2, tlv.tu64(3454)), (4, tlv.tu64(800)), (6, bytes(8))]
    extra = tlv.serialize_stream([(tlv.EXTRA_FEE, (546).to_bytes(8, "big"))])
    assert extra.hex() == "fe000100010800000000" + "00000222"
    assert tlv.extra_fee(extra) == 546 and tlv.extra_fee(b"") == 0


def test_tlv_rejects_bad_streams() -> None:
    for bad in (b"\x02\x05\x01", b"\x04\x00\x02\x00", b"\xfd\x00\x10\x00", b"\x02\x02\x00\x01"):
        with pytest.raises(tlv.TlvError):
            stream = tlv.parse_stream(bad)
            tlv.read_tu64(stream[0][1])
    with pytest.raises(tlv.TlvError):
        tlv.extra_fee(tlv.serialize_stream([(tlv.EXTRA_FEE, b"\x01")]))


# --- BOLT-11 route hint rewrite ---

# BOLT-11 "Examples": "Please send $3 for a cup of coffee to the same peer, within one minute"
COFFEE = ("lnbc2500u1pvjluezsp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygspp5qqqsyqcyq5rqwzqfqqqsyqc"
          "yq5rqwzqfqqqsyqcyq5rqwzqfqypqdq5xysxxatsyp3k7enxv4jsxqzpu9qrsgquk0rl77nj30yxdy8j9vdx85fkpmdla2087ne0x"
          "h8nhedh8w27kyke0lp53ut353s06fv3qfegext0eh0ymjpf39tuven09sam30g4vgpfna3rh")


def test_bech32_round_trip_of_the_spec_example() -> None:
    from superscalar.protocol.bolt11 import bech32_decode, bech32_encode

    hrp, words = bech32_decode(COFFEE)
    assert hrp == "lnbc2500u" and bech32_encode(hrp, words) == COFFEE


def test_route_hint_replaces_every_r_field() -> None:
    from superscalar.protocol.bolt11 import RouteHop, route_hints, tagged_fields, with_route_hint

    hop = RouteHop(bytes.fromhex("02" + "11" * 32), (29451 << 40) | (4815 << 16) | 1, 0, 0, 144)
    once = with_route_hint(COFFEE, hop)
    assert route_hints(once) == [[hop]]
    twice = with_route_hint(once, RouteHop(hop.pubkey, 7, 0, 0, 40))
    assert route_hints(twice) == [[RouteHop(hop.pubkey, 7, 0, 0, 40)]]
    # every other field kept, in order
    assert [f for f in tagged_fields(twice)[2] if f[0] != 3] == tagged_fields(COFFEE)[2]


# --- the LSP's service and the client's part check, against a fake lightningd ---

import threading  # noqa: E402
import time  # noqa: E402

from superscalar.client.jit import JitClient  # noqa: E402
from superscalar.lsp.jit import FAIL_TEMPORARY, FAIL_UNKNOWN_NEXT_PEER, JitService  # noqa: E402
from superscalar.protocol.lsps0 import parse_scid  # noqa: E402
from superscalar.cln.store import Store  # noqa: E402
from tests.fakes import MemoryDatastore  # noqa: E402

PEER = "02" + "22" * 32


class FakeLightningd(MemoryDatastore):
    def __init__(self) -> None:
        super().__init__()
        self.rpc = self
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((method, params))
        if method == "listconfigs":
            return {"configs": {"fee-base": {"value_int": 1}, "fee-per-satoshi": {"value_int": 10}}}
        return {"peers": [{"connected": True}]} if method == "listpeers" else {}

    def peer_channels(self, peer: Any = None) -> list[dict[str, Any]]:
        return [{"channel_id": "cc" * 32, "state": "CHANNELD_NORMAL", "minimum_htlc_out_msat": 1,
                 "funding_txid": "ab" * 32, "htlcs": []}]


def service(clock: Any = lambda: NOW, terms: FeeTerms = TERMS) -> tuple[JitService, FakeLightningd, list[tuple[str, int]]]:
    node = FakeLightningd()
    opened: list[tuple[str, int]] = []

    def open_for(peer: str, sat: int) -> str:
        opened.append((peer, sat))
        return "cc" * 32
    return JitService(node, Store(node), KEY, [terms], 40, lambda *a, **k: None, open_for, clock), node, opened  # type: ignore[arg-type]


def onion(scid: str, amount_msat: int) -> dict[str, Any]:
    payload = tlv.serialize_stream([(2, tlv.tu64(amount_msat)), (4, tlv.tu64(900)),
                                    (6, parse_scid(scid).to_bytes(8, "big"))])
    return {"short_channel_id": scid, "forward_msat": amount_msat,
            "payload": (tlv.bigsize(len(payload)) + payload).hex()}


def htlc(i: int, amount_msat: int) -> dict[str, Any]:
    return {"id": i, "amount_msat": amount_msat, "payment_hash": "11" * 32, "cltv_expiry": 940,
            "cltv_expiry_relative": 40}


def collect(n: int) -> tuple[list[dict[str, Any]], Any]:
    got: list[dict[str, Any]] = []
    done = threading.Event()

    def answer(result: dict[str, Any]) -> None:
        got.append(result)
        if len(got) == n:
            done.set()
    return got, (answer, done)


def test_service_buy_replay_and_reload() -> None:
    svc, node, _ = service()
    offer = svc.get_info(PEER, {})["opening_fee_params_menu"][0]
    with pytest.raises(LspsError) as e:
        svc.get_info(PEER, {"token": "x"})
    assert e.value.code == 200
    res = svc.buy(PEER, {"opening_fee_params": offer, "payment_size_msat": "300000000"})
    assert res["lsp_cltv_expiry_delta"] == 40 and parse_scid(res["jit_channel_scid"]) >> 40 >= 0xC00000
    with pytest.raises(LspsError) as e:
        svc.buy(PEER, {"opening_fee_params": offer, "payment_size_msat": "300000000"})
    assert e.value.code == INVALID_OPENING_FEE_PARAMS
    again = JitService(node, Store(node), KEY, [TERMS], 40, lambda *a, **k: None, lambda p, s: "", lambda: NOW)  # type: ignore[arg-type]
    again.load()
    assert [b["jit_channel_scid"] for b in again.buys()] == [res["jit_channel_scid"]]
    assert not again.on_htlc(onion("1x2x3", 1000), htlc(0, 1000), lambda r: None)


def test_service_holds_mpp_parts_then_forwards_minus_fee() -> None:
    svc, node, opened = service()
    offer = svc.get_info(PEER, {})["opening_fee_params_menu"][0]
    scid = svc.buy(PEER, {"opening_fee_params": offer, "payment_size_msat": "300000000"})["jit_channel_scid"]
    got, (answer, done) = collect(3)
    for i in range(3):
        assert svc.on_htlc(onion(scid, 100_000_000), htlc(i, 100_000_000), answer)
        if i < 2:
            assert got == [] and opened == []
    assert done.wait(10)
    assert opened == [(PEER, 299_454 + 2_994 + 50_000)]
    by_amount = sorted(got, key=lambda r: tlv.read_tu64(tlv.get(tlv.parse_stream(bytes.fromhex(r["payload"])), 2) or b""))
    first = by_amount[0]
    assert tlv.read_tu64(tlv.get(tlv.parse_stream(bytes.fromhex(first["payload"])), 2) or b"") == 100_000_000 - 546_000
    assert tlv.extra_fee(bytes.fromhex(first["extra_tlvs"])) == 546_000
    assert all(r["forward_to"] == "cc" * 32 and r["result"] == "continue" for r in got)
    assert all("extra_tlvs" not in r for r in by_amount[1:])
    assert ("setchannel", {"id": "cc" * 32, "feebase": 0, "feeppm": 0, "enforcedelay": 0}) in node.calls
    [sold] = svc.buys()
    assert sold["state"] == "open" and sold["channel_id"] == "cc" * 32 and sold["opening_fee_charged_msat"] == 546_000


def test_service_fails_parts_that_do_not_sum_in_time() -> None:
    svc, _, opened = service()
    offer = svc.get_info(PEER, {})["opening_fee_params_menu"][0]
    scid = svc.buy(PEER, {"opening_fee_params": offer, "payment_size_msat": "300000000"})["jit_channel_scid"]
    got, (answer, done) = collect(2)
    svc.on_htlc(onion(scid, 100_000_000), htlc(0, 100_000_000), answer)
    svc.on_htlc(onion(scid, 100_000_000), htlc(1, 100_000_000), answer)
    [held] = list(svc._held.values())
    assert held.timer is not None and held.timer.is_alive()
    held.timer.cancel()
    svc._expire(held, past_valid_until=False)  # what the 90 s timer does
    assert got == [{"result": "fail", "failure_message": FAIL_TEMPORARY}] * 2 and opened == []
    # a later part starts a new set
    got2, (answer2, _) = collect(1)
    svc.on_htlc(onion(scid, 100_000_000), htlc(2, 100_000_000), answer2)
    assert got2 == [] and len(svc._held) == 1


def test_service_fails_at_valid_until_with_unknown_next_peer() -> None:
    svc, _, opened = service(time.time, FeeTerms(546_000, 1200, 1, 1008, 2016, 1000, 10**9))
    offer = svc.get_info(PEER, {})["opening_fee_params_menu"][0]
    scid = svc.buy(PEER, {"opening_fee_params": offer, "payment_size_msat": "300000000"})["jit_channel_scid"]
    got, (answer, done) = collect(1)
    svc.on_htlc(onion(scid, 100_000_000), htlc(0, 100_000_000), answer)
    assert done.wait(5)
    assert got == [{"result": "fail", "failure_message": FAIL_UNKNOWN_NEXT_PEER}] and opened == []
    got, (answer, done) = collect(1)
    svc.on_htlc(onion(scid, 100_000_000), htlc(1, 100_000_000), answer)  # after valid_until: at once
    assert got == [{"result": "fail", "failure_message": FAIL_UNKNOWN_NEXT_PEER}]


def test_service_no_mpp_part_too_small_for_the_fee() -> None:
    svc, _, opened = service()
    offer = svc.get_info(PEER, {})["opening_fee_params_menu"][0]
    scid = svc.buy(PEER, {"opening_fee_params": offer})["jit_channel_scid"]
    got, _ = collect(1)
    svc.on_htlc(onion(scid, 500_000), htlc(0, 500_000), got.append)
    assert got == [{"result": "fail", "failure_message": FAIL_UNKNOWN_NEXT_PEER}] and opened == []
    # exactly the fee: nothing left for the client's htlc_minimum_msat (assumed 1 msat before the open)
    svc.on_htlc(onion(scid, 546_000), htlc(1, 546_000), got.append)
    assert got[-1] == {"result": "fail", "failure_message": FAIL_UNKNOWN_NEXT_PEER} and opened == []


def client_with_buy(fee: int = 546_000, size: int = 300_000_000) -> JitClient:
    node = FakeLightningd()
    client = JitClient(node, Store(node), None, lambda *a, **k: None, lambda: NOW)  # type: ignore[arg-type]
    client._buys["11" * 32] = {"payment_hash": "11" * 32, "lsp": PEER, "opening_fee_params": offered(),
                               "payment_size_msat": size, "opening_fee_msat": fee, "channel_accepted": False,
                               "jit_channel_scid": "1x1x1"}
    return client


def final_onion(amount_msat: int, total_msat: int) -> dict[str, Any]:
    payload = tlv.serialize_stream([(2, tlv.tu64(amount_msat)), (4, tlv.tu64(900)),
                                    (8, bytes(range(32)) + tlv.tu64(total_msat))])
    return {"forward_msat": amount_msat, "total_msat": total_msat, "payload": (tlv.bigsize(len(payload)) + payload).hex()}


def test_client_takes_underpaid_parts_within_the_fee() -> None:
    client = client_with_buy()
    fee_tlv = tlv.serialize_stream([(tlv.EXTRA_FEE, (546_000).to_bytes(8, "big"))]).hex()
    answer = client.on_htlc(final_onion(100_000_000, 300_000_000),
                            {**htlc(0, 100_000_000 - 546_000), "extra_tlvs": fee_tlv})
    assert answer is not None and answer["result"] == "continue" and answer["invoice_msat"] == 300_000_000 - 546_000
    payload = tlv.parse_stream(bytes.fromhex(answer["payload"]))
    assert tlv.read_tu64(tlv.get(payload, 2) or b"") == 100_000_000 - 546_000
    assert tlv.get(payload, 8) == bytes(range(32)) + tlv.tu64(300_000_000 - 546_000)
    verbatim = client.on_htlc(final_onion(100_000_000, 300_000_000), htlc(1, 100_000_000))
    assert verbatim is not None and verbatim["result"] == "continue"
    # a third part deducting anything more goes over the agreed fee
    more = tlv.serialize_stream([(tlv.EXTRA_FEE, (1).to_bytes(8, "big"))]).hex()
    assert client.on_htlc(final_onion(100_000_000, 300_000_000),
                          {**htlc(2, 100_000_000 - 1), "extra_tlvs": more})["result"] == "fail"  # type: ignore[index]


def test_client_rejects_a_part_short_of_its_extra_fee() -> None:
    client = client_with_buy()
    fee_tlv = tlv.serialize_stream([(tlv.EXTRA_FEE, (1_000).to_bytes(8, "big"))]).hex()
    assert client.on_htlc(final_onion(100_000_000, 300_000_000),
                          {**htlc(0, 100_000_000 - 2_000), "extra_tlvs": fee_tlv})["result"] == "fail"  # type: ignore[index]
    assert client.on_htlc(final_onion(100_000_000, 300_000_000), {**htlc(0, 1), "payment_hash": "22" * 32}) is None


def test_client_accepts_zero_conf_only_for_its_buy() -> None:
    client = client_with_buy()
    assert client.openchannel({"id": "03" + "33" * 32, "funding_msat": 10**8}) is None
    assert client.openchannel({"id": PEER, "funding_msat": 10**8, "push_msat": 1}) is None
    assert client.openchannel({"id": PEER, "funding_msat": 10**8}) == {"result": "continue", "mindepth": 0}
    assert client.openchannel({"id": PEER, "funding_msat": 10**8}) is None  # one channel per buy


def test_service_refuses_a_buy_it_cannot_serve() -> None:
    node = FakeLightningd()
    svc = JitService(node, Store(node), KEY, [TERMS], 40, lambda *a, **k: None, lambda p, s: "", lambda: NOW,  # type: ignore[arg-type]
                     shortfall=lambda size, fee: "no inbound" if size > 10**8 else None)
    offer = svc.get_info(PEER, {})["opening_fee_params_menu"][0]
    with pytest.raises(LspsError) as e:
        svc.buy(PEER, {"opening_fee_params": offer, "payment_size_msat": str(10**8 + 1)})
    assert e.value.code == PAYMENT_SIZE_TOO_LARGE and svc.buys() == [] and node.data == {}
    svc.buy(PEER, {"opening_fee_params": offer, "payment_size_msat": str(10**8)})
    assert len(svc.buys()) == 1


def test_service_refuses_a_client_to_self_delay_above_the_agreed() -> None:
    """bLIP-52 "5. Channel Opening And Forwarding": the client's to_self_delay (the wait it imposes on the
    LSP's outputs, lightningd's `our_to_self_delay`) is at most `max_client_to_self_delay`. lightningd
    cannot bound it before funding, so the LSP checks the open channel: too long, it forwards nothing
    (unknown_next_peer) and closes the channel."""
    svc, node, opened = service()
    node.peer_channels = lambda peer=None: [{"channel_id": "cc" * 32, "state": "CHANNELD_NORMAL",  # type: ignore[method-assign]
                                              "minimum_htlc_out_msat": 1, "funding_txid": "ab" * 32, "htlcs": [],
                                              "our_to_self_delay": TERMS.max_client_to_self_delay + 1}]
    offer = svc.get_info(PEER, {})["opening_fee_params_menu"][0]
    scid = svc.buy(PEER, {"opening_fee_params": offer})["jit_channel_scid"]  # no-MPP
    got, (answer, done) = collect(1)
    assert svc.on_htlc(onion(scid, 100_000_000), htlc(0, 100_000_000), answer)
    assert done.wait(10)
    assert got == [{"result": "fail", "failure_message": FAIL_UNKNOWN_NEXT_PEER}]
    for _ in range(100):
        if ("close", {"id": "cc" * 32}) in node.calls:
            break
        time.sleep(0.05)
    assert ("close", {"id": "cc" * 32}) in node.calls
    assert svc.buys()[0]["state"] == "waiting"
