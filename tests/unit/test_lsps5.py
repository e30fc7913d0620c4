"""LSPS5 (bLIP-55): the checks of the registration API, the signed notification, and the LSP's
registry, sender and hold of HTLCs for a sleeping client."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from superscalar.lsp.webhooks import CONTINUE, Webhooks
from superscalar.protocol.lsps0 import INVALID_PARAMS, LspsError
from superscalar.protocol.lsps5 import (APP_NAME_NOT_FOUND, PAYMENT_INCOMING, TOO_LONG, TOO_MANY_WEBHOOKS,
                                        UNSUPPORTED_PROTOCOL, URL_PARSE_ERROR, WEBHOOK_REGISTERED, app_name_bytes,
                                        check_set_webhook, message_to_sign, notification)
from superscalar.cln.store import Store

from ..fakes import MemoryDatastore

PEER = "02" + "55" * 32
URL = "https://www.example.org/push?l=1234567890abcdefghijklmnopqrstuv&c=best"


def code(params: dict[str, Any], allow_http: bool = False) -> int:
    with pytest.raises(LspsError) as e:
        check_set_webhook(params, allow_http)
    return e.value.code


def test_set_webhook_checks() -> None:
    assert check_set_webhook({"app_name": "My LSPS-Compliant Lightning Client", "webhook": URL}) == (
        "My LSPS-Compliant Lightning Client", URL)
    assert code({"app_name": "a" * 65, "webhook": URL}) == TOO_LONG
    assert app_name_bytes("\x07" * 16) == 96 and code({"app_name": "\x07" * 16, "webhook": URL}) == TOO_LONG
    assert app_name_bytes("é" * 32) == 64
    assert code({"app_name": "a", "webhook": "https://e.org/" + "x" * 1011}) == TOO_LONG
    for bad in ("not a url", "https://", "https://exa mple.org/", "//example.org/x", "https://e.org:99999/",
                "https://bücher.example/"):
        assert code({"app_name": "a", "webhook": bad}) == URL_PARSE_ERROR, bad
    assert code({"app_name": "a", "webhook": "http://example.org/"}) == UNSUPPORTED_PROTOCOL
    assert code({"app_name": "a", "webhook": "ftp://example.org/"}) == UNSUPPORTED_PROTOCOL
    assert check_set_webhook({"app_name": "a", "webhook": "http://127.0.0.1:8080/x"}, allow_http=True)[1]
    assert code({"app_name": "a"}) == INVALID_PARAMS
    assert code({"app_name": 5, "webhook": URL}) == INVALID_PARAMS


def test_signed_message_is_the_spec_example() -> None:
    """bLIP-55 "Webhook Call": the example's message, byte for byte (its hex dump)."""
    body = notification("lsps5.goodbye")
    assert body == '{"jsonrpc":"2.0","method":"lsps5.goodbye","params":{}}'
    dump = ("4c53 5053 353a 2044 4f20 4e4f 5420 5349 474e 2054 4849 5320 4d45 5353 4147 4520"
            "4d41 4e55 414c 4c59 3a20 4c53 503a 2041 7420 3230 3233 2d30 352d 3034 5431 303a"
            "3532 3a35 382e 3339 355a 2049 206e 6f74 6966 7920 7b22 6a73 6f6e 7270 6322 3a22"
            "322e 3022 2c22 6d65 7468 6f64 223a 226c 7370 7335 2e67 6f6f 6462 7965 222c 2270"
            "6172 616d 7322 3a7b 7d7d")
    assert message_to_sign("2023-05-04T10:52:58.395Z", body).encode() == bytes.fromhex(dump.replace(" ", ""))


class Node(MemoryDatastore):
    def __init__(self) -> None:
        super().__init__()
        self.rpc = self

        self.injected: list[dict[str, Any]] = []

    def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        if method == "injectonionmessage":
            self.injected.append(params)
            return {}
        assert method == "signmessage"
        return {"zbase": "sig:" + params["message"]}


