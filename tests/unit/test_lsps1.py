"""LSPS1 (bLIP-51): validation, price and states (protocol/lsps1.py), and the LSP's order book with
its hold invoice (lsp/orders.py) over an in-memory datastore."""

from __future__ import annotations

import threading
import time
from typing import Any, Optional

import pytest

from superscalar.factory.params import regtest_params
from superscalar.lsp.ladder import Create, Ladder, LadderConfig, Waiting
from superscalar.lsp.orders import CONTINUE, FAIL, FAIL_MARGIN_BLOCKS, PAYMENT_WINDOW_SECONDS, Orders
from superscalar.protocol.lsps0 import INVALID_PARAMS, LspsError
from superscalar.protocol.lsps1 import (COMPLETED, EXPECT_PAYMENT, FAILED, HOLD, NOT_FOUND, OPTION_MISMATCH, PAID,
                                        NO_ZERO_CONF_FEE, REFUNDED, UNRECOGNIZED_TOKEN, Channel, Options, Order,
                                        validate)
from superscalar.cln.store import Store

from ..fakes import MemoryDatastore

OPTIONS = Options(min_required_channel_confirmations=1, min_funding_confirms_within_blocks=16,
                  supports_zero_channel_reserve=False, max_channel_expiry_blocks=24,
                  min_initial_client_balance_sat=0, max_initial_client_balance_sat=1_000_000,
                  min_initial_lsp_balance_sat=100_000, max_initial_lsp_balance_sat=10_000_000,
                  min_channel_balance_sat=100_000, max_channel_balance_sat=11_000_000,
                  fee_base_sat=1_000, fee_ppm=10_000)
PEER = "02" + "11" * 32
OTHER = "03" + "22" * 32


def request(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"lsp_balance_sat": "500000", "client_balance_sat": "20000",
                            "required_channel_confirmations": 1, "funding_confirms_within_blocks": 16,
                            "channel_expiry_blocks": 20, "token": "", "announce_channel": False}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not ...}


def error(params: dict[str, Any]) -> tuple[int, Any]:
    with pytest.raises(LspsError) as e:
        validate(params, OPTIONS)
    return e.value.code, e.value.data


def test_get_info_shape_and_price() -> None:
    info = OPTIONS.to_json()
    assert info["min_initial_lsp_balance_sat"] == "100000" and info["max_channel_balance_sat"] == "11000000"
    assert info["min_required_channel_confirmations"] == 1 and info["supports_zero_channel_reserve"] is False
    assert set(info) == {"min_required_channel_confirmations", "min_funding_confirms_within_blocks",
                         "supports_zero_channel_reserve", "max_channel_expiry_blocks",
                         "min_initial_client_balance_sat", "max_initial_client_balance_sat",
                         "min_initial_lsp_balance_sat", "max_initial_lsp_balance_sat",
                         "min_channel_balance_sat", "max_channel_balance_sat"}
    assert OPTIONS.fee_sat(500_000) == 1_000 + 5_000
    assert OPTIONS.fee_sat(100_001) == 1_000 + 1_001  # ceil
    with pytest.raises(ValueError):
        Options(**{**OPTIONS.__dict__, "min_initial_lsp_balance_sat": 20_000_000})  # min > max


def test_malformed_fields_are_invalid_params_with_their_property() -> None:
    assert error(request(lsp_balance_sat=500000)) == (INVALID_PARAMS, {"property": "lsp_balance_sat",
                                                                        "message": "Not an LSPS0.sat (a decimal string)"})
    assert error(request(lsp_balance_sat="0"))[1]["property"] == "lsp_balance_sat"  # MUST be 1 or greater
    assert error(request(client_balance_sat="-1"))[1]["property"] == "client_balance_sat"
    assert error(request(client_balance_sat="01"))[1]["property"] == "client_balance_sat"
    assert error(request(required_channel_confirmations=70_000))[1]["property"] == "required_channel_confirmations"
    assert error(request(funding_confirms_within_blocks="6"))[1]["property"] == "funding_confirms_within_blocks"
    assert error(request(channel_expiry_blocks=0))[1]["property"] == "channel_expiry_blocks"
    assert error(request(announce_channel="no")) == (INVALID_PARAMS, {"property": "announce_channel",
                                                                      "message": "Not a boolean"})
    assert error(request(token=5))[1]["property"] == "token"
    assert error(request(channel_expiry_blocks=...))[1]["property"] == "channel_expiry_blocks"  # missing
    assert error(request(colour="blue")) == (INVALID_PARAMS, {"unrecognized": ["colour"]})  # LSPS0
    assert error(request(announce_channel=True))[1]["property"] == "announce_channel"  # we announce none


