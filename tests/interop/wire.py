"""How the real LSPS stacks read what we send them, written from their sources (read, not run):

- LDK: lightningdevkit/rust-lightning `lightning-liquidity/src` at cfee4b75 (wire-identical to v0.3.0-beta1,
  which ldk-node pins), lsps0/ser.rs `LSPSMessage` visitor and `LSPSResponseError`.
- Core Lightning: ElementsProject/lightning `plugins/lsps-plugin/src` at v26.06-258-g090f4b0e
  (crate cln-lsps 0.1.1), proto/jsonrpc.rs `RawResponse`, `RpcError`; proto/lsps2.rs `OpeningFeeParams`.
"""

from __future__ import annotations

import json
from typing import Any

LSPS_TYPE = (37913).to_bytes(2, "big")


def ldk_reads_response(message: bytes, known_ids: set[str]) -> dict[str, Any]:
    """What lightning-liquidity's parser accepts from an LSP (lsps0/ser.rs): an `id` string it sent
    (else "Received response for unknown request id": the peer is ignored until it reconnects),
    `error.data` a string or null (`data: Option<String>`), `error.message` a string, `code` an i32."""
    assert message[:2] == LSPS_TYPE
    obj = json.loads(message[2:])
    assert isinstance(obj.get("id"), str) and obj["id"] in known_ids, "LDK: unknown request id"
    if "error" in obj:
        error = obj["error"]
        assert isinstance(error.get("code"), int) and -2**31 <= error["code"] < 2**31
        assert isinstance(error.get("message"), str), "LDK: error.message is a String"
        assert error.get("data") is None or isinstance(error["data"], str), "LDK: error.data is Option<String>"
    else:
        assert isinstance(obj.get("result"), dict)
    return obj


def cln_reads_response(message: bytes, known_ids: set[str]) -> dict[str, Any]:
    """What cln-lsps-client accepts (proto/jsonrpc.rs `RawResponse`): `jsonrpc` "2.0", an `id` string
    it is waiting for, exactly one of `result` and `error` (`data` any JSON value)."""
    obj = json.loads(message[2:])
    assert obj.get("jsonrpc") == "2.0" and obj.get("id") in known_ids
    assert ("result" in obj) != ("error" in obj)
    return obj


# cln-lsps proto/lsps2.rs: `#[serde(deny_unknown_fields)] pub struct OpeningFeeParams` with these eight
CLN_FEE_PARAMS_FIELDS = {"min_fee_msat", "proportional", "valid_until", "min_lifetime", "max_client_to_self_delay",
                         "min_payment_size_msat", "max_payment_size_msat", "promise"}
CLN_MAX_PROMISE_BYTES = 512  # proto/lsps2.rs `Promise` TryFrom<String>


def chrono_rfc3339(value: str) -> str:
    """`valid_until` as chrono writes a parsed DateTime<Utc> back to JSON (serde: SecondsFormat::AutoSi,
    use_z): what LDK's and CLN's clients echo in lsps2.buy. The fraction is dropped when zero, else
    written with 3, 6 or 9 digits (the fewest that are exact); the offset is always `Z`."""
    date, rest = value[:19], value[19:]
    fraction = rest[1:].rstrip("Zz") if rest.startswith(".") else ""
    digits = (fraction + "000000000")[:9]
    if int(digits) == 0:
        return date + "Z"
    for width in (3, 6, 9):
        if digits[width:] == "0" * (9 - width):
            return f"{date}.{digits[:width]}Z"
    raise AssertionError("unreachable")
