"""The factory engine proven on a real regtest bitcoind, N = 8, every signer in this process.

Each test funds a fresh factory from bitcoind's wallet, signs its graph and checks what bitcoind
accepts, rejects (with the exact reason) and mines: amounts and txids are read back from the chain.
"""

from __future__ import annotations

from typing import Any

import pytest
from coincurve import PrivateKey

from superscalar.bitcoin.sighash import SIGHASH_ALL, segwit_v0_sighash
from superscalar.bitcoin.script import p2tr_script
from superscalar.bitcoin.taproot import xonly_from_seckey
from superscalar.bitcoin.tx import OutPoint, Tx, TxIn, TxOut
from superscalar.factory.graph import (
    FactoryGraph,
    cooperative_close,
    distribution_tx,
    liquidity_sale,
    timeout_sweep,
)
from superscalar.factory.params import regtest_params

from superscalar.protocol.rounds import (
    Expectation,
    Kind,
    advance_round,
    close_round,
    construction_round,
    sale_round,
)

from ..factory_kit import (
    Kit,
    advance_expectations,
    construction_expectations,
    lsp_sign_script_spend,
    make_kit,
    run_round,
)
from .chain import Chain

pytestmark = pytest.mark.bitcoind

N = 8


@pytest.fixture
def chain(bitcoind: Any) -> Chain:
    return Chain(bitcoind)


FID = b"\xfa" * 32


def funded_factory(chain: Chain) -> tuple[Kit, OutPoint, dict[str, Tx]]:
    """A factory funded from bitcoind's wallet, its tree and distribution signed by the ceremony."""
    kit = make_kit(regtest_params(N, chain.height))
    funding = kit.factory.funding_output
    outpoint, _ = chain.fund(funding.script_pubkey, funding.value)
    assert chain.output_on_chain(outpoint.txid_hex, outpoint.vout) == funding
    graph = kit.factory.graph(outpoint)
    signed = run_round(kit, construction_round(kit.factory, graph, FID, b"\x01" * 32), construction_expectations(kit))
    assert set(signed) == {t.tx.txid for t in (*graph.txs(), *graph.distributions())}
    return kit, outpoint, signed


def publish_after_wait(chain: Chain, tx: Tx, wait: int) -> None:
    """`tx`'s parent just confirmed: bitcoind refuses `tx` until `wait` blocks have passed (BIP-68),
    then takes it; mine it."""
    # BIP-68: valid in the block `wait` blocks after its parent's, so the mempool (which judges for
    # the next block) takes it once the tip is `wait - 1` blocks past the parent.
    if wait >= 2:
        chain.mine(wait - 2)
        chain.assert_rejected(tx, "non-BIP68-final")
        chain.mine(1)
    chain.assert_accepted(tx)
    chain.broadcast_and_confirm(tx)


def publish_path(chain: Chain, signed: dict[str, Tx], graph: FactoryGraph, client: int) -> None:
    for t in graph.path_txs(client):
        publish_after_wait(chain, signed[t.tx.txid], t.relative_wait)
        assert chain.output_on_chain(t.tx.txid, 0) == t.tx.outputs[0]


def spend_channel(chain: Chain, kit: Kit, graph: FactoryGraph, client: int) -> Tx:
    """Spend the client's confirmed channel output with the two funding keys (BOLT-3 2-of-2)."""
    outpoint = graph.channel_outpoint(client)
    prevout = chain.output_on_chain(outpoint.txid_hex, outpoint.vout)
    assert prevout == TxOut(kit.factory.terms[client].capacity_sat, kit.factory.scripts.channels[client])
    ws = kit.channel_witness_script(client)
    dest = p2tr_script(xonly_from_seckey(kit.client_channel_keys[client]))
    tx = Tx(2, (TxIn(outpoint),), (TxOut(prevout.value - 1_000, dest),))
    sighash = segwit_v0_sighash(tx, 0, ws, prevout.value, SIGHASH_ALL)
    keys = sorted([kit.lsp_channel_keys[client], kit.client_channel_keys[client]],
                  key=lambda k: PrivateKey(k).public_key.format())
    sigs = [PrivateKey(k).sign(sighash, hasher=None) + bytes([SIGHASH_ALL]) for k in keys]
    return tx.with_witness(0, [b"", *sigs, ws])


