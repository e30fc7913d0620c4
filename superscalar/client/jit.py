"""The client's LSPS2 (bLIP-52): buy a JIT channel and make the invoice for it; accept the LSP's
zero-conf channel for a buy it made; accept the underpaid parts of that payment.

`invoice` asks `lsps2.get_info`, picks the cheapest menu entry valid for the payment, `lsps2.buy`s it
(MPP+fixed-invoice mode with an amount, no-MPP+var-invoice mode without), and has lightningd make the
invoice ("3. Invoice Generation"): its own preimage, expiry no later than `valid_until`, `c` two blocks
over lightningd's `cltv-final`, and a single route hint through the LSP with the JIT scid, zero fees
and the LSP's `lsp_cltv_expiry_delta` (written into the string by `protocol/bolt11.py`, signed by
`createinvoice`). A part of that payment arrives with less than its onion says, by its bLIP-25
`extra_fee`: the client checks each part's amount is its onion amount minus its own `extra_fee`, and
that the `extra_fee`s sum to at most the opening fee ("5. Channel Opening And Forwarding"); then it
hands lightningd the part with the onion amounts set to what arrived and the invoice's amount lowered
by the opening fee, so lightningd's own MPP set collects the parts and marks the invoice paid. Anything
else goes to lightningd's normal handling. Buys are `Store` documents named after the payment hash."""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any, Callable, Optional

from ..lsps.client import LspsClient
from ..cln.node import ClnNode, msat
from ..protocol import tlv
from ..protocol.bolt11 import RouteHop, with_route_hint, without_features
from ..protocol.lsps0 import amount, format_scid, parse_iso8601
from ..protocol.lsps2 import (MIN_CLTV_MARGIN, FlowAborted, OpeningFeeParams, cheapest, opening_fee, parse_buy_result,
                              parse_menu, part_ok)
from ..cln.store import DOCS, Store

DOC_PREFIX = "lsps2-client-"
INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS = 0x400F  # BOLT-4, with htlc_msat (u64) and height (u32)

Log = Callable[..., None]


