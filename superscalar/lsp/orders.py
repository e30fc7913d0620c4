"""The LSP's LSPS1 (bLIP-51) service: orders for inbound capacity, paid over Lightning with a hold
invoice, filled by a channel in the client's next laddered factory.

- `lsps1.create_order` validates (protocol/lsps1.py), makes the LSP's invoice (lightningd `invoice`,
  amount order_total_sat, final CLTV long enough to hold the HTLCs until a factory forms) and records
  the order. The payment option's `expires_at` is PAYMENT_WINDOW_SECONDS away: HTLCs arriving later
  are failed. The invoice's own expiry is that plus the longest hold, so that lightningd still
  settles a payment held until its factory is published. A rejected request makes no invoice and
  records nothing.
- The invoice is a HOLD invoice (bLIP-51 §3.1): the `htlc_accepted` hook hands us every HTLC paying an
  order's hash and we do not answer it. Once held parts sum to order_total_sat the payment is HOLD and
  the client is queued in the ladder (`Ladder.add_more`) with inbound = lsp_balance_sat and balance =
  client_balance_sat (the client's balance in its new channel is what it paid for it, on top of the
  fee). The ladder's batching starts the factory by itself.
- A client that gave a `refund_onchain_address` is also offered bLIP-51 §3.3's on-chain payment: a
  fresh address of lightningd's wallet, open ONCHAIN_WINDOW_SECONDS. Each block the wallet's outputs
  to open orders' addresses are read (`listfunds`); order_total_sat there at
  `min_onchain_payment_confirmations` (the plugin's confirmation depth, at least 1: no zero-conf
  payment is taken) makes the order paid, its invoice cancelled, and the client queued (or, for a
  plain wallet, its channel opened once it is connected) exactly as for a held payment. Whatever the
  order does not keep (its payment once it FAILED, a partial, late or second payment) is sent back
  to the refund address, less the refund's fee at lightningd's "normal" rate; a refund unconfirmed
  after REFUND_BUMP_BLOCKS (6 hours) is sent again from the same outputs at twice the rate.
- When the factory that includes the order is published (its root funding transaction broadcast),
  the order is COMPLETED with the leaf channel's funding outpoint and the factory's expiry, and the
  held HTLCs are released ("continue": lightningd settles its invoice, payment PAID).
- An order that cannot be filled as promised (its factory not published by paid height +
  funding_confirms_within_blocks - 1, or FAIL_MARGIN_BLOCKS before the earliest held part's CLTV
  expiry, whichever comes first) is FAILED: its ladder entry is withdrawn and its HTLCs failed
  back, which is the Lightning refund (REFUNDED). An order never paid is FAILED/REFUNDED once its
  invoice expired (a cancelled invoice is REFUNDED, bLIP-51 §3.1).

Orders are one datastore document each (`lsps1-order-<order_id>`), cached in memory. Held HTLCs live
in memory only: after a restart lightningd replays every unresolved HTLC through the hook, which
rebuilds them.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional

from ..factory.params import FactoryParams
from ..cln.node import ClnNode
from ..protocol.lsps0 import LspsError, check_params
from ..protocol.lsps1 import (CLIENT_REJECTED, CREATED, EXPECT_PAYMENT, HOLD, NOT_FOUND, PAID, Channel,
                              Onchain, Options, Order, Refund, parse_get_order, validate)
from ..cln.store import Store
from .ladder import Ladder

DOC_PREFIX = "lsps1-order-"
PAYMENT_WINDOW_SECONDS = 3600  # how long the invoice (the bolt11 payment option) can be paid
FAIL_MARGIN_BLOCKS = 6  # fail held HTLCs this long before their CLTV expiry ("shortly before it times out")
HOLD_EXTRA_BLOCKS = 24  # final CLTV beyond the ladder's wait bound: the ceremony, the margin above
BLOCK_SECONDS = 600  # to turn heights into the spec's datetimes (an estimate, as any such date is)
MAX_UNPAID_PER_PEER = 5  # orders awaiting payment at once per peer: each is an invoice and a record
ONCHAIN_WINDOW_SECONDS = 24 * 3600  # how long the on-chain payment option can be paid
REFUND_BUMP_BLOCKS = 36  # bLIP-51 §3.3: "bump the fee in case the transaction doesn't resolve within 6 hours"
WATCH_ADDRESSES_SECONDS = 30 * 24 * 3600  # an order's address is watched this long for coins to send back
REFUND_WEIGHT = 4 * 150  # a refund paid from the wallet: an input or two, the refund, our change

Answer = Callable[[dict[str, Any]], None]  # answers one htlc_accepted hook call
CONTINUE: dict[str, Any] = {"result": "continue"}
FAIL: dict[str, Any] = {"result": "fail", "failure_message": "400f"}  # incorrect_or_unknown_payment_details


@dataclass(frozen=True)
class HeldPart:
    amount_msat: int
    cltv_expiry: int
    answer: Answer


class Orders:
    def __init__(self, node: ClnNode, store: Store, options: Options, ladder: Ladder, final_cltv: int,
                 log: Callable[..., None], clock: Callable[[], float] = time.time,
                 spoke: Callable[[str], bool] = lambda peer: True,
                 sell: Optional[Callable[[str, int], Optional[dict[str, Any]]]] = None,
                 onchain_confirmations: int = 0,
                 state_changed: Callable[[str, str, str], None] = lambda peer, order_id, state: None) -> None:
        """`onchain_confirmations`: offer on-chain payment, counted at that many confirmations (0: not
        offered). `state_changed(peer, order_id, order_state)`: an order was filled or failed (LSPS5
        tells a sleeping client)."""
        self.state_changed = state_changed
        self.node, self.store, self.options, self.ladder = node, store, options, ladder
        self.onchain_confirmations = onchain_confirmations
        # an L-stock sale in one of the client's factories (lsp/inbound.py): the sale's result, or None
        self.sell = sell
        self.spoke = spoke  # has the peer spoken SuperScalar on this connection (lsp/onboarding.py)
        self.final_cltv = final_cltv
        self.log = log
        self.clock = clock
        self._lock = threading.RLock()
        self._orders: dict[str, Order] = {}
        self._by_hash: dict[str, str] = {}
        self._held: dict[str, list[HeldPart]] = {}  # payment hash → parts not answered yet
        self._opening: set[str] = set()  # plain orders whose channel is being opened
        for name in store.doc_names(DOC_PREFIX):
            doc = store.get_doc(name)
            if doc is not None:
                order = Order.from_record(doc)
                self._orders[order.order_id] = order
                self._by_hash[order.payment_hash] = order.order_id

    # --- LSPS1 methods (run in the custommsg hook: quick, no waiting on peers) ---

    def get_info(self, peer: str, params: dict[str, Any]) -> dict[str, Any]:
        check_params(params, ())
        return self.options.to_json()

    def create_order(self, peer: str, params: dict[str, Any]) -> dict[str, Any]:
        # A peer that does not run SuperScalar (it did not say so on this connection) cannot join a
        # factory, and could stall the creation ceremony of every client in its batch: it is served an
        # ordinary channel from our wallet instead, announced if it asks.
        plain = not self.spoke(peer)
        # raises the spec's errors: nothing made yet
        req = validate(params, self.options, announce_ok=plain, network=self.node.network)
        with self._lock:
            unpaid = sum(1 for o in self._orders.values() if o.peer_id == peer and o.order_state == CREATED
                         and o.payment_state == EXPECT_PAYMENT and self.clock() <= o.expired_unpaid)
        if unpaid >= MAX_UNPAID_PER_PEER:  # peer input is bounded per peer
            raise LspsError(CLIENT_REJECTED, "Client rejected",
                            {"message": f"{unpaid} orders of this client await payment: pay or let them expire"})
        order_id = str(uuid.uuid4())
        fee = self.options.fee_sat(req.lsp_balance_sat)
        now = self.clock()
        invoice = self.node.rpc.call("invoice", {
            "amount_msat": (fee + req.client_balance_sat) * 1000,
            "label": f"lsps1-{order_id}",
            "description": f"LSPS1 order {order_id}: {req.lsp_balance_sat} sat inbound"
                           + ("" if plain else " in a SuperScalar factory"),
            # the invoice outlives the payment window by the longest hold, so that lightningd still
            # settles it when the HTLCs are released; a payment after the window is failed by us
            "expiry": PAYMENT_WINDOW_SECONDS + self.final_cltv * BLOCK_SECONDS,
            "cltv": self.final_cltv,
        })
        onchain = None
        if req.refund_onchain_address is not None and self.onchain_confirmations > 0:
            # LDK writes absent optionals as null and cannot read an on-chain option without
            # min_fee_for_0conf (see protocol/lsps1.py NO_ZERO_CONF_FEE)
            onchain = Onchain(self.node.new_address(), req.refund_onchain_address, now + ONCHAIN_WINDOW_SECONDS,
                              self.onchain_confirmations,
                              write_zero_conf_fee=any(v is None for v in params.values()))
        order = Order(order_id, peer, req, now, now + PAYMENT_WINDOW_SECONDS, fee, str(invoice["bolt11"]),
                      str(invoice["payment_hash"]), plain=plain, onchain=onchain)
        with self._lock:
            self._save(order)
            self._by_hash[order.payment_hash] = order_id
        self.log(f"LSPS1: order {order_id} from {peer}: {req.lsp_balance_sat} sat inbound, "
                 f"{req.client_balance_sat} sat balance, fee {fee} sat")
        return order.to_json()

    def get_order(self, peer: str, params: dict[str, Any]) -> dict[str, Any]:
        order_id = parse_get_order(params)
        with self._lock:
            order = self._orders.get(order_id)
        if order is None or order.peer_id != peer:  # another peer's order is not found, for this peer
            raise LspsError(NOT_FOUND, "Not found", {})
        return order.to_json()

    def order(self, order_id: str) -> Optional[Order]:
        with self._lock:
            return self._orders.get(order_id)

    def list(self) -> list[Order]:
        with self._lock:
            return sorted(self._orders.values(), key=lambda o: o.created_at)

    # --- the hold invoice (htlc_accepted) ---

    def on_htlc(self, payment_hash: str, amount_msat: int, cltv_expiry: int, answer: Answer) -> bool:
        """Take an HTLC paying an order's invoice (True), answering it now or later; False if it pays
        no order."""
        with self._lock:
            order_id = self._by_hash.get(payment_hash)
            if order_id is None:
                return False
            order = self._orders[order_id]
            height = self.node.blockheight()
            if order.order_state != CREATED or order.payment_state not in (EXPECT_PAYMENT, HOLD):
                # a replay after a restart, or a late part, or an order paid on chain meanwhile
                answer(CONTINUE if order.payment_state == PAID else FAIL)
                return True
            if order.payment_state == EXPECT_PAYMENT and self.clock() > order.expires_at:
                self._fail(order, "the invoice expired before it was paid")
                answer(FAIL)
                return True
            if cltv_expiry - FAIL_MARGIN_BLOCKS <= height:
                answer(FAIL)  # this part could not be held: the payer retries or the order expires
                return True
            parts = self._held.setdefault(payment_hash, [])
            parts.append(HeldPart(amount_msat, cltv_expiry, answer))
            self.log(f"LSPS1: holding an HTLC of {amount_msat} msat for order {order_id} (expiry {cltv_expiry})",
                     level="debug")
            if order.payment_state == EXPECT_PAYMENT and sum(p.amount_msat for p in parts) >= order.order_total_sat * 1000:
                order = order.held(height)
                self._save(order)
                self._serve(order)
            return True

    def _serve(self, order: Order) -> None:
        """A paid order (HTLCs held, or paid on chain): open, sell or queue its channel."""
        if order.plain:
            if self.node.connected(order.peer_id):  # bLIP-51 §4.1: "MUST wait for a peer connection"
                self._opening.add(order.order_id)
                threading.Thread(target=self._open_plain, args=(order,), name="superscalar-lsps1-open",
                                 daemon=True).start()
        elif self.sell is not None and order.request.client_balance_sat == 0:
            # a client already in a factory of ours may be served at once out of its leaf's L-stock
            threading.Thread(target=self._sell_or_queue, args=(order,), name="superscalar-lsps1-sale",
                             daemon=True).start()
        else:
            self._queue(order)

    def _queue(self, order: Order) -> None:
        self.ladder.add_more(order.peer_id, order.request.client_balance_sat, order.request.lsp_balance_sat,
                             order.order_id)
        self.log(f"LSPS1: order {order.order_id} paid (HTLCs held); {order.peer_id} queued for the next factory")

    def _sell_or_queue(self, order: Order) -> None:
        """Fill a paid order at once by a liquidity sale (a channel of lsp_balance_sat, no push: so only
        orders with no client balance), else queue it for the next factory as usual."""
        assert self.sell is not None
        try:
            sale = self.sell(order.peer_id, order.request.lsp_balance_sat)
        except Exception as e:
            self.log(f"LSPS1: order {order.order_id}: no sale ({e!r})", level="info")
            sale = None
        with self._lock:
            order = self._orders[order.order_id]
            if not order.paid:
                return
            if sale is None:
                self._queue(order)
                return
            record = self.store.get(str(sale["factory_id"]), "factory") or {}
            params = FactoryParams.deserialize(str(record["params"]).encode())
            now, height = self.clock(), self.node.blockheight()
            order = order.filled(Channel(now, str(sale["funding_outpoint"]),
                                         now + max(0, params.expiry_height - height) * BLOCK_SECONDS,
                                         str(sale["factory_id"])))
            self._save(order)
            for part in self._held.pop(order.payment_hash, []):
                part.answer(CONTINUE)
            self.log(f"LSPS1: order {order.order_id} completed at once by sale {sale['sale_txid']} in factory "
                     f"{sale['factory_id']}, channel {sale['funding_outpoint']}")

    def _open_plain(self, order: Order) -> None:
        """A paid order of a wallet that cannot join a factory: an ordinary channel from our wallet, of
        lsp_balance_sat + client_balance_sat with client_balance_sat pushed (bLIP-51 §4.1), announced as
        asked, zero-conf when no confirmation is required (no anchors: the wallet may own no coin, see
        lsp/jit.py). The held HTLCs are released once its funding is broadcast; an open that fails
        refunds them."""
        req = order.request
        zero_conf = req.required_channel_confirmations == 0
        params: dict[str, Any] = {"id": order.peer_id, "amount": req.lsp_balance_sat + req.client_balance_sat,
                                  "push_msat": req.client_balance_sat * 1000, "announce": req.announce_channel}
        if zero_conf:
            params["mindepth"] = 0
        if not req.announce_channel:  # scid_alias only on unannounced channels
            params["channel_type"] = [12, 46, 50] if zero_conf else [12, 46]
        try:
            opened = self.node.rpc.call("fundchannel", params)
        except Exception as e:
            with self._lock:
                self._opening.discard(order.order_id)
                order = self._orders[order.order_id]
                if order.paid:
                    self._fail(order, f"the channel could not be opened: {e}")
            return
        with self._lock:
            self._opening.discard(order.order_id)
            order = self._orders[order.order_id]
            if not order.paid:  # failed meanwhile: refunded
                self.log(f"LSPS1: order {order.order_id} was {order.order_state} when its channel "
                         f"{opened.get('channel_id')} opened", level="unusual")
                return
            now = self.clock()
            order = order.filled(Channel(now, f"{opened['txid']}:{opened['outnum']}",
                                         now + req.channel_expiry_blocks * BLOCK_SECONDS, ""))
            self._save(order)
            for part in self._held.pop(order.payment_hash, []):
                part.answer(CONTINUE)
        self.log(f"LSPS1: order {order.order_id} completed by channel {opened.get('channel_id')} "
                 f"({opened['txid']}:{opened['outnum']}) from our wallet")

    # --- filling and failing ---

    def reconcile(self, *_: Any) -> None:
        """Fill every held order whose factory the ladder started and published."""
        filled = self.ladder.state().get("filled_orders", {})
        with self._lock:
            for factory_id, order_ids in filled.items():
                waiting = [self._orders[o] for o in order_ids if o in self._orders and self._orders[o].paid]
                if not waiting:
                    continue
                record = self.store.get(factory_id, "factory")
                if record is None or record.get("stage") != "funded":
                    continue
                params = FactoryParams.deserialize(record["params"].encode())
                now, height = self.clock(), self.node.blockheight()
                for order in waiting:
                    leaf = next((c for c in record["channels"] if c["peer_id"] == order.peer_id), None)
                    if leaf is None:
                        continue
                    channel = Channel(now, leaf["funding_outpoint"],
                                      now + max(0, params.expiry_height - height) * BLOCK_SECONDS, factory_id)
                    order = order.filled(channel)
                    self._save(order)
                    for part in self._held.pop(order.payment_hash, []):
                        part.answer(CONTINUE)
                    self.log(f"LSPS1: order {order.order_id} completed by factory {factory_id}, channel "
                             f"{leaf['funding_outpoint']}")

    def on_block(self, height: int) -> None:
        """Per block: take on-chain payments, fill what a published factory filled, fail what can no
        longer be filled, send back what an order does not keep."""
        received = self._received(height)
        self._take_onchain(height, received)
        self.reconcile()
        now = self.clock()
        in_factories = {o for ids in self.ladder.state().get("filled_orders", {}).values() for o in ids}
        with self._lock:
            for order in [o for o in self._orders.values() if o.order_state == CREATED]:
                if order.payment_state == EXPECT_PAYMENT and not order.paid and now > order.expired_unpaid:
                    self._fail(order, "no payment option was paid before it expired")
                elif order.paid and order.order_id not in in_factories and order.order_id not in self._opening:
                    if order.plain:
                        self._serve(order)  # paid on chain while the wallet was away: open once it is back
                    why = self._too_late(order, height)
                    if why is not None:
                        self.ladder.withdraw(order.peer_id, order.request.client_balance_sat,
                                             order.request.lsp_balance_sat, order.order_id)
                        self._fail(order, why)

        self._refund(height, received)

    # --- on-chain payment (bLIP-51 §3.3) ---

    def _watched(self) -> tuple[Order, ...]:
        """Orders whose address may still receive coins we must act on."""
        since = self.clock() - WATCH_ADDRESSES_SECONDS
        with self._lock:
            return tuple(o for o in self._orders.values() if o.onchain is not None and o.created_at >= since)

    def _received(self, height: int) -> dict[str, dict[str, int]]:
        """Per order: its address's outputs with at least its confirmations (txid:vout → sat)."""
        watched = self._watched()
        if not watched:
            return {}
        by_address = {o.onchain.address: o for o in watched if o.onchain is not None}
        got: dict[str, dict[str, int]] = {}
        for out in self.node.wallet_outputs(frozenset(by_address)):
            order = by_address[out["address"]]
            assert order.onchain is not None
            if out["height"] is not None and height - out["height"] + 1 >= order.onchain.confirmations:
                got.setdefault(order.order_id, {})[out["outpoint"]] = out["sat"]
        return got

    def _take_onchain(self, height: int, received: dict[str, dict[str, int]]) -> None:
        """An order whose address holds order_total_sat, confirmed, while its option is open, is paid."""
        now = self.clock()
        with self._lock:
            for order_id, outputs in received.items():
                order = self._orders[order_id]
                if (order.onchain is None or order.order_state != CREATED or order.payment_state != EXPECT_PAYMENT
                        or order.onchain.state != EXPECT_PAYMENT or now > order.onchain.expires_at):
                    continue
                paid = sum(outputs.values())
                if paid < order.order_total_sat:
                    continue
                self._held.pop(order.payment_hash, None)  # none: the invoice was not paid
                order = order.paid_onchain(height, paid, tuple(sorted(outputs)))
                self._save(order)
                self._cancel_invoice(order)
                self.log(f"LSPS1: order {order_id} paid on chain: {paid} sat in {len(outputs)} outputs")
                self._serve(order)

    def _refund(self, height: int, received: dict[str, dict[str, int]]) -> None:
        """Send back what no order keeps; send again, at twice the rate, a refund stuck for 6 hours."""
        for order in self._watched():
            assert order.onchain is not None
            for unsent in [r for r in order.onchain.refunds if r.unsent_psbt]:  # recorded, then a crash
                self._publish(order, unsent)
            outputs = received.get(order.order_id, {})
            open_option = (order.order_state == CREATED and order.onchain.state == EXPECT_PAYMENT
                           and order.payment_state == EXPECT_PAYMENT and self.clock() <= order.onchain.expires_at)
            utxos = () if open_option else order.to_refund(outputs)  # a partial payment may still grow
            if utxos:
                self._send_refund(order, utxos, height, "normal")
            stuck = [r for r in order.onchain.refunds
                     if r.txid and r.feerate_perkw and height >= r.height + REFUND_BUMP_BLOCKS]
            if stuck:
                spent = self.node.spent_outputs()
                for refund in stuck:
                    if not set(refund.utxos) <= spent:
                        self._send_refund(order, refund.utxos, height, f"{2 * refund.feerate_perkw}perkw")

    def _send_refund(self, order: Order, utxos: tuple[str, ...], height: int, feerate: str) -> None:
        """Sweep `utxos` (the coins that came to the order's address) to its refund address. If our
        wallet already spent them (its coin selection took them), the same sum less a fee is paid from
        the wallet at the "urgent" rate instead; such a refund is not bumped (its inputs are the
        wallet's, not the client's)."""
        assert order.onchain is not None
        address = order.onchain.refund_address
        refund: Optional[Refund] = None
        try:
            sent = self.node.sweep(utxos, address, feerate)
            refund = Refund(utxos, "", height, 0) if sent is None else Refund(utxos, sent[0], height, sent[1])
        except Exception as e:
            if feerate != "normal":  # a bump that failed: try again next block
                self.log(f"LSPS1: order {order.order_id}: cannot bump the refund of {list(utxos)}: {e!r}",
                         level="unusual")
                return
            try:
                total = sum(o["sat"] for o in self.node.wallet_outputs(frozenset({order.onchain.address}))
                            if o["outpoint"] in utxos)
                fee = -(-self.node.feerate_perkw(2) * REFUND_WEIGHT // 1000)
                if total - fee < 546:
                    refund = Refund(utxos, "", height, 0)
                else:  # recorded signed before it is sent (see Refund.unsent_psbt)
                    txid, signed = self.node.prepare_payout(address, total - fee, "urgent")
                    refund = Refund(utxos, txid, height, 0, signed)
            except Exception as e2:
                self.log(f"LSPS1: order {order.order_id}: cannot send back {list(utxos)} to {address}: "
                         f"{e!r}, then {e2!r}", level="unusual")
                return
        with self._lock:
            order = self._orders[order.order_id].refund_sent(refund)
            self._save(order)
        if refund.unsent_psbt:
            self._publish(order, refund)
        if refund.txid:
            self.log(f"LSPS1: order {order.order_id}: refund {refund.txid} of {list(utxos)} to {address}", level="info")
        else:
            self.log(f"LSPS1: order {order.order_id}: {list(utxos)} are dust after a refund's fee: kept", level="info")

    def _publish(self, order: Order, refund: Refund) -> None:
        """Send a refund recorded signed (from our wallet), and note it sent. It is sent again at the
        next block until bitcoind took it or lightningd's wallet shows it (already sent before a crash)."""
        try:
            self.node.send_signed(refund.unsent_psbt)
        except Exception as e:
            if refund.txid not in self.node.wallet_txids():
                self.log(f"LSPS1: order {order.order_id}: refund {refund.txid} not sent yet: {e!r}", level="unusual")
                return
        with self._lock:
            order = self._orders[order.order_id].refund_sent(replace(refund, unsent_psbt=""))
            self._save(order)

    def _too_late(self, order: Order, height: int) -> Optional[str]:
        """Why a held order not in any factory yet can no longer be filled as promised, or None.
        Its funding must be published by paid_height + funding_confirms_within_blocks - 1 to confirm
        within the blocks the client asked for; its HTLCs must be failed before they time out."""
        assert order.paid_height is not None
        if height >= order.paid_height + order.request.funding_confirms_within_blocks - 1:
            return ("its channel could not be opened" if order.plain else "no factory took the client") + \
                " within funding_confirms_within_blocks"
        parts = self._held.get(order.payment_hash, [])
        if parts and height >= min(p.cltv_expiry for p in parts) - FAIL_MARGIN_BLOCKS:
            return "no factory took the client before its payment would time out"
        return None

    def _fail(self, order: Order, why: str) -> None:
        order = order.failed(why)
        self._save(order)
        for part in self._held.pop(order.payment_hash, []):
            part.answer(FAIL)
        self._cancel_invoice(order)
        refund = "refunded" if order.onchain is None or order.onchain.state != PAID else "its on-chain payment is sent back"
        self.log(f"LSPS1: order {order.order_id} failed ({why}); {refund}", level="info")

    def _cancel_invoice(self, order: Order) -> None:
        """Its HTLCs were failed back, or none came, or it was paid on chain."""
        for status in ("unpaid", "expired"):
            try:
                self.node.rpc.call("delinvoice", {"label": f"lsps1-{order.order_id}", "status": status})
                break
            except Exception:
                continue

    def _save(self, order: Order) -> None:
        self.store.put_doc(DOC_PREFIX + order.order_id, order.to_record())
        before = self._orders.get(order.order_id)
        self._orders[order.order_id] = order
        if before is not None and before.order_state != order.order_state:
            try:
                self.state_changed(order.peer_id, order.order_id, order.order_state)
            except Exception as e:
                self.log(f"LSPS1: telling {order.peer_id} of order {order.order_id}: {e!r}", level="info")
