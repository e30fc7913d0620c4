"""LSPS0 (bLIP-50): JSON-RPC 2.0 over peer message 37913, and the common schemas other LSPS
specifications refer to (amounts as decimal strings, datetimes, SCIDs). Pure: bytes in, bytes out."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Optional

LSPS_MESSAGE_TYPE = 37913  # bLIP-50 "Lightning Peer-To-Peer Transport": lsps0_message_id
LSPS_FEATURE_BIT = 729  # bLIP-50 "option_supports_lsps": an LSP MAY set it in init and node_announcement
MAX_PAYLOAD = 65533  # BOLT 8: a message's payload after its 2-byte type

# JSON-RPC 2.0 "Error object" codes, as bLIP-50 "Error Handling" uses them
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

U64_MAX = 2**64 - 1
OWN_FAMILY = "superscalar"  # our methods' prefix, and the key announcing them in lsps0.list_protocols


class LspsError(Exception):
    """A JSON-RPC error object: raised by a method handler, or received from the LSP."""

    def __init__(self, code: int, message: str, data: Optional[dict[str, Any] | str] = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.data = data

    def to_json(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


@dataclass(frozen=True)
class Request:
    id: str
    method: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Response:
    """A response: exactly one of `result` and `error` is set."""

    id: Optional[str]
    result: Optional[dict[str, Any]] = None
    error: Optional[LspsError] = None


def frame(obj: dict[str, Any]) -> bytes:
    """The whole peer message: type 37913 then the UTF-8 JSON text (no NUL can appear: json escapes it)."""
    return LSPS_MESSAGE_TYPE.to_bytes(2, "big") + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def is_lsps(message: bytes) -> bool:
    return len(message) >= 2 and int.from_bytes(message[:2], "big") == LSPS_MESSAGE_TYPE


def request_message(req: Request) -> bytes:
    return frame({"jsonrpc": "2.0", "method": req.method, "params": req.params, "id": req.id})


def result_message(request_id: Optional[str], result: dict[str, Any]) -> bytes:
    return frame({"jsonrpc": "2.0", "id": request_id, "result": result})


def error_message(request_id: Optional[str], error: LspsError) -> bytes:
    return frame({"jsonrpc": "2.0", "id": request_id, "error": error.to_json()})


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _object(payload: bytes) -> dict[str, Any]:
    """bLIP-50 "Message Payload Format": one complete UTF-8 JSON object, optional surrounding
    whitespace, no 0 byte. Anything else is a bad message format (ValueError)."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError("payload longer than a peer message can be")
    if b"\x00" in payload:
        raise ValueError("payload contains a 0 byte")
    text = payload.decode("utf-8")  # UnicodeDecodeError is a ValueError
    # JSON's own whitespace is exactly space, tab, line feed and carriage return; a second object
    # after the first raises ("Extra data")
    obj = json.loads(text, parse_constant=_reject_constant)
    if not isinstance(obj, dict):
        raise ValueError("payload is not a JSON object")
    return obj


def parse_request(message: bytes) -> Request:
    """A request to the LSP (`message` with its 2-byte type). bLIP-50 "Message Payload Format": a
    payload that is not a JSON-RPC 2.0 request is a bad message format, answered "parse error"
    (PARSE_ERROR, `id` null): raised as that LspsError. (A string `id` is required: the client matches
    responses by it; a request without one would be a notification, which no LSPS method is.)"""
    try:
        obj = _object(message[2:])
    except ValueError as e:
        raise LspsError(PARSE_ERROR, "parse error", None) from e
    request_id = obj.get("id")
    if obj.get("jsonrpc") != "2.0" or not isinstance(obj.get("method"), str) or not isinstance(request_id, str):
        raise LspsError(PARSE_ERROR, "parse error", None)
    params = obj.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):  # bLIP-50: by-name parameter structures only
        raise LspsError(PARSE_ERROR, "parse error", None)
    return Request(request_id, obj["method"], params)


def is_response(message: bytes) -> bool:
    """Is `message` shaped as a JSON-RPC response (a `result` or an `error`, no `method`)? An LSP never
    answers one: it is for a client (ours, or another plugin's on this node), and answering it could
    start two nodes answering each other's errors for ever."""
    try:
        obj = _object(message[2:])
    except ValueError:
        return False
    return "method" not in obj and ("result" in obj or "error" in obj)