def test_orders_outside_the_options_are_option_mismatch() -> None:
    def prop(**changes: Any) -> str:
        code, data = error(request(**changes))
        assert code == OPTION_MISMATCH
        return str(data["property"])

    assert prop(lsp_balance_sat="99999") == "min_initial_lsp_balance_sat"
    assert prop(lsp_balance_sat="10000001") == "max_initial_lsp_balance_sat"
    assert prop(client_balance_sat="1000001") == "max_initial_client_balance_sat"
    assert prop(lsp_balance_sat="10000000", client_balance_sat="1000001") == "max_initial_client_balance_sat"
    assert prop(required_channel_confirmations=0) == "min_required_channel_confirmations"
    assert prop(funding_confirms_within_blocks=15) == "min_funding_confirms_within_blocks"
    assert prop(channel_expiry_blocks=25) == "max_channel_expiry_blocks"
    assert error(request(token="SUMMER")) == (UNRECOGNIZED_TOKEN, {})
    req = validate(request(refund_onchain_address="bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"), OPTIONS)
    assert (req.lsp_balance_sat, req.client_balance_sat, req.channel_expiry_blocks) == (500_000, 20_000, 20)


def test_state_machine() -> None:
    order = Order("id", PEER, validate(request(), OPTIONS), 1_700_000_000.0, 1_700_003_600.0, 6_000, "lnbcrt1", "aa")
    assert (order.order_state, order.payment_state, order.order_total_sat) == ("CREATED", EXPECT_PAYMENT, 26_000)
    with pytest.raises(ValueError):
        order.filled(Channel(0, "00" * 32 + ":0", 0, "f"))  # not paid
    held = order.held(100)
    done = held.filled(Channel(1_700_000_100.0, "ab" * 32 + ":1", 1_700_018_100.0, "f"))
    assert (done.order_state, done.payment_state) == (COMPLETED, PAID)
    assert done.to_json()["channel"] == {"funded_at": "2023-11-14T22:15:00.000Z", "funding_outpoint": "ab" * 32 + ":1",
                                         "expires_at": "2023-11-15T03:15:00.000Z"}
    for start in (order, held):
        gone = start.failed("why")
        assert (gone.order_state, gone.payment_state) == (FAILED, REFUNDED)
    with pytest.raises(ValueError):
        done.failed("late")
    with pytest.raises(ValueError):
        held.held(101)
    assert Order.from_record(done.to_record()) == done
    j = order.to_json()
    assert j["payment"]["bolt11"] == {"state": "EXPECT_PAYMENT", "expires_at": "2023-11-14T23:13:20.000Z",
                                      "fee_total_sat": "6000", "order_total_sat": "26000", "invoice": "lnbcrt1"}
    assert j["channel"] is None and j["token"] == "" and j["created_at"] == "2023-11-14T22:13:20.000Z"


class Killed(BaseException):
    """kill -9: nothing after it runs (no `except Exception` catches it)."""


