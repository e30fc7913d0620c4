"""The client role: join factories of LSPs this node trusts, sign only what it checked, keep its exit.

An invitation is accepted only from an allowed LSP, with sane parameters; the client then answers
with its factory key (from `makesecret`) and a payout script of its wallet, and expects exactly one
zero-conf channel from that LSP with the invited capacity and push. The ceremony's `Participant`
checks the whole proposal; the signed exit path is written to the datastore before Done is sent.
A channel counts as part of the factory only once its funding outpoint is the client's leaf output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from . import musig2
from .exits import path_entry
from .factory.errors import FactoryError
from .factory.params import FactoryParams
from .factory.tree import build_topology
from .node import ClnNode, msat
from .protocol.ceremony import Action, Completed, Failed, Participant, Persist, Send
from .protocol.rounds import Expectation, Kind
from .protocol.wire import Abort, AbortCode, Accept, Invite, Message, Propose
from .store import Store
from .transport import Transport


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
    channel_opened: bool = False


class Client:
    def __init__(self, node: ClnNode, store: Store, transport: Transport, allowed_lsps: Optional[set[str]],
                 log: Callable[[str], None], dev_fail_at: str = "") -> None:
        self.node, self.store, self.transport = node, store, transport
        self.allowed = allowed_lsps  # None: any LSP
        self.log = log
        # Test-only (superscalar-dev-fail-at): "<message>-disconnect" drops the connection when that
        # message arrives; "propose-refuse" refuses every proposal.
        self.dev_fail_at = dev_fail_at
        self.invitations: dict[bytes, Invitation] = {}
        self.participants: dict[bytes, Participant] = {}

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
                self.invitations.pop(msg.factory_id, None)
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
            if inv.lsp == peer and fid in self.participants:
                self._execute(inv, self.participants[fid].lsp_failed("disconnected"))

    def _on_invite(self, peer: str, msg: Invite) -> None:
        if self.allowed is not None and peer not in self.allowed:
            self._refuse(peer, msg, "this node does not join factories of that LSP")
            return
        try:
            params = FactoryParams.deserialize(msg.params)
        except FactoryError as e:
            self._refuse(peer, msg, f"bad parameters: {e}")
            return
        if msg.balance_sat + msg.inbound_sat < params.dust_limit_sat:
            self._refuse(peer, msg, "channel below the dust limit")
            return
        if any(i.lsp == peer and not i.channel_opened and msg.factory_id not in self.participants
               for i in self.invitations.values()):
            self._refuse(peer, msg, "another invitation from this LSP is pending")
            return
        seckey = self.node.secret(f"superscalar/factory/{msg.factory_id.hex()}/client")
        inv = Invitation(peer, msg.factory_id, params, msg.balance_sat, msg.inbound_sat, seckey,
                         musig2.individual_pk(seckey), self.node.new_script())
        self.invitations[msg.factory_id] = inv
        self.transport.send(peer, Accept(msg.factory_id, msg.session_id, inv.pubkey, inv.payout_script))

    def _execute(self, inv: Invitation, actions: list[Action]) -> None:
        fid = inv.factory_id.hex()
        for a in actions:
            if isinstance(a, Persist):
                self.store.put(fid, f"client-{a.record}", a.jsonable())
            elif isinstance(a, Send):
                self.transport.send(inv.lsp, a.message)
            elif isinstance(a, Completed):
                self.store.put(fid, "factory", self._record(inv, a))
            elif isinstance(a, Failed):
                self.log(f"factory {fid} failed: {a.reason}")
                self.invitations.pop(inv.factory_id, None)
                self.participants.pop(inv.factory_id, None)

    def _record(self, inv: Invitation, done: Completed) -> dict[str, Any]:
        participant = self.participants[inv.factory_id]
        path = participant.jobs[:-1]  # the tree path; the last job is the distribution
        leaf = path[-1]
        capacity = inv.balance_sat + inv.inbound_sat
        params = inv.params
        index = participant.client_index
        assert index is not None
        topology = build_topology(params.n_clients, params.leaf_arity, params.arity)
        vout = index - topology.nodes[topology.leaf_of_client[index]].first_client
        waits = [t.relative_wait for t in path]
        return {
            "role": "client", "lsp": inv.lsp, "params": params.serialize().decode(), "client_index": index,
            "state_indices": _state_indices(params, path),
            "pubkey": inv.pubkey.hex(), "capacity_sat": capacity, "balance_sat": inv.balance_sat,
            "leaf_outpoint": f"{leaf.tx.txid}:{vout}",
            "funding_outpoint": f"{path[0].tx.inputs[0].prevout.txid_hex}:{path[0].tx.inputs[0].prevout.vout}",
            "signed_path": [tx.to_hex() for tx in done.signed[:-1]],
            "path_prevouts": [[t.prevout.value, t.prevout.script_pubkey.hex()] for t in path],
            "path_waits": waits,
            "distribution": done.signed[-1].to_hex(),
            "exit": {"transactions": len(path), "vbytes": sum(t.vsize for t in path),
                     "fee_sat": sum(t.fee for t in path), "wait_blocks": sum(waits)},
            "early_warning_blocks": sum(waits) + params.confirm_blocks * len(path),
        }

    # --- openchannel hook ---

    def openchannel(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Zero-conf only for the channel an invitation announced; anything else: CLN's own policy."""
        peer = payload.get("id")
        funding = msat(payload.get("funding_msat", 0))
        push = msat(payload.get("push_msat", 0))
        for inv in self.invitations.values():
            if inv.lsp == peer and not inv.channel_opened and funding == (inv.balance_sat + inv.inbound_sat) * 1000 \
                    and push == inv.balance_sat * 1000:
                inv.channel_opened = True
                return {"result": "continue", "mindepth": 0}
        return {"result": "continue"}


    # --- unilateral exit ---

    def exit_path(self, factory_id: str) -> tuple[list[list[Any]], list[str]]:
        """This client's signed path (for `Exits.start`) and its leaf channel's outpoint."""
        rec = self.store.get(factory_id, "factory")
        if rec is None or rec.get("role") != "client":
            raise ValueError(f"no factory {factory_id} in which this node is a client")
        txs = [path_entry(f"path/{i}", h, int(v), bytes.fromhex(s))
               for i, (h, (v, s)) in enumerate(zip(rec["signed_path"], rec["path_prevouts"]))]
        return txs, [rec["leaf_outpoint"]]


def _state_indices(params: FactoryParams, path: Any) -> list[int]:
    """The DW state index of each state tx on a path, read back from its nSequence."""
    return [params.states_per_layer - 1 - t.relative_wait // params.step_blocks for t in path[1::2]]


def channel_in_factory(record: dict[str, Any], channel: dict[str, Any]) -> bool:
    """Is `channel` (a listpeerchannels entry) the factory leaf channel this client record expects?"""
    txid, vout = record["leaf_outpoint"].split(":")
    return bool(channel.get("funding_txid") == txid and int(channel.get("funding_outnum", -1)) == int(vout))

