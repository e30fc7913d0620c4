"""LSPS0 (bLIP-50) framing, errors and common schemas; the server's and the client's dispatch."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from superscalar.lsp.onboarding import (INBOUND_OUT_OF_RANGE, JOIN_NOT_OFFERED, QUEUE_FULL, JoinLimits, Onboarding,
                                        Speakers, terms)
from superscalar.factory.params import regtest_params
from superscalar.lsps.client import LspsClient
from superscalar.lsps.server import LspsServer
from superscalar.protocol.lsps0 import (INTERNAL_ERROR, INVALID_PARAMS, LSPS_MESSAGE_TYPE,
                                        METHOD_NOT_FOUND, PARSE_ERROR, LspsError, check_params, format_scid,
                                        iso8601, parse_amount, parse_iso8601, parse_request, parse_response,
                                        parse_scid, result_message)

TYPE = LSPS_MESSAGE_TYPE.to_bytes(2, "big")


def served() -> tuple[LspsServer, list[tuple[str, dict[str, Any]]]]:
    sent: list[tuple[str, dict[str, Any]]] = []
    server = LspsServer(lambda peer, msg: sent.append((peer, json.loads(msg[2:]))), lambda *a, **k: None, ("lsps5",))
    return server, sent


def ask(server: LspsServer, sent: list[tuple[str, dict[str, Any]]], payload: bytes) -> dict[str, Any]:
    before = len(sent)
    assert server.on_message("02" * 33, TYPE + payload)
    assert len(sent) == before + 1
    return sent[-1][1]


@pytest.mark.parametrize("payload", [b"{", b" [ ] ", b"{} {}", b" { } { ", b'{"a":1}\x00', b"\xff\xfe",
                                     b'{"x": NaN}', b"", b"42"])
def test_bad_message_format_is_a_parse_error_with_null_id(payload: bytes) -> None:
    server, sent = served()
    answer = ask(server, sent, payload)
    assert answer == {"jsonrpc": "2.0", "id": None, "error": {"code": PARSE_ERROR, "message": "parse error"}}


def test_whitespace_around_one_object_is_fine() -> None:
    req = parse_request(TYPE + b' \t\r\n {"jsonrpc":"2.0","method":"m","id":"x","params":{}} \n')
    assert (req.id, req.method, req.params) == ("x", "m", {})


@pytest.mark.parametrize("obj", [{"method": "lsps0.list_protocols", "id": "a", "params": {}},
                                 {"jsonrpc": "1.0", "method": "lsps0.list_protocols", "id": "a"},
                                 {"jsonrpc": "2.0", "id": "a", "params": {}},
                                 {"jsonrpc": "2.0", "method": "lsps0.list_protocols", "params": {}},
                                 {"jsonrpc": "2.0", "method": "lsps0.list_protocols", "id": "a", "params": [1]}])
def test_non_requests_are_a_bad_message_format(obj: dict[str, Any]) -> None:
    """bLIP-50 "Message Payload Format": to the LSP, a payload that is not a JSON-RPC 2.0 request is a
    bad message format: "parse error", -32700, id null."""
    server, sent = served()
    answer = ask(server, sent, json.dumps(obj).encode())
    assert answer == {"jsonrpc": "2.0", "id": None, "error": {"code": PARSE_ERROR, "message": "parse error"}}


@pytest.mark.parametrize("obj", [{"jsonrpc": "2.0", "id": "late", "result": {}},
                                 {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "parse error"}},
                                 {"jsonrpc": "2.0", "id": "x", "error": {"code": 1, "message": "no", "data": None}}])
def test_responses_are_never_answered(obj: dict[str, Any]) -> None:
    """A response no request of ours waits for (one after our timeout, an error with id null) passes by
    unanswered: two nodes answering each other's errors would never stop."""
    server, sent = served()
    client = LspsClient(lambda peer, msg: None)
    message = TYPE + json.dumps(obj).encode()
    assert not client.on_message("02" * 33, message)
    assert not server.on_message("02" * 33, message)
    assert sent == []


def request(method: str, params: Any = None, rid: str = "id-1") -> bytes:
    return json.dumps({"jsonrpc": "2.0", "method": method, "id": rid,
                       **({} if params is None else {"params": params})}).encode()


