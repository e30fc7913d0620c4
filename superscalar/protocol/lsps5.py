"""LSPS5 (bLIP-55, "Webhook Registration"): the checks of `lsps5.set_webhook` / `remove_webhook`, the
webhook notification object, and the message the LSP signs for it. Pure: the caller signs and posts.

Section names below are bLIP-55's."""

from __future__ import annotations

import json
from typing import Any, Optional
from urllib.parse import urlsplit

from .lsps0 import INVALID_PARAMS, LspsError, check_params, iso8601

# "lsps5.set_webhook" / "lsps5.remove_webhook": error codes
TOO_LONG = 500
URL_PARSE_ERROR = 501
UNSUPPORTED_PROTOCOL = 502
TOO_MANY_WEBHOOKS = 503
APP_NAME_NOT_FOUND = 1010

MAX_APP_NAME_BYTES = 64  # UTF-8 bytes, backslash escapes counted as written
MAX_WEBHOOK_CHARS = 1024  # ASCII characters

# "Webhook Notification Methods"
WEBHOOK_REGISTERED = "lsps5.webhook_registered"
PAYMENT_INCOMING = "lsps5.payment_incoming"
EXPIRY_SOON = "lsps5.expiry_soon"
LIQUIDITY_MANAGEMENT_REQUEST = "lsps5.liquidity_management_request"
ONION_MESSAGE_INCOMING = "lsps5.onion_message_incoming"

SIGNED_TEMPLATE = "LSPS5: DO NOT SIGN THIS MESSAGE MANUALLY: LSP: At {timestamp} I notify {body}"


def app_name_bytes(name: str) -> int:
    """The length `set_webhook` limits: UTF-8 bytes of the JSON string's content, escapes as written
    (`\\a` is two bytes): what JSON would write for `name`, without the quotes."""
    return len(json.dumps(name, ensure_ascii=False)[1:-1].encode())


def _app_name(params: dict[str, Any]) -> str:
    name = params["app_name"]
    if not isinstance(name, str):
        raise LspsError(INVALID_PARAMS, "Invalid params: app_name must be a string", {"property": "app_name"})
    if app_name_bytes(name) > MAX_APP_NAME_BYTES:
        raise LspsError(TOO_LONG, "too_long: app_name is over 64 bytes")
    return name


def check_webhook_url(url: Any, allow_http: bool = False) -> str:
    """A `webhook` the LSP accepts: at most 1024 ASCII characters (500), a URL with a host (501), of the
    https scheme (502; http too with `allow_http`, for a test's local server)."""
    if not isinstance(url, str):
        raise LspsError(INVALID_PARAMS, "Invalid params: webhook must be a string", {"property": "webhook"})
    if len(url) > MAX_WEBHOOK_CHARS:
        raise LspsError(TOO_LONG, "too_long: webhook is over 1024 characters")
    try:
        parts = urlsplit(url)
        parts.port  # raises ValueError for a bad port
    except ValueError:
        raise LspsError(URL_PARSE_ERROR, "url_parse_error") from None
    if not url.isascii() or any(c.isspace() or ord(c) < 0x21 for c in url) or not parts.scheme or not parts.hostname:
        raise LspsError(URL_PARSE_ERROR, "url_parse_error")
    if parts.scheme.lower() not in (("https", "http") if allow_http else ("https",)):
        raise LspsError(UNSUPPORTED_PROTOCOL, f"unsupported_protocol: {parts.scheme}")
    return url


def check_set_webhook(params: dict[str, Any], allow_http: bool = False) -> tuple[str, str]:
    """"lsps5.set_webhook": (app_name, webhook), or the spec's error."""
    check_params(params, ("app_name", "webhook"))
    return _app_name(params), check_webhook_url(params["webhook"], allow_http)


def check_remove_webhook(params: dict[str, Any]) -> str:
    check_params(params, ("app_name",))
    return _app_name(params)


def notification(method: str, params: Optional[dict[str, Any]] = None) -> str:
    """"Webhook Call": the notification object, compact JSON: the exact POST body that is signed."""
    return json.dumps({"jsonrpc": "2.0", "method": method, "params": params or {}}, separators=(",", ":"))


def timestamp(unix_seconds: float) -> str:
    """`x-lsps5-timestamp`: LSPS0.datetime, `YYYY-MM-DDThh:mm:ss.uuuZ`."""
    return iso8601(unix_seconds)


def message_to_sign(stamp: str, body: str) -> str:
    """The string the LSP signs with its node key (LSPS0.ln_signature: lightningd `signmessage`)."""
    return SIGNED_TEMPLATE.format(timestamp=stamp, body=body)
