"""The lifecycle step of the chain follower (chain/lifecycle.py) in process, blocks fed from the test:
the LSP's dying-period warning, distribution broadcast and sweeps; a client's own path once the tree is
on chain, at once when a kickoff of its path confirmed (the newest state must beat an older one)."""

from __future__ import annotations

from typing import Any, Optional

from superscalar.crypto.bip340 import schnorr_verify
from superscalar.bitcoin.encoding import ser_compact_size
from superscalar.bitcoin.tx import OutPoint, Tx
from superscalar.chain.blocks import Blocks
from superscalar.chain.fee_schedule import race_deadlines
from superscalar.chain.lifecycle import LIFECYCLE, Lifecycle
from superscalar.client.membership import Client
from superscalar.records import factory_key_label, path_entry
from superscalar.factory.graph import FactoryGraph
from superscalar.factory.params import regtest_params
from superscalar.lsp.creation import ClientSpec, _lsp_record
from superscalar.cln.store import Store

from ..factory_kit import make_kit
from ..fakes import MemoryDatastore, Outbox

FID = "ab" * 32
LSP_ID = "02" + "11" * 32
PARAMS = regtest_params(4, 100)  # expiry 130, distribution 140, leaf timeout 145
FUNDING = OutPoint(bytes(range(32)), 0)


class Node(MemoryDatastore):
    def __init__(self, blocks: dict[int, list[Tx]], lsp_seckey: bytes = bytes(32)) -> None:
        super().__init__()
        self.blocks, self.lsp_seckey = blocks, lsp_seckey
        self.height = 100
        self.sent: list[tuple[int, str, list[tuple[int, bytes]]]] = []

    def blockheight(self) -> int:
        return self.height

    def node_id(self) -> str:
        return LSP_ID

    def secret(self, label: str) -> bytes:
        assert label == factory_key_label(LSP_ID, bytes.fromhex(FID), "lsp")
        return self.lsp_seckey

    def raw_block(self, height: int) -> str:
        txs = self.blocks.get(height, [])
        return (bytes(80) + ser_compact_size(len(txs)) + b"".join(t.serialize() for t in txs)).hex()

    def broadcast(self, tx_hex: str, prevouts: list[tuple[int, bytes]]) -> Optional[str]:
        self.sent.append((self.height, tx_hex, prevouts))
        return None

    def peer_channels(self, peer: Optional[str] = None) -> list[dict[str, Any]]:
        return []