class Node(MemoryDatastore):
    def __init__(self) -> None:
        super().__init__()
        self.height = 500
        self.rpc = self
        self.invoices: list[dict[str, Any]] = []
        self.deleted: list[str] = []
        self.funded: list[dict[str, Any]] = []
        self.network = "regtest"
        self.away: set[str] = set()  # peers not connected
        self.addresses = 0
        self.outputs: list[dict[str, Any]] = []  # the wallet's, as ClnNode.wallet_outputs gives them
        self.sweeps: list[tuple[tuple[str, ...], str, str]] = []
        self.unsweepable: set[str] = set()  # outputs our wallet spent elsewhere
        self.paid_out: list[tuple[str, int]] = []  # refunds prepared from the wallet
        self.sent: dict[str, str] = {}  # signed PSBT -> txid, as bitcoind took them
        self.crash_at: Optional[str] = None  # "before sending", "after sending": kill -9 there

    def blockheight(self) -> int:
        return self.height

    def connected(self, peer: str) -> bool:
        return peer not in self.away

    def new_address(self) -> str:
        self.addresses += 1
        return f"bcrt1qaddress{self.addresses}"

    def wallet_outputs(self, addresses: frozenset[str]) -> list[dict[str, Any]]:
        return [o for o in self.outputs if o["address"] in addresses]

    def spent_outputs(self) -> frozenset[str]:
        return frozenset(o["outpoint"] for o in self.outputs if o["spent"])

    def receive(self, address: str, sat: int, height: int) -> str:
        outpoint = f"{len(self.outputs) + 1:064x}:0"
        self.outputs.append({"outpoint": outpoint, "sat": sat, "address": address, "height": height, "spent": False})
        return outpoint

    def sweep(self, utxos: tuple[str, ...], address: str, feerate: str) -> Optional[tuple[str, int]]:
        if set(utxos) & self.unsweepable:
            raise RuntimeError("utxopsbt: not ours any more")
        self.sweeps.append((utxos, address, feerate))
        rate = 253 if feerate == "normal" else int(feerate.removesuffix("perkw"))
        return f"{len(self.sweeps):02x}" * 32, rate

    def feerate_perkw(self, blocks: int) -> int:
        return 1000

    def prepare_payout(self, address: str, value_sat: int, feerate: str) -> tuple[str, str]:
        self.paid_out.append((address, value_sat))
        n = len(self.paid_out)
        return f"{n:02x}" * 32, f"psbt-{n}"

    def send_signed(self, signed_psbt: str) -> str:
        if self.crash_at == "before sending":
            self.crash_at = None
            raise Killed()
        if signed_psbt in self.sent:
            raise RuntimeError("sendpsbt: bad-txns-inputs-missingorspent")  # bitcoind has it already
        self.sent[signed_psbt] = f"{int(signed_psbt.split('-')[1]):02x}" * 32
        if self.crash_at == "after sending":
            self.crash_at = None
            raise Killed()
        return self.sent[signed_psbt]

    def wallet_txids(self) -> frozenset[str]:
        return frozenset(self.sent.values())

    def call(self, method: str, params: Any) -> Any:
        if method == "invoice":
            self.invoices.append(params)
            return {"bolt11": f"lnbcrt{len(self.invoices)}", "payment_hash": f"{len(self.invoices):064x}",
                    "expires_at": 1_700_000_000 + params["expiry"]}
        if method == "delinvoice":
            self.deleted.append(params["label"])
            return {}
        if method == "fundchannel":
            self.funded.append(params)
            return {"channel_id": "c1" * 32, "txid": "f0" * 32, "outnum": 1}
        assert method == "listpeers"
        return {"peers": [{"id": params["id"], "connected": params["id"] not in self.away}]}


def book() -> tuple[Node, Store, Ladder, Orders]:
    node = Node()
    store = Store(node)  # type: ignore[arg-type]
    ladder = Ladder(node, store, LadderConfig(interval_blocks=0, batch_size=2), lambda c, h: {}, None,  # type: ignore[arg-type]
                    lambda text, level="info": None)
    orders = Orders(node, store, OPTIONS, ladder, 34, lambda text, level="info": None,  # type: ignore[arg-type]
                    clock=lambda: 1_700_000_000.0)
    return node, store, ladder, orders


def test_unpaid_orders_are_bounded_per_peer() -> None:
    from superscalar.lsp.orders import MAX_UNPAID_PER_PEER

    node, store, ladder, orders = book()
    for _ in range(MAX_UNPAID_PER_PEER):
        orders.create_order(PEER, request())
    with pytest.raises(LspsError) as e:
        orders.create_order(PEER, request())
    assert e.value.code == 1 and len(node.invoices) == MAX_UNPAID_PER_PEER
    orders.create_order(OTHER, request())  # another peer is not affected
    assert len(node.invoices) == MAX_UNPAID_PER_PEER + 1


