"""The client's side of paid inbound on demand (lsp/inbound.py): the price of a liquidity sale the LSP made
because a payment to us exceeded our inbound, paid out of the payment forwarded over the new channel.

The price is agreed before the sale is signed: the LSP's proposal carries `price_msat`, the buyer refuses
one above its limit (`InboundFeeLimit`, client/sale.py) and records it with the sale. The payment
forwarded over that channel then arrives short by its bLIP-25 `extra_fee`. It is accepted when

- it is the final hop of a payment to one of our unpaid invoices, in a single part (its `payment_data`
  total is its onion amount): lightningd's MPP set needs one total for every part, and parts that came
  earlier over another channel could not be changed any more;
- it arrives with exactly its onion amount minus its `extra_fee` (bLIP-52's rule for such parts);
- its `extra_fee` is at most what is still unpaid of the price of the sale whose channel it came in on.

lightningd is then handed the part with its amounts set to what arrived and the invoice's amount
lowered by the fee, so the invoice is marked paid with what we received; the price paid is recorded
(durable) first, by payment hash: a part lightningd hands us again after a restart is not counted twice. Anything else goes to lightningd's normal handling, which fails an underpaid part.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from ..cln.node import ClnNode, msat
from ..protocol import tlv
from ..protocol.lsps2 import part_ok
from ..sales import sale_fee_sat
from ..cln.store import Store

INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS = 0x400F  # BOLT-4, with htlc_msat (u64) and height (u32)

Log = Callable[..., None]


DEFAULT_MAX_FEE_BASE_SAT = 2_000
DEFAULT_MAX_FEE_PPM = 10_000


@dataclass(frozen=True, slots=True)
class InboundFeeLimit:
    """The most a client pays for a channel sold to it on demand: `base_sat` + `ppm` of its capacity."""

    base_sat: int = DEFAULT_MAX_FEE_BASE_SAT
    ppm: int = DEFAULT_MAX_FEE_PPM

    def max_msat(self, capacity_sat: int) -> int:
        return sale_fee_sat(capacity_sat, self.base_sat, self.ppm) * 1000


class OnDemandPayments:
    def __init__(self, node: ClnNode, store: Store, log: Log) -> None:
        self.node, self.store, self.log = node, store, log

    def on_htlc(self, onion: dict[str, Any], htlc: dict[str, Any]) -> Optional[dict[str, Any]]:
        """The hook's answer for a part that pays a sale's price (above), or None: normal handling."""
        try:
            extra = tlv.extra_fee(bytes.fromhex(htlc.get("extra_tlvs") or ""))
        except ValueError:
            return None
        if not extra or onion.get("short_channel_id") or "forward_msat" not in onion:
            return None
        found = self._priced_sale(str(htlc.get("short_channel_id")))
        if found is None:
            return None
        fid, rec, sale = found
        htlc_msat, onion_msat = msat(htlc["amount_msat"]), msat(onion["forward_msat"])
        height = int(htlc["cltv_expiry"]) - int(htlc["cltv_expiry_relative"])
        reject = {"result": "fail", "failure_message": f"{INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS:04x}{htlc_msat:016x}{height:08x}"}
        try:
            payload = tlv.hop_payload(bytes.fromhex(onion["payload"]))
        except ValueError:
            return reject
        data = tlv.get(payload, tlv.PAYMENT_DATA)
        # a part lightningd hands us again after a restart was counted already: the same payment, again
        again = int(sale.get("paid_by", {}).get(str(htlc["payment_hash"]), 0))
        unpaid = int(sale.get("price_msat", 0)) - int(sale.get("price_paid_msat", 0)) + again
        invoices = self.node.rpc.call("listinvoices", {"payment_hash": htlc["payment_hash"]})["invoices"]
        why = None
        if data is None or len(data) < 32 or int.from_bytes(data[32:], "big") != onion_msat:
            why = "it is one part of several"
        elif not part_ok(htlc_msat, onion_msat, extra):
            why = f"{htlc_msat} msat arrived for an onion amount of {onion_msat} and an extra_fee of {extra}"
        elif extra > unpaid:
            why = f"extra_fee {extra} msat is more than the {unpaid} msat unpaid of the agreed price"
        elif len(invoices) != 1 or invoices[0].get("status") != "unpaid" or msat(invoices[0].get("amount_msat", 0)) != onion_msat:
            why = "it is not for an unpaid invoice of ours of its onion amount"
        if why is not None:
            self.log(f"inbound on demand: refusing a part short by {extra} msat over sale {sale['txid']}: {why}",
                     level="info")
            return reject
        sale["price_paid_msat"] = int(sale.get("price_paid_msat", 0)) - again + extra
        sale.setdefault("paid_by", {})[str(htlc["payment_hash"])] = extra
        self.store.put(fid, "factory", rec)
        payload = tlv.replace(payload, tlv.AMT_TO_FORWARD, tlv.tu64(htlc_msat))
        assert data is not None
        payload = tlv.replace(payload, tlv.PAYMENT_DATA, data[:32] + tlv.tu64(htlc_msat))
        self.log(f"inbound on demand: paid {extra} msat of sale {sale['txid']}'s price ({unpaid - extra} msat left); "
                 f"received {htlc_msat} msat for invoice {invoices[0].get('label')}")
        return {"result": "continue", "payload": tlv.serialize_stream(payload).hex(), "invoice_msat": htlc_msat}

    def _priced_sale(self, scid: str) -> Optional[tuple[str, dict[str, Any], dict[str, Any]]]:
        """(factory id, record, sale entry) of our sale with a price whose channel is `scid`, if any."""
        named = self.node.channel_named(scid)
        if not named:
            return None
        outpoint = f"{named[0].get('funding_txid')}:{named[0].get('funding_outnum')}"
        for fid in self.store.factory_ids():
            rec = self.store.get(fid, "factory")
            if rec is None or rec.get("role") != "client":
                continue
            for sale in rec.get("sales", []):
                if sale.get("mine") and sale.get("channel_outpoint") == outpoint and int(sale.get("price_msat", 0)):
                    return fid, rec, sale
        return None