class Exits:
    def __init__(self) -> None:
        self.started: list[tuple[Any, ...]] = []

    def start(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.started.append(args)
        self.kwargs = kwargs
        return {"status": "publishing"}


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def __call__(self, text: str, level: str = "info") -> None:
        self.lines.append((level, text))


def factory() -> tuple[Any, FactoryGraph]:
    kit = make_kit(PARAMS)
    return kit, kit.factory.graph(FUNDING)


def run(node: Node, lifecycle: Lifecycle, to: int) -> None:
    while node.height < to:
        node.height += 1
        lifecycle.blocks.new_tip(node.height)
        lifecycle.on_block(node.height)


def lsp_setup(kit: Any, graph: FactoryGraph, blocks: dict[int, list[Tx]]) -> tuple[Node, Lifecycle, Log]:
    f = kit.factory
    rec = _lsp_record(f, graph, [ClientSpec(f"03{i:064x}", t.balance_sat, t.inbound_sat) for i, t in enumerate(f.terms)],
                      [None] * 4)
    rec["txs"] = [path_entry(t.name, t.tx.to_hex(), t.prevout.value, t.prevout.script_pubkey) for t in graph.txs()]
    rec["paths"] = [[t.name for t in graph.path_txs(i)] for i in range(4)]
    rec["distribution"] = graph.distribution().tx.to_hex()
    rec["stage"] = "funded"
    node = Node(blocks, kit.seckeys[0])
    store = Store(node)  # type: ignore[arg-type]
    store.put(FID, "factory", rec)
    log = Log()
    client = Client(node, store, Outbox([]), None, log)  # type: ignore[arg-type]
    return node, Lifecycle(node, store, Blocks(node.raw_block), client, Exits(), log), log  # type: ignore[arg-type]


def test_lsp_warns_when_dying_then_broadcasts_the_distribution() -> None:
    kit, graph = factory()
    node, lifecycle, log = lsp_setup(kit, graph, {})
    run(node, lifecycle, 129)
    assert not log.lines and not node.sent
    run(node, lifecycle, 139)
    warnings = [t for level, t in log.lines if level == "unusual"]
    assert len(warnings) == 10 and "close or roll it over before height 140" in warnings[0]
    assert not node.sent  # not final before the distribution height
    run(node, lifecycle, 141)
    dist = graph.distribution()
    assert [(h, tx) for h, tx, _ in node.sent] == [(140, dist.tx.to_hex()), (141, dist.tx.to_hex())]
    assert node.sent[0][2] == [(dist.prevout.value, dist.prevout.script_pubkey)]
    node.blocks[142] = [dist.tx]
    run(node, lifecycle, 145)
    assert len(node.sent) == 2  # confirmed: nothing more to send
    life = lifecycle.store.get(FID, LIFECYCLE)
    assert life is not None and life["distribution"]["confirmed_height"] == 142
    assert life["funding_spent"] == {"height": 142, "txid": dist.tx.txid, "by": "distribution"}
    assert len([t for level, t in log.lines if level == "unusual"]) == 10


def test_lsp_sweeps_lstock_after_csv_and_timed_out_output() -> None:
    kit, graph = factory()
    f = kit.factory
    leaf_a, leaf_b = (n.index for n in f.topology.nodes if n.is_leaf)
    root = graph.states[0]
    kickoff_a, state_a = graph.node_txs(leaf_a)
    node, lifecycle, log = lsp_setup(kit, graph, {110: [root.tx, kickoff_a.tx], 117: [state_a.tx]})
    run(node, lifecycle, 120)
    assert not node.sent
    life = lifecycle.store.get(FID, LIFECYCLE)
    assert life is not None and life["funding_spent"]["by"] == "tree"
    run(node, lifecycle, 121)  # 117 + 5 (CSV) - 1: the next block may hold it
    [(height, lstock_hex, prevouts)] = node.sent
    sweep = Tx.from_hex(lstock_hex)
    lstock_out, lstock_prev = graph.lstock(leaf_a)
    assert sweep.inputs[0].prevout == lstock_out and sweep.inputs[0].sequence == PARAMS.lstock_csv_blocks
    assert sweep.outputs[0].script_pubkey == f.scripts.lsp_payout
    assert sweep.outputs[0].value == lstock_prev.value - PARAMS.fee(sweep.vsize)
    assert prevouts == [(lstock_prev.value, lstock_prev.script_pubkey)]
    sig = sweep.inputs[0].witness[0]
    from superscalar.bitcoin.sighash import SIGHASH_DEFAULT, taproot_sighash
    leaf_hash = f.lstock_taproot(leaf_a).leaves[0][0].leaf_hash
    assert schnorr_verify(taproot_sighash(sweep, 0, [lstock_prev], SIGHASH_DEFAULT, leaf_hash=leaf_hash),
                          f.keys.lsp_xonly, sig)
    node.blocks[122] = [sweep]
    run(node, lifecycle, 144)
    assert len(node.sent) == 1  # confirmed; leaf b's output not timed out yet (145)
    run(node, lifecycle, 146)
    timeout = Tx.from_hex(node.sent[1][1])
    out_b, prev_b = graph.owned_outpoint(leaf_b)
    assert node.sent[1][0] == 145 and timeout.inputs[0].prevout == out_b and timeout.locktime == 145
    assert timeout.outputs[0].value == prev_b.value - PARAMS.fee(timeout.vsize)
    life = lifecycle.store.get(FID, LIFECYCLE)
    assert life is not None
    assert life["sweeps"][f"lstock/{leaf_a}"]["status"] == "confirmed"
    assert life["sweeps"][f"timeout/{leaf_b}"]["status"] == "broadcast"


def client_setup(kit: Any, graph: FactoryGraph, client: int,
                 blocks: dict[int, list[Tx]]) -> tuple[Node, Lifecycle, Exits]:
    path = graph.exit_path(client)
    rec = {"role": "client", "lsp": LSP_ID, "params": PARAMS.serialize().decode(), "client_index": client,
           "funding_outpoint": f"{FUNDING.txid_hex}:0",
           "leaf_outpoint": f"{graph.channel_outpoint(client).txid_hex}:{graph.channel_outpoint(client).vout}",
           "signed_path": [t.tx.to_hex() for t in path.txs],
           "path_prevouts": [[t.prevout.value, t.prevout.script_pubkey.hex()] for t in path.txs],
           "distribution": graph.distribution().tx.to_hex(),
           "early_warning_blocks": path.early_warning_blocks(PARAMS.confirm_blocks),
           "funding": {"status": "confirmed", "confirmed_height": 101}}
    node = Node(blocks)
    store = Store(node)  # type: ignore[arg-type]
    store.put(FID, "factory", rec)
    exits = Exits()
    client_role = Client(node, store, Outbox([]), None, Log())  # type: ignore[arg-type]
    return node, Lifecycle(node, store, Blocks(node.raw_block), client_role, exits, Log()), exits  # type: ignore[arg-type]


def test_client_answers_a_kickoff_on_its_path_at_once() -> None:
    """Someone publishes the root and the kickoff above this client's leaf (to follow it with an older
    state, whose relative wait is `step_blocks` longer than the newest's): the client publishes its
    path at once, and its exit races the older state: the newest state is due a block before the older
    one could be valid."""
    kit, graph = factory()
    leaf = kit.factory.topology.leaf_of_client[0]
    kickoff, state = graph.node_txs(leaf)
    node, lifecycle, exits = client_setup(kit, graph, 0, {110: [graph.states[0].tx], 111: [kickoff.tx]})
    run(node, lifecycle, 110)
    assert exits.started == []  # the static root alone: there is time (until the leaf's timeout)
    run(node, lifecycle, 111)
    [args] = exits.started
    fid, txs, channels, bump_after, timeout_height, _, known, dw_step, reason, confirmed = args
    assert fid == FID and channels == [] and timeout_height == PARAMS.timeout(PARAMS.height)
    assert [t[0] for t in txs] == ["path/0", "path/1", "path/2"] and dw_step == PARAMS.step_blocks
    assert "kickoff path/1 of its path confirmed" in reason["reason"] and reason["height"] == 111
    assert confirmed == {"path/0": 110, "path/1": 111}
    # What Exits then aims at (fee_schedule.race_deadlines): the newest state, valid at 111 + its wait,
    # must confirm before an older state of the node could (its wait is dw_step longer).
    wait = state.relative_wait
    [_, _, due] = race_deadlines([None, 0, 1], [0, 0, wait], [110, 111, None], dw_step)
    assert due == 111 + wait + PARAMS.step_blocks - 1 < 111 + wait + PARAMS.step_blocks
    run(node, lifecycle, 120)
    assert len(exits.started) == 1  # once


def test_client_off_the_racing_path_starts_before_its_timeout() -> None:
    kit, graph = factory()
    other = kit.factory.topology.leaf_of_client[0]
    kickoff, _ = graph.node_txs(other)
    client = next(c for c in range(4) if kit.factory.topology.leaf_of_client[c] != other)
    node, lifecycle, exits = client_setup(kit, graph, client, {110: [graph.states[0].tx, kickoff.tx]})
    ewt = graph.exit_path(client).early_warning_blocks(PARAMS.confirm_blocks)
    start_at = PARAMS.timeout(PARAMS.height) - ewt - 2 * PARAMS.confirm_blocks
    run(node, lifecycle, start_at - 1)
    assert exits.started == []
    run(node, lifecycle, start_at)
    [args] = exits.started
    assert "must confirm before its leaf's timeout 145" in args[8]["reason"] and args[9] == {"path/0": 110}
    assert node.sent == []  # the distribution is never sent once the tree is on chain
    run(node, lifecycle, 150)
    assert node.sent == [] and len(exits.started) == 1


def test_distribution_fee_variants_escalate_without_a_coin() -> None:
    """Fees at 10x the agreed rate: the mempool refuses the distribution and its 4x variant for their
    fee, so the 16x variant goes out in the same block; it confirms, and pays every client exactly what
    the base pays (the extra fee came out of the LSP's output)."""
    kit, graph = factory()
    dists = graph.distributions()
    assert [t.name for t in dists] == ["distribution", "distribution-x4", "distribution-x16", "distribution-x64"]
    node, lifecycle, log = lsp_setup(kit, graph, {})
    rec = lifecycle.store.get(FID, "factory")
    assert rec is not None
    rec["distribution_variants"] = [t.tx.to_hex() for t in dists[1:]]
    lifecycle.store.put(FID, "factory", rec)
    market_per_kvb = 10 * PARAMS.feerate_per_kvb

    def broadcast(tx_hex: str, prevouts: list[tuple[int, bytes]]) -> Optional[str]:
        tx = Tx.from_hex(tx_hex)
        fee = prevouts[0][0] - sum(o.value for o in tx.outputs)
        if fee * 1000 < market_per_kvb * next(t for t in dists if t.tx.txid == tx.txid).vsize:
            return "min relay fee not met"
        node.sent.append((node.height, tx_hex, prevouts))
        return None

    node.broadcast = broadcast  # type: ignore[method-assign]
    run(node, lifecycle, 140)
    assert [tx for _, tx, _ in node.sent] == [dists[2].tx.to_hex()]
    base, x16 = dists[0].tx, dists[2].tx
    assert x16.outputs[:4] == base.outputs[:4]  # every client is paid the same
    assert base.outputs[4].value - x16.outputs[4].value == PARAMS.fee(dists[0].vsize, 16) - PARAMS.fee(dists[0].vsize)
    node.blocks[141] = [x16]
    run(node, lifecycle, 143)
    life = lifecycle.store.get(FID, LIFECYCLE)
    assert life is not None and life["funding_spent"] == {"height": 141, "txid": x16.txid, "by": "distribution"}
    assert life["distribution"]["variant"] == 2


def test_unconfirmed_distribution_is_replaced_by_the_next_variant() -> None:
    """Accepted but never mined (a fee market the mempool does not show): each variant gets
    escalate_blocks, then the next replaces it."""
    from superscalar.chain.variants import escalate_blocks

    kit, graph = factory()
    dists = graph.distributions()
    node, lifecycle, _ = lsp_setup(kit, graph, {})
    rec = lifecycle.store.get(FID, "factory")
    assert rec is not None
    rec["distribution_variants"] = [t.tx.to_hex() for t in dists[1:]]
    lifecycle.store.put(FID, "factory", rec)
    step = escalate_blocks(PARAMS.timeout_margin_blocks)
    run(node, lifecycle, 140 + 3 * step + 1)
    sent = [Tx.from_hex(tx).txid for _, tx, _ in node.sent]
    firsts = [sent.index(t.tx.txid) for t in dists]
    assert firsts == sorted(firsts) and [node.sent[i][0] for i in firsts] == [140 + k * step for k in range(4)]
