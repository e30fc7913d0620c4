"""How many blocks an HTLC on a factory channel needs before it expires, and what a client's invoices
ask of their payers so that every HTLC they bring in has it.

To enforce an HTLC of a factory channel whose peer stopped cooperating, its holder must get the
channel on chain and spend the HTLC output before it expires: the whole exit path (the early-warning
time, EWT: every relative wait of the path and `confirm_blocks` for each of its transactions), then
the commitment transaction and the HTLC-success or HTLC-timeout transaction, `confirm_blocks` each.

A client's invoice sets `min_final_cltv_expiry` (BOLT-11 field `c`) to that plus `INVOICE_SLACK_BLOCKS`
for the blocks found while the payment is being routed; the payer adds every hop's delta on top.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

# Blocks that may pass between the invoice and the HTLC's arrival, and payers' rounding.
INVOICE_SLACK_BLOCKS = 12
# BOLT-11 `invoice` (CLN): positional parameters are amount_msat, label, description, expiry,
# fallbacks, preimage, exposeprivatechannels, cltv, deschashonly.
INVOICE_CLTV_POSITION = 7


def enforce_blocks(early_warning_blocks: int, confirm_blocks: int) -> int:
    """Blocks between starting an exit and having an HTLC output of the channel spent on chain."""
    return early_warning_blocks + 2 * confirm_blocks


def invoice_final_cltv(early_warning_blocks: int, confirm_blocks: int) -> int:
    return enforce_blocks(early_warning_blocks, confirm_blocks) + INVOICE_SLACK_BLOCKS


def required_final_cltv(records: Iterable[tuple[int, int]]) -> Optional[int]:
    """The final CLTV a node's invoices need: the most any of its factory channels needs, given each
    channel's (early-warning blocks, confirm blocks); None when it has none."""
    needs = [invoice_final_cltv(ewt, confirm) for ewt, confirm in records]
    return max(needs) if needs else None


def with_final_cltv(params: Any, need: int) -> Optional[Any]:
    """`invoice` parameters (an object or a positional array) asking for at least `need` blocks of
    final CLTV, or None when they already do. A caller's larger `cltv` is kept."""
    if isinstance(params, dict):
        given = params.get("cltv")
        if given is not None and int(given) >= need:
            return None
        return {**params, "cltv": need}
    if isinstance(params, list):
        given = params[INVOICE_CLTV_POSITION] if len(params) > INVOICE_CLTV_POSITION else None
        if given is not None and int(given) >= need:
            return None
        out = list(params) + [None] * max(0, INVOICE_CLTV_POSITION + 1 - len(params))
        out[INVOICE_CLTV_POSITION] = need
        return out
    return None