def test_a_client_exit_path_respects_every_timelock(chain: Chain) -> None:
    kit, funding, signed = funded_factory(chain)
    graph = kit.factory.graph(funding)
    client = 5
    path = graph.path_txs(client)
    # The root is static (one transaction, no wait); the leaf is the one Decker-Wattenhofer layer.
    assert [t.name for t in path] == ["node/0", "kickoff/3", "state/3"]
    assert [t.relative_wait for t in path] == [0, 0, 6]
    publish_path(chain, signed, graph, client)
    spend = spend_channel(chain, kit, graph, client)
    chain.assert_accepted(spend)
    chain.broadcast_and_confirm(spend)
    assert chain.output_on_chain(spend.txid, 0).value == kit.factory.terms[client].capacity_sat - 1_000


def test_b_newest_state_beats_an_old_one(chain: Chain) -> None:
    kit, funding, signed = funded_factory(chain)
    f = kit.factory
    client = 2
    old_state = f.initial_state()
    mid_state, node = f.advance(old_state, client)
    new_state, node2 = f.advance(mid_state, client)
    leaf = f.topology.leaf_of_client[client]
    assert node == node2 == leaf and new_state[leaf] == 2
    # Two state advances, each signed by the leaf's clients and the LSP through the ceremony.
    for i, (before, after) in enumerate(((old_state, mid_state), (mid_state, new_state))):
        rnd = advance_round(f, f.graph(funding, after), leaf, FID, bytes([0x10 + i]) * 32)
        signed.update(run_round(kit, rnd, advance_expectations(kit, before, leaf, funding)))
    old, new = f.graph(funding, old_state), f.graph(funding, new_state)
    # Above the leaf nothing changed; the leaf's state tx did, and waits less.
    assert [t.tx.txid for t in old.path_txs(client)[:2]] == [t.tx.txid for t in new.path_txs(client)[:2]]
    old_leaf, new_leaf = old.states[leaf], new.states[leaf]
    assert old_leaf.tx.txid != new_leaf.tx.txid
    assert (old_leaf.relative_wait, new_leaf.relative_wait) == (6, 2)

    for t in old.path_txs(client)[:2]:  # someone publishes the old path up to the leaf's kickoff
        publish_after_wait(chain, signed[t.tx.txid], t.relative_wait)
    old_signed, new_signed = signed[old_leaf.tx.txid], signed[new_leaf.tx.txid]
    chain.mine(1)
    chain.assert_rejected(old_signed, "non-BIP68-final")
    chain.assert_accepted(new_signed)
    chain.broadcast_and_confirm(new_signed)
    chain.mine(6)
    # The old state can never confirm now: its input is spent by the newest one.
    chain.assert_rejected(old_signed, "missing-inputs")
    assert chain.output_on_chain(new_signed.txid, client - f.topology.nodes[leaf].first_client) == TxOut(
        f.terms[client].capacity_sat, f.scripts.channels[client]
    )


def test_c_lsp_sweeps_state_output_only_after_timeout(chain: Chain) -> None:
    kit, funding, signed = funded_factory(chain)
    graph = kit.factory.graph(funding)
    for t in graph.path_txs(0)[:1]:  # the static root: the children's outputs appear
        publish_after_wait(chain, signed[t.tx.txid], t.relative_wait)
    node = 2
    lsp_dest = kit.factory.scripts.lsp_payout
    sweep = timeout_sweep(graph, node, lsp_dest)
    signed = lsp_sign_script_spend(sweep, kit.seckeys[0])
    timeout = kit.factory.params.timeout(1)
    assert sweep.tx.locktime == timeout
    assert chain.height < timeout
    chain.assert_rejected(signed, "non-final")
    chain.mine(timeout - chain.height)
    chain.assert_accepted(signed)
    chain.broadcast_and_confirm(signed)
    owned = graph.owned_outpoint(node)[1]
    assert chain.output_on_chain(signed.txid, 0) == TxOut(owned.value - sweep_fee(sweep), lsp_dest)


def sweep_fee(sweep: Any) -> int:
    return int(sweep.prevout.value - sweep.tx.outputs[0].value)