def hooks(connected: bool = False, post: Any = None, **kw: Any) -> tuple[Webhooks, list[tuple[str, bytes, dict[str, str]]]]:
    posted: list[tuple[str, bytes, dict[str, str]]] = []
    done = threading.Event()

    def record(url: str, body: bytes, headers: dict[str, str]) -> int:
        posted.append((url, body, headers))
        done.set()
        return 200
    node = Node()
    w = Webhooks(node, Store(node), lambda *a, **k: None, lambda peer: connected, post=post or record, **kw)  # type: ignore[arg-type]
    return w, posted


def wait(cond: Any) -> None:
    for _ in range(200):
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError("timed out")


def test_registry_insert_replace_limit_remove() -> None:
    w, posted = hooks(max_webhooks=2)
    assert w.set_webhook(PEER, {"app_name": "a", "webhook": URL}) == {"num_webhooks": 1, "max_webhooks": 2,
                                                                     "no_change": False}
    assert w.set_webhook(PEER, {"app_name": "a", "webhook": URL})["no_change"] is True
    assert w.set_webhook(PEER, {"app_name": "b", "webhook": URL + "2"})["num_webhooks"] == 2
    with pytest.raises(LspsError) as e:
        w.set_webhook(PEER, {"app_name": "c", "webhook": URL})
    assert (e.value.code, e.value.data) == (TOO_MANY_WEBHOOKS, {"max_webhooks": 2})
    assert w.set_webhook(PEER, {"app_name": "a", "webhook": URL + "3"})["no_change"] is False  # replaced
    assert w.list_webhooks(PEER, {}) == {"app_names": ["a", "b"], "max_webhooks": 2}
    with pytest.raises(LspsError) as e:
        w.remove_webhook(PEER, {"app_name": "zz"})
    assert e.value.code == APP_NAME_NOT_FOUND
    assert w.remove_webhook(PEER, {"app_name": "b"}) == {}
    assert w.list_webhooks(PEER, {})["app_names"] == ["a"]
    # webhook_registered went to each new or changed webhook only, signed over its timestamp and body
    wait(lambda: len(posted) == 3)
    assert [p[0] for p in posted] == [URL, URL + "2", URL + "3"]
    for url, body, headers in posted:
        assert body == notification(WEBHOOK_REGISTERED).encode()
        assert headers["x-lsps5-signature"] == "sig:" + message_to_sign(headers["x-lsps5-timestamp"], body.decode())


def test_notify_only_a_sleeping_client_at_most_once_a_minute() -> None:
    clock = [1_800_000_000.0]
    w, posted = hooks(connected=True, clock=lambda: clock[0])
    w.set_webhook(PEER, {"app_name": "a", "webhook": URL})
    wait(lambda: len(posted) == 1)
    assert w.notify(PEER, PAYMENT_INCOMING) == 0  # connected: nothing to wake
    w.connected = lambda peer: False
    assert w.notify(PEER, PAYMENT_INCOMING) == 1
    assert w.notify(PEER, PAYMENT_INCOMING) == 0  # rate-limited
    clock[0] += 61
    assert w.notify(PEER, PAYMENT_INCOMING) == 1
    assert w.notify("03" + "66" * 32, PAYMENT_INCOMING) == 0  # no webhook
    wait(lambda: len(posted) == 3)
    assert posted[1][1] == notification(PAYMENT_INCOMING).encode()


def test_unreachable_service_is_retried_a_bounded_number_of_times() -> None:
    import superscalar.lsp.webhooks as module
    tries: list[float] = []

    def down(url: str, body: bytes, headers: dict[str, str]) -> int:
        tries.append(time.monotonic())
        raise OSError("connection refused")
    old = module.RETRY_DELAYS
    module.RETRY_DELAYS = (0.05, 0.05)
    try:
        w, _ = hooks(post=down)
        w.set_webhook(PEER, {"app_name": "a", "webhook": URL})
        wait(lambda: len(tries) == 3)
        time.sleep(0.3)
        assert len(tries) == 3  # the first try and two more
    finally:
        module.RETRY_DELAYS = old