def test_list_protocols_unknown_methods_and_pass_through() -> None:
    server, sent = served()
    server.register("lsps2.get_info", lambda peer, params: {})
    server.register("lsps1.get_info", lambda peer, params: {})
    server.register("superscalar.get_info", lambda peer, params: {})
    # our own methods are announced in a field LSPS clients ignore (bLIP-50: unrecognised result fields)
    # (lsps5 is another plugin's on this node: listed too)
    listed = {"protocols": [1, 2, 5], "superscalar": {"methods": ["superscalar.get_info"]}}
    assert ask(server, sent, request("lsps0.list_protocols", {})) == {"jsonrpc": "2.0", "id": "id-1", "result": listed}
    assert ask(server, sent, request("lsps0.list_protocols"))["result"] == listed  # params omitted
    assert ask(server, sent, request("lsps0.list_protocols", {"x": 1}))["error"] == {
        "code": INVALID_PARAMS, "message": "Invalid params", "data": {"unrecognized": ["x"]}}
    assert ask(server, sent, request("lsps9.nothing", {}, "q"))["error"]["code"] == METHOD_NOT_FOUND
    assert ask(server, sent, request("lsps2.sell", {}))["error"]["code"] == METHOD_NOT_FOUND
    # another plugin's family: not ours to answer
    before = len(sent)
    assert not server.on_message("02" * 33, TYPE + request("lsps5.list_webhooks", {}))
    assert len(sent) == before


