"""Messages exactly as Core Lightning's LSPS plugin writes them (ElementsProject/lightning
`plugins/lsps-plugin/src` at v26.06-258-g090f4b0e, crate cln-lsps 0.1.1), against our LSP; and our
answers read the way cln-lsps-client reads them (tests/interop/wire.py)."""

from __future__ import annotations

import json
from typing import Any

from superscalar.protocol.lsps0 import parse_response
from superscalar.protocol.lsps2 import parse_buy_result, parse_menu

from ..unit.test_lsps2 import PEER
from .test_ldk import _menu_at_whole_second, assert_unanswered, lsp
from .wire import CLN_FEE_PARAMS_FIELDS, CLN_MAX_PROMISE_BYTES, LSPS_TYPE, chrono_rfc3339, cln_reads_response

CLN_ID = "8c1f0e2d3b4a59687766"  # proto/jsonrpc.rs generate_random_id: 10 random bytes, hex


def cln_request(method: str, params: dict[str, Any]) -> bytes:
    """proto/jsonrpc.rs `RequestObject` Serialize: jsonrpc, method, params, id; `params` dropped only
    when it serializes to null."""
    return LSPS_TYPE + json.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": CLN_ID},
                                  separators=(",", ":")).encode()


def test_get_info_menu_passes_deny_unknown_fields() -> None:
    """proto/lsps2.rs: `LspsGetInfoRequest` omits an absent token (skip_serializing_if), so params is {};
    `OpeningFeeParams` is deny_unknown_fields with a promise of at most 512 bytes; the client takes the
    first entry valid for another minute, so the menu must be cheapest first (bLIP-52 also says so)."""
    server, sent = lsp()
    server.on_message(PEER, cln_request("lsps2.get_info", {}))
    menu = cln_reads_response(sent[-1], {CLN_ID})["result"]["opening_fee_params_menu"]
    assert menu
    for entry in menu:
        assert set(entry) == CLN_FEE_PARAMS_FIELDS
        assert len(entry["promise"].encode()) <= CLN_MAX_PROMISE_BYTES
    fees = [(int(e["min_fee_msat"]), e["proportional"]) for e in menu]
    assert fees == sorted(fees)


def test_buy_with_the_params_cln_wrote_back() -> None:
    """cln-lsps-client round-trips the parsed OpeningFeeParams through its RPC (lsps-lsps2-getinfo ->
    lsps-lsps2-buy): chrono rewrites valid_until, and payment_size_msat is omitted (its LSP does no MPP)."""
    server, sent = lsp()
    [entry] = _menu_at_whole_second()
    echoed = {**entry.to_json(), "valid_until": chrono_rfc3339(entry.valid_until)}
    server.on_message(PEER, cln_request("lsps2.buy", {"opening_fee_params": echoed}))
    result = cln_reads_response(sent[-1], {CLN_ID})["result"]
    parse_buy_result(result)
    assert len(result["jit_channel_scid"].split("x")) == 3  # ShortChannelId FromStr: BxTxO


def test_our_client_reads_a_cln_lsp() -> None:
    """A cln-lsps-service LSP: Msat written as a string, valid_until in chrono's form (no fraction when
    it is zero), `client_trusts_lsp: false` in the buy result, error objects with `"data": null`."""
    entry = {"min_fee_msat": "1000000", "proportional": 1000, "valid_until": "2027-01-15T08:47:30Z",
             "min_lifetime": 1008, "max_client_to_self_delay": 2016, "min_payment_size_msat": "1000000",
             "max_payment_size_msat": "5000000000", "promise": "f" * 64}
    [p] = parse_menu({"opening_fee_params_menu": [entry]})
    assert p.to_json() == entry
    assert parse_buy_result({"jit_channel_scid": "912x3021x7", "lsp_cltv_expiry_delta": 144,
                             "client_trusts_lsp": False})[1:] == (144, False)
    # router.rs: an unknown method is -32601 with an empty message and "data": null
    error = parse_response(LSPS_TYPE + b'{"jsonrpc":"2.0","id":"x","error":{"code":-32601,"message":"","data":null}}')
    assert error is not None and error.error is not None and error.error.code == -32601


def test_cln_service_answering_our_responses_stops_there() -> None:
    """cln-lsps-service answers every 37913 message without a method with -32700 and id null (router.rs),
    so a response of ours to a node that also runs it comes back as that error: nobody answers it again."""
    assert_unanswered(LSPS_TYPE + b'{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"failed to parse '
                      b'request","data":null}}')
