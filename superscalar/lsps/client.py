"""The client's side of LSPS0 (bLIP-50): requests with high-entropy ids, each waiting for its own
response; responses to ids we did not send are someone else's (they pass through)."""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..protocol.lsps0 import Request, Response, parse_response, request_message

Send = Callable[[str, bytes], None]

DEFAULT_TIMEOUT = 30.0  # seconds; bLIP-50 asks for "a reasonable timeout, on the scale of minutes" at most


@dataclass
class _Pending:
    peer: str
    done: threading.Event = field(default_factory=threading.Event)
    response: Optional[Response] = None
    gone: bool = False


class LspsClient:
    def __init__(self, send: Send) -> None:
        self._send = send
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}

    def request(self, peer: str, method: str, params: dict[str, Any],
                timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        """The `result` of `method` at LSP `peer`. Raises LspsError (the LSP's error), TimeoutError (no
        answer in time: bLIP-50 treats it as a temporary failure) or ConnectionError (peer gone).
        Blocks: call it from a thread or a background command, never from a hook."""
        request_id = "superscalar#" + secrets.token_hex(16)  # bLIP-50: at least 80 bits of entropy
        slot = _Pending(peer)
        with self._lock:
            self._pending[request_id] = slot
        try:
            self._send(peer, request_message(Request(request_id, method, params)))
            if not slot.done.wait(timeout):
                raise TimeoutError(f"{peer} did not answer {method} within {timeout:.0f} s")
        finally:
            with self._lock:
                self._pending.pop(request_id, None)
        if slot.gone or slot.response is None:
            raise ConnectionError(f"{peer} disconnected before answering {method}")
        if slot.response.error is not None:
            raise slot.response.error
        assert slot.response.result is not None
        return slot.response.result

    def on_message(self, peer: str, message: bytes) -> bool:
        """Deliver a response to the request waiting for it; False if it is not one of ours."""
        response = parse_response(message)
        if response is None or response.id is None:
            return False
        with self._lock:
            slot = self._pending.get(response.id)
        if slot is None or slot.peer != peer:
            return False
        slot.response = response
        slot.done.set()
        return True

    def on_disconnect(self, peer: str) -> None:
        with self._lock:
            slots = [s for s in self._pending.values() if s.peer == peer]
        for slot in slots:
            slot.gone = True
            slot.done.set()
