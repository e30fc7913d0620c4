"""The LSP's side of LSPS0 (bLIP-50): answer each request with its method's handler, the spec's errors
otherwise. Handlers run inside lightningd's custommsg hook: they must answer quickly (RPC calls are fine;
anything that waits on a peer starts a thread)."""

from __future__ import annotations

import json
import re
import threading
from typing import Any, Callable

from ..protocol.lsps0 import (INTERNAL_ERROR, METHOD_NOT_FOUND, OWN_FAMILY, LspsError, check_params, error_message,
                              is_response, parse_request, result_message)

Handler = Callable[[str, dict[str, Any]], dict[str, Any]]
Send = Callable[[str, bytes], None]
Log = Callable[..., None]

_LSPS_FAMILY = re.compile(r"lsps(\d+)\.")


def family(method: str) -> str:
    """`lsps2` of `lsps2.buy`: the prefix bLIP-50 gives every method of one specification."""
    return method.split(".", 1)[0] if "." in method else method


class LspsServer:
    def __init__(self, send: Send, log: Log, others: tuple[str, ...] = ()) -> None:
        """`others`: method families (`lsps5`, ...) another plugin on this node answers; their requests
        pass through untouched instead of getting "Method not found"."""
        self._raw_send = send
        self._log = log
        self._others = frozenset(others)
        self._methods: dict[str, Handler] = {"lsps0.list_protocols": self._list_protocols}
        self._background: set[str] = set()
        # Peers that write an absent optional parameter as null, as LDK's lightning-liquidity does
        # (`"token": null`): LDK reads an error's `data` as a string (lsps0/ser.rs LSPSResponseError
        # `data: Option<String>`) and stops reading a peer whose message it cannot parse, so their
        # errors carry `data` as a JSON string; everyone else gets bLIP-50's object.
        self._string_data: set[str] = set()

    def _send(self, peer: str, message: bytes) -> None:
        """Answer `peer`; one that disconnected since it asked gets nothing (bLIP-50 "Disconnection
        Handling": the LSP treats it as delivered, the client asks again)."""
        try:
            self._raw_send(peer, message)
        except Exception as e:
            self._log(f"LSPS: cannot answer {peer} (disconnected?): {e!r}", level="info")

    def register(self, method: str, handler: Handler, background: bool = False) -> None:
        """`background`: run the handler in a thread, not in the hook (one that calls an RPC command
        our own plugin hooks, e.g. `invoice`, would deadlock the hook: lightningd asks our plugin's
        rpc_command hook while it waits in the custommsg hook)."""
        if method in self._methods:
            raise ValueError(f"{method} is already registered")
        self._methods[method] = handler
        if background:
            self._background.add(method)

    def protocols(self) -> list[int]:
        """bLIP-50 "LSPS Specification Support Query": the LSPS numbers served, by us or by the other
        plugin that answers `others` (`lsps5`: 5), never 0."""
        names = [*self._methods, *(f"{f}." for f in self._others)]
        return sorted({int(m.group(1)) for name in names if (m := _LSPS_FAMILY.match(name))} - {0})

    def _list_protocols(self, peer: str, params: dict[str, Any]) -> dict[str, Any]:
        check_params(params, ())
        result: dict[str, Any] = {"protocols": self.protocols()}
        if any(family(m) == OWN_FAMILY for m in self._methods):
            # bLIP-50: clients ignore result fields they do not know (LDK and cln-lsps do). Ours read it:
            # `superscalar.*` is sent only to a peer that answered with it (an LDK node stops reading a
            # peer's LSPS messages after a method it does not know).
            result[OWN_FAMILY] = {"methods": sorted(m for m in self._methods if family(m) == OWN_FAMILY)}
        return result

    def on_message(self, peer: str, message: bytes) -> bool:
        """Answer `message` (a whole 37913 message); False when it is another plugin's to answer."""
        if is_response(message):  # not ours to answer (see `is_response`): a client's, or a stray
            self._log(f"LSPS: a response from {peer} that no request of ours waits for: ignored", level="debug")
            return False
        try:
            request = parse_request(message)
        except LspsError as e:  # bLIP-50: a bad message format is answered -32700 with id null, and ignored
            self._log(f"LSPS: bad message format from {peer}: {e.__cause__ or 'not a request'!r}", level="unusual")
            self._send(peer, error_message(None, e))
            return True
        if any(v is None for v in request.params.values()):
            self._string_data.add(peer)
        handler = self._methods.get(request.method)
        if handler is None:
            if family(request.method) in self._others:
                return False
            self._send(peer, self._error(peer, request.id, LspsError(METHOD_NOT_FOUND, "Method not found")))
            return True
        if request.method in self._background:
            threading.Thread(target=self._answer, args=(peer, request.id, request.method, request.params, handler),
                             name=f"lsps {request.method}", daemon=True).start()
        else:
            self._answer(peer, request.id, request.method, request.params, handler)
        return True

    def forget(self, peer: str) -> None:
        """`peer` disconnected: what we learnt of how it writes is forgotten with it."""
        self._string_data.discard(peer)

    def _error(self, peer: str, request_id: str, e: LspsError) -> bytes:
        if e.data is not None and peer in self._string_data:
            e = LspsError(e.code, e.message, json.dumps(e.data, separators=(",", ":"), sort_keys=True))
        return error_message(request_id, e)

    def _answer(self, peer: str, request_id: str, method: str, params: dict[str, Any], handler: Handler) -> None:
        try:
            result = handler(peer, params)
        except LspsError as e:
            self._log(f"LSPS: {method} from {peer}: error {e.code} {e.message}", level="debug")
            self._send(peer, self._error(peer, request_id, e))
            return
        except Exception as e:  # a failure of ours: the client hears "Internal error", the log hears why
            self._log(f"LSPS: {method} from {peer} failed: {e!r}", level="unusual")
            self._send(peer, error_message(request_id, LspsError(INTERNAL_ERROR, "Internal error")))
            return
        self._send(peer, result_message(request_id, result))
