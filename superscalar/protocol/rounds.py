"""Signing rounds: what the LSP proposes (the transactions to sign and each client's view of them)
and how a client rebuilds and checks that view against what it agreed.

The LSP builds a `Round` from its `Factory`. A client never trusts the transactions it is told about:
from the proposal's parameters, keys and values it rebuilds every transaction it will sign with the
same engine code, and `participant_jobs` refuses (ProposalError, with a reason) unless its own outputs
and amounts are what it agreed, each transaction on its path spends only what its subtree's N-of-N
(or the LSP after the staggered timeout) controls, its path ends in its channel, and the distribution
transaction pays it.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from ..bitcoin.encoding import ser_compact_size
from ..bitcoin.errors import BitcoinError
from ..bitcoin.tx import OutPoint, OutputVector, Tx, TxOut
from ..factory.errors import FactoryError
from ..factory.graph import (
    Factory,
    FactoryGraph,
    FactoryShape,
    TreeTx,
    anchor_output,
    fee_variants,
    liquidity_sale,
    signed_vsize,
    spend_funding,
)
from ..factory.params import FactoryParams
from .wire import Propose


class Kind(enum.IntEnum):
    CONSTRUCTION = 0
    ADVANCE = 1
    SALE = 2
    CLOSE = 3


class ProposalError(ValueError):
    """A client refuses a proposal; the message says why."""


@dataclass(frozen=True)
class Round:
    """One signing round: the transactions to sign and, per client, its proposal and its jobs."""

    kind: Kind
    factory_id: bytes
    session_id: bytes
    pubkeys: tuple[bytes, ...]  # participant 0 is the LSP
    jobs: tuple[TreeTx, ...]
    client_jobs: Mapping[int, tuple[int, ...]]  # client → indices into jobs, in proposal order
    proposals: Mapping[int, Propose]


def _outputs_blob(tx: Tx) -> bytes:
    """A transaction's outputs as Bitcoin serializes them: CompactSize count, then each output."""
    return ser_compact_size(len(tx.outputs)) + tx.outputs_bytes


def _output_vector(blob: bytes) -> OutputVector:
    try:
        return OutputVector(blob)
    except BitcoinError as e:
        raise ProposalError(f"invalid outputs: {e}") from None


def _txouts(blob: bytes) -> tuple[TxOut, ...]:
    return tuple(_output_vector(blob))


def _propose(r_kind: Kind, factory_id: bytes, session_id: bytes, factory: FactoryShape, client: int,
             funding: OutPoint, funding_value: int, state_indices: Sequence[int],
             path_outputs: Sequence[Tx], distribution: bytes) -> Propose:
    return Propose(
        factory_id=factory_id, session_id=session_id, client_index=client, params=factory.params_bytes,
        funding_txid=funding.txid, funding_vout=funding.vout, funding_value=funding_value,
        pubkeys=factory.keys.pubkeys, state_indices=tuple(state_indices),
        path_outputs=tuple(_outputs_blob(tx) for tx in path_outputs), distribution=distribution,
        kind=int(r_kind),
    )


def _tree_round(kind: Kind, factory: Factory, graph: FactoryGraph, factory_id: bytes, session_id: bytes,
                first_layer: dict[int, int], extra: Sequence[TreeTx]) -> Round:
    """Jobs are every client's path transactions from `first_layer[client]`'s state tx down (or the
    whole path, kickoffs included, when it is 0 and kind is CONSTRUCTION), plus `extra` for everyone."""
    index: dict[str, int] = {}
    jobs: list[TreeTx] = []

    def job(t: TreeTx) -> int:
        if t.name not in index:
            index[t.name] = len(jobs)
            jobs.append(t)
        return index[t.name]

    client_jobs: dict[int, tuple[int, ...]] = {}
    proposals: dict[int, Propose] = {}
    distribution = _outputs_blob(extra[0].tx) if extra else b""
    for client, layer in first_layer.items():
        path = graph.path_txs(client)
        mine = path[factory.params.path_offset(layer) + (0 if kind == Kind.CONSTRUCTION else 1):]
        client_jobs[client] = tuple(job(t) for t in (*mine, *extra))
        nodes = factory.topology.path(client)
        proposals[client] = _propose(
            kind, factory_id, session_id, factory, client, graph.funding, factory.funding_output.value,
            [graph.state[n] for n in nodes], [graph.states[n].tx for n in nodes], distribution,
        )
    return Round(kind, factory_id, session_id, factory.keys.pubkeys, tuple(jobs), client_jobs, proposals)


def construction_round(factory: Factory, graph: FactoryGraph, factory_id: bytes, session_id: bytes) -> Round:
    """Sign the whole tree and the distribution transaction."""
    everyone = {c: 0 for c in range(factory.params.n_clients)}
    return _tree_round(Kind.CONSTRUCTION, factory, graph, factory_id, session_id, everyone, list(graph.distributions()))


