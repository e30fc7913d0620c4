"""A client asking LSPs before it joins: their LSPS protocols and SuperScalar terms, a place in the
next factory, and the hello that tells an LSP this node speaks SuperScalar (see lsp/onboarding.py)."""

from __future__ import annotations

from typing import Any, Callable

from ..lsps.client import LspsClient
from ..protocol.lsps0 import OWN_FAMILY, amount

Log = Callable[..., None]


def speaks_superscalar(protocols: dict[str, Any]) -> bool:
    """Did an `lsps0.list_protocols` result announce our methods (lsps/server.py `OWN_FAMILY`)? Only then
    is a `superscalar.*` request sent: LDK's lightning-liquidity answers an unknown method with -32700
    and then ignores every LSPS message of that peer until it reconnects (lsps0/ser.rs, manager.rs)."""
    return isinstance(protocols.get(OWN_FAMILY), dict)


def ask_terms(lsps: LspsClient, lsp: str) -> dict[str, Any]:
    """`superscalar-terms`: what the LSP serves (lsps0.list_protocols) and its factory terms."""
    protocols = lsps.request(lsp, "lsps0.list_protocols", {})
    terms = lsps.request(lsp, "superscalar.get_info", {}) if speaks_superscalar(protocols) else None
    return {"id": lsp, "protocols": protocols.get("protocols", []), "terms": terms}


def ask_join(lsps: LspsClient, lsp: str, inbound_sat: int) -> dict[str, Any]:
    """`superscalar-join-next`: a place in the LSP's next laddered factory with `inbound_sat` inbound."""
    if inbound_sat <= 0:
        raise ValueError("inbound_sat must be positive")
    if not speaks_superscalar(lsps.request(lsp, "lsps0.list_protocols", {})):
        raise ValueError(f"{lsp} does not list SuperScalar among its LSPS methods")
    return {"id": lsp, **lsps.request(lsp, "superscalar.join", {"inbound_sat": amount(inbound_sat)})}


def hello(lsps: LspsClient, lsp: str, log: Log) -> None:
    """Tell an LSP we may join (it invites only peers that spoke SuperScalar on this connection)."""
    try:
        if not speaks_superscalar(lsps.request(lsp, "lsps0.list_protocols", {}, timeout=20.0)):
            log(f"{lsp} does not list SuperScalar among its LSPS methods: no hello", level="debug")
            return
        terms = lsps.request(lsp, "superscalar.get_info", {}, timeout=20.0)
        log(f"LSP {lsp} offers factories (terms version {terms.get('version')})", level="debug")
    except Exception as e:  # a peer without the plugin does not answer: nothing to do
        log(f"no SuperScalar terms from {lsp}: {e}", level="debug")


def register_webhook(lsps: LspsClient, lsp: str, app_name: str, webhook: str) -> dict[str, Any]:
    """`superscalar-webhook`: LSPS5 `lsps5.set_webhook` at an LSP that lists protocol 5."""
    protocols = lsps.request(lsp, "lsps0.list_protocols", {})
    if 5 not in protocols.get("protocols", []):
        raise ValueError(f"{lsp} does not serve LSPS5 (webhooks)")
    return {"id": lsp, "app_name": app_name, **lsps.request(lsp, "lsps5.set_webhook",
                                                           {"app_name": app_name, "webhook": webhook})}
