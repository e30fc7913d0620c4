"""Ceremony messages over lightningd custom messages: split what is too large for one peer message,
reassemble fragments per peer, and decode strictly (anything malformed is a WireError)."""

from __future__ import annotations

from typing import Optional

from .node import ClnNode
from .protocol.wire import Fragment, Message, Reassembler, SUPERSCALAR_MSG_TYPE, decode_message, split_message


class Transport:
    def __init__(self, node: ClnNode) -> None:
        self.node = node
        self._reassemblers: dict[str, Reassembler] = {}

    def send(self, peer: str, msg: Message) -> None:
        for payload in split_message(msg):
            self.node.send_message(peer, payload)

    @staticmethod
    def is_ours(payload: bytes) -> bool:
        return len(payload) >= 2 and int.from_bytes(payload[:2], "big") == SUPERSCALAR_MSG_TYPE

    def receive(self, peer: str, payload: bytes) -> Optional[Message]:
        """The whole message `payload` completes, or None while fragments are missing.
        Raises DecodeError for anything malformed."""
        msg = decode_message(payload)
        if isinstance(msg, Fragment):
            return self._reassemblers.setdefault(peer, Reassembler()).add(msg)
        return msg

    def forget(self, peer: str) -> None:
        """Drop half-received messages of a peer that disconnected."""
        self._reassemblers.pop(peer, None)