def advance_round(factory: Factory, graph: FactoryGraph, changed: int, factory_id: bytes, session_id: bytes) -> Round:
    """Re-sign the subtree under `changed` (its state tx and everything below) in `graph`'s new state."""
    depth = factory.topology.nodes[changed].depth
    clients = {c: depth for c in factory.topology.nodes[changed].clients}
    return _tree_round(Kind.ADVANCE, factory, graph, factory_id, session_id, clients, [])


def sale_round(factory: Factory, sale: TreeTx, lstock: OutPoint, leaf: int, factory_id: bytes, session_id: bytes) -> Round:
    """The leaf's clients and the LSP sign one liquidity sale spending the leaf's current L-stock."""
    proposals = {
        c: _propose(Kind.SALE, factory_id, session_id, factory, c, lstock, sale.prevout.value, (),
                    [sale.tx], b"")
        for c in factory.topology.nodes[leaf].clients
    }
    return Round(Kind.SALE, factory_id, session_id, factory.keys.pubkeys, (sale,),
                 {c: (0,) for c in proposals}, proposals)


def close_round(factory: Factory, close: TreeTx, funding: OutPoint, factory_id: bytes, session_id: bytes,
                variants: bool = True) -> Round:
    """Everyone signs the cooperative close and, for a plain close (`variants`), its fee variants (a
    rollover's close cannot have any: the next factory is signed over its txid)."""
    extra = fee_variants(factory, close, funding) if variants else ()
    proposals = {
        c: dataclasses.replace(_propose(Kind.CLOSE, factory_id, session_id, factory, c, funding, close.prevout.value,
                                        (), [close.tx], b""), fee_variants=len(extra) or None)
        for c in range(factory.params.n_clients)
    }
    jobs = (close, *extra)
    return Round(Kind.CLOSE, factory_id, session_id, factory.keys.pubkeys, jobs,
                 {c: tuple(range(len(jobs))) for c in proposals}, proposals)


# --- the client's side ---


@dataclass(frozen=True)
class Expectation:
    """What a client agreed to, against which it checks a proposal of kind `kind`.

    construction / advance: `channel_script` and `capacity_sat` of its leaf channel, and (construction)
    `payout_script` for the distribution; advance also `previous_state` (its path's state indices now)
    and `funding`. sale: the buyer sets `channel_script`/`capacity_sat` of the new channel; the other
    clients of the leaf leave them None. close: `funding` (required), and either `payout_script` and
    `payout_sat` (the close pays at least that much there) or, for a client rolling into the next
    factory, `next_funding`: the close's txid and output 0 must be the funding the next tree spends.
    """

    kind: Kind
    pubkey: bytes
    channel_script: Optional[bytes] = None
    capacity_sat: Optional[int] = None
    payout_script: Optional[bytes] = None
    payout_sat: Optional[int] = None
    params: Optional[FactoryParams] = None
    previous_state: Optional[tuple[int, ...]] = None
    funding: Optional[tuple[OutPoint, int]] = None
    next_funding: Optional[tuple[OutPoint, TxOut]] = None  # close of a rollover: output 0 funds this


def participant_jobs(expect: Expectation, msg: Propose) -> tuple[TreeTx, ...]:
    """Rebuild and check everything a proposal asks this client to sign; the transactions in the
    order the LSP will send nonces and signatures for them. Raises ProposalError."""
    try:
        return _participant_jobs(expect, msg)
    except FactoryError as e:
        raise ProposalError(str(e)) from None


def _participant_jobs(expect: Expectation, msg: Propose) -> tuple[TreeTx, ...]:
    if msg.kind != expect.kind:
        raise ProposalError(f"expected a {expect.kind.name.lower()} proposal, got kind {msg.kind}")
    params = FactoryParams.deserialize(msg.params)
    if expect.params is not None and params != expect.params:
        raise ProposalError("factory parameters differ from the agreed ones")
    client = msg.client_index
    if not 0 <= client < params.n_clients or len(msg.pubkeys) != params.n_clients + 1:
        raise ProposalError("client index or key count does not match the parameters")
    if msg.pubkeys[client + 1] != expect.pubkey:
        raise ProposalError("our key is not at our index")
    shape = FactoryShape(params, msg.pubkeys)
    spent = OutPoint(msg.funding_txid, msg.funding_vout)
    if expect.funding is not None and (spent, msg.funding_value) != expect.funding and expect.kind != Kind.SALE:
        raise ProposalError("the proposal spends a different funding output")
    if expect.kind in (Kind.CONSTRUCTION, Kind.ADVANCE):
        outputs = [_output_vector(o) for o in msg.path_outputs]
        return _tree_jobs(expect, msg, params, shape, client, spent, outputs)
    if len(msg.path_outputs) != 1:
        raise ProposalError("one transaction is signed in this round")
    if expect.kind == Kind.SALE:
        return (_sale_job(expect, shape, client, spent, msg.funding_value, _txouts(msg.path_outputs[0])),)
    if expect.funding is None:
        raise ProposalError("a close must name the funding output it spends")
    close = spend_funding(shape, "close", spent, msg.funding_value, msg.path_outputs[0])
    check_close(expect, close.tx)
    wanted = msg.fee_variants or 0
    if wanted == 0:
        return (close,)
    variants = fee_variants(shape, close, spent)  # each must pay us as much as the close itself
    if expect.next_funding is not None or wanted != len(variants):
        raise ProposalError("a rollover's close has no fee variants" if expect.next_funding is not None
                            else f"{wanted} fee variants proposed, {len(variants)} possible")
    for v in variants:
        check_close(expect, v.tx)
    return (close, *variants)