def test_htlcs_for_a_sleeping_client_are_held_until_it_wakes() -> None:
    w, posted = hooks(hold_seconds=5.0)
    answers: list[dict[str, Any]] = []
    assert not w.hold(PEER, answers.append)  # no webhook: not held
    w.set_webhook(PEER, {"app_name": "a", "webhook": URL})
    assert w.hold(PEER, answers.append) and w.hold(PEER, answers.append)
    wait(lambda: [json_method(p[1]) for p in posted] == [WEBHOOK_REGISTERED, PAYMENT_INCOMING])
    assert answers == []
    w.on_connect(PEER)
    wait(lambda: answers == [CONTINUE, CONTINUE])
    w2, _ = hooks(hold_seconds=0.05)
    w2.set_webhook(PEER, {"app_name": "a", "webhook": URL})
    late: list[dict[str, Any]] = []
    assert w2.hold(PEER, late.append)
    wait(lambda: late == [CONTINUE])  # not woken in time: handed back to lightningd all the same


def json_method(body: bytes) -> str:
    import json
    return str(json.loads(body)["method"])


def test_onion_messages_for_a_sleeping_client_wait_for_it() -> None:
    """An onion message lightningd could not forward to a sleeping client is kept (at most 8, for a
    minute), the client told lsps5.onion_message_incoming, and injected again when it reconnects."""
    from superscalar.lsp.webhooks import MAX_ONIONS_PER_PEER, ONION_HOLD_SECONDS
    from superscalar.protocol.lsps5 import ONION_MESSAGE_INCOMING

    clock = [1_800_000_000.0]
    w, posted = hooks(clock=lambda: clock[0])
    assert not w.hold_onion(PEER, "02" * 33, "aa")  # no webhook
    w.set_webhook(PEER, {"app_name": "a", "webhook": URL})
    assert all(w.hold_onion(PEER, "02" * 33, f"{i:02x}") for i in range(MAX_ONIONS_PER_PEER))
    assert not w.hold_onion(PEER, "02" * 33, "ff")  # bounded
    wait(lambda: [json_method(p[1]) for p in posted] == [WEBHOOK_REGISTERED, ONION_MESSAGE_INCOMING])
    w.on_connect(PEER)
    node = w.node
    wait(lambda: len(node.injected) == MAX_ONIONS_PER_PEER)  # type: ignore[attr-defined]
    assert node.injected[0] == {"path_key": "02" * 33, "message": "00"}  # type: ignore[attr-defined]
    assert w.hold_onion(PEER, "02" * 33, "old")
    clock[0] += ONION_HOLD_SECONDS + 1  # kept too long: dropped, not forwarded
    w.on_connect(PEER)
    time.sleep(0.1)
    assert len(node.injected) == MAX_ONIONS_PER_PEER  # type: ignore[attr-defined]
    w.connected = lambda peer: True
    assert not w.hold_onion(PEER, "02" * 33, "aa")  # connected: lightningd's to forward


def test_an_order_state_change_is_posted_under_our_prefix() -> None:
    from superscalar.lsp.webhooks import ORDER_STATE_CHANGED
    import json

    w, posted = hooks()
    w.set_webhook(PEER, {"app_name": "a", "webhook": URL})
    w.order_state(PEER, "order-1", "COMPLETED")
    wait(lambda: len(posted) == 2)
    assert json.loads(posted[1][1]) == {"jsonrpc": "2.0", "method": ORDER_STATE_CHANGED,
                                        "params": {"order_id": "order-1", "order_state": "COMPLETED"}}
    assert not ORDER_STATE_CHANGED.startswith("lsps5.")
