"""LSPS1 (bLIP-51, "Channel Requests"): the LSP's options, the validation of `lsps1.create_order`,
the price, and the order's state machine. Pure: no I/O, no clock (callers pass times and heights).

What this LSP sells: inbound capacity (`lsp_balance_sat`) and optionally a starting balance
(`client_balance_sat`) on a channel in the client's next factory. Payment is over Lightning (bolt11,
a hold invoice: the LSP holds the HTLCs until the factory holding the channel is published, and
fails them back if it cannot fill the order) or on chain (§3.3, offered only to a client that gave a
`refund_onchain_address`: an address of the LSP's wallet, counted as paid at
`min_onchain_payment_confirmations`, and refunded to that address when the order fails). bolt12 is
not offered ("The LSP MAY omit payment options").

The price (`fee_total_sat`), stated once here and in `get_info`'s caller docs:

    fee_total_sat   = fee_base_sat + ceil(lsp_balance_sat * fee_ppm / 1_000_000)
    order_total_sat = fee_total_sat + client_balance_sat

The client's `client_balance_sat` is what it pays for its balance in the new factory channel: the LSP
funds the channel with lsp_balance_sat + client_balance_sat and the client's side starts at
client_balance_sat (bLIP-51 "MUST push client_balance_sat to the client").

State machine (bLIP-51 §2, §3.1):

    order_state      CREATED ──filled──▶ COMPLETED
                        └──────failed──▶ FAILED
    payment.bolt11   EXPECT_PAYMENT ──HTLCs held──▶ HOLD ──filled (preimage released)──▶ PAID
                        │                            └──failed (HTLCs failed back)──▶ REFUNDED
                        └──expired unpaid (invoice cancelled)──────────────────────▶ REFUNDED
                        └──paid on chain instead (invoice cancelled)───────────────▶ REFUNDED
    payment.onchain  EXPECT_PAYMENT ──order_total_sat confirmed──▶ PAID ──failed, refund sent──▶ REFUNDED

Coins reaching an order's address that the order does not keep (a late or partial payment, a second
one) are refunded to `refund_onchain_address` too (`Refund`), less the refund's own fee.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Optional

from ..bitcoin.address import address_to_script
from .lsps0 import INVALID_PARAMS, U64_MAX, LspsError, amount, check_params, iso8601

# bLIP-51 error codes
OPTION_MISMATCH = 100  # create_order: the order does not match get_info's options
NOT_FOUND = 101  # get_order: unknown order_id
UNRECOGNIZED_TOKEN = 102  # create_order: a token we do not know
CLIENT_REJECTED = 1  # LSPS0.client_rejected_error

# order_state
CREATED, COMPLETED, FAILED = "CREATED", "COMPLETED", "FAILED"
# payment.bolt11.state
EXPECT_PAYMENT, HOLD, PAID, REFUNDED = "EXPECT_PAYMENT", "HOLD", "PAID", "REFUNDED"

# bLIP-51 §3.3 `min_fee_for_0conf` must be absent when confirmations are required, but LDK's client
# (lightning-liquidity lsps1/msgs.rs LSPS1OnchainPaymentInfo, `min_fee_for_0conf: FeeRate`) cannot
# parse an on-chain option without it. A peer that writes like LDK gets this rate, which no payment
# pays: it says "no zero-conf", which is what the absent field means.
NO_ZERO_CONF_FEE = 2**32 - 1  # sat/kWU (LSPS0.onchain_fee_rate)

U16_MAX = 2**16 - 1
U32_MAX = 2**32 - 1
MAX_ORDER_ID = 64  # characters (bLIP-51)

REQUIRED = ("lsp_balance_sat", "client_balance_sat", "required_channel_confirmations",
            "funding_confirms_within_blocks", "channel_expiry_blocks", "announce_channel")
OPTIONAL = ("token", "refund_onchain_address")


@dataclass(frozen=True)
class Options:
    """What `lsps1.get_info` publishes, and the price. Every min/max pair has min <= max."""

    min_required_channel_confirmations: int
    min_funding_confirms_within_blocks: int
    supports_zero_channel_reserve: bool
    max_channel_expiry_blocks: int
    min_initial_client_balance_sat: int
    max_initial_client_balance_sat: int
    min_initial_lsp_balance_sat: int
    max_initial_lsp_balance_sat: int
    min_channel_balance_sat: int
    max_channel_balance_sat: int
    fee_base_sat: int
    fee_ppm: int

    def __post_init__(self) -> None:
        pairs = (("min_initial_client_balance_sat", "max_initial_client_balance_sat"),
                 ("min_initial_lsp_balance_sat", "max_initial_lsp_balance_sat"),
                 ("min_channel_balance_sat", "max_channel_balance_sat"))
        for lo, hi in pairs:
            if not 0 <= getattr(self, lo) <= getattr(self, hi):
                raise ValueError(f"LSPS1 options: need 0 <= {lo} <= {hi}")
        if self.min_funding_confirms_within_blocks < 1 or self.max_channel_expiry_blocks < 1:
            raise ValueError("LSPS1 options: min_funding_confirms_within_blocks and max_channel_expiry_blocks >= 1")
        if self.min_required_channel_confirmations < 0 or self.fee_base_sat < 0 or self.fee_ppm < 0:
            raise ValueError("LSPS1 options: negative value")

    def to_json(self) -> dict[str, Any]:
        """The `lsps1.get_info` result (amounts as LSPS0.sat strings)."""
        return {
            "min_required_channel_confirmations": self.min_required_channel_confirmations,
            "min_funding_confirms_within_blocks": self.min_funding_confirms_within_blocks,
            "supports_zero_channel_reserve": self.supports_zero_channel_reserve,
            "max_channel_expiry_blocks": self.max_channel_expiry_blocks,
            "min_initial_client_balance_sat": amount(self.min_initial_client_balance_sat),
            "max_initial_client_balance_sat": amount(self.max_initial_client_balance_sat),
            "min_initial_lsp_balance_sat": amount(self.min_initial_lsp_balance_sat),
            "max_initial_lsp_balance_sat": amount(self.max_initial_lsp_balance_sat),
            "min_channel_balance_sat": amount(self.min_channel_balance_sat),
            "max_channel_balance_sat": amount(self.max_channel_balance_sat),
        }

    def fee_sat(self, lsp_balance_sat: int) -> int:
        """fee_total_sat = fee_base_sat + ceil(lsp_balance_sat * fee_ppm / 1e6)."""
        return self.fee_base_sat + -(-lsp_balance_sat * self.fee_ppm // 1_000_000)


@dataclass(frozen=True)
class OrderRequest:
    """A validated `lsps1.create_order` request."""

    lsp_balance_sat: int
    client_balance_sat: int
    required_channel_confirmations: int
    funding_confirms_within_blocks: int
    channel_expiry_blocks: int
    token: str
    announce_channel: bool
    refund_onchain_address: Optional[str] = None


def _invalid(prop: str, message: str) -> LspsError:
    """bLIP-51: -32602 with {"property", "message"}."""
    return LspsError(INVALID_PARAMS, "Invalid params", {"property": prop, "message": message})


def _sat(params: dict[str, Any], name: str) -> int:
    value = params[name]
    if not isinstance(value, str) or not re.fullmatch(r"0|[1-9][0-9]*", value) or int(value) > U64_MAX:
        raise _invalid(name, "Not an LSPS0.sat (a decimal string)")
    return int(value)


def _uint(params: dict[str, Any], name: str, top: int) -> int:
    value = params[name]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
        raise _invalid(name, f"Not a uint{16 if top == U16_MAX else 32}")
    return value


def parse_request(params: dict[str, Any]) -> OrderRequest:
    """The request's fields, well-formed (else -32602: unknown or missing parameters as LSPS0 says,
    a malformed field with its `property`)."""
    check_params(params, (), REQUIRED + OPTIONAL)  # unrecognised parameters: LSPS0's data.unrecognized
    for name in REQUIRED:
        if name not in params:
            raise _invalid(name, "Missing")
    lsp_balance = _sat(params, "lsp_balance_sat")
    if lsp_balance < 1:
        raise _invalid("lsp_balance_sat", "Must be 1 or greater")
    client_balance = _sat(params, "client_balance_sat")
    confirmations = _uint(params, "required_channel_confirmations", U16_MAX)
    within = _uint(params, "funding_confirms_within_blocks", U16_MAX)
    expiry = _uint(params, "channel_expiry_blocks", U32_MAX)
    if expiry < 1:
        raise _invalid("channel_expiry_blocks", "Must be 1 or greater")
    announce = params["announce_channel"]
    if not isinstance(announce, bool):
        raise _invalid("announce_channel", "Not a boolean")
    token = params.get("token")
    if token is None:  # absent, or null as LDK writes it (lightning-liquidity lsps1/msgs.rs LSPS1OrderParams)
        token = ""
    if not isinstance(token, str):
        raise _invalid("token", "Not a string")
    refund = params.get("refund_onchain_address")
    if refund is not None and (not isinstance(refund, str) or not 14 <= len(refund) <= 90):
        raise _invalid("refund_onchain_address", "Not an on-chain address")
    return OrderRequest(lsp_balance, client_balance, confirmations, within, expiry, token, announce, refund)


def check_options(req: OrderRequest, options: Options) -> None:
    """bLIP-51: an order that does not match the options is error 100, `property` naming the option."""
    def mismatch(prop: str, message: str) -> LspsError:
        return LspsError(OPTION_MISMATCH, "Option mismatch", {"property": prop, "message": message})

    total = req.lsp_balance_sat + req.client_balance_sat
    checks = (
        (req.lsp_balance_sat < options.min_initial_lsp_balance_sat, "min_initial_lsp_balance_sat",
         "lsp_balance_sat is below the minimum"),
        (req.lsp_balance_sat > options.max_initial_lsp_balance_sat, "max_initial_lsp_balance_sat",
         "lsp_balance_sat is above the maximum"),
        (req.client_balance_sat < options.min_initial_client_balance_sat, "min_initial_client_balance_sat",
         "client_balance_sat is below the minimum"),
        (req.client_balance_sat > options.max_initial_client_balance_sat, "max_initial_client_balance_sat",
         "client_balance_sat is above the maximum"),
        (total < options.min_channel_balance_sat, "min_channel_balance_sat", "the channel is below the minimum size"),
        (total > options.max_channel_balance_sat, "max_channel_balance_sat", "the channel is above the maximum size"),
        (req.required_channel_confirmations < options.min_required_channel_confirmations,
         "min_required_channel_confirmations", "required_channel_confirmations is below the minimum"),
        (req.funding_confirms_within_blocks < options.min_funding_confirms_within_blocks,
         "min_funding_confirms_within_blocks", "funding_confirms_within_blocks is below the minimum"),
        (req.channel_expiry_blocks > options.max_channel_expiry_blocks, "max_channel_expiry_blocks",
         "channel_expiry_blocks is above the maximum"),
    )
    for failed, prop, message in checks:
        if failed:
            raise mismatch(prop, message)


def validate(params: dict[str, Any], options: Options, tokens: frozenset[str] = frozenset(),
             announce_ok: bool = False, network: Optional[str] = None) -> OrderRequest:
    """A create_order request checked in the spec's order: fields (-32602), options (100), token (102).
    A factory's leaf channels are never announced: unless `announce_ok` (an ordinary channel from the
    LSP's wallet), a request for an announced channel is an invalid `announce_channel` field (-32602).
    With `network`, a refund address must be a SegWit address of that network (LSPS0.onchain_address)."""
    req = parse_request(params)
    if req.refund_onchain_address is not None and network is not None:
        try:
            address_to_script(req.refund_onchain_address, network)
        except (ValueError, KeyError):  # BitcoinError is a ValueError
            raise _invalid("refund_onchain_address", f"Not a SegWit address on {network}") from None
    if req.announce_channel and not announce_ok:
        raise _invalid("announce_channel", "This LSP opens unannounced channels only: announce_channel must be false")
    check_options(req, options)
    if req.token and req.token not in tokens:
        raise LspsError(UNRECOGNIZED_TOKEN, "Unrecognized or stale token", {})
    return req


def valid_order_id(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_ORDER_ID


def parse_get_order(params: dict[str, Any]) -> str:
    check_params(params, (), ("order_id",))
    if "order_id" not in params:
        raise _invalid("order_id", "Missing")
    if not valid_order_id(params["order_id"]):
        raise _invalid("order_id", "Not an order id")
    return str(params["order_id"])


@dataclass(frozen=True)
class Channel:
    """bLIP-51 §4: the channel that filled the order. Here the leaf channel in the client's new
    factory, or the channel a liquidity sale added in a factory it is already in: `funding_outpoint` is
    that channel's funding outpoint (its transaction is pre-signed, on chain only if someone exits);
    `funded_at` is when the factory's root funding transaction was published, or the sale signed;
    `expires_at` the factory's expiry (the earliest the LSP may close the channel). For a wallet that
    cannot join a factory: an ordinary channel from the LSP's wallet (`factory_id` empty), funded when
    its funding transaction was broadcast, expiring `channel_expiry_blocks` later."""

    funded_at: float
    funding_outpoint: str
    expires_at: float
    factory_id: str  # ours; not in the spec's object

    def to_json(self) -> dict[str, Any]:
        return {"funded_at": iso8601(self.funded_at), "funding_outpoint": self.funding_outpoint,
                "expires_at": iso8601(self.expires_at)}


@dataclass(frozen=True)
class Refund:
    """Coins of an order's address sent back to its `refund_onchain_address`: the outputs spent
    (`txid:vout`), the refund's txid, when it was sent and at what rate (bumped by sending it again,
    at a higher rate, from the same outputs)."""

    utxos: tuple[str, ...]
    txid: str
    height: int
    feerate_perkw: int
    # a refund paid from the LSP's wallet is recorded signed before it is sent, and this cleared once
    # bitcoind took it: a crash between the two sends the same transaction again, never a second one
    unsent_psbt: str = ""


@dataclass(frozen=True)
class Onchain:
    """bLIP-51 §3.3: the on-chain payment option of one order. `address` is the LSP wallet's;
    `utxos` the outputs that paid the order (set when it is PAID); `refunds` every refund sent."""

    address: str
    refund_address: str
    expires_at: float
    confirmations: int  # min_onchain_payment_confirmations
    state: str = EXPECT_PAYMENT
    utxos: tuple[str, ...] = ()
    paid_sat: int = 0
    refunds: tuple[Refund, ...] = ()
    write_zero_conf_fee: bool = False  # an LDK-style peer: see NO_ZERO_CONF_FEE

    def to_json(self, fee_total_sat: int, order_total_sat: int) -> dict[str, Any]:
        j: dict[str, Any] = {
            "state": self.state,
            "expires_at": iso8601(self.expires_at),
            "fee_total_sat": amount(fee_total_sat),
            "order_total_sat": amount(order_total_sat),
            "address": self.address,
            "min_onchain_payment_confirmations": self.confirmations,
            "refund_onchain_address": self.refund_address,
        }
        if self.write_zero_conf_fee:
            j["min_fee_for_0conf"] = NO_ZERO_CONF_FEE
        return j

    def refunded(self) -> frozenset[str]:
        return frozenset(u for r in self.refunds for u in r.utxos)

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> "Onchain":
        fields = dict(data)
        fields["utxos"] = tuple(fields.get("utxos", ()))
        fields["refunds"] = tuple(Refund(tuple(r["utxos"]), r["txid"], r["height"], r["feerate_perkw"],
                                         r.get("unsent_psbt", ""))
                                  for r in fields.get("refunds", ()))
        return cls(**fields)


@dataclass(frozen=True)
class Order:
    order_id: str
    peer_id: str
    request: OrderRequest
    created_at: float  # unix seconds
    expires_at: float  # the bolt11 payment option's (and the invoice's) expiry
    fee_total_sat: int
    invoice: str
    payment_hash: str
    order_state: str = CREATED
    payment_state: str = EXPECT_PAYMENT
    paid_height: Optional[int] = None  # when the HTLCs summing to the total were held
    channel: Optional[Channel] = None
    failure: Optional[str] = None  # ours: why it failed (not in the spec's object)
    plain: bool = False  # ours: a wallet that cannot join a factory, served an ordinary channel
    onchain: Optional[Onchain] = None  # the on-chain payment option, when offered

    @property
    def order_total_sat(self) -> int:
        return self.fee_total_sat + self.request.client_balance_sat

    @property
    def paid(self) -> bool:
        """Paid and not settled: the HTLCs held, or the on-chain payment confirmed (bLIP-51 §4.1: the
        channel is opened in either case)."""
        return self.order_state == CREATED and (
            self.payment_state == HOLD or (self.onchain is not None and self.onchain.state == PAID))

    @property
    def expired_unpaid(self) -> float:
        """When every payment option of this unpaid order has expired."""
        return max(self.expires_at, self.onchain.expires_at if self.onchain is not None else 0.0)

    # --- transitions (each raises ValueError from a state it does not start from) ---

    def held(self, height: int) -> "Order":
        """The HTLCs paying the invoice arrived and are held: EXPECT_PAYMENT → HOLD."""
        if self.order_state != CREATED or self.payment_state != EXPECT_PAYMENT:
            raise ValueError(f"order {self.order_id}: payment held in state {self.order_state}/{self.payment_state}")
        return dataclasses.replace(self, payment_state=HOLD, paid_height=height)

    def paid_onchain(self, height: int, paid_sat: int, utxos: tuple[str, ...]) -> "Order":
        """order_total_sat reached the address at the confirmations asked: onchain PAID, and the
        invoice is cancelled (bolt11 REFUNDED, bLIP-51 §3.1: "a cancelled or refunded invoice")."""
        if (self.order_state != CREATED or self.payment_state != EXPECT_PAYMENT or self.onchain is None
                or self.onchain.state != EXPECT_PAYMENT):
            raise ValueError(f"order {self.order_id}: paid on chain in state {self.order_state}/{self.payment_state}")
        if paid_sat < self.order_total_sat:
            raise ValueError(f"order {self.order_id}: {paid_sat} sat on chain is short of {self.order_total_sat}")
        onchain = dataclasses.replace(self.onchain, state=PAID, utxos=utxos, paid_sat=paid_sat)
        return dataclasses.replace(self, payment_state=REFUNDED, onchain=onchain, paid_height=height)

    def filled(self, channel: Channel) -> "Order":
        """The channel's funding was published: the preimage is released. CREATED/HOLD → COMPLETED/PAID;
        paid on chain, the on-chain option stays PAID."""
        if not self.paid:
            raise ValueError(f"order {self.order_id}: filled in state {self.order_state}/{self.payment_state}")
        bolt11 = PAID if self.payment_state == HOLD else self.payment_state
        return dataclasses.replace(self, order_state=COMPLETED, payment_state=bolt11, channel=channel)

    def failed(self, why: str) -> "Order":
        """Not filled (expired unpaid, or could not be served in time): the HTLCs are failed back / the
        invoice cancelled. CREATED → FAILED, EXPECT_PAYMENT/HOLD → REFUNDED. Paid on chain, the option
        stays PAID until its refund is sent (`refund_sent`)."""
        if self.order_state != CREATED or not (self.payment_state in (EXPECT_PAYMENT, HOLD) or self.paid):
            raise ValueError(f"order {self.order_id}: failed in state {self.order_state}/{self.payment_state}")
        return dataclasses.replace(self, order_state=FAILED, payment_state=REFUNDED, failure=why)

    def to_refund(self, received: dict[str, int]) -> tuple[str, ...]:
        """Of the confirmed outputs at the order's address (`txid:vout` → sat), those to send back: all
        but the payment the order keeps (none once it FAILED), less those already refunded."""
        if self.onchain is None:
            return ()
        kept = frozenset(self.onchain.utxos) if self.order_state != FAILED else frozenset()
        done = self.onchain.refunded()
        return tuple(sorted(u for u in received if u not in kept and u not in done))

    def refund_sent(self, refund: Refund) -> "Order":
        """A refund went out (or was sent again at a higher rate: the one spending the same outputs is
        replaced). The payment of a FAILED order refunded: onchain REFUNDED."""
        if self.onchain is None:
            raise ValueError(f"order {self.order_id}: no on-chain option to refund")
        refunds = tuple(r for r in self.onchain.refunds if not set(r.utxos) & set(refund.utxos)) + (refund,)
        onchain = dataclasses.replace(self.onchain, refunds=refunds)
        if self.order_state == FAILED and onchain.state == PAID and set(onchain.utxos) <= onchain.refunded():
            onchain = dataclasses.replace(onchain, state=REFUNDED)
        return dataclasses.replace(self, onchain=onchain)

    # --- the spec's object, and our durable form ---

    def to_json(self) -> dict[str, Any]:
        """The `create_order` / `get_order` result."""
        r = self.request
        return {
            "order_id": self.order_id,
            "lsp_balance_sat": amount(r.lsp_balance_sat),
            "client_balance_sat": amount(r.client_balance_sat),
            "required_channel_confirmations": r.required_channel_confirmations,
            "funding_confirms_within_blocks": r.funding_confirms_within_blocks,
            "channel_expiry_blocks": r.channel_expiry_blocks,
            "token": r.token,
            "created_at": iso8601(self.created_at),
            "announce_channel": r.announce_channel,
            "order_state": self.order_state,
            "payment": self._payment_json(),
            "channel": None if self.channel is None else self.channel.to_json(),
        }

    def _payment_json(self) -> dict[str, Any]:
        payment: dict[str, Any] = {"bolt11": {
            "state": self.payment_state,
            "expires_at": iso8601(self.expires_at),
            "fee_total_sat": amount(self.fee_total_sat),
            "order_total_sat": amount(self.order_total_sat),
            "invoice": self.invoice,
        }}
        if self.onchain is not None:  # §3.3: omitted when the client gave no refund address
            payment["onchain"] = self.onchain.to_json(self.fee_total_sat, self.order_total_sat)
        return payment

    def to_record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> "Order":
        fields = dict(data)
        fields["request"] = OrderRequest(**fields["request"])
        if fields.get("channel") is not None:
            fields["channel"] = Channel(**fields["channel"])
        if fields.get("onchain") is not None:
            fields["onchain"] = Onchain.from_record(fields["onchain"])
        return cls(**fields)
