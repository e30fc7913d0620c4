"""The factory model: tree shape, DW counter, values and fees of every transaction, exits."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from superscalar.crypto.bip340 import schnorr_verify
from superscalar.bitcoin.script import p2a_script
from superscalar.bitcoin.tx import OutPoint
from superscalar.factory.dw import DWCounter
from superscalar.factory.errors import ExhaustedError, FactoryError, ParamsError
from superscalar.factory.graph import (
    TX_VERSION,
    Factory,
    cooperative_close,
    distribution_tx,
    liquidity_sale,
    timeout_sweep,
)
from superscalar.factory.params import ClientTerms, FactoryParams, regtest_params
from superscalar.factory.tree import build_topology

from ...factory_kit import make_kit, musig_sign

FUNDING = OutPoint(bytes(range(32)), 1)


@pytest.mark.parametrize("n,leaf_arity,arity", [(1, 2, 8), (2, 2, 2), (3, 1, 2), (9, 2, 4), (100, 2, 8), (1024, 2, 8)])
def test_topology_places_every_client_once_at_one_depth(n: int, leaf_arity: int, arity: int) -> None:
    topo = build_topology(n, leaf_arity, arity)
    leaves = [node for node in topo.nodes if node.is_leaf]
    assert sorted(c for leaf in leaves for c in leaf.clients) == list(range(n))
    assert len({leaf.depth for leaf in leaves}) == 1
    assert all(len(leaf.clients) <= leaf_arity for leaf in leaves)
    for node in topo.nodes:
        assert len(node.children) <= arity
        if node.children:
            kids = [topo.nodes[c] for c in node.children]
            assert [c for k in kids for c in k.clients] == list(node.clients)
    for c in range(n):
        path = topo.path(c)
        assert path[0] == 0 and c in topo.nodes[path[-1]].clients


def test_dw_counter_is_an_odometer() -> None:
    dw = DWCounter(layers=3, states_per_layer=4, step_blocks=144)
    assert [dw.nsequence(i) for i in range(4)] == [432, 288, 144, 0]
    assert dw.max_epoch == 63
    for e in range(64):
        assert dw.epoch(dw.digits(e)) == e
    assert dw.advance((0, 0, 3)) == ((0, 1, 0), 1)
    assert dw.advance((2, 3, 3)) == ((3, 0, 0), 0)
    assert dw.advance((0, 0, 0)) == ((0, 0, 1), 2)
    assert dw.advances_left(dw.epoch((3, 3, 2))) == 1
    with pytest.raises(ExhaustedError):
        dw.advance((3, 3, 3))


def test_params_are_validated_with_named_errors() -> None:
    with pytest.raises(ParamsError, match="leaf_arity"):
        FactoryParams(n_clients=4, start_height=0, leaf_arity=3)
    with pytest.raises(ParamsError, match="BIP-68"):
        FactoryParams(n_clients=4, start_height=0, step_blocks=30_000)
    with pytest.raises(ParamsError, match="n_clients"):
        FactoryParams(n_clients=0, start_height=0)
    with pytest.raises(ParamsError, match="anchor"):
        FactoryParams(n_clients=4, start_height=0, anchor_sat=0)
    p = FactoryParams(n_clients=5, start_height=800_000)
    assert FactoryParams.deserialize(p.serialize()) == p
    with pytest.raises(ParamsError):
        FactoryParams.deserialize(b'{"n_clients": 1}')
    # A child's timeout is earlier than its parent's, and all come after the distribution height.
    q = FactoryParams(n_clients=1024, start_height=800_000)
    timeouts = [q.timeout(d) for d in range(q.height + 1)]
    assert timeouts == sorted(timeouts, reverse=True) and timeouts[-1] > q.distribution_height


def check_graph(n: int, params: FactoryParams) -> None:
    kit = make_kit(params)
    f = kit.factory
    graph = f.graph(FUNDING)
    for t in graph.txs():
        tx = t.tx
        assert tx.version == TX_VERSION
        assert len(tx.inputs) == 1
        assert tx.outputs[-1].script_pubkey == p2a_script() and tx.outputs[-1].value == params.anchor_sat
        assert sum(o.value for o in tx.outputs) + t.fee == t.prevout.value
        assert t.fee == params.fee(t.vsize)
        assert all(o.value >= params.dust_limit_sat for o in tx.outputs[:-1])
    # Every client's channel appears exactly once, with its capacity.
    for c in range(n):
        op = graph.channel_outpoint(c)
        leaf = graph.states[f.topology.leaf_of_client[c]]
        assert op.txid == leaf.tx.txid_bytes
        assert leaf.tx.outputs[op.vout].value == f.terms[c].capacity_sat


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 80), leaf_arity=st.sampled_from([1, 2]), arity=st.integers(2, 9), feerate=st.integers(1000, 20_000))
def test_amounts_balance_in_every_transaction(n: int, leaf_arity: int, arity: int, feerate: int) -> None:
    check_graph(n, regtest_params(n, 500, leaf_arity=leaf_arity, arity=arity, feerate_per_kvb=feerate))


def test_output_keys_derived_on_threads_equal_serial_ones() -> None:
    """Factory.graph derives its output keys on two threads: the same graph as deriving them one
    by one in this thread (every txid, output and signer key aggregate)."""
    kit = make_kit(regtest_params(40, 500, arity=3))
    f = kit.factory
    serial = Factory(f.params, f.terms, f.keys.pubkeys, f.scripts)
    serial.derive_outputs(threads=1)
    threaded = Factory(f.params, f.terms, f.keys.pubkeys, f.scripts)
    threaded.derive_outputs(threads=2)
    for node in range(len(f.topology.nodes)):
        assert threaded.owned_spend(node) == serial.owned_spend(node)
        assert threaded.kickoff_spend(node) == serial.kickoff_spend(node)
    a, b = serial.graph(FUNDING), threaded.graph(FUNDING)
    assert [t.tx.serialize() for t in a.txs()] == [t.tx.serialize() for t in b.txs()]


def test_signed_graph_verifies_under_each_output_key() -> None:
    kit = make_kit(regtest_params(8, 100))
    graph = kit.factory.graph(FUNDING)
    for t in [*graph.txs(), graph.distribution()]:
        signed = musig_sign(t, kit.seckeys)
        [sig] = signed.inputs[0].witness
        assert schnorr_verify(t.sighash, t.prevout.script_pubkey[2:], sig)


def test_state_advance_changes_only_the_affected_subtree() -> None:
    kit = make_kit(regtest_params(8, 100, states_per_layer=2, dw_layers=2, arity=2))
    f = kit.factory
    assert (f.params.height, f.params.layers, f.params.first_dw_depth) == (2, 2, 1)
    s0 = f.initial_state()
    s1, changed = f.advance(s0, 0)
    leaf0 = f.topology.leaf_of_client[0]
    assert changed == leaf0 and s1[leaf0] == 1
    g0, g1 = f.graph(FUNDING, s0), f.graph(FUNDING, s1)
    differ = {t.name for t, u in zip(g0.txs(), g1.txs()) if t.tx.txid != u.tx.txid}
    assert differ == {f"state/{leaf0}"}
    # The leaf layer is exhausted: the next advance carries into the layer above, re-signing its subtree.
    s2, changed = f.advance(s1, 0)
    parent = f.topology.nodes[leaf0].parent
    assert changed == parent and s2[parent] == 1 and s2[leaf0] == 0 and s2[0] == 0
    assert f.advances_left(s2, 0) == 1
    s3, _ = f.advance(s2, 0)
    with pytest.raises(ExhaustedError):
        f.advance(s3, 0)


def test_static_nodes_are_one_transaction_never_resigned() -> None:
    params = regtest_params(8, 100, states_per_layer=3, arity=2)  # dw_layers 1: only the leaves are DW nodes
    kit = make_kit(params)
    f = kit.factory
    assert (params.height, params.layers, params.first_dw_depth) == (2, 1, 2)
    graph = f.graph(FUNDING)
    for n in f.topology.nodes:
        if n.is_leaf:
            assert [t.name for t in graph.node_txs(n.index)] == [f"kickoff/{n.index}", f"state/{n.index}"]
        else:
            [tx] = graph.node_txs(n.index)
            assert tx.name == f"node/{n.index}" and tx.relative_wait == 0 and graph.kickoffs[n.index] is None
    path = graph.path_txs(0)
    assert [t.name for t in path] == ["node/0", f"node/{path[1].name.split('/')[1]}", *[t.name for t in path[2:]]]
    assert len(path) == params.path_offset(params.height) + 2 == 4
    # Every transaction balances and spends its parent's output; both advances touch only leaf 0's state.
    s1, changed = f.advance(f.initial_state(), 0)
    s2, _ = f.advance(s1, 0)
    assert changed == f.topology.leaf_of_client[0]
    with pytest.raises(ExhaustedError):
        f.advance(s2, 0)
    g2 = f.graph(FUNDING, s2)
    assert {t.name for t, u in zip(graph.txs(), g2.txs()) if t.tx.txid != u.tx.txid} == {f"state/{changed}"}
    with pytest.raises(FactoryError, match="static"):
        f.graph(FUNDING, (1,) + f.initial_state()[1:])
    for t in graph.txs():
        signed = musig_sign(t, kit.seckeys)
        assert schnorr_verify(t.sighash, t.prevout.script_pubkey[2:], signed.inputs[0].witness[0])


@pytest.mark.parametrize("states,ewt", [(4, 462), (3, 318), (2, 174)])
def test_mainnet_exit_of_1024_fits_the_target(states: int, ewt: int) -> None:
    """Mainnet shape at N = 1,024: three static levels and one DW layer of 144-block steps."""
    params = FactoryParams(n_clients=1024, start_height=800_000, states_per_layer=states)
    kit = make_kit(params, [ClientTerms(100_000, 400_000)] * 1024)
    graph = kit.factory.graph(FUNDING)
    exits = [graph.exit_path(c) for c in range(0, 1024, 37)]
    worst = max(exits, key=lambda e: e.early_warning_blocks(params.confirm_blocks))
    assert params.step_blocks >= 144 and (params.height, params.layers) == (3, 1)
    assert len(worst.txs) == 3 + 2
    assert sum(worst.waits) == params.step_blocks * (states - 1)
    assert worst.early_warning_blocks(params.confirm_blocks) == sum(worst.waits) + 6 * len(worst.txs) == ewt
    assert params.longest_exit_blocks == ewt <= 480
    assert worst.vbytes <= 2_900


def test_distribution_close_sweep_and_sale_balance() -> None:
    kit = make_kit(regtest_params(8, 100))
    f = kit.factory
    graph = f.graph(FUNDING)
    dist = distribution_tx(f, FUNDING)
    assert dist.tx.locktime == f.params.distribution_height
    assert [o.value for o in dist.tx.outputs[:8]] == [t.capacity_sat for t in f.terms]
    assert sum(o.value for o in dist.tx.outputs) + dist.fee == f.funding_output.value
    close = cooperative_close(f, FUNDING, [10_000] * 8)
    assert [o.value for o in close.tx.outputs[:8]] == [10_000] * 8
    with pytest.raises(FactoryError):
        cooperative_close(f, FUNDING, [10] * 8)
    sweep = timeout_sweep(graph, 1, f.scripts.lsp_payout)
    assert sweep.tx.locktime == f.params.timeout(1)
    leaf = f.topology.leaf_of_client[0]
    sale = liquidity_sale(f, leaf, graph.lstock(leaf), 20_000, f.scripts.channels[0])
    assert sale.tx.outputs[0].value == 20_000
    assert sum(o.value for o in sale.tx.outputs) + sale.fee == f.params.lstock_sat
    with pytest.raises(FactoryError, match="L-stock"):
        liquidity_sale(f, leaf, graph.lstock(leaf), f.params.lstock_sat, f.scripts.channels[0])