def test_a_rejected_order_makes_nothing() -> None:
    node, store, ladder, orders = book()
    for bad in (request(lsp_balance_sat="1"), request(required_channel_confirmations=0), request(token="x"),
                request(lsp_balance_sat=5)):
        with pytest.raises(LspsError):
            orders.create_order(PEER, bad)
    assert node.invoices == [] and store.doc_names("lsps1-order-") == [] and orders.list() == []
    with pytest.raises(LspsError) as e:
        orders.get_order(PEER, {"order_id": "bb4b5d0a-8334-49d8-9463-90a6d413af7c"})
    assert (e.value.code, e.value.message, e.value.data) == (NOT_FOUND, "Not found", {})
    with pytest.raises(LspsError) as e:
        orders.get_order(PEER, {"order_id": 7})
    assert e.value.code == INVALID_PARAMS


def test_an_order_is_held_queued_filled_and_released() -> None:
    node, store, ladder, orders = book()
    made = orders.create_order(PEER, request())
    assert node.invoices == [{"amount_msat": 26_000_000, "label": f"lsps1-{made['order_id']}",
                              "description": node.invoices[0]["description"],
                              "expiry": PAYMENT_WINDOW_SECONDS + 34 * 600, "cltv": 34}]
    assert made["order_state"] == "CREATED" and made["payment"]["bolt11"]["state"] == EXPECT_PAYMENT
    with pytest.raises(LspsError) as e:  # another peer cannot see it
        orders.get_order(OTHER, {"order_id": made["order_id"]})
    assert e.value.code == NOT_FOUND
    answers: list[dict[str, Any]] = []
    h = f"{1:064x}"
    assert orders.on_htlc("ff" * 32, 1, 600, answers.append) is False  # not an order's
    assert orders.on_htlc(h, 10_000_000, 540, answers.append) and answers == []  # one part: held
    assert orders.get_order(PEER, {"order_id": made["order_id"]})["payment"]["bolt11"]["state"] == EXPECT_PAYMENT
    assert orders.on_htlc(h, 16_000_000, 540, answers.append) and answers == []
    assert orders.get_order(PEER, {"order_id": made["order_id"]})["payment"]["bolt11"]["state"] == HOLD
    [w] = ladder.state()["waiting"]
    assert (w["node_id"], w["balance_sat"], w["inbound_sat"], w["orders"]) == (PEER, 20_000, 500_000, [made["order_id"]])
    # the ladder starts the factory (its funding not yet broadcast): nothing released yet
    fid = "cd" * 32
    params = regtest_params(2, 500)
    record = {"role": "lsp", "params": params.serialize().decode(), "stage": "funding",
              "channels": [{"peer_id": OTHER, "funding_outpoint": "ee" * 32 + ":0"},
                           {"peer_id": PEER, "funding_outpoint": "ee" * 32 + ":1"}]}
    store.put(fid, "factory", record)
    ladder.create = lambda clients, height: {"factory_id": fid}  # type: ignore[assignment]
    ladder.on_started = orders.reconcile
    ladder._run(Create((Waiting.from_doc(w),)), 500)
    assert answers == [] and orders.order(made["order_id"]).order_state == "CREATED"  # type: ignore[union-attr]
    node.height = 540 - FAIL_MARGIN_BLOCKS  # its deadline, but a factory has it: it is not failed
    orders.on_block(node.height)
    assert answers == []
    store.put(fid, "factory", {**record, "stage": "funded"})
    orders.on_block(node.height)
    assert answers == [CONTINUE, CONTINUE]
    done = orders.get_order(PEER, {"order_id": made["order_id"]})
    assert (done["order_state"], done["payment"]["bolt11"]["state"]) == (COMPLETED, PAID)
    assert done["channel"]["funding_outpoint"] == "ee" * 32 + ":1"
    # durable: a restarted LSP reads it back, and a replayed HTLC is settled
    again = Orders(node, store, OPTIONS, ladder, 34, lambda text, level="info": None,  # type: ignore[arg-type]
                   clock=lambda: 1_700_000_000.0)
    assert again.get_order(PEER, {"order_id": made["order_id"]}) == done
    assert again.on_htlc(h, 26_000_000, 540, answers.append) and answers[-1] == CONTINUE