def check_close(expect: Expectation, close: Tx) -> None:
    """A close pays this client at least `payout_sat` to its payout script, or (rolling over) its txid
    and output 0 are exactly the next factory's funding outpoint and output. Raises ProposalError."""
    if expect.next_funding is not None:
        outpoint, output = expect.next_funding
        if outpoint.vout != 0 or close.txid != outpoint.txid_hex or close.outputs[0] != output:
            raise ProposalError("the close's output 0 is not the next factory's funding we signed over")
        return
    paid = sum(o.value for o in close.outputs if o.script_pubkey == expect.payout_script)
    if expect.payout_sat and paid < expect.payout_sat:
        raise ProposalError(f"the close pays us {paid} sat, less than our {expect.payout_sat} sat")


def _tree_jobs(expect: Expectation, msg: Propose, params: FactoryParams, shape: FactoryShape, client: int,
               funding: OutPoint, outputs: Sequence[Sequence[TxOut]]) -> tuple[TreeTx, ...]:
    path = shape.rebuild_path(client, funding, msg.funding_value, msg.state_indices, outputs)
    leaf = shape.topology.nodes[shape.topology.leaf_of_client[client]]
    if len(path[-1].tx.outputs) != leaf.n_clients + 2:
        raise ProposalError("the leaf must have one channel per client, the L-stock and the anchor")
    mine = path[-1].tx.outputs[client - leaf.first_client]
    # Before the open completes a client cannot know its channel's funding script; it then checks
    # the amount and the P2WSH form here, and the funding outpoint once the channel exists.
    if mine.value != expect.capacity_sat or not (
        mine.script_pubkey == expect.channel_script
        or (expect.channel_script is None and len(mine.script_pubkey) == 34 and mine.script_pubkey[:2] == b"\x00\x20")
    ):
        raise ProposalError("our channel output is not what we agreed")
    if path[-1].tx.outputs[-2].script_pubkey != shape.lstock_taproot(leaf.index).script_pubkey:
        raise ProposalError("the leaf's L-stock output is not the leaf's N-of-N")
    if expect.kind == Kind.CONSTRUCTION:
        if any(i != 0 for i in msg.state_indices):
            raise ProposalError("a new factory starts at state 0")
        dist = spend_funding(shape, "distribution", funding, msg.funding_value,
                             msg.distribution, params.distribution_height)
        if client >= len(dist.tx.outputs) or dist.tx.outputs[client] != TxOut(mine.value, expect.payout_script or b""):
            raise ProposalError("the distribution transaction does not pay us our channel's capacity")
        return (*path, dist, *fee_variants(shape, dist, funding))
    if expect.previous_state is None:
        raise ProposalError("no current state to advance from")
    try:
        new, depth = shape.advance_path(expect.previous_state)
    except FactoryError as e:
        raise ProposalError(f"our current state cannot advance: {e}") from None
    if tuple(msg.state_indices) != new:
        raise ProposalError("the new state is not the next one after ours")
    return path[params.path_offset(depth) + 1:]


def _sale_job(expect: Expectation, shape: FactoryShape, client: int, lstock: OutPoint, value: int,
              outputs: Sequence[TxOut]) -> TreeTx:
    leaf = shape.topology.leaf_of_client[client]
    prevout = TxOut(value, shape.lstock_taproot(leaf).script_pubkey)
    if len(outputs) != 3 or outputs[2] != anchor_output(shape.params):
        raise ProposalError("a sale has a channel, the rest of the L-stock and the anchor")
    if outputs[1].script_pubkey != prevout.script_pubkey:
        raise ProposalError("the rest of the L-stock must stay with the leaf's N-of-N")
    if expect.channel_script is not None and outputs[0] != TxOut(expect.capacity_sat or 0, expect.channel_script):
        raise ProposalError("the new channel is not what we bought")
    sale = _rebuild_sale(shape, leaf, lstock, prevout, outputs)
    return sale


def _rebuild_sale(shape: FactoryShape, leaf: int, lstock: OutPoint, prevout: TxOut, outputs: Sequence[TxOut]) -> TreeTx:
    # The engine's own builder must produce exactly these outputs, fee included.
    sale = liquidity_sale(shape, leaf, (lstock, prevout), outputs[0].value, outputs[0].script_pubkey)
    if sale.tx.outputs != tuple(outputs):
        raise ProposalError("the sale's outputs do not leave the agreed fee")
    assert sale.fee == shape.params.fee(signed_vsize(sale.tx))
    return sale
