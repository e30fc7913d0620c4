"""close_channels against a fake lightningd: which channels it closes, and how it reports each."""

from __future__ import annotations

import threading
from typing import Any, Optional

from superscalar.chain.retire import Retired, close_channels


class FakeNode:
    def __init__(self, channels: dict[str, str], answers: dict[str, Any]) -> None:
        self.channels = channels
        self.answers = answers
        self.closed: list[tuple[str, int]] = []
        self.lock = threading.Lock()

    def peer_channels(self, peer: Optional[str] = None) -> list[dict[str, Any]]:
        return [{"channel_id": cid, "state": st} for cid, st in self.channels.items()]

    def close(self, channel_id: str, unilateral_after: int = 1) -> dict[str, Any]:
        with self.lock:
            self.closed.append((channel_id, unilateral_after))
        answer = self.answers[channel_id]
        if isinstance(answer, Exception):
            raise answer
        return dict(answer)


def test_each_open_channel_is_closed_once_and_reported() -> None:
    node = FakeNode({"a": "CHANNELD_NORMAL", "b": "CHANNELD_NORMAL", "c": "CLOSINGD_COMPLETE", "w": "CHANNELD_NORMAL",
                     "e": "CHANNELD_NORMAL"},
                    {"a": {"type": "mutual", "txids": ["aa"]}, "b": {"type": "unilateral", "txids": ["bb"]},
                     "w": {"type": "mutual", "txids": []}, "e": RuntimeError("peer has HTLCs")})
    got = close_channels(node, ["a", "b", "c", "w", "e", "x", "a"], unilateral_after=30)
    assert got == [Retired("a", "mutual", "aa"), Retired("b", "unilateral", "bb"), Retired("c", "already"),
                   Retired("w", "deleted"), Retired("e", "failed", error="peer has HTLCs"), Retired("x", "gone")]
    assert sorted(node.closed) == [("a", 30), ("b", 30), ("e", 30), ("w", 30)]


def test_nothing_to_retire() -> None:
    node = FakeNode({"a": "ONCHAIN"}, {})
    assert close_channels(node, []) == []
    assert close_channels(node, ["a"]) == [Retired("a", "already")]
    assert node.closed == []