class JitClient:
    def __init__(self, node: ClnNode, store: Store, lsps: LspsClient, log: Log,
                 clock: Callable[[], float] = time.time) -> None:
        self.node, self.store, self.lsps, self.log, self.clock = node, store, lsps, log, clock
        self._lock = threading.Lock()
        self._buys: dict[str, dict[str, Any]] = {}  # payment hash → record
        self._extra: dict[str, int] = {}  # payment hash → extra_fee of the parts accepted so far

    def load(self) -> None:
        for key in self.node.datastore_list(DOCS):
            if len(key) == 3 and key[2].startswith(DOC_PREFIX):
                rec = self.store.get_doc(key[2])
                if rec is not None:
                    self._buys[str(rec["payment_hash"])] = rec

    def buys(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._buys.values()]

    def mark(self, payment_hash: str, **changes: Any) -> None:
        """Record `changes` in buy `payment_hash` (durable)."""
        with self._lock:
            rec = self._buys[payment_hash]
            rec.update(changes)
            self.store.put_doc(DOC_PREFIX + payment_hash, rec)

    # --- the command (blocking: run it from a thread) ---

    def invoice(self, lsp_id: str, amount_msat: Optional[int], description: str) -> dict[str, Any]:
        """Buy a JIT channel from connected LSP `lsp_id` and return the invoice for it. `amount_msat`
        None: a variable-amount invoice (no-MPP mode)."""
        menu = parse_menu(self.lsps.request(lsp_id, "lsps2.get_info", {}))
        now = self.clock()
        if amount_msat is not None:
            params, fee = cheapest(menu, amount_msat, now)
            request = {"opening_fee_params": params.to_json(), "payment_size_msat": amount(amount_msat)}
        else:
            usable = [p for p in menu if p.valid_at(now + 60)]
            if not usable:
                raise FlowAborted("the LSP offers no opening_fee_params valid for another minute")
            params, fee = usable[0], None  # the menu's first entry is its cheapest (bLIP-52 ordering)
            request = {"opening_fee_params": params.to_json()}
        scid, cltv_delta, trusts = parse_buy_result(self.lsps.request(lsp_id, "lsps2.buy", request))
        if trusts:
            raise FlowAborted("the LSP asks to be trusted (client_trusts_lsp): this client does not")
        preimage = secrets.token_bytes(32)
        label = f"superscalar-jit-{format_scid(scid)}"
        expiry = int(parse_iso8601(params.valid_until) - self.clock()) - 1
        final = int(self.node.rpc.call("listconfigs", {"config": "cltv-final"})["configs"]["cltv-final"]["value_int"])
        draft = self.node.rpc.call("invoice", {
            "amount_msat": amount_msat if amount_msat is not None else "any", "label": label + "-draft",
            "description": description, "expiry": expiry, "preimage": preimage.hex(),
            "cltv": final + MIN_CLTV_MARGIN})
        self.node.rpc.call("delinvoice", {"label": label + "-draft", "status": "unpaid"})
        text = with_route_hint(draft["bolt11"], RouteHop(bytes.fromhex(lsp_id), scid, 0, 0, cltv_delta))
        if amount_msat is None:
            text = without_features(text)
        made = self.node.rpc.call("createinvoice", {"invstring": text, "label": label, "preimage": preimage.hex()})
        payment_hash = str(draft["payment_hash"])
        rec: dict[str, Any] = {"payment_hash": payment_hash, "lsp": lsp_id, "jit_channel_scid": format_scid(scid),
               "opening_fee_params": params.to_json(), "payment_size_msat": amount_msat, "opening_fee_msat": fee,
               "lsp_cltv_expiry_delta": cltv_delta, "label": label, "channel_accepted": False}
        with self._lock:
            self.store.put_doc(DOC_PREFIX + payment_hash, rec)
            self._buys[payment_hash] = rec
        self.log(f"lsps2: bought JIT scid {rec['jit_channel_scid']} from {lsp_id}, opening fee {fee} msat")
        return {"bolt11": made["bolt11"], "payment_hash": payment_hash, "label": label,
                "jit_channel_scid": rec["jit_channel_scid"], "payment_size_msat": amount_msat,
                "opening_fee_msat": fee, "receive_msat": None if fee is None or amount_msat is None else amount_msat - fee,
                "valid_until": params.valid_until, "lsp_cltv_expiry_delta": cltv_delta}

    # --- hooks ---

    def openchannel(self, payload: dict[str, Any]) -> Optional[dict[str, Any]]:
        """Zero-conf for the channel an LSP opens for a buy of ours (one channel per buy, before its
        valid_until, no push); None for anything else."""
        peer = payload.get("id")
        now = self.clock()
        with self._lock:
            for rec in self._buys.values():
                params = OpeningFeeParams.from_json(rec["opening_fee_params"])
                if rec["lsp"] == peer and not rec["channel_accepted"] and params.valid_at(now) \
                        and msat(payload.get("push_msat", 0)) == 0:
                    rec["channel_accepted"] = True
                    self.store.put_doc(DOC_PREFIX + rec["payment_hash"], rec)
                    self.log(f"lsps2: accepting zero-conf channel from {peer} for JIT scid {rec['jit_channel_scid']}")
                    return {"result": "continue", "mindepth": 0}
        return None

    def on_htlc(self, onion: dict[str, Any], htlc: dict[str, Any]) -> Optional[dict[str, Any]]:
        """The hook's answer for a part of a JIT payment to us; None: not one (normal handling)."""
        payment_hash = str(htlc.get("payment_hash"))
        with self._lock:
            rec = self._buys.get(payment_hash)
        if rec is None or onion.get("short_channel_id") or "forward_msat" not in onion:
            return None
        htlc_msat, onion_msat = msat(htlc["amount_msat"]), msat(onion["forward_msat"])
        height = int(htlc["cltv_expiry"]) - int(htlc["cltv_expiry_relative"])
        reject = {"result": "fail", "failure_message":
                  f"{INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS:04x}{htlc_msat:016x}{height:08x}"}
        try:
            extra = tlv.extra_fee(bytes.fromhex(htlc.get("extra_tlvs") or ""))
            payload = tlv.hop_payload(bytes.fromhex(onion["payload"]))
        except ValueError as e:
            self.log(f"lsps2: part of {payment_hash} unreadable: {e}", level="info")
            return reject
        params = OpeningFeeParams.from_json(rec["opening_fee_params"])
        if rec["payment_size_msat"] is not None:
            fee, total = int(rec["opening_fee_msat"]), int(rec["payment_size_msat"]) - int(rec["opening_fee_msat"])
        else:
            fee = opening_fee(onion_msat, params.min_fee_msat, params.proportional) or 0
            total = htlc_msat
        data = tlv.get(payload, tlv.PAYMENT_DATA)
        with self._lock:
            so_far = self._extra.get(payment_hash, 0) + extra
            if not part_ok(htlc_msat, onion_msat, extra) or so_far > fee or data is None or len(data) < 32:
                self.log(f"lsps2: part of {payment_hash} breaks the agreed fee: {htlc_msat} msat arrived, onion "
                         f"{onion_msat}, extra_fee {extra}, {so_far} of {fee} deducted", level="info")
                return reject
            self._extra[payment_hash] = so_far
            incoming = htlc.get("short_channel_id")
            if incoming and rec.get("channel_scid") != incoming:  # the JIT channel: it migrates (client/migration.py)
                rec.update(channel_scid=str(incoming), channel_height=height)
                self.store.put_doc(DOC_PREFIX + payment_hash, rec)
        payload = tlv.replace(payload, tlv.AMT_TO_FORWARD, tlv.tu64(htlc_msat))
        payload = tlv.replace(payload, tlv.PAYMENT_DATA, data[:32] + tlv.tu64(total))
        answer: dict[str, Any] = {"result": "continue", "payload": tlv.serialize_stream(payload).hex()}
        if rec["payment_size_msat"] is not None:
            answer["invoice_msat"] = total
        self.log(f"lsps2: part of {payment_hash}: {htlc_msat} msat (extra_fee {extra}), invoice expects {total}")
        return answer
