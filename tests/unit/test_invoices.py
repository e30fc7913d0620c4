"""A factory client's invoices: the final CLTV its channels need, and a route hint through its LSP when
lightningd gave none (it leaves out peers it does not know from gossip); BOLT-11 `r` fields and amounts."""

from __future__ import annotations

from typing import Any

import pytest

from pyln.client import RpcError
from superscalar.cln.htlc_index import HtlcIndex
from superscalar.htlc_timing import invoice_final_cltv
from superscalar.cln.invoices import (CONTINUE, DEFAULT_LSP_POLICY, FeePolicy, Invoices, hints_wanted, lsp_hints,
                                  named_params)
from superscalar.protocol.bolt11 import (Bolt11Error, RouteHop, amount_msat, bech32_decode, bech32_encode,
                                         route_hints, tagged_fields, with_route_hint, with_routes)
from superscalar.protocol.lsps0 import parse_scid
from superscalar.cln.store import Store

from ..fakes import ChannelNode, listed_channel
from .test_htlc_index import CLIENT_ID, EWT, LSP_ID, client_record, lsp_record, outpoint
from .test_lsps2 import COFFEE

LSP = bytes.fromhex(LSP_ID)


def channel(n: int, receivable: int, update: Any = None, peer: str = LSP_ID, **changes: Any) -> dict[str, Any]:
    ch = listed_channel(n, peer, outpoint(n))
    ch["receivable_msat"] = receivable
    if update is not None:
        ch["updates"] = {"local": {"fee_base_msat": 1, "fee_proportional_millionths": 1, "cltv_expiry_delta": 6},
                         "remote": dict(zip(("fee_base_msat", "fee_proportional_millionths", "cltv_expiry_delta"),
                                            update))}
    return {**ch, **changes}


# --- BOLT-11 ---

def test_routes_replace_every_r_field_one_per_route() -> None:
    a, b = RouteHop(LSP, parse_scid("5x0x2"), 1000, 10, 34), RouteHop(LSP, parse_scid("6x0x2"), 0, 0, 144)
    two = with_routes(with_route_hint(COFFEE, a), [[a], [b]])
    assert route_hints(two) == [[a], [b]]
    assert [f for f in tagged_fields(two)[2] if f[0] != 3] == tagged_fields(COFFEE)[2]
    assert route_hints(with_routes(two, [])) == []
    assert route_hints(with_routes(COFFEE, [[a, b]])) == [[a, b]]  # a two-hop route is one field


def test_amount_from_the_human_readable_part() -> None:
    assert amount_msat(COFFEE) == 250_000_000  # 2500u
    _, words = bech32_decode(COFFEE)
    for hrp, expected in [("lnbcrt20m", 2_000_000_000), ("lnbcrt1230p", 123), ("lntbs7n", 700), ("lnbc1", 10 ** 11),
                          ("lnbcrt", None), ("lntb", None)]:
        assert amount_msat(bech32_encode(hrp, words)) == expected
    for bad in ("lnbcrt1231p", "lnbcrt012u", "lnbcrt1x5u", "bc20m"):
        with pytest.raises(Bolt11Error):
            amount_msat(bech32_encode(bad, words))


# --- choosing the hint ---

def test_hint_is_the_channel_that_can_receive_most_at_the_lsps_policy() -> None:
    listing = [channel(1, 5_000_000), channel(2, 9_000_000, (2000, 50, 40)), channel(3, 1_000, (3000, 100, 80))]
    factory = {listing[0]["channel_id"], listing[1]["channel_id"]}  # channel 3: a JIT channel with the LSP
    assert lsp_hints(listing, factory, None) == [RouteHop(LSP, parse_scid("2x0x2"), 2000, 50, 40)]
    assert lsp_hints(listing, factory, 9_000_000) == [RouteHop(LSP, parse_scid("2x0x2"), 2000, 50, 40)]
    # an amount no channel takes alone: both, the one with no channel_update yet at the LSP's highest
    # policy over our other channels with it
    assert lsp_hints(listing, factory, 12_000_000) == [RouteHop(LSP, parse_scid("2x0x2"), 2000, 50, 40),
                                                       RouteHop(LSP, parse_scid("1x0x2"), 3000, 100, 80)]
    # no channel_update from the LSP on any channel yet: the default policy
    alone = [channel(1, 5_000_000), channel(4, 1, (9, 9, 9), peer="02" + "cc" * 32)]
    assert lsp_hints(alone, {alone[0]["channel_id"]}, 1) == [
        RouteHop(LSP, parse_scid("1x0x2"), DEFAULT_LSP_POLICY.fee_base_msat,
                 DEFAULT_LSP_POLICY.fee_proportional_millionths, DEFAULT_LSP_POLICY.cltv_expiry_delta)]
    assert DEFAULT_LSP_POLICY == FeePolicy(1000, 1000, 144)