def test_an_order_not_filled_in_time_is_refunded() -> None:
    node, store, ladder, orders = book()
    made = orders.create_order(PEER, request())  # funding_confirms_within_blocks 16
    answers: list[dict[str, Any]] = []
    h = f"{1:064x}"
    orders.on_htlc(h, 26_000_000, 600, answers.append)  # held at 500
    assert ladder.state()["waiting"][0]["orders"] == [made["order_id"]]
    node.height = 514
    orders.on_block(514)
    assert answers == []
    node.height = 515  # its funding could no longer confirm within 16 blocks of the payment
    orders.on_block(515)
    assert answers == [FAIL] and ladder.state()["waiting"] == []
    gone = orders.get_order(PEER, {"order_id": made["order_id"]})
    assert (gone["order_state"], gone["payment"]["bolt11"]["state"], gone["channel"]) == (FAILED, REFUNDED, None)
    assert node.deleted == [f"lsps1-{made['order_id']}"]
    orders.on_htlc(h, 26_000_000, 600, answers.append)  # a retry of a failed order is failed
    assert answers[-1] == FAIL
    # a patient order (100 blocks) whose HTLC expires sooner: failed FAIL_MARGIN_BLOCKS before it times out
    patient = orders.create_order(PEER, request(funding_confirms_within_blocks=100))
    orders.on_htlc(f"{2:064x}", 26_000_000, 545, answers.append)
    node.height = 545 - FAIL_MARGIN_BLOCKS - 1
    orders.on_block(node.height)
    assert orders.get_order(PEER, {"order_id": patient["order_id"]})["payment"]["bolt11"]["state"] == HOLD
    node.height += 1
    orders.on_block(node.height)
    assert answers[-1] == FAIL and orders.get_order(PEER, {"order_id": patient["order_id"]})["order_state"] == FAILED
    # an HTLC too close to its expiry to be held is failed at once, the order still open
    third = orders.create_order(PEER, request())
    orders.on_htlc(f"{3:064x}", 26_000_000, node.height + FAIL_MARGIN_BLOCKS, answers.append)
    assert answers[-1] == FAIL and orders.get_order(PEER, {"order_id": third["order_id"]})["payment"]["bolt11"][
        "state"] == EXPECT_PAYMENT


def test_an_unpaid_order_expires_and_a_late_payment_is_failed() -> None:
    node, store, ladder, orders = book()
    made = orders.create_order(PEER, request())
    orders.clock = lambda: 1_700_000_000.0 + PAYMENT_WINDOW_SECONDS + 1
    answers: list[dict[str, Any]] = []
    orders.on_htlc(f"{1:064x}", 26_000_000, 600, answers.append)
    assert answers == [FAIL] and ladder.state()["waiting"] == []
    assert orders.get_order(PEER, {"order_id": made["order_id"]})["order_state"] == FAILED
    second = orders.create_order(PEER, request())
    orders.on_block(node.height)
    assert orders.get_order(PEER, {"order_id": second["order_id"]})["payment"]["bolt11"]["state"] == EXPECT_PAYMENT
    orders.clock = lambda: 1_700_000_000.0 + 2 * PAYMENT_WINDOW_SECONDS + 2
    orders.on_block(node.height)  # no payment within the window: failed, its invoice cancelled
    assert orders.get_order(PEER, {"order_id": second["order_id"]})["payment"]["bolt11"]["state"] == REFUNDED


