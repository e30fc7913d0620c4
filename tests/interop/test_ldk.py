"""Messages exactly as LDK writes them (lightningdevkit/rust-lightning `lightning-liquidity/src` at
cfee4b75, the wire format of v0.3.0-beta1 that ldk-node pins), against our LSP; and our LSP's answers
read the way LDK reads them (tests/interop/wire.py)."""

from __future__ import annotations

import json
from typing import Any

from superscalar.lsps.client import LspsClient
from superscalar.lsps.server import LspsServer
from superscalar.protocol.lsps1 import validate
from superscalar.protocol.lsps2 import OpeningFeeParams, check_buy, parse_buy_result, parse_menu, promise_holds

from ..unit.test_lsps1 import OPTIONS
from ..unit.test_lsps2 import KEY, NOW, PEER, service
from .wire import LSPS_TYPE, chrono_rfc3339, ldk_reads_response

LDK_ID = "5f0d2a9c7b1e4f6a8c3d2b1a0f9e8d7c"  # utils/mod.rs generate_request_id: 16 random bytes, lowercase hex


def ldk_request(method: str, params: dict[str, Any]) -> bytes:
    """lsps0/ser.rs `LSPSMessage` Serialize: jsonrpc, id, method, params, compact."""
    return LSPS_TYPE + json.dumps({"jsonrpc": "2.0", "id": LDK_ID, "method": method, "params": params},
                                  separators=(",", ":")).encode()


def lsp() -> tuple[LspsServer, list[bytes]]:
    sent: list[bytes] = []
    server = LspsServer(lambda peer, msg: sent.append(msg), lambda *a, **k: None)
    jit, _, _ = service()
    server.register("lsps2.get_info", jit.get_info)
    server.register("lsps2.buy", jit.buy)
    return server, sent


def test_get_info_with_a_null_token_gets_the_menu() -> None:
    # lsps2/msgs.rs: `pub struct LSPS2GetInfoRequest { pub token: Option<String> }`, no skip_serializing_if
    server, sent = lsp()
    server.on_message(PEER, ldk_request("lsps2.get_info", {"token": None}))
    answer = ldk_reads_response(sent[-1], {LDK_ID})
    menu = answer["result"]["opening_fee_params_menu"]
    assert menu and all(isinstance(e["min_fee_msat"], str) for e in menu)  # amounts as strings (string_amount)


def test_buy_with_valid_until_written_back_by_chrono() -> None:
    """LDK parses `valid_until` into a chrono DateTime and writes it back in chrono's form: our
    `.000Z` comes back as `Z` (about one buy in 1,000 had a zero fraction). The promise binds the
    instant, so it still holds; amounts come back canonical."""
    server, sent = lsp()
    [entry] = parse_menu({"opening_fee_params_menu": [p.to_json() for p in _menu_at_whole_second()]})
    echoed = {**entry.to_json(), "valid_until": chrono_rfc3339(entry.valid_until)}
    assert echoed["valid_until"] != entry.valid_until and echoed["valid_until"].endswith(":00Z")
    # lsps2/msgs.rs LSPS2BuyRequest: payment_size_msat omitted when None (skip_serializing_if)
    server.on_message(PEER, ldk_request("lsps2.buy", {"opening_fee_params": echoed}))
    answer = ldk_reads_response(sent[-1], {LDK_ID})
    assert "jit_channel_scid" in answer["result"], answer
    buy = check_buy(KEY, {"opening_fee_params": echoed, "payment_size_msat": None}, NOW)  # null: no-MPP too
    assert buy.payment_size_msat is None


def _menu_at_whole_second() -> list[OpeningFeeParams]:
    from superscalar.protocol.lsps2 import menu

    from ..unit.test_lsps2 import TERMS
    now = float(int(NOW))  # valid_until lands on a whole second: we write ".000Z"
    entries = menu(KEY, [TERMS], now - (now + TERMS.valid_for_seconds) % 1)
    assert entries[0].valid_until.endswith(".000Z")
    return entries