def test_hint_names_the_lsps_alias_and_needs_a_working_channel() -> None:
    real = channel(1, 10, alias={"local": "1x0x1"}, short_channel_id="700x1x0")
    assert lsp_hints([real], {real["channel_id"]}, None)[0].short_channel_id == parse_scid("700x1x0")
    confirmed = channel(2, 10, short_channel_id="700x2x0")  # a leaf on chain: the LSP's alias still
    assert lsp_hints([confirmed], {confirmed["channel_id"]}, None)[0].short_channel_id == parse_scid("2x0x2")
    unnamed = channel(3, 10, alias={"local": "3x0x1"})
    closing = channel(4, 10, state="CHANNELD_SHUTTING_DOWN")
    assert lsp_hints([unnamed, closing], {unnamed["channel_id"], closing["channel_id"]}, None) == []
    assert lsp_hints([closing], set(), None) == []


def test_parameters_named_and_when_a_hint_may_be_added() -> None:
    assert named_params([1000, "a", "d", None, None, None, None, 5]) == {"amount_msat": 1000, "label": "a",
                                                                         "description": "d", "cltv": 5}
    assert named_params({"label": "a"}) == {"label": "a"}
    assert named_params("x") is None and named_params(list(range(10))) is None
    assert hints_wanted({"label": "a"}) and hints_wanted({"exposeprivatechannels": True})
    assert not hints_wanted({"exposeprivatechannels": ["1x0x1"]}) and not hints_wanted({"exposeprivatechannels": False})
    assert not hints_wanted({"deschashonly": True}) and not hints_wanted({"dev-routes": []})


# --- the hook, against a fake lightningd ---

