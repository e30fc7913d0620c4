"""The LSP's LSPS2 service (bLIP-52): `lsps2.get_info` and `lsps2.buy` over LSPS0, and the
`htlc_accepted` flow of a JIT channel.

A buy gets a JIT scid (block height at least `JIT_SCID_MIN_BLOCK`, so it can never name a real
channel; random, unique per buy) and a durable record (a `Store` document named after the promise's
digest: a promise buys once, a replay is `invalid_opening_fee_params`). An HTLC whose onion names a JIT
scid is held (the hook answers later): in MPP+fixed-invoice mode until its parts sum to
`payment_size_msat` (at most `MPP_HOLD_SECONDS` from the first part, then temporary_channel_failure; and
never past `valid_until`, then unknown_next_peer), in no-MPP+var-invoice mode the single part. Then a
channel is got for the client through `open_for(peer_id, capacity_sat) -> channel_id` (this module's
`wallet_channel` by default: a zero-conf, unannounced, scid-alias channel from the LSP's wallet; a
factory L-stock sale can be put in front of it), and each held part is forwarded over it minus its
share of the opening fee (bLIP-52's algorithm, with the bLIP-25 `extra_fee` TLV), by answering the hook
with a replaced `payload`, `forward_to` and `extra_tlvs`. The record keeps the channel, so a later
rollover can migrate it into the client's next factory.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from ..cln.node import ClnNode, msat
from ..protocol import tlv
from ..protocol.lsps0 import LspsError, check_params, format_scid, parse_iso8601
from ..protocol.lsps2 import (INVALID_OPENING_FEE_PARAMS, MPP_HOLD_SECONDS, PAYMENT_SIZE_TOO_LARGE,
                              TEMPORARY_CHANNEL_FAILURE, UNKNOWN_NEXT_PEER, UNRECOGNIZED_OR_STALE_TOKEN, FeeTerms,
                              OpeningFeeParams, buy_result, check_buy, forward_plan, menu, variable_fee)
from ..cln.store import DOCS, Store

DOC_PREFIX = "lsps2-buy-"
JIT_SCID_MIN_BLOCK = 0xC00000  # 12 582 912: no real channel's block for two centuries
# BOLT-2 channel_type bits: option_static_remotekey, option_scid_alias, option_zeroconf; no anchors.
# A JIT wallet starts with no coin: ldk-node refuses an inbound anchor channel whose anchor reserve its
# on-chain balance cannot cover (unless it trusts the LSP), and Core Lightning's own LSP opens this type
# too (cln-lsps cln_adapters/rpc.rs). The cost, on the LSP (the funder pays the commitment fee): its
# commitment's fee is fixed by update_fee while both are online, with no CPFP through anchors, so a
# force close in a fee spike can wait; the client's to_remote output (static_remotekey) needs no
# action of its own. docs/lsps-interop.md.
JIT_CHANNEL_TYPE = [12, 46, 50]
# bLIP-52 §4 (no-MPP): `opening_fee + htlc_minimum_msat <= htlc_value_msat` is checked before the open,
# when the client's htlc_minimum_msat (its accept_channel) is not known yet: 1 msat, LDK's default
# (ChannelHandshakeConfig::our_htlc_minimum_msat) and above Core Lightning's (0). Once the channel is
# open, its real minimum is checked again by forward_plan.
PREOPEN_HTLC_MINIMUM_MSAT = 1
CHANNEL_READY_SECONDS = 60.0  # how long a new channel may take to reach CHANNELD_NORMAL
# BOLT-4 failure messages: an UPDATE failure's channel_update may be left empty (u16 length 0)
FAIL_TEMPORARY = f"{TEMPORARY_CHANNEL_FAILURE:04x}0000"
FAIL_UNKNOWN_NEXT_PEER = f"{UNKNOWN_NEXT_PEER:04x}"

Answer = Callable[[dict[str, Any]], None]
OpenFor = Callable[[str, int], str]
Shortfall = Callable[[int, int], Optional[str]]
Log = Callable[..., None]


def channel_capacity_sat(forward_msat: int) -> int:
    """The channel size for forwarding `forward_msat` to the client ("5. Channel Opening": large enough
    for `payment_size_msat - opening_fee` plus the LSP's reserve): the amount, 1 % for the client's
    reserve on the LSP, and 50 000 sat for the commitment fee and HTLC outputs the LSP pays."""
    need = -(-forward_msat // 1000)
    return need + need // 100 + 50_000


def wallet_channel(node: ClnNode) -> OpenFor:
    """`open_for` from the LSP's on-chain wallet: `fundchannel`, zero-conf, unannounced, scid alias."""
    def open_for(peer_id: str, capacity_sat: int) -> str:
        res = node.rpc.call("fundchannel", {"id": peer_id, "amount": capacity_sat, "announce": False,
                                            "mindepth": 0, "channel_type": JIT_CHANNEL_TYPE})
        return str(res["channel_id"])
    return open_for


def liquidity_shortfall(node: ClnNode) -> Shortfall:
    """"2. Request JIT Channel": the LSP SHOULD check it can receive `payment_size_msat` from the public
    network (its announced channels in CHANNELD_NORMAL), and this one also that its wallet can fund the
    channel. Returns why not, or None."""
    def shortfall(payment_size_msat: int, fee_msat: int) -> Optional[str]:
        inbound = sum(msat(c.get("receivable_msat", 0))
                      for c in node.peer_channels_fields(("state", "receivable_msat", "private"))
                      if c.get("state") == "CHANNELD_NORMAL" and c.get("private") is False)
        if inbound < payment_size_msat:
            return f"the LSP can receive {inbound} msat from the public network"
        need, wallet = channel_capacity_sat(payment_size_msat - fee_msat), node.spendable_wallet_sat()
        if wallet < need:
            return f"the LSP's wallet holds {wallet} sat, the channel needs {need}"
        return None
    return shortfall


@dataclass
class _Part:
    htlc_id: int
    forward_msat: int  # the onion's amt_to_forward
    payload: tlv.Stream  # the onion hop payload
    extra_tlvs: tlv.Stream  # the incoming update_add_htlc's TLVs
    answer: Answer


@dataclass
class _Held:
    """Parts of one payment (one payment hash) to one JIT scid, waiting for their sum."""

    scid: str
    payment_hash: str
    first_arrival: float
    parts: list[_Part] = field(default_factory=list)
    timer: Optional[threading.Timer] = None
    done: bool = False


class JitService:
    def __init__(self, node: ClnNode, store: Store, key: bytes, terms: Sequence[FeeTerms], cltv_expiry_delta: int,
                 log: Log, open_for: OpenFor, clock: Callable[[], float] = time.time,
                 shortfall: Shortfall = lambda size, fee: None, wake: Callable[[str], int] = lambda peer: 0,
                 wakeable: Callable[[str], bool] = lambda peer: False, wake_seconds: float = 60.0) -> None:
        menu(key, terms, 0)  # a misordered configuration fails at start, not at the first client
        self.node, self.store, self.key, self.terms, self.shortfall = node, store, key, tuple(terms), shortfall
        self.cltv_expiry_delta, self.log, self.open_for, self.clock = cltv_expiry_delta, log, open_for, clock
        # LSPS5: a sleeping client with a webhook (`wakeable`) is told of the payment (lsp/webhooks.py
        # `notify`), and its channel opened once it wakes, within `wake_seconds`
        self.wake, self.wakeable, self.wake_seconds = wake, wakeable, wake_seconds
        self._lock = threading.Lock()
        self._buys: dict[str, tuple[str, dict[str, Any]]] = {}  # JIT scid → (document name, record)
        self._held: dict[tuple[str, str], _Held] = {}

    def load(self) -> None:
        """Every buy recorded (at start)."""
        for key in self.node.datastore_list(DOCS):
            if len(key) == 3 and key[2].startswith(DOC_PREFIX):
                rec = self.store.get_doc(key[2])
                if rec is not None:
                    if rec["state"] == "opening":  # stopped mid-open: lightningd replays the held HTLCs
                        rec["state"] = "waiting"
                    self._buys[str(rec["jit_channel_scid"])] = (key[2], rec)

    # --- LSPS2 methods (inside the custommsg hook: quick) ---

    def get_info(self, peer_id: str, params: dict[str, Any]) -> dict[str, Any]:
        check_params(params, (), ("token",))
        # This LSP issues no tokens: any token is unrecognised. LDK writes an absent token as null
        # (lightning-liquidity lsps2/msgs.rs LSPS2GetInfoRequest: `token: Option<String>`, no skip).
        if params.get("token") is not None:
            raise LspsError(UNRECOGNIZED_OR_STALE_TOKEN, "unrecognized_or_stale_token")
        return {"opening_fee_params_menu": [p.to_json() for p in menu(self.key, self.terms, self.clock())]}

    def buy(self, peer_id: str, params: dict[str, Any]) -> dict[str, Any]:
        buy = check_buy(self.key, params, self.clock())
        if buy.payment_size_msat is not None and buy.opening_fee_msat is not None:
            short = self.shortfall(buy.payment_size_msat, buy.opening_fee_msat)
            if short is not None:
                raise LspsError(PAYMENT_SIZE_TOO_LARGE, f"payment_size_too_large: {short}")
        name = DOC_PREFIX + hashlib.sha256(buy.params.promise.encode()).hexdigest()[:32]
        with self._lock:
            if any(doc == name for doc, _ in self._buys.values()) or self.store.get_doc(name) is not None:
                raise LspsError(INVALID_OPENING_FEE_PARAMS, "invalid_opening_fee_params: this promise was bought already")
            scid = self._new_scid()
            rec: dict[str, Any] = {
                "jit_channel_scid": scid, "peer_id": peer_id, "opening_fee_params": buy.params.to_json(),
                "payment_size_msat": buy.payment_size_msat, "opening_fee_msat": buy.opening_fee_msat,
                "state": "waiting", "channel_id": None, "created": int(self.clock())}
            self.store.put_doc(name, rec)
            self._buys[scid] = (name, rec)
        self.log(f"lsps2.buy from {peer_id}: JIT scid {scid}, payment_size_msat {buy.payment_size_msat}, "
                 f"opening fee {buy.opening_fee_msat}")
        return buy_result(scid, self.cltv_expiry_delta)

    def _new_scid(self) -> str:
        while True:
            scid = format_scid((JIT_SCID_MIN_BLOCK + secrets.randbelow(0x1000000 - JIT_SCID_MIN_BLOCK)) << 40
                               | secrets.randbelow(1 << 24) << 16 | secrets.randbelow(1 << 16))
            if scid not in self._buys:
                return scid

    def buys(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(rec) for _, rec in self._buys.values()]

    def held_by(self, peer_id: str, is_factory_channel: Callable[[dict[str, Any]], bool]) -> int:
        """What `peer_id` holds (sat) in the JIT channels we opened it from our wallet (not on a factory
        sale) that are still open: the client moves it into its next factory channel with us
        (client/migration.py), so that channel is given this much more inbound."""
        ids = {b.get("channel_id") for b in self.buys() if b["peer_id"] == peer_id and b.get("state") == "open"}
        return sum((msat(ch["total_msat"]) - msat(ch["to_us_msat"])) // 1000 for ch in self.node.peer_channels(peer_id)
                   if ch.get("channel_id") in ids and ch.get("state") == "CHANNELD_NORMAL" and not is_factory_channel(ch))

    # --- htlc_accepted ---

    def on_htlc(self, onion: dict[str, Any], htlc: dict[str, Any], answer: Answer) -> bool:
        """Take an HTLC whose next hop is a JIT scid (True: `answer` will be called, now or later);
        False for any other HTLC."""
        scid = onion.get("short_channel_id")
        with self._lock:
            found = self._buys.get(str(scid)) if scid else None
        if found is None:
            return False
        name, rec = found
        params = OpeningFeeParams.from_json(rec["opening_fee_params"])
        now = self.clock()
        if not params.valid_at(now):
            self.log(f"JIT scid {scid}: HTLC after valid_until: unknown_next_peer", level="info")
            answer({"result": "fail", "failure_message": FAIL_UNKNOWN_NEXT_PEER})
            return True
        part = _Part(int(htlc["id"]), msat(onion["forward_msat"]), tlv.hop_payload(bytes.fromhex(onion["payload"])),
                     tlv.parse_stream(bytes.fromhex(htlc.get("extra_tlvs") or "")), answer)
        if rec["state"] == "waiting" and self._connected(str(rec["peer_id"])) is False:
            self.wake(str(rec["peer_id"]))  # a payment for a client that sleeps: its webhooks wake it
        if rec["state"] == "open" and rec.get("channel_id"):  # the JIT scid is an alias of the channel till valid_until
            answer({"result": "continue", "forward_to": rec["channel_id"]})
            return True
        if rec["state"] != "waiting":
            answer({"result": "fail", "failure_message": FAIL_TEMPORARY})
            return True
        if rec["payment_size_msat"] is None:
            fee = variable_fee(part.forward_msat, params, PREOPEN_HTLC_MINIMUM_MSAT)
            if fee is None:
                self.log(f"JIT scid {scid}: {part.forward_msat} msat cannot pay its opening fee", level="info")
                answer({"result": "fail", "failure_message": FAIL_UNKNOWN_NEXT_PEER})
                return True
            self._start_open(name, rec, [part], fee, part.forward_msat)
            return True
        self._hold(name, rec, str(htlc["payment_hash"]), part, params, now)
        return True

    def _hold(self, name: str, rec: dict[str, Any], payment_hash: str, part: _Part, params: OpeningFeeParams,
              now: float) -> None:
        scid = str(rec["jit_channel_scid"])
        with self._lock:
            held = self._held.get((scid, payment_hash))
            if held is None or held.done:
                held = _Held(scid, payment_hash, now)
                self._held[(scid, payment_hash)] = held
                until = parse_iso8601(params.valid_until)
                wait = min(MPP_HOLD_SECONDS, until - now)
                held.timer = threading.Timer(wait, self._expire, (held, now + MPP_HOLD_SECONDS >= until))
                held.timer.daemon = True
                held.timer.start()
            held.parts.append(part)
            total = sum(p.forward_msat for p in held.parts)
            complete = total >= int(rec["payment_size_msat"])
            if complete:
                held.done = True
                assert held.timer is not None
                held.timer.cancel()
                self._held.pop((scid, payment_hash), None)
        self.log(f"JIT scid {scid}: holding part {len(held.parts)} ({part.forward_msat} msat), "
                 f"{total} of {rec['payment_size_msat']} msat")
        if complete:
            self._start_open(name, rec, held.parts, int(rec["opening_fee_msat"]), total)

    def _expire(self, held: _Held, past_valid_until: bool) -> None:
        """"4. Payment": the parts did not sum up in time."""
        with self._lock:
            if held.done:
                return
            held.done = True
            self._held.pop((held.scid, held.payment_hash), None)
        failure = FAIL_UNKNOWN_NEXT_PEER if past_valid_until else FAIL_TEMPORARY
        self.log(f"JIT scid {held.scid}: {len(held.parts)} parts did not reach the payment size in time: "
                 f"failing them ({'unknown_next_peer' if past_valid_until else 'temporary_channel_failure'})",
                 level="info")
        for p in held.parts:
            p.answer({"result": "fail", "failure_message": failure})

    def _start_open(self, name: str, rec: dict[str, Any], parts: list[_Part], fee: int, total: int) -> None:
        """Nothing here may raise after parts are held: the thread answers every one of them."""
        with self._lock:
            rec["state"] = "opening"
        threading.Thread(target=self._open_and_forward, args=(name, rec, parts, fee, total),
                         name="superscalar-jit-open", daemon=True).start()

    def _await_wake(self, peer: str, scid: str) -> None:
        """A client not connected but woken by a webhook (LSPS5) gets `wake_seconds` to connect before
        the open is tried (the parts stay held meanwhile); one with no webhook is not waited for."""
        if self._connected(peer) is not False or not self.wakeable(peer):
            return
        self.log(f"JIT scid {scid}: waiting up to {self.wake_seconds:.0f} s for {peer} to wake", level="info")
        deadline = time.monotonic() + self.wake_seconds
        while time.monotonic() < deadline:
            if self._connected(peer):
                return
            time.sleep(0.25)

    def _close_quietly(self, channel_id: str) -> None:
        try:
            self.node.rpc.call("close", {"id": channel_id})
        except Exception as e:
            self.log(f"closing JIT channel {channel_id}: {e!r}", level="info")

    def _update(self, name: str, rec: dict[str, Any], **changes: Any) -> None:
        with self._lock:
            rec.update(changes)
            self.store.put_doc(name, rec)

    def _open_and_forward(self, name: str, rec: dict[str, Any], parts: list[_Part], fee: int, total: int) -> None:
        peer, scid = str(rec["peer_id"]), str(rec["jit_channel_scid"])
        opened = time.monotonic()
        try:
            self._update(name, rec, state="opening")
            self._await_wake(peer, scid)
            channel_id = self._reusable(peer, rec.get("channel_id")) or self.open_for(peer, channel_capacity_sat(total - fee))
            self._update(name, rec, channel_id=channel_id)
            channel = self._wait_ready(peer, channel_id)
            # "5. Channel Opening And Forwarding": the client's to_self_delay (imposed on our outputs)
            # is at most the agreed max_client_to_self_delay; lightningd cannot bound it before funding
            params = OpeningFeeParams.from_json(rec["opening_fee_params"])
            delay = int(channel.get("our_to_self_delay") or 0)
            if delay > params.max_client_to_self_delay:
                threading.Thread(target=self._close_quietly, args=(channel_id,), daemon=True).start()
                raise ValueError(f"the client set to_self_delay {delay} above the agreed "
                                 f"max_client_to_self_delay {params.max_client_to_self_delay}: channel closed")
            # the invoice's hint promised the payer a free hop: the parts forwarded verbatim pay no fee
            self.node.rpc.call("setchannel", {"id": channel_id, "feebase": 0, "feeppm": 0, "enforcedelay": 0})
            plan = forward_plan([p.forward_msat for p in parts], fee, msat(channel.get("minimum_htlc_out_msat", 0)))
        except Exception as e:  # the client rejected or vanished, the wallet is short: the payer may retry
            connected = self._connected(peer)
            self.log(f"JIT scid {scid}: no channel to {peer}: {e}", level="unusual")
            # "5. Channel Opening": a client gone before funding_signed is temporary_channel_failure, a
            # rejection unknown_next_peer; either way back to waiting for payment
            failure = FAIL_TEMPORARY if connected is False else FAIL_UNKNOWN_NEXT_PEER
            for p in parts:
                p.answer({"result": "fail", "failure_message": failure})
            try:
                self._update(name, rec, state="waiting")
            except Exception as e2:
                rec["state"] = "waiting"
                self.log(f"JIT scid {scid}: recording the failed open: {e2!r}", level="unusual")
            return
        funding = channel.get("funding_txid")
        try:
            self._update(name, rec, state="open", channel_id=channel_id, funding_txid=funding, opening_fee_charged_msat=fee,
                         forwarded_msat=[fwd for fwd, _ in plan], received_msat=total, opened_at=int(self.clock()))
        except Exception as e:  # the forwards go ahead: the channel is open and ready
            self.log(f"JIT scid {scid}: recording the open channel {channel_id}: {e!r}", level="unusual")
        self.log(f"JIT scid {scid}: channel {channel_id} to {peer} ready in {time.monotonic() - opened:.1f} s; "
                 f"forwarding {len(parts)} parts minus {fee} msat")
        for p, (forward, deducted) in zip(parts, plan):
            payload = tlv.serialize_stream(tlv.replace(p.payload, tlv.AMT_TO_FORWARD, tlv.tu64(forward)))
            result: dict[str, Any] = {"result": "continue", "payload": payload.hex(), "forward_to": channel_id}
            if deducted:
                result["extra_tlvs"] = tlv.serialize_stream(
                    tlv.replace(p.extra_tlvs, tlv.EXTRA_FEE, deducted.to_bytes(8, "big"))).hex()
            p.answer(result)
        threading.Thread(target=self._restore_fees, args=(channel_id,), name="superscalar-jit-fees", daemon=True).start()

    def _restore_fees(self, channel_id: str) -> None:
        """Once the JIT payment has left the channel, its fees become this node's defaults again."""
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            time.sleep(1)
            try:
                found = [c for c in self.node.peer_channels() if c.get("channel_id") == channel_id]
                if found and not found[0].get("htlcs"):
                    configs = self.node.rpc.call("listconfigs", {})["configs"]
                    self.node.rpc.call("setchannel", {"id": channel_id,
                                                      "feebase": configs["fee-base"]["value_int"],
                                                      "feeppm": configs["fee-per-satoshi"]["value_int"]})
                    return
            except Exception as e:
                self.log(f"JIT channel {channel_id}: restoring fees: {e!r}", level="info")
                return

    def _reusable(self, peer: str, channel_id: Optional[str]) -> Optional[str]:
        """The channel an earlier attempt of this buy opened (before a restart), if it is still open."""
        if channel_id is None:
            return None
        alive = ("CHANNELD_AWAITING_LOCKIN", "CHANNELD_NORMAL")
        return channel_id if any(c.get("channel_id") == channel_id and c.get("state") in alive
                                 for c in self.node.peer_channels(peer)) else None

    def _wait_ready(self, peer: str, channel_id: str) -> dict[str, Any]:
        """The channel once both sides sent channel_ready (CHANNELD_NORMAL): only then can it carry HTLCs."""
        deadline = time.monotonic() + CHANNEL_READY_SECONDS
        while True:
            for ch in self.node.peer_channels(peer):
                if ch.get("channel_id") == channel_id and ch.get("state") == "CHANNELD_NORMAL":
                    return ch
            if time.monotonic() > deadline:
                raise TimeoutError(f"channel {channel_id} not ready after {CHANNEL_READY_SECONDS:.0f} s")
            time.sleep(0.1)

    def _connected(self, peer: str) -> Optional[bool]:
        try:
            return any(p.get("connected") for p in self.node.rpc.call("listpeers", {"id": peer})["peers"])
        except Exception:
            return None