def test_d_cooperative_close_pays_everyone_exactly(chain: Chain) -> None:
    kit, funding, _ = funded_factory(chain)
    f = kit.factory
    amounts = [30_000 + 500 * i for i in range(N)]
    close = cooperative_close(f, funding, amounts)
    expect = {c: Expectation(Kind.CLOSE, f.keys.pubkeys[c + 1], payout_script=f.scripts.payouts[c], payout_sat=amounts[c],
                             funding=(funding, f.funding_output.value)) for c in range(N)}
    signed = run_round(kit, close_round(f, close, funding, FID, b"\x20" * 32), expect)[close.tx.txid]
    chain.assert_accepted(signed)
    chain.broadcast_and_confirm(signed)
    for i, amount in enumerate(amounts):
        assert chain.output_on_chain(signed.txid, i) == TxOut(amount, f.scripts.payouts[i])
    lsp_out = chain.output_on_chain(signed.txid, N)
    assert lsp_out.script_pubkey == f.scripts.lsp_payout
    assert lsp_out.value == f.funding_output.value - sum(amounts) - f.params.anchor_sat - close.fee
    assert close.fee == f.params.fee(signed.vsize)


def test_e_distribution_at_the_timeout_pays_everyone(chain: Chain) -> None:
    kit, funding, all_signed = funded_factory(chain)
    f = kit.factory
    dist = distribution_tx(f, funding)
    signed = all_signed[dist.tx.txid]
    assert signed.locktime == f.params.distribution_height
    chain.assert_rejected(signed, "non-final")
    chain.mine(f.params.distribution_height - chain.height)
    chain.assert_accepted(signed)
    chain.broadcast_and_confirm(signed)
    for i, terms in enumerate(f.terms):
        assert chain.output_on_chain(signed.txid, i) == TxOut(terms.capacity_sat, f.scripts.payouts[i])


def test_f_two_liquidity_sales_chain_from_the_lstock(chain: Chain) -> None:
    kit, funding, signed_tree = funded_factory(chain)
    f = kit.factory
    graph = f.graph(funding)
    client = 6
    leaf = f.topology.leaf_of_client[client]
    publish_path(chain, signed_tree, graph, client)
    new_channels = [bytes.fromhex("0020") + bytes([0xA0 + i]) * 32 for i in range(2)]
    sale1 = liquidity_sale(f, leaf, graph.lstock(leaf), 30_000, new_channels[0])
    sale2 = liquidity_sale(f, leaf, (sale1.tx.outpoint(1), sale1.tx.outputs[1]), 25_000, new_channels[1])
    for i, (sale, script, capacity) in enumerate(((sale1, new_channels[0], 30_000), (sale2, new_channels[1], 25_000))):
        # The buyer (client 6), the leaf's other client and the LSP sign the sale.
        expect = {c: Expectation(Kind.SALE, f.keys.pubkeys[c + 1], channel_script=script if c == client else None,
                                 capacity_sat=capacity if c == client else None)
                  for c in f.topology.nodes[leaf].clients}
        rnd = sale_round(f, sale, sale.tx.inputs[0].prevout, leaf, FID, bytes([0x30 + i]) * 32)
        signed = run_round(kit, rnd, expect)[sale.tx.txid]
        chain.assert_accepted(signed)
        chain.broadcast_and_confirm(signed)
        assert chain.output_on_chain(signed.txid, 0) == TxOut(capacity, script)
        assert chain.output_on_chain(signed.txid, 1) == sale.tx.outputs[1]
    lstock_left = chain.output_on_chain(sale2.tx.txid, 1).value
    assert lstock_left == f.params.lstock_sat - 30_000 - 25_000 - 2 * f.params.anchor_sat - sale1.fee - sale2.fee


def test_g_fee_variants_are_valid_and_pay_the_same(chain: Chain) -> None:
    """Every fee variant of the distribution, signed in the same ceremony, is accepted by bitcoind at the
    distribution height; the 64x one confirms, paying each client its capacity, its fee 64x the agreed."""
    kit, funding, all_signed = funded_factory(chain)
    f = kit.factory
    dists = f.graph(funding).distributions()
    assert len(dists) == 4
    chain.mine(f.params.distribution_height - chain.height)
    for d in dists:
        chain.assert_accepted(all_signed[d.tx.txid])
    top = all_signed[dists[-1].tx.txid]
    chain.broadcast_and_confirm(top)
    for i, terms in enumerate(f.terms):
        assert chain.output_on_chain(top.txid, i) == TxOut(terms.capacity_sat, f.scripts.payouts[i])
    fee = f.funding_output.value - sum(o.value for o in top.outputs)
    assert fee == f.params.fee(dists[0].vsize, 64)
