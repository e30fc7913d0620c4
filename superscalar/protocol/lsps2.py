"""LSPS2 (bLIP-52, "JIT Channel Negotiation"): the fee menu, its `promise`, the opening fee, the
checks of `lsps2.buy`, and how held payment parts are forwarded. Shared by the LSP and the client.
Pure: secrets, clocks and amounts come in as arguments.

Section names below are bLIP-52's."""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from .lsps0 import (INVALID_PARAMS, U64_MAX, LspsError, amount, check_params, instant_ns, iso8601, parse_amount,
                    parse_iso8601)

# bLIP-52 "1. API Information" and "2. Request JIT Channel": error codes
UNRECOGNIZED_OR_STALE_TOKEN = 200
INVALID_OPENING_FEE_PARAMS = 201
PAYMENT_SIZE_TOO_SMALL = 202
PAYMENT_SIZE_TOO_LARGE = 203
CLIENT_REJECTED = 1  # bLIP-50 LSPS0.client_rejected_error

# BOLT-4 failure codes the LSP answers held parts with ("4. Payment", "5. Channel Opening")
UPDATE = 0x1000
PERM = 0x4000
TEMPORARY_CHANNEL_FAILURE = UPDATE | 7
UNKNOWN_NEXT_PEER = PERM | 10

MPP_HOLD_SECONDS = 90  # "4. Payment": hold parts at least 90 s from the first part's arrival
MAX_PROMISE_BYTES = 512  # "1. API Information": a promise is at most 512 bytes of UTF-8 JSON string
MIN_CLTV_MARGIN = 2  # "3. Invoice Generation": the invoice's `c` is at least +2 over the normal setting
PROMISE_LABEL = "superscalar/lsps2/promise"  # makesecret label of the LSP's promise key

FIELDS = ("min_fee_msat", "proportional", "valid_until", "min_lifetime", "max_client_to_self_delay",
          "min_payment_size_msat", "max_payment_size_msat", "promise")


@dataclass(frozen=True, slots=True)
class OpeningFeeParams:
    """One `opening_fee_params` object. `valid_until` is kept as the exact string the LSP sent, and a
    client hands it back verbatim (an LSP may MAC the string: ldk-node's has nanoseconds, which a float
    cannot carry); our own promise commits to the instant (`canonical`)."""

    min_fee_msat: int
    proportional: int
    valid_until: str
    min_lifetime: int
    max_client_to_self_delay: int
    min_payment_size_msat: int
    max_payment_size_msat: int
    promise: str

    def to_json(self) -> dict[str, Any]:
        return {**_promised_fields(self), "promise": self.promise}

    @classmethod
    def from_json(cls, obj: Any) -> "OpeningFeeParams":
        """Strict: exactly the eight fields, amounts as LSPS0.msat strings, the integers u32 ("MUST
        NOT have any additional fields"). ValueError otherwise."""
        if not isinstance(obj, dict):
            raise ValueError("opening_fee_params must be an object")
        if set(obj) != set(FIELDS):
            raise ValueError(f"opening_fee_params fields {sorted(obj)} are not exactly {sorted(FIELDS)}")
        for name in ("proportional", "min_lifetime", "max_client_to_self_delay"):
            value = obj[name]
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**32:
                raise ValueError(f"{name} must be an unsigned 32-bit integer")
        promise = obj["promise"]
        if not isinstance(promise, str) or len(json.dumps(promise, ensure_ascii=False)[1:-1].encode()) > MAX_PROMISE_BYTES:
            raise ValueError("promise must be a string of at most 512 bytes")
        parse_iso8601(obj["valid_until"])
        try:
            amounts = [parse_amount(obj[n], n) for n in ("min_fee_msat", "min_payment_size_msat",
                                                          "max_payment_size_msat")]
        except LspsError as e:
            raise ValueError(e.message) from e
        return cls(amounts[0], obj["proportional"], obj["valid_until"], obj["min_lifetime"],
                   obj["max_client_to_self_delay"], amounts[1], amounts[2], promise)

    def valid_at(self, now: float) -> bool:
        """Is `valid_until` still in the future ("not a past datetime")?"""
        return now < parse_iso8601(self.valid_until)


def _promised_fields(p: OpeningFeeParams) -> dict[str, Any]:
    return {"min_fee_msat": amount(p.min_fee_msat), "proportional": p.proportional, "valid_until": p.valid_until,
            "min_lifetime": p.min_lifetime, "max_client_to_self_delay": p.max_client_to_self_delay,
            "min_payment_size_msat": amount(p.min_payment_size_msat),
            "max_payment_size_msat": amount(p.max_payment_size_msat)}