class InvoicingNode(ChannelNode):
    """lightningd's invoice commands: `invoice` answers `bolt11` (the hook sees that call first, as
    lightningd's rpc_command hook would show it), `createinvoice` signs nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.rpc = self
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.bolt11 = COFFEE
        self.invoices: Invoices
        self.labels: set[str] = set()
        self.refuse_create = False

    def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((method, params))
        if method == "invoice":
            assert self.invoices.at_once({"method": "invoice", "params": params}) == CONTINUE  # the hook lets it by
            if params["label"] in self.labels:
                raise RpcError("invoice", params, {"code": 900, "message": "Duplicate label"})
            self.labels.add(params["label"])
            return {"bolt11": self.bolt11, "payment_hash": "11" * 32, "payment_secret": "22" * 32,
                    "expires_at": 1, "created_index": 1, "warning_deadends": "dead ends left out"}
        if method == "delinvoice":
            self.labels.remove(params["label"])
            return {}
        if method == "createinvoice":
            if self.refuse_create and params["invstring"] != self.bolt11:
                raise RpcError("createinvoice", params, {"code": -32602, "message": "no"})
            self.labels.add(params["label"])
            return {"bolt11": params["invstring"], "created_index": 2}
        if method == "listinvoices":
            return {"invoices": [{"label": params["label"]}] if params["label"] in self.labels else []}
        raise AssertionError(method)


def client_node(records: dict[str, dict[str, Any]], channels: list[dict[str, Any]]) -> tuple[InvoicingNode, Invoices]:
    node = InvoicingNode()
    store = Store(node)  # type: ignore[arg-type]
    index = HtlcIndex()
    store.listen(index.on_record)
    for fid, rec in records.items():
        store.put(fid, "factory", rec)
    node.channels = channels
    node.invoices = Invoices(node, index, lambda *a, **k: None)  # type: ignore[arg-type]
    return node, node.invoices


REQUEST = {"jsonrpc": "2.0", "id": 7, "method": "invoice",
           "params": {"amount_msat": 1000, "label": "first", "description": "first sats"}}


def test_client_invoice_without_lightningds_hint_gets_one_through_the_lsp() -> None:
    leaf = channel(1, 5_000_000)  # no channel_update from the LSP yet, not in the index yet
    node, invoices = client_node({"f1": client_record(outpoint(1))}, [leaf])
    assert invoices.at_once(REQUEST) is None  # made in a thread
    answer = invoices.made(REQUEST)
    [(m1, asked), (m2, deleted), (m3, created)] = node.calls
    assert (m1, m2, m3) == ("invoice", "delinvoice", "createinvoice")
    need = invoice_final_cltv(EWT, 1)
    assert asked["cltv"] == need and len(bytes.fromhex(asked["preimage"])) == 32 and asked["label"] == "first"
    assert deleted == {"label": "first", "status": "unpaid"}
    assert created["preimage"] == asked["preimage"] and created["label"] == "first"
    hop = RouteHop(LSP, parse_scid("1x0x2"), 1000, 1000, 144)
    assert route_hints(created["invstring"]) == [[hop]]
    assert answer == {"return": {"result": {"bolt11": created["invstring"], "payment_hash": "11" * 32,
                                            "payment_secret": "22" * 32, "expires_at": 1, "created_index": 2}}}
    # the caller's own preimage is kept
    node.calls.clear()
    invoices.made({**REQUEST, "params": [1000, "second", "d", None, None, "33" * 32]})
    assert node.calls[0][1]["preimage"] == "33" * 32 == node.calls[2][1]["preimage"]


def test_lightningds_own_hint_is_kept() -> None:
    node, invoices = client_node({"f1": client_record(outpoint(1))}, [channel(1, 5_000_000, (1, 2, 3))])
    node.bolt11 = with_route_hint(COFFEE, RouteHop(LSP, 77, 1, 2, 3))
    answer = invoices.made(REQUEST)
    assert [m for m, _ in node.calls] == ["invoice"]
    assert answer["return"]["result"]["bolt11"] == node.bolt11 and answer["return"]["result"]["created_index"] == 1


def test_lightningds_error_is_the_answer() -> None:
    node, invoices = client_node({"f1": client_record(outpoint(1))}, [channel(1, 5_000_000)])
    node.labels.add("first")
    assert invoices.made(REQUEST) == {"return": {"error": {"code": 900, "message": "Duplicate label"}}}
    assert [m for m, _ in node.calls] == ["invoice"]


def test_a_hint_that_cannot_be_signed_leaves_lightningds_invoice() -> None:
    node, invoices = client_node({"f1": client_record(outpoint(1))}, [channel(1, 5_000_000)])
    node.refuse_create = True
    answer = invoices.made(REQUEST)
    assert [m for m, _ in node.calls] == ["invoice", "delinvoice", "createinvoice", "createinvoice", "listinvoices"]
    assert answer["return"]["result"]["bolt11"] == COFFEE and "first" in node.labels


def test_no_hint_without_a_usable_factory_channel() -> None:
    # an unfunded factory: lightningd makes the invoice, with no final CLTV to raise
    node, invoices = client_node({"f1": client_record(outpoint(1), funding="unfunded")}, [channel(1, 5_000_000)])
    assert invoices.at_once(REQUEST) is None
    assert invoices.made(REQUEST) == {"replace": REQUEST}
    assert node.calls == []


def test_lsp_and_callers_who_choose_get_lightningds_invoice_at_once() -> None:
    lsp_channel = channel(1, 5_000_000, peer=CLIENT_ID)
    node, invoices = client_node({"f1": lsp_record([(CLIENT_ID, lsp_channel["channel_id"], outpoint(1))])},
                                 [lsp_channel])
    invoices.index.add_channels(node.channels)
    answer = invoices.at_once(REQUEST)  # an LSP: its final CLTV only
    assert answer == {"replace": {**REQUEST, "params": {**REQUEST["params"], "cltv": invoice_final_cltv(EWT, 1)}}}
    _, client = client_node({"f1": client_record(outpoint(1))}, [channel(1, 5_000_000)])
    chosen = {**REQUEST, "params": {**REQUEST["params"], "exposeprivatechannels": ["1x0x1"]}}
    assert client.at_once(chosen) == CONTINUE  # the channel is not in the index yet: nothing to raise
    assert client.at_once({**REQUEST, "method": "pay"}) == CONTINUE
