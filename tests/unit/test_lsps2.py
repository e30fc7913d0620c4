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