def parse_response(message: bytes) -> Optional[Response]:
    """A response from the LSP, or None for anything else (a notification, a bad message format)."""
    try:
        obj = _object(message[2:])
    except ValueError:
        return None
    if obj.get("jsonrpc") != "2.0" or "id" not in obj or ("result" in obj) == ("error" in obj):
        return None
    request_id = obj["id"] if isinstance(obj["id"], str) else None
    if "result" in obj:
        return Response(request_id, result=obj["result"]) if isinstance(obj["result"], dict) else None
    error = obj["error"]
    if not isinstance(error, dict) or not isinstance(error.get("code"), int):
        return None
    data = error.get("data")
    return Response(request_id, error=LspsError(error["code"], printable(str(error.get("message", ""))),
                                                data if isinstance(data, dict) else None))


def printable(text: str, limit: int = 200) -> str:
    """An LSP's error message made safe to log or show (bLIP-50 "Error Handling": filter NUL, `<`,
    newlines and control characters)."""
    return "".join(c if c.isprintable() and c != "<" else "?" for c in text[:limit])


def check_params(params: dict[str, Any], required: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    """bLIP-50 "LSPS Extension And Versioning": an unrecognised parameter is -32602 with
    data.unrecognized; a missing required one is -32602 too."""
    unrecognized = sorted(set(params) - set(required) - set(optional))
    if unrecognized:
        raise LspsError(INVALID_PARAMS, "Invalid params", {"unrecognized": unrecognized})
    missing = [name for name in required if name not in params]
    if missing:
        raise LspsError(INVALID_PARAMS, f"Invalid params: missing {', '.join(missing)}", {"unrecognized": []})


_DECIMAL = re.compile(r"(0|[1-9][0-9]*)")


def parse_amount(value: Any, name: str) -> int:
    """bLIP-50 "Monetary Amounts" (LSPS0.sat / LSPS0.msat): a JSON string of the decimal number, u64."""
    if not isinstance(value, str) or not _DECIMAL.fullmatch(value) or int(value) > U64_MAX:
        raise LspsError(INVALID_PARAMS, f"Invalid params: {name} must be a decimal string", {"unrecognized": []})
    return int(value)


def amount(value: int) -> str:
    if not 0 <= value <= U64_MAX:
        raise ValueError(f"amount {value} out of u64 range")
    return str(value)


def iso8601(unix_seconds: float) -> str:
    """bLIP-50 "Datetimes" (LSPS0.datetime): "YYYY-MM-DDThh:mm:ss.uuuZ", UTC."""
    moment = datetime.fromtimestamp(unix_seconds, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


# RFC 3339 date-time as the real stacks write it: bLIP-50's "YYYY-MM-DDThh:mm:ss.uuuZ", and what chrono
# (LDK's lightning-liquidity, Core Lightning's cln-lsps) writes back: no fraction when it is zero, 3, 6 or 9
# digits (ldk-node's LSP writes nanoseconds), `Z` or a numeric offset. Any number of fraction digits is
# read; past the 9th (nanoseconds) they do not change the instant.
_DATETIME = re.compile(r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})")


def instant_ns(value: Any) -> int:
    """The exact instant of an LSPS0.datetime, in nanoseconds since the epoch (UTC); ValueError for
    anything else. Two spellings of one instant (`.000Z` and `Z`, `Z` and `+00:00`) give one number."""
    m = _DATETIME.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        raise ValueError(f"not an LSPS0 datetime: {value!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    fraction, offset = m.group(7) or "", m.group(8)
    tz = timezone.utc if offset in ("Z", "z") else timezone(
        (1 if offset[0] == "+" else -1) * timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6])))
    moment = datetime(year, month, day, hour, minute, second, tzinfo=tz)  # ValueError for a 31st of February
    whole = moment - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (whole.days * 86_400 + whole.seconds) * 1_000_000_000 + int((fraction + "000000000")[:9])


def parse_iso8601(value: Any) -> float:
    """Unix seconds of an LSPS0.datetime (see `instant_ns`); ValueError for anything else."""
    return instant_ns(value) / 1e9


def format_scid(scid: int) -> str:
    """bLIP-50 "Short Channel Identifiers" (LSPS0.scid): "<block>x<tx>x<output>" (BOLT 7)."""
    return f"{scid >> 40}x{(scid >> 16) & 0xFFFFFF}x{scid & 0xFFFF}"


def parse_scid(value: str) -> int:
    parts = value.split("x")
    if len(parts) != 3 or not all(_DECIMAL.fullmatch(p) for p in parts):
        raise ValueError(f"not a short channel id: {value!r}")
    block, tx, out = (int(p) for p in parts)
    if block >= 1 << 24 or tx >= 1 << 24 or out >= 1 << 16:
        raise ValueError(f"short channel id out of range: {value!r}")
    return block << 40 | tx << 16 | out
