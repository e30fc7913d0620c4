"""Sending one ceremony round to many peers at once (`Transport.send_many`, `grouped_sends`)."""

from __future__ import annotations

import threading
import time

from superscalar.protocol.ceremony import Completed, Persist, Send, grouped_sends
from superscalar.protocol.wire import Abort, decode_message
from superscalar.cln.transport import Transport

FID = bytes(32)


def abort(reason: str) -> Abort:
    return Abort(FID, bytes(32), 1, reason, None)


class SlowNode:
    """Records each `sendcustommsg`; each takes a while, one peer refuses."""

    def __init__(self, refuse: str = "") -> None:
        self.sent: list[tuple[str, str]] = []
        self.refuse = refuse
        self.threads: set[str] = set()
        self._lock = threading.Lock()

    def send_message(self, peer: str, payload: bytes) -> None:
        time.sleep(0.01)
        if peer == self.refuse:
            raise RuntimeError("peer gone")
        msg = decode_message(payload)
        assert isinstance(msg, Abort)
        with self._lock:
            self.sent.append((peer, msg.reason))
            self.threads.add(threading.current_thread().name)


def test_send_many_sends_peers_concurrently_each_peer_in_order() -> None:
    node = SlowNode(refuse="p3")
    transport = Transport(node)  # type: ignore[arg-type]
    sends = [(f"p{i % 5}", abort(f"m{i}")) for i in range(20)]
    errors = transport.send_many(sends)
    assert [i for i, e in enumerate(errors) if e is not None] == [3, 8, 13, 18]  # p3's four, the rest went
    assert len(node.sent) == 16 and len(node.threads) > 1
    for peer in ("p0", "p1", "p2", "p4"):
        assert [r for p, r in node.sent if p == peer] == [r.reason for p, r in sends if p == peer]


def test_grouped_sends_keeps_the_order_of_what_is_not_a_send() -> None:
    s = [Send(i, abort(str(i))) for i in range(4)]
    p, done = Persist("round", {}), Completed(())
    assert grouped_sends([p, s[0], s[1], done, s[2], p, s[3]]) == [p, [s[0], s[1]], done, [s[2]], p, [s[3]]]
    assert grouped_sends([]) == []