def test_handler_errors_and_failures() -> None:
    server, sent = served()

    def refuse(peer: str, params: dict[str, Any]) -> dict[str, Any]:
        raise LspsError(201, "invalid_opening_fee_params", {"why": "expired"})

    def crash(peer: str, params: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("secret internals")

    server.register("lsps2.buy", refuse)
    server.register("lsps2.get_info", crash)
    assert ask(server, sent, request("lsps2.buy", {}))["error"] == {
        "code": 201, "message": "invalid_opening_fee_params", "data": {"why": "expired"}}
    answer = ask(server, sent, request("lsps2.get_info", {}))
    assert answer["error"] == {"code": INTERNAL_ERROR, "message": "Internal error"}
    with pytest.raises(ValueError):
        server.register("lsps2.buy", refuse)


def test_check_params_and_amounts() -> None:
    check_params({"a": 1}, ("a",), ("b",))
    with pytest.raises(LspsError) as e:
        check_params({"a": 1, "z": 2, "y": 3}, ("a",))
    assert (e.value.code, e.value.data) == (INVALID_PARAMS, {"unrecognized": ["y", "z"]})
    with pytest.raises(LspsError) as e:
        check_params({}, ("a",))
    assert e.value.code == INVALID_PARAMS
    assert parse_amount("546000", "x") == 546000
    assert parse_amount("0", "x") == 0
    assert parse_amount(str(2**64 - 1), "x") == 2**64 - 1
    for bad in (546, "0546", "-1", "1.5", "", " 1", str(2**64), None, "1e3"):
        with pytest.raises(LspsError):
            parse_amount(bad, "x")


def test_datetimes_and_scids() -> None:
    assert iso8601(1677142050.511) == "2023-02-23T08:47:30.511Z"
    assert parse_iso8601("2023-02-23T08:47:30.511Z") == pytest.approx(1677142050.511)
    assert parse_iso8601("2023-02-23T08:47:30Z") == 1677142050
    for bad in ("2023-02-23 08:47:30Z", "2023-02-23T08:47:30.511", 5):
        with pytest.raises(ValueError):
            parse_iso8601(bad)
    assert format_scid(parse_scid("529x1x0")) == "529x1x0"
    assert parse_scid("1x2x3") == (1 << 40) | (2 << 16) | 3
    for bad in ("1x2", "1x2x3x4", "ax1x1", "16777216x0x0", "1x1x65536"):
        with pytest.raises(ValueError):
            parse_scid(bad)


def test_client_matches_responses_to_its_own_requests() -> None:
    outbox: list[tuple[str, bytes]] = []
    sent = threading.Event()

    def send(peer: str, msg: bytes) -> None:
        outbox.append((peer, msg))
        sent.set()

    client = LspsClient(send)
    results: list[Any] = []
    t = threading.Thread(target=lambda: results.append(client.request("03" * 33, "lsps0.list_protocols", {}, 5)))
    t.start()
    assert sent.wait(5)
    peer, msg = outbox[0]
    req = parse_request(msg)
    assert req.method == "lsps0.list_protocols" and len(req.id) >= 20
    # someone else's response, and ours from the wrong peer: not ours
    assert not client.on_message("03" * 33, result_message("other", {}))
    assert not client.on_message("04" * 33, result_message(req.id, {}))
    assert client.on_message("03" * 33, result_message(req.id, {"protocols": [1]}))
    t.join(5)
    assert results == [{"protocols": [1]}]
    with pytest.raises(TimeoutError):
        client.request("03" * 33, "x.y", {}, 0.05)


def test_client_raises_the_lsps_error_and_disconnects() -> None:
    outbox: list[bytes] = []
    client = LspsClient(lambda peer, msg: outbox.append(msg))
    errors: list[Exception] = []

    def run() -> None:
        try:
            client.request("03" * 33, "lsps1.get_order", {"order_id": "x"}, 5)
        except Exception as e:
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    while not outbox:
        pass
    rid = parse_request(outbox[0]).id
    reply = TYPE + json.dumps({"jsonrpc": "2.0", "id": rid,
                               "error": {"code": 101, "message": "Not\nfound<script>", "data": {"a": 1}}}).encode()
    assert client.on_message("03" * 33, reply)
    t.join(5)
    [e] = errors
    assert isinstance(e, LspsError) and (e.code, e.data) == (101, {"a": 1}) and "\n" not in e.message
    assert "<" not in e.message
    t = threading.Thread(target=run)
    outbox.clear()
    t.start()
    while not outbox:
        pass
    client.on_disconnect("03" * 33)
    t.join(5)
    assert isinstance(errors[-1], ConnectionError)


def test_parse_response_rejects_non_responses() -> None:
    assert parse_response(TYPE + b'{"jsonrpc":"2.0","id":"a","result":{},"error":{"code":1}}') is None
    assert parse_response(TYPE + b'{"jsonrpc":"2.0","id":"a","result":[]}') is None
    assert parse_response(TYPE + b'{"jsonrpc":"2.0","method":"lsps5.note","params":{}}') is None
    assert parse_response(TYPE + b"{") is None


def test_terms_and_join() -> None:
    limits = JoinLimits(20_000, 500_000)
    t = terms(lambda n, h: regtest_params(n, h), limits, 5, "regtest")
    p = regtest_params(2, 0)
    assert t["factory"]["lifetime_blocks"] == p.active_blocks + p.dying_blocks
    assert t["join"] == {"offered": True, "interval_blocks": 5, "min_inbound_sat": "20000", "max_inbound_sat": "500000",
                         "max_waiting": 100}
    assert t["fees"]["feerate_per_kvb"] == p.feerate_per_kvb
    queued: list[tuple[str, int]] = []
    speakers = Speakers()

    def enqueue(peer: str, inbound: int) -> dict[str, Any]:
        queued.append((peer, inbound))
        return {"waiting": [{"node_id": peer, "since_height": 7}], "next_start_height": 12}

    ob = Onboarding(lambda: t, limits, enqueue, speakers)
    assert speakers.silent(["02" * 33], wait=0) == ["02" * 33]
    assert ob.get_info("02" * 33, {}) == t
    assert speakers.silent(["02" * 33], wait=0) == []
    assert ob.join("03" * 33, {"inbound_sat": "100000"}) == {
        "inbound_sat": "100000", "queued_at_height": 7, "next_factory_height": 12}
    for params, code in (({"inbound_sat": "19999"}, INBOUND_OUT_OF_RANGE), ({"inbound_sat": 100000}, INVALID_PARAMS),
                         ({}, INVALID_PARAMS), ({"inbound_sat": "1", "x": 1}, INVALID_PARAMS)):
        with pytest.raises(LspsError) as e:
            ob.join("03" * 33, params)
        assert e.value.code == code
    assert queued == [("03" * 33, 100_000)]
    full = Onboarding(lambda: t, JoinLimits(20_000, 500_000, 1), enqueue, speakers, lambda: ["03" * 33])
    assert full.join("03" * 33, {"inbound_sat": "50000"})["inbound_sat"] == "50000"  # already waiting: replaced
    with pytest.raises(LspsError) as e:
        full.join("04" * 33, {"inbound_sat": "50000"})
    assert e.value.code == QUEUE_FULL
    with pytest.raises(LspsError) as e:
        Onboarding(lambda: t, limits, None, speakers).join("03" * 33, {"inbound_sat": "100000"})
    assert e.value.code == JOIN_NOT_OFFERED
    speakers.forget("02" * 33)
    assert speakers.silent(["02" * 33], wait=0) == ["02" * 33]


def test_an_answer_to_a_peer_gone_is_dropped_quietly() -> None:
    logged: list[str] = []

    def gone(peer: str, msg: bytes) -> None:
        raise OSError("peer not connected")

    server = LspsServer(gone, lambda text, level="info": logged.append(level))
    assert server.on_message("02" * 33, TYPE + request("lsps0.list_protocols", {}))
    assert logged == ["info"]  # not broken: the client asks again when it reconnects