def test_errors_with_data_reach_ldk_as_strings() -> None:
    """lsps0/ser.rs `LSPSResponseError { data: Option<String> }`: an object in `data` makes the whole
    message unparseable, and LDK then ignores every LSPS message of ours until it reconnects
    (manager.rs `ignored_peers`). A peer that writes like LDK (a null optional parameter) gets `data` as
    a JSON string; a spec-written client still gets bLIP-50's object."""
    sent: list[bytes] = []
    server = LspsServer(lambda peer, msg: sent.append(msg), lambda *a, **k: None)

    def create_order(peer: str, params: dict[str, Any]) -> dict[str, Any]:
        validate(params, OPTIONS)
        return {}
    server.register("lsps1.create_order", create_order)
    # lsps1/msgs.rs LSPS1CreateOrderRequest: flattened LSPS1OrderParams, `token: null`, refund omitted when None
    order = {"lsp_balance_sat": "50000000", "client_balance_sat": "0", "required_channel_confirmations": 0,
             "funding_confirms_within_blocks": 6, "channel_expiry_blocks": 20, "token": None, "announce_channel": False}
    server.on_message(PEER, ldk_request("lsps1.create_order", order))
    error = ldk_reads_response(sent[-1], {LDK_ID})["error"]
    expected = {"property": "max_initial_lsp_balance_sat", "message": "lsp_balance_sat is above the maximum"}
    assert error["code"] == 100 and json.loads(error["data"]) == expected
    spec_client = "03" + "44" * 32
    server.on_message(spec_client, ldk_request("lsps1.create_order", {k: v for k, v in order.items() if v is not None}))
    assert json.loads(sent[-1][2:])["error"]["data"] == expected
    server.forget(PEER)  # a reconnect starts afresh


def test_a_null_token_order_is_valid() -> None:
    order = {"lsp_balance_sat": "500000", "client_balance_sat": "0", "required_channel_confirmations": 1,
             "funding_confirms_within_blocks": 16, "channel_expiry_blocks": 20, "token": None,
             "announce_channel": False, "refund_onchain_address": "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"}
    assert validate(order, OPTIONS).token == ""


def test_ldk_parse_error_to_us_is_not_answered() -> None:
    """manager.rs: on any message it cannot parse LDK sends {"id":null,"error":{"code":-32700,...,
    "data":null}}. Neither our client nor our LSP answers it (an answer would start a loop)."""
    assert_unanswered(LSPS_TYPE + b'{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse error","data":null}}')


def assert_unanswered(message: bytes) -> None:
    """Neither our client nor our LSP takes or answers `message` (a response nobody waits for)."""
    sent: list[bytes] = []
    server = LspsServer(lambda peer, msg: sent.append(msg), lambda *a, **k: None)
    assert not LspsClient(lambda peer, msg: None).on_message(PEER, message)
    assert not server.on_message(PEER, message)
    assert sent == []


def test_our_client_reads_an_ldk_node_menu_and_echoes_it() -> None:
    """ldk-node's LSP (src/liquidity/service/lsps2.rs) writes `valid_until = Utc::now() + 24h`: chrono
    writes its nanoseconds (9 digits). It MACs the parsed instant (lsps2/utils.rs), but we echo the
    string exactly as it came: a float or a datetime would lose the nanoseconds."""
    entry = {"min_fee_msat": "2000000", "proportional": 10000, "valid_until": "2027-01-15T08:47:30.123456789Z",
             "min_lifetime": 144, "max_client_to_self_delay": 2016, "min_payment_size_msat": "10000000",
             "max_payment_size_msat": "100000000000", "promise": "ab" * 32}
    [p] = parse_menu({"opening_fee_params_menu": [entry]})
    assert p.to_json() == entry
    assert p.valid_at(NOW)
    # lsps2/msgs.rs LSPS2BuyResponse: client_trusts_lsp is always written
    assert parse_buy_result({"jit_channel_scid": "800000x1x0", "lsp_cltv_expiry_delta": 72,
                             "client_trusts_lsp": False})[1:] == (72, False)
    assert not promise_holds(KEY, p)  # (their promise, not ours)


