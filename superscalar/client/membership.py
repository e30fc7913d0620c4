"""The client role: join factories of LSPs this node trusts, sign only what it checked, keep its exit.

An invitation is accepted only from an allowed LSP, for a factory id never seen before, with
timelines, fees and amounts inside this client's policy (checked against its own block height);
the client then answers with its factory key (from `makesecret`, labelled with the LSP and the
factory) and a payout script of its wallet, and expects exactly one zero-conf channel from that LSP
with the invited capacity and push. The ceremony's `Participant` checks the whole proposal; the
record an exit needs is written to the datastore before Done is sent. Afterwards the client watches
the chain for the funding output it signed over: if it does not confirm, as signed, within the
policy's funding timeout, the factory is marked unfunded and its channel closed.
A channel counts as part of the factory only once its funding outpoint is the client's leaf output.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ..crypto import musig2
from ..bitcoin.script import p2wsh_script
from ..bitcoin.tx import Tx
from ..chain.blocks import Blocks
from ..chain.exits import CLOSING_STATES
from ..factory.errors import FactoryError
from ..factory.graph import ExitPath
from ..factory.params import FactoryParams
from ..factory.spends import LEDGER_KEY, entries
from ..factory.tree import build_topology
from ..leaf_script import check_leaf_script, funding_wscript
from ..cln.node import ClnNode, msat
from ..protocol.ceremony import Action, Completed, Failed, Participant, Persist, Send
from ..protocol.rounds import Expectation, Kind
from ..protocol.wire import Abort, AbortCode, Accept, Invite, Message, Propose
from ..records import (AWAITING, CONFIRMED, MISMATCH, UNFUNDED, UNVERIFIED, VERIFIED, channel_in_factory,
                       client_exit_path, factory_key_label, funding_ok, leaf_status)
from ..cln.store import Store
from ..cln.transport import Transport
from .policy import ClientPolicy, refusal


@dataclass
class Invitation:
    lsp: str
    factory_id: bytes
    params: FactoryParams
    balance_sat: int
    inbound_sat: int
    seckey: bytes
    pubkey: bytes
    payout_script: bytes
    height: int  # our block height when we accepted
    created: float  # time.monotonic() when we accepted
    channel_opened: bool = False
    push_msat: Optional[int] = None  # a rollover's exact push (else balance_sat in msat)
    rollover_of: Optional[bytes] = None  # the factory whose channel this one replaces


MAX_PENDING_INVITATIONS = 64  # across all LSPs (one each): what `superscalar-join=any` can cost us
MAX_BLOCKS_PER_SCAN = 32  # blocks fetched per block_added while catching up after downtime
LEAF_CHECK_INTERVAL = 5.0  # seconds between two routine reads of the log for one unverified leaf


class Client:
    def __init__(self, node: ClnNode, store: Store, transport: Transport, allowed_lsps: Optional[set[str]],
                 log: Callable[[str], None], dev_fail_at: str = "", policy: ClientPolicy = ClientPolicy(),
                 stale_after: float = 600.0, blocks: Optional[Blocks] = None, confirm_depth: int = 1) -> None:
        self.node, self.store, self.transport = node, store, transport
        self.confirm_depth = max(1, confirm_depth)  # a funding is found in blocks this deep only
        self.blocks = blocks if blocks is not None else Blocks(lambda h: node.raw_block(h))  # shared with the other steps
        self.allowed = allowed_lsps  # None: any LSP
        self.log = log
        self.policy = policy
        self.stale_after = stale_after  # seconds after which an unfinished invitation is dropped
        # Test-only (superscalar-dev-fail-at, developer mode only): "<message>-disconnect" drops the
        # connection when that message arrives; "propose-refuse" refuses every proposal;
        # "client-other-leaf-script" checks the leaf as if it paid another script.
        self.dev_fail_at = dev_fail_at
        self.invitations: dict[bytes, Invitation] = {}  # at most one per LSP, until its ceremony ends
        self.participants: dict[bytes, Participant] = {}
        self._leaf_checked: dict[str, float] = {}  # factory id → when its log was last read, while unverified
        # Rollover invitations (client/closing.py): freeze and check the old channel (None: accepted, else
        # why not), and hear when such an invitation ends without a factory.
        self.accept_rollover: Optional[Callable[[str, Invite], Optional[str]]] = None
        self.rollover_dropped: Optional[Callable[[bytes, str], None]] = None
        # Liquidity sales (client/sale.py): may a push-free open from this LSP of this capacity be a sale?
        self.sale_channel: Optional[Callable[[str, int], bool]] = None

    def _refuse(self, peer: str, msg: Message, reason: str) -> None:
        self.log(f"refusing invitation from {peer}: {reason}")
        self.transport.send(peer, Abort(msg.factory_id, msg.session_id, int(AbortCode.REFUSED), reason, None))

    def on_message(self, peer: str, msg: Message) -> None:
        if isinstance(msg, Invite):
            self._on_invite(peer, msg)
            return
        inv = self.invitations.get(msg.factory_id)
        if inv is None or inv.lsp != peer:
            return  # not a factory we joined with this peer
        if self._dev_fail(peer, msg):
            return
        if isinstance(msg, Propose) and msg.factory_id not in self.participants:
            expect = Expectation(Kind.CONSTRUCTION, inv.pubkey, capacity_sat=inv.balance_sat + inv.inbound_sat,
                                 payout_script=inv.payout_script, params=inv.params)
            self.participants[msg.factory_id] = Participant(expect, inv.seckey)
        participant = self.participants.get(msg.factory_id)
        if participant is None:
            if isinstance(msg, Abort):
                self._forget(inv)
            return
        self._execute(inv, participant.receive(msg))

    def _dev_fail(self, peer: str, msg: Message) -> bool:
        name = type(msg).__name__.lower()
        if self.dev_fail_at == f"{name}-disconnect":
            self.log(f"dev: disconnecting from {peer} on {name}")
            self.node.rpc.call("disconnect", {"id": peer, "force": True})
            return True
        if self.dev_fail_at == "propose-refuse" and isinstance(msg, Propose):
            self._refuse(peer, msg, "dev: refusing the proposal")
            self.invitations.pop(msg.factory_id, None)
            return True
        return False

    def on_disconnect(self, peer: str) -> None:
        for fid, inv in list(self.invitations.items()):
            if inv.lsp != peer:
                continue
            if fid in self.participants:
                self._execute(inv, self.participants[fid].lsp_failed("disconnected"))
            else:
                self._forget(inv)

    def _prune(self) -> None:
        """Drop invitations whose ceremony went quiet (an LSP that vanished without a disconnect
        must not block its next invitation, nor hold our memory)."""
        now = time.monotonic()
        for inv in [i for i in self.invitations.values() if now - i.created > self.stale_after]:
            self.log(f"factory {inv.factory_id.hex()}: invitation went stale, dropped")
            self._forget(inv)

    def _forget(self, inv: Invitation) -> None:
        """An unfinished ceremony is over: drop it from memory and its scratch records from the datastore
        (a factory that completed keeps its `factory` record)."""
        self.invitations.pop(inv.factory_id, None)
        self.participants.pop(inv.factory_id, None)
        fid = inv.factory_id.hex()
        if self.store.get(fid, "factory") is None:
            self.store.delete_factory(fid)
            if inv.rollover_of is not None and self.rollover_dropped is not None:
                self.rollover_dropped(inv.rollover_of, "the next factory's ceremony ended")

    def _on_invite(self, peer: str, msg: Invite) -> None:
        if self.allowed is not None and peer not in self.allowed:
            self._refuse(peer, msg, "this node does not join factories of that LSP")
            return
        try:
            params = FactoryParams.deserialize(msg.params)
        except FactoryError as e:
            self._refuse(peer, msg, f"bad parameters: {e}")
            return
        height = self.node.blockheight()
        why = refusal(self.policy, params, msg.balance_sat, msg.inbound_sat, height)
        if why is not None:
            self._refuse(peer, msg, why)
            return
        if msg.factory_id in self.invitations or msg.factory_id.hex() in self.store.factory_ids():
            self._refuse(peer, msg, "factory id already used")
            return
        self._prune()
        if any(i.lsp == peer for i in self.invitations.values()):
            self._refuse(peer, msg, "another invitation from this LSP is pending")
            return
        if len(self.invitations) >= MAX_PENDING_INVITATIONS:
            self._refuse(peer, msg, "too many invitations pending")
            return
        if msg.rollover_of is not None:
            why = self.accept_rollover(peer, msg) if self.accept_rollover is not None else "rollovers not supported"
            if why is not None:
                self._refuse(peer, msg, f"rollover refused: {why}")
                return
        seckey = self.node.secret(factory_key_label(peer, msg.factory_id, "client"))
        inv = Invitation(peer, msg.factory_id, params, msg.balance_sat, msg.inbound_sat, seckey,
                         musig2.individual_pk(seckey), self.node.new_script(), height, time.monotonic(),
                         push_msat=msg.push_msat if msg.rollover_of is not None else None,
                         rollover_of=msg.rollover_of)
        self.invitations[msg.factory_id] = inv
        self.transport.send(peer, Accept(msg.factory_id, msg.session_id, inv.pubkey, inv.payout_script))

    def _execute(self, inv: Invitation, actions: list[Action]) -> None:
        fid = inv.factory_id.hex()
        for a in actions:
            if isinstance(a, Persist):
                self.store.put(fid, f"client-{a.record}", a.jsonable())
                if a.record == "signed":
                    # Everything an exit needs is durable before Done goes out (Done follows this).
                    self.store.put(fid, "factory", self._record(inv, a.data["txs"]))
            elif isinstance(a, Send):
                self.transport.send(inv.lsp, a.message)
            elif isinstance(a, Completed):
                self.log(f"factory {fid}: joined; exit path stored, waiting for the funding output")
                self.invitations.pop(inv.factory_id, None)
                self.participants.pop(inv.factory_id, None)
            elif isinstance(a, Failed):
                self.log(f"factory {fid} failed: {a.reason}")
                self._forget(inv)

    def _record(self, inv: Invitation, signed: tuple[Tx, ...]) -> dict[str, Any]:
        participant = self.participants[inv.factory_id]
        # The tree path, then the distribution and its fee variants (factory.graph.fee_variants).
        n_path = sum(1 for t in participant.jobs if not t.name.startswith("distribution"))
        path = participant.jobs[:n_path]
        leaf = path[-1]
        capacity = inv.balance_sat + inv.inbound_sat
        params = inv.params
        index = participant.client_index
        assert index is not None
        topology = build_topology(params.n_clients, params.leaf_arity, params.arity)
        vout = index - topology.nodes[topology.leaf_of_client[index]].first_client
        exit_path = ExitPath(index, tuple(path))
        funding = path[0].tx.inputs[0].prevout
        height = self.node.blockheight()
        rollover = {} if inv.rollover_of is None else {
            # funded by the close of that factory: no HTLC until it confirms (chain/close_watch.py)
            "rollover_of": inv.rollover_of.hex(), "push_msat": inv.push_msat,
            "frozen": {"reason": "rollover-funding", "since_height": height, "next_factory": None}}
        return {
            **rollover,
            LEDGER_KEY: entries(participant.jobs),  # what we signed: no other spend of those outputs (factory.spends)
            "role": "client", "lsp": inv.lsp, "params": params.serialize().decode(), "client_index": index,
            "state_indices": _state_indices(params, path),
            "pubkey": inv.pubkey.hex(), "capacity_sat": capacity, "balance_sat": inv.balance_sat,
            "leaf_outpoint": f"{leaf.tx.txid}:{vout}",
            "funding_outpoint": f"{funding.txid_hex}:{funding.vout}",
            "signed_path": [tx.to_hex() for tx in signed[:n_path]],
            "path_prevouts": [[t.prevout.value, t.prevout.script_pubkey.hex()] for t in path],
            "path_waits": list(exit_path.waits),
            "distribution": signed[n_path].to_hex(),
            "distribution_variants": [tx.to_hex() for tx in signed[n_path + 1:]],  # at higher fee rates
            "exit": {"transactions": len(path), "vbytes": exit_path.vbytes,
                     "fee_sat": exit_path.fee, "wait_blocks": sum(exit_path.waits)},
            "early_warning_blocks": exit_path.early_warning_blocks(params.confirm_blocks),
            # What this client checked, and when (its own block heights).
            "verified": {"params_at_height": inv.height, "signed_at_height": height,
                         "leaf_script": {"status": UNVERIFIED, "reason": "checked before the first HTLC comes in"}},
            "funding": {"status": AWAITING, "scanned_height": inv.height,
                        "deadline_height": height + self.policy.funding_timeout_blocks,
                        # given up on, it is still looked for until then: a late funding is exited from
                        "watch_until_height": params.expiry_height,
                        "confirmed_height": None, "reason": None},
        }

    # --- the leaf's channel output: our channel's 2-of-2, or nothing comes in ---

    def verify_leaf(self, fid: str, routine: bool = False, outpoint: Optional[str] = None) -> Optional[bool]:
        """Check (once) that this factory's leaf output is our channel's BOLT-3 2-of-2 (leaf_script.py):
        True if it is, False if it is not (the factory is then treated as unbacked and its channel
        closed), None while our channeld has not signed a commitment for it yet. A `routine` check (each
        block) reads the log at most every LEAF_CHECK_INTERVAL seconds; one for an incoming HTLC always
        does (its commitment was just signed, so the check completes and is not repeated).
        `outpoint` naming one of our liquidity-sale channels checks that channel's sale output instead."""
        rec = self.store.get(fid, "factory")
        if rec is None or rec.get("role") != "client":
            return None
        sale = next((x for x in rec.get("sales", []) if x.get("mine") and x["channel_outpoint"] == outpoint), None)
        if sale is not None:
            return self._verify_sale(fid, rec, sale)
        status = leaf_status(rec)
        if status != UNVERIFIED:
            return status == VERIFIED
        now = time.monotonic()
        if routine and now - self._leaf_checked.get(fid, -LEAF_CHECK_INTERVAL) < LEAF_CHECK_INTERVAL:
            return None
        self._leaf_checked[fid] = now
        txid, vout = rec["leaf_outpoint"].split(":")
        found = funding_wscript(self.node.debug_log(), rec["lsp"], txid, int(vout))
        if found is None:
            return None
        leaf_script = Tx.from_hex(rec["signed_path"][-1]).outputs[int(vout)].script_pubkey
        if self.dev_fail_at == "client-other-leaf-script":  # test only: as if the LSP's leaf paid another script
            leaf_script = p2wsh_script(b"\x51")
        verdict = check_leaf_script(found[0], found[1], leaf_script)
        rec["verified"]["leaf_script"] = {"status": VERIFIED if verdict.ok else MISMATCH, "reason": verdict.reason,
                                          "at_height": self.node.blockheight(), "funding_wscript": verdict.wscript.hex()}
        self.store.put(fid, "factory", rec)
        if not verdict.ok:
            self.log(f"factory {fid}: LEAF SCRIPT MISMATCH ({verdict.reason}); closing its channel, it takes no HTLCs")
            self._close_unbacked(rec)
        return verdict.ok

    def _verify_sale(self, fid: str, rec: dict[str, Any], sale: dict[str, Any]) -> Optional[bool]:
        """The same check for the channel on a liquidity sale's output 0."""
        if sale.get("verified") in (VERIFIED, MISMATCH):
            return bool(sale["verified"] == VERIFIED)
        txid, vout = sale["channel_outpoint"].split(":")
        found = funding_wscript(self.node.debug_log(), rec["lsp"], txid, int(vout))
        if found is None:
            return None
        verdict = check_leaf_script(found[0], found[1], Tx.from_hex(sale["tx"]).outputs[int(vout)].script_pubkey)
        sale.update(verified=VERIFIED if verdict.ok else MISMATCH, verify_reason=verdict.reason)
        self.store.put(fid, "factory", rec)
        if not verdict.ok:
            self.log(f"factory {fid}: SALE OUTPUT SCRIPT MISMATCH on {sale['channel_outpoint']} ({verdict.reason}); "
                     "that channel takes no HTLCs")
        return verdict.ok

    # --- the funding output: watched until it confirms as signed, or given up on ---

    def on_block(self, height: int) -> list[str]:
        """Scan the blocks since the last look for each factory whose funding has not confirmed yet; check
        the leaf of each channel that has signed a commitment since (its first HTLC either way); close,
        block after block until none is left open, the channels of factories nothing backs. Returns the
        ids of factories whose funding confirmed after they were given up on: their channels were
        closed, so their exit paths must go out."""
        late = []
        for fid in self.store.factory_ids():
            rec = self.store.get(fid, "factory")
            if rec is None or rec.get("role") != "client":
                continue
            funding = rec.get("funding", {})
            if funding.get("status") == AWAITING or (
                    funding.get("status") == UNFUNDED
                    and int(funding.get("scanned_height", 0)) < int(funding.get("watch_until_height", 0))):
                if self._watch_funding(fid, rec, height):
                    late.append(fid)
            if funding_ok(rec) and leaf_status(rec) == UNVERIFIED:
                self.verify_leaf(fid, routine=True)
            if not funding_ok(rec) and not rec.get("unbacked_closed") and self._close_unbacked(rec) == 0:
                rec["unbacked_closed"] = True
                self.store.put(fid, "factory", rec)
        return late

    def _watch_funding(self, fid: str, rec: dict[str, Any], height: int) -> bool:
        """Look for the funding transaction in the blocks since the last look; True if it confirmed as
        signed after the factory had been given up on."""
        funding = rec["funding"]
        given_up = funding["status"] == UNFUNDED
        txid, vout = rec["funding_outpoint"].split(":")
        value, script = rec["path_prevouts"][0]
        first = int(funding["scanned_height"]) + 1
        tip = height - self.confirm_depth + 1  # only blocks `confirm_depth` deep: a shallower one may be reorganised
        for h in range(first, min(tip, first + MAX_BLOCKS_PER_SCAN - 1) + 1):
            found = self.blocks.at(h).by_txid.get(txid)
            funding["scanned_height"] = h
            if found is None:
                continue
            verdict = funding_verdict(found, int(vout), int(value), bytes.fromhex(script))
            if verdict is None:
                funding.update(status=CONFIRMED, confirmed_height=h, reason="confirmed after the deadline" if given_up else None)
                self.log(f"factory {fid}: funding output confirmed at height {h} as signed"
                         + (", after it was given up on: exiting" if given_up else ""))
            else:
                funding.update(status=UNFUNDED, reason=f"funding transaction at height {h}: {verdict}",
                               watch_until_height=h)
            break
        if funding["status"] == AWAITING and funding["scanned_height"] >= int(funding["deadline_height"]):
            funding.update(status=UNFUNDED, reason=f"no funding output by height {funding['deadline_height']}")
        self.store.put(fid, "factory", rec)
        if funding["status"] == UNFUNDED and not given_up:
            self.log(f"factory {fid}: UNFUNDED ({funding['reason']}); closing its channel, it takes no more HTLCs")
            self._close_unbacked(rec)
            progress = self.store.get(fid, "exit")
            if progress is not None and progress["status"] != "closed":
                progress["status"] = "cancelled"  # a path whose funding output never existed cannot be published
                self.store.put(fid, "exit", progress)
        return bool(given_up and funding["status"] == CONFIRMED)

    def _close_unbacked(self, rec: dict[str, Any]) -> int:
        """Close this factory's channel if it is still open; returns how many were (0: nothing to do)."""
        open_ = [str(ch["channel_id"]) for ch in self.node.peer_channels(rec["lsp"])
                 if channel_in_factory(rec, ch) and ch.get("state") not in CLOSING_STATES]
        for channel_id in open_:
            threading.Thread(target=self._close, args=(channel_id,), daemon=True).start()
        return len(open_)

    def _close(self, channel_id: str) -> None:
        try:
            self.log(f"closing unbacked channel {channel_id}: {self.node.close(channel_id)}")
        except Exception as e:
            self.log(f"closing unbacked channel {channel_id}: {e}")

    # --- openchannel hook ---

    def openchannel(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Zero-conf only for the channel an invitation announced; anything else: CLN's own policy."""
        peer = payload.get("id")
        funding = msat(payload.get("funding_msat", 0))
        push = msat(payload.get("push_msat", 0))
        for inv in self.invitations.values():
            want_push = inv.push_msat if inv.push_msat is not None else inv.balance_sat * 1000
            if inv.lsp == peer and not inv.channel_opened and funding == (inv.balance_sat + inv.inbound_sat) * 1000 \
                    and push == want_push:
                inv.channel_opened = True
                return {"result": "continue", "mindepth": 0}
        if push == 0 and funding and self.sale_channel is not None and self.sale_channel(str(peer), funding // 1000):
            return {"result": "continue", "mindepth": 0}
        return {"result": "continue"}


    # --- unilateral exit ---

    def exit_path(self, factory_id: str) -> tuple[list[list[Any]], list[str]]:
        """This client's signed path (for `Exits.start`) and its leaf channel's outpoint."""
        rec = self.store.get(factory_id, "factory")
        if rec is None or rec.get("role") != "client":
            raise ValueError(f"no factory {factory_id} in which this node is a client")
        # Our sale channels that exist (one whose open died with the LSP backs nothing: its sale stays off chain)
        live = {f"{ch.get('funding_txid')}:{ch.get('funding_outnum')}" for ch in self.node.peer_channels(rec["lsp"])} \
            if any(s.get("mine") for s in rec.get("sales", [])) else set()
        return client_exit_path(rec, live)


def _state_indices(params: FactoryParams, path: Any) -> list[int]:
    """The state index of each node on a path: 0 for a static node, else read back from its state
    tx's nSequence."""
    return [0 if params.is_static(depth)
            else params.states_per_layer - 1 - path[params.path_offset(depth) + 1].relative_wait // params.step_blocks
            for depth in range(params.height + 1)]


def funding_verdict(tx: Tx, vout: int, value: int, script: bytes) -> Optional[str]:
    """Is output `vout` of the confirmed funding transaction the one the tree was signed over? None if so."""
    if vout >= len(tx.outputs):
        return f"it has no output {vout}"
    out = tx.outputs[vout]
    if out.value != value or out.script_pubkey != script:
        return f"output {vout} is {out.value} sat to {out.script_pubkey.hex()}, not the signed {value} sat to {script.hex()}"
    return None