def test_concurrent_create_orders_get_distinct_ids() -> None:
    node, store, ladder, orders = book()
    ids: list[str] = []
    threads = [threading.Thread(target=lambda peer=f"{i + 2:02x}" * 33: ids.append(  # type: ignore[misc]
                   orders.create_order(peer, request())["order_id"])) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 8 and all(len(i) <= 64 for i in ids)


def test_a_wallet_without_superscalar_gets_an_ordinary_channel() -> None:
    """bLIP-51 for a wallet that cannot join a factory (it never said superscalar.get_info): once paid
    (HTLCs held), an ordinary channel from the LSP's wallet of lsp_balance + client_balance, the client
    balance pushed, announced when asked (zero-conf when no confirmation is required); the HTLCs are
    released once it is open, and the order names its funding outpoint."""
    node, store, ladder, orders = book()
    orders.spoke = lambda peer: peer != OTHER
    made = orders.create_order(OTHER, request(announce_channel=True))  # one confirmation required
    answers: list[dict[str, Any]] = []
    assert orders.on_htlc(f"{1:064x}", 26_000_000, 540, answers.append)
    for _ in range(100):
        if answers:
            break
        time.sleep(0.02)
    assert answers == [CONTINUE]
    assert node.funded == [{"id": OTHER, "amount": 520_000, "push_msat": 20_000_000, "announce": True}]
    done = orders.get_order(OTHER, {"order_id": made["order_id"]})
    assert (done["order_state"], done["payment"]["bolt11"]["state"]) == (COMPLETED, PAID)
    assert done["channel"]["funding_outpoint"] == "f0" * 32 + ":1" and done["announce_channel"] is True
    assert ladder.state()["waiting"] == []  # not queued for a factory
    # a SuperScalar client may not ask for an announced channel (a leaf channel never is)
    with pytest.raises(LspsError) as e:
        orders.create_order(PEER, request(announce_channel=True))
    assert e.value.code == INVALID_PARAMS


def test_a_plain_order_whose_channel_fails_is_refunded() -> None:
    node, store, ladder, orders = book()
    orders.spoke = lambda peer: False

    def refuse(method: str, params: Any) -> Any:
        if method == "fundchannel":
            raise RuntimeError("peer refused the channel")
        return Node.call(node, method, params)
    node.call = refuse  # type: ignore[method-assign]
    made = orders.create_order(OTHER, request())
    answers: list[dict[str, Any]] = []
    orders.on_htlc(f"{1:064x}", 26_000_000, 540, answers.append)
    for _ in range(100):
        if answers:
            break
        time.sleep(0.02)
    assert answers == [FAIL]
    done = orders.get_order(OTHER, {"order_id": made["order_id"]})
    assert (done["order_state"], done["payment"]["bolt11"]["state"]) == (FAILED, REFUNDED)


REFUND_TO = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"


def onchain_book(confirmations: int = 2) -> tuple[Node, Store, Ladder, Orders]:
    node, store, ladder, orders = book()
    orders.onchain_confirmations = confirmations
    return node, store, ladder, orders


def wait_until(check: Any) -> None:
    for _ in range(200):
        if check():
            return
        time.sleep(0.01)
    assert check()


def test_onchain_option_is_offered_only_with_a_refund_address() -> None:
    """bLIP-51 §3.3: the on-chain dictionary is omitted without a refund address; with one, a fresh
    address of ours, the confirmations we count, the refund address mirrored, and no zero-conf fee
    (absent; for a peer writing like LDK, the rate no payment reaches, which LDK's parser requires)."""
    node, store, ladder, orders = onchain_book()
    assert "onchain" not in orders.create_order(PEER, request())["payment"]
    made = orders.create_order(PEER, request(refund_onchain_address=REFUND_TO))
    onchain = made["payment"]["onchain"]
    assert onchain == {"state": EXPECT_PAYMENT, "expires_at": "2023-11-15T22:13:20.000Z", "fee_total_sat": "6000",
                       "order_total_sat": "26000", "address": "bcrt1qaddress1", "min_onchain_payment_confirmations": 2,
                       "refund_onchain_address": REFUND_TO}
    ldk = orders.create_order(OTHER, request(refund_onchain_address=REFUND_TO, token=None))
    assert ldk["payment"]["onchain"]["min_fee_for_0conf"] == NO_ZERO_CONF_FEE
    with pytest.raises(LspsError) as e:  # a mainnet address on regtest
        orders.create_order(PEER, request(refund_onchain_address="bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kqyuhcfx"))
    assert (e.value.code, e.value.data["property"]) == (INVALID_PARAMS, "refund_onchain_address")
    off, _, _, no_onchain = book()  # superscalar-lsps1-onchain=false
    assert "onchain" not in no_onchain.create_order(PEER, request(refund_onchain_address=REFUND_TO))["payment"]


def test_onchain_payment_counts_at_its_confirmations() -> None:
    """Paid in two outputs, counted once both have the confirmations: the invoice is cancelled (bolt11
    REFUNDED), the client queued, an HTLC for the invoice failed; the factory fills it, and the
    payment is kept (no refund)."""
    node, store, ladder, orders = onchain_book(confirmations=2)
    made = orders.create_order(PEER, request(refund_onchain_address=REFUND_TO))
    address = made["payment"]["onchain"]["address"]
    node.receive(address, 20_000, 501)
    node.receive(address, 6_000, 502)
    node.height = 502
    orders.on_block(502)  # the second has one confirmation
    assert orders.get_order(PEER, {"order_id": made["order_id"]})["payment"]["onchain"]["state"] == EXPECT_PAYMENT
    node.height = 503
    orders.on_block(503)
    got = orders.get_order(PEER, {"order_id": made["order_id"]})
    assert (got["order_state"], got["payment"]["onchain"]["state"], got["payment"]["bolt11"]["state"]) == (
        "CREATED", PAID, REFUNDED)
    assert node.deleted == [f"lsps1-{made['order_id']}"]
    assert ladder.state()["waiting"][0]["orders"] == [made["order_id"]]
    answers: list[dict[str, Any]] = []
    orders.on_htlc(f"{1:064x}", 26_000_000, 600, answers.append)
    assert answers == [FAIL]
    assert node.sweeps == []


def test_failed_onchain_order_is_refunded_and_bumped() -> None:
    """Paid on chain, not filled within funding_confirms_within_blocks: FAILED, the payment swept back
    to the refund address (onchain REFUNDED); unconfirmed 36 blocks later, swept again at twice the
    rate from the same outputs."""
    from superscalar.lsp.orders import REFUND_BUMP_BLOCKS

    node, store, ladder, orders = onchain_book(confirmations=1)
    changes: list[tuple[str, str, str]] = []
    orders.state_changed = lambda *change: changes.append(change)
    made = orders.create_order(PEER, request(refund_onchain_address=REFUND_TO))  # within 16 blocks
    paid = node.receive(made["payment"]["onchain"]["address"], 26_000, 500)
    orders.on_block(500)
    assert ladder.state()["waiting"][0]["orders"] == [made["order_id"]]
    node.height = 515
    orders.on_block(515)
    gone = orders.get_order(PEER, {"order_id": made["order_id"]})
    assert (gone["order_state"], gone["payment"]["onchain"]["state"]) == (FAILED, REFUNDED)
    assert ladder.state()["waiting"] == [] and node.sweeps == [((paid,), REFUND_TO, "normal")]
    assert changes == [(PEER, made["order_id"], FAILED)]  # for LSPS5 to tell a sleeping client
    node.height = 515 + REFUND_BUMP_BLOCKS - 1
    orders.on_block(node.height)
    assert len(node.sweeps) == 1
    node.height += 1
    orders.on_block(node.height)
    assert node.sweeps[-1] == ((paid,), REFUND_TO, "506perkw")
    node.outputs[0]["spent"] = True  # the refund confirmed
    node.height += REFUND_BUMP_BLOCKS
    orders.on_block(node.height)
    assert len(node.sweeps) == 2
    stored = Orders(node, store, OPTIONS, ladder, 34, lambda text, level="info": None,  # type: ignore[arg-type]
                    clock=lambda: 1_700_000_000.0, onchain_confirmations=1)
    assert stored.order(made["order_id"]) == orders.order(made["order_id"])  # kept across a restart


def test_partial_late_and_extra_onchain_coins_go_back() -> None:
    """A partial payment stays while the option is open, and goes back when the order expires; coins
    arriving after the order was paid (a second payment) go back at once; coins our wallet already
    spent go back from the wallet, less a fee."""
    node, store, ladder, orders = onchain_book(confirmations=1)
    clock = [1_700_000_000.0]
    orders.clock = lambda: clock[0]
    short = orders.create_order(PEER, request(refund_onchain_address=REFUND_TO))
    part = node.receive(short["payment"]["onchain"]["address"], 10_000, 500)
    orders.on_block(500)
    assert node.sweeps == [] and orders.get_order(PEER, {"order_id": short["order_id"]})["order_state"] == "CREATED"
    clock[0] += 24 * 3600 + 1
    node.height = 501
    orders.on_block(501)
    gone = orders.get_order(PEER, {"order_id": short["order_id"]})
    assert gone["order_state"] == FAILED and gone["payment"]["onchain"]["state"] == EXPECT_PAYMENT  # nothing was paid
    assert node.sweeps == [((part,), REFUND_TO, "normal")]
    full = orders.create_order(OTHER, request(refund_onchain_address=REFUND_TO))
    address = full["payment"]["onchain"]["address"]
    kept = node.receive(address, 26_000, 502)
    node.height = 502
    orders.on_block(502)
    assert node.sweeps[-1][0] == (part,)  # the payment is kept
    extra = node.receive(address, 5_000, 503)
    node.unsweepable.add(extra)
    node.height = 503
    orders.on_block(503)
    assert node.paid_out == [(REFUND_TO, 5_000 - 600)]  # 1000 sat/kw for 600 weight
    assert list(node.sent) == ["psbt-1"]
    assert orders.order(full["order_id"]).onchain.utxos == (kept,)  # type: ignore[union-attr]
    node.height = 504
    orders.on_block(504)
    assert len(node.paid_out) == 1  # sent once


@pytest.mark.parametrize("crash_at", ["before sending", "after sending"])
def test_a_wallet_refund_survives_kill_9_unpaid_twice(crash_at: str) -> None:
    """A refund paid from the LSP's wallet (the client's coins were spent elsewhere) is recorded
    signed before it is sent. Killed just before or just after sending it, the LSP restarts and
    sends that same transaction: the client is paid once, never twice."""
    node, store, ladder, orders = onchain_book(confirmations=1)
    full = orders.create_order(PEER, request(refund_onchain_address=REFUND_TO))
    address = full["payment"]["onchain"]["address"]
    node.receive(address, 26_000, 500)
    orders.on_block(500)
    extra = node.receive(address, 5_000, 501)
    node.unsweepable.add(extra)
    node.height, node.crash_at = 501, crash_at
    with pytest.raises(Killed):
        orders.on_block(501)
    [refund] = orders.order(full["order_id"]).onchain.refunds  # type: ignore[union-attr]
    assert refund.unsent_psbt == "psbt-1"  # on disk before anything went out
    restarted = Orders(node, store, OPTIONS, ladder, 34, lambda text, level="info": None,  # type: ignore[arg-type]
                       clock=lambda: 1_700_000_000.0, onchain_confirmations=1)
    for height in (502, 503):
        node.height = height
        restarted.on_block(height)
    assert node.paid_out == [(REFUND_TO, 4_400)] and list(node.sent) == ["psbt-1"]
    [refund] = restarted.order(full["order_id"]).onchain.refunds  # type: ignore[union-attr]
    assert (refund.txid, refund.unsent_psbt) == ("01" * 32, "")


def test_plain_wallet_paid_onchain_waits_for_its_connection() -> None:
    """bLIP-51 §4.1 "MUST wait for a peer connection": a plain wallet paid on chain while away gets its
    ordinary channel once it is back; the on-chain option stays PAID."""
    node, store, ladder, orders = onchain_book(confirmations=1)
    orders.spoke = lambda peer: peer != OTHER
    node.away.add(OTHER)
    made = orders.create_order(OTHER, request(refund_onchain_address=REFUND_TO))
    node.receive(made["payment"]["onchain"]["address"], 26_000, 500)
    orders.on_block(500)
    assert node.funded == []
    node.away.clear()
    node.height = 501
    orders.on_block(501)
    wait_until(lambda: orders.get_order(OTHER, {"order_id": made["order_id"]})["order_state"] == COMPLETED)
    done = orders.get_order(OTHER, {"order_id": made["order_id"]})
    assert done["payment"]["onchain"]["state"] == PAID and done["payment"]["bolt11"]["state"] == REFUNDED
    assert node.funded == [{"id": OTHER, "amount": 520_000, "push_msat": 20_000_000, "announce": False,
                            "channel_type": [12, 46]}]
    assert node.sweeps == []