def canonical(p: OpeningFeeParams) -> bytes:
    """The deterministic serialisation the promise MACs: every field but `promise`, as JSON with sorted
    keys and no whitespace, amounts as their decimal strings and `valid_until` as its instant in
    nanoseconds. So the promise binds the values, not their spelling: LDK and Core Lightning parse
    `valid_until` and write it back in their own form (`...:30.000Z` comes back as `...:30Z`)."""
    fields = {**_promised_fields(p), "valid_until": instant_ns(p.valid_until)}
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def make_promise(key: bytes, p: OpeningFeeParams) -> str:
    """"1. API Information", the `promise`: HMAC-SHA256 under a key only the LSP knows, in hex (64
    printable ASCII characters that need no JSON escape): verifiable, unforgeable, committing."""
    return hmac.new(key, canonical(p), hashlib.sha256).hexdigest()


def promise_holds(key: bytes, p: OpeningFeeParams) -> bool:
    return hmac.compare_digest(make_promise(key, p), p.promise)


def opening_fee(payment_size_msat: int, min_fee_msat: int, proportional: int) -> Optional[int]:
    """"Computing The `opening_fee`": ceil(payment_size_msat * proportional / 1_000_000), at least
    `min_fee_msat`, every step in u64; None if a step overflows. (The spec's prose divides by 10000000
    once; its C and Rust routines, which define the rounding, divide by 1000000: ppm.)"""
    product = payment_size_msat * proportional
    if product > U64_MAX:
        return None
    total = product + 999_999
    if total > U64_MAX:
        return None
    return max(total // 1_000_000, min_fee_msat)


@dataclass(frozen=True, slots=True)
class FeeTerms:
    """What the LSP offers, before it is dated and promised into an `opening_fee_params`."""

    min_fee_msat: int
    proportional: int
    valid_for_seconds: int
    min_lifetime: int
    max_client_to_self_delay: int
    min_payment_size_msat: int
    max_payment_size_msat: int


def menu(key: bytes, terms: Sequence[FeeTerms], now: float) -> list[OpeningFeeParams]:
    """The `opening_fee_params_menu`, each entry promised. The order must obey the spec's rule (each
    entry costs more than the one before it in min fee, proportional, or both); ValueError if the
    LSP's configuration breaks it."""
    out = []
    for t in terms:
        unsigned = OpeningFeeParams(t.min_fee_msat, t.proportional, iso8601(now + t.valid_for_seconds),
                                    t.min_lifetime, t.max_client_to_self_delay, t.min_payment_size_msat,
                                    t.max_payment_size_msat, "")
        out.append(OpeningFeeParams(**{**_as_kwargs(unsigned), "promise": make_promise(key, unsigned)}))
    check_order(out)
    return out


def _as_kwargs(p: OpeningFeeParams) -> dict[str, Any]:
    return {name: getattr(p, name) for name in FIELDS}


def check_order(entries: Sequence[OpeningFeeParams]) -> None:
    for before, after in zip(entries, entries[1:]):
        larger_fee, larger_ppm = after.min_fee_msat > before.min_fee_msat, after.proportional > before.proportional
        if not ((larger_fee and after.proportional == before.proportional)
                or (larger_ppm and after.min_fee_msat == before.min_fee_msat) or (larger_fee and larger_ppm)):
            raise ValueError("opening_fee_params_menu is not ordered by increasing cost (bLIP-52)")


@dataclass(frozen=True, slots=True)
class Buy:
    """An accepted `lsps2.buy`: the params, and in MPP+fixed-invoice mode the payment size and fee."""

    params: OpeningFeeParams
    payment_size_msat: Optional[int]  # None: no-MPP+var-invoice mode
    opening_fee_msat: Optional[int]


def check_buy(key: bytes, params: dict[str, Any], now: float) -> Buy:
    """"2. Request JIT Channel", the LSP's checks, raising the spec's errors: a malformed request
    -32602; a promise that does not match or a past `valid_until` 201; a payment size whose fee
    overflows u64 (or above the params' maximum) 203; whose fee is not strictly below it (or below the
    params' minimum) 202."""
    check_params(params, ("opening_fee_params",), ("payment_size_msat",))
    try:
        p = OpeningFeeParams.from_json(params["opening_fee_params"])
    except ValueError as e:
        raise LspsError(INVALID_PARAMS, f"Invalid params: {e}", {"unrecognized": []}) from e
    if not promise_holds(key, p):
        raise LspsError(INVALID_OPENING_FEE_PARAMS, "invalid_opening_fee_params: the promise does not match")
    if not p.valid_at(now):
        raise LspsError(INVALID_OPENING_FEE_PARAMS, "invalid_opening_fee_params: valid_until is past")
    if params.get("payment_size_msat") is None:  # absent, or null as serde writes an empty Option
        return Buy(p, None, None)
    size = parse_amount(params["payment_size_msat"], "payment_size_msat")
    if size < p.min_payment_size_msat:
        raise LspsError(PAYMENT_SIZE_TOO_SMALL, "payment_size_too_small: below min_payment_size_msat")
    if size > p.max_payment_size_msat:
        raise LspsError(PAYMENT_SIZE_TOO_LARGE, "payment_size_too_large: above max_payment_size_msat")
    fee = opening_fee(size, p.min_fee_msat, p.proportional)
    if fee is None:
        raise LspsError(PAYMENT_SIZE_TOO_LARGE, "payment_size_too_large: the opening fee overflows")
    if fee >= size:
        raise LspsError(PAYMENT_SIZE_TOO_SMALL, "payment_size_too_small: the opening fee is not below it")
    return Buy(p, size, fee)


def buy_result(jit_channel_scid: str, lsp_cltv_expiry_delta: int, client_trusts_lsp: bool = False) -> dict[str, Any]:
    """The `lsps2.buy` result."""
    return {"jit_channel_scid": jit_channel_scid, "lsp_cltv_expiry_delta": lsp_cltv_expiry_delta,
            "client_trusts_lsp": client_trusts_lsp}


def variable_fee(htlc_value_msat: int, p: OpeningFeeParams, htlc_minimum_msat: int) -> Optional[int]:
    """"4. Payment", no-MPP+var-invoice mode: the fee for the single part, or None when the part must
    fail with unknown_next_peer (overflow, `opening_fee + htlc_minimum_msat > htlc_value_msat`, or a
    size outside the params' limits)."""
    if not p.min_payment_size_msat <= htlc_value_msat <= p.max_payment_size_msat:
        return None
    fee = opening_fee(htlc_value_msat, p.min_fee_msat, p.proportional)
    if fee is None or fee + htlc_minimum_msat > htlc_value_msat:
        return None
    return fee


def forward_plan(part_amounts: Sequence[int], fee_msat: int, htlc_minimum_msat: int) -> list[tuple[int, int]]:
    """"5. Channel Opening And Forwarding", the spec's example algorithm: for each part (in the given
    order) the amount to forward and the fee deducted from it (its `extra_fee`). Every part forwards at
    least `htlc_minimum_msat`; the deductions sum to `fee_msat`. ValueError if the parts cannot carry
    the fee (too many parts for their size)."""
    if sum(part_amounts) < fee_msat + len(part_amounts) * htlc_minimum_msat:
        raise ValueError("too many payment parts: they cannot carry the opening fee above htlc_minimum_msat")
    plan = []
    left = fee_msat
    for part in part_amounts:
        take = min(left, part - htlc_minimum_msat)
        plan.append((part - take, take))
        left -= take
    assert left == 0
    return plan


# --- the client's side ---

class FlowAborted(ValueError):
    """The client must abort the flow (bLIP-52): the LSP's answer breaks the specification."""


def parse_menu(result: Any) -> list[OpeningFeeParams]:
    """An `lsps2.get_info` result, strictly: an entry with unknown fields or an over-long promise aborts."""
    if not isinstance(result, dict) or not isinstance(result.get("opening_fee_params_menu"), list):
        raise FlowAborted("lsps2.get_info result has no opening_fee_params_menu array")
    try:
        return [OpeningFeeParams.from_json(e) for e in result["opening_fee_params_menu"]]
    except ValueError as e:
        raise FlowAborted(str(e)) from e


def cheapest(entries: Sequence[OpeningFeeParams], payment_size_msat: int, now: float,
             margin_seconds: float = 60.0) -> tuple[OpeningFeeParams, int]:
    """The entry with the lowest opening fee for `payment_size_msat` among those valid for at least
    `margin_seconds` more and whose limits take the size; with that fee. FlowAborted if none."""
    usable = []
    for p in entries:
        fee = opening_fee(payment_size_msat, p.min_fee_msat, p.proportional)
        if p.valid_at(now + margin_seconds) and fee is not None and fee < payment_size_msat \
                and p.min_payment_size_msat <= payment_size_msat <= p.max_payment_size_msat:
            usable.append((fee, p))
    if not usable:
        raise FlowAborted(f"no opening_fee_params of the LSP takes a payment of {payment_size_msat} msat")
    fee, p = min(usable, key=lambda x: x[0])
    return p, fee


def parse_buy_result(result: Any) -> tuple[int, int, bool]:
    """(jit_channel_scid, lsp_cltv_expiry_delta, client_trusts_lsp) of an `lsps2.buy` result."""
    from .lsps0 import parse_scid

    if not isinstance(result, dict) or not isinstance(result.get("jit_channel_scid"), str):
        raise FlowAborted("lsps2.buy result has no jit_channel_scid")
    delta = result.get("lsp_cltv_expiry_delta")
    trusts = result.get("client_trusts_lsp", False)
    if not isinstance(delta, int) or isinstance(delta, bool) or not 0 <= delta < 2**16 or not isinstance(trusts, bool):
        raise FlowAborted("lsps2.buy result: bad lsp_cltv_expiry_delta or client_trusts_lsp")
    try:
        return parse_scid(result["jit_channel_scid"]), delta, trusts
    except ValueError as e:
        raise FlowAborted(str(e)) from e


def part_ok(htlc_msat: int, onion_msat: int, extra_fee_msat: int) -> bool:
    """"5. Channel Opening And Forwarding", the client's check of one part: its amount is the onion's
    minus its own `extra_fee`, exactly."""
    return extra_fee_msat >= 0 and htlc_msat + extra_fee_msat == onion_msat
