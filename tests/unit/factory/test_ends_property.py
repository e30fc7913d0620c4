"""Every way a factory ends pays each client at least its balance (ARCHITECTURE.md §3), over the pure
engine: random payments (balance changes within each channel), liquidity sales (a sale channel carved
from the client's leaf L-stock) and leaves, then each end:

- cooperative close: the close and each of its fee variants pay every client floor(balance / 1000) sat
  (nothing only below the dust limit, which the client agreed to), the extra fee from the LSP's output;
- rollover: the rolling clients' next factory holds each one's balance and at least its capacities,
  output 0 of the close is its funding, leavers are paid as in a close (or, when it cannot fit, the
  ladder closes instead: the close above);
- distribution: pays each client its leaf capacity; a client whose balance is above that (its sale
  channels) is exactly one the policy sends to its own exit before the distribution height.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from superscalar.crypto import musig2
from superscalar.bitcoin.tx import OutPoint, TxOut
from superscalar.factory.errors import FactoryError
from superscalar.factory.graph import (Factory, FactoryScripts, cooperative_close, fee_variants, liquidity_sale,
                                      rollover_close)
from superscalar.factory.params import ClientTerms, regtest_params
from superscalar.lsp.closing import CloseError, DoesNotFit, fit_lstock
from superscalar.lsp.creation import ClientSpec

from ...factory_kit import make_kit

FUNDING = OutPoint(bytes(range(32)), 0)
P2WSH = b"\x00\x20" + b"\x55" * 32

ops = st.lists(st.one_of(
    st.tuples(st.just("pay"), st.integers(0, 7), st.integers(-300_000_000, 300_000_000)),
    st.tuples(st.just("sell"), st.integers(0, 7), st.integers(1_000, 60_000)),
    st.tuples(st.just("leave"), st.integers(0, 7), st.just(0)),
), max_size=12)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 6), steps=ops)
def test_every_end_pays_every_client_its_balance(n: int, steps: list[tuple[str, int, int]]) -> None:
    kit = make_kit(regtest_params(n, 100))
    f = kit.factory
    params = f.params
    graph = f.graph(FUNDING)
    capacity = [t.capacity_sat for t in f.terms]  # leaf channel, then + each sale channel
    leaf_capacity = list(capacity)
    balance = [t.balance_sat * 1000 for t in f.terms]  # msat, over all the client's channels
    lstock = {leaf: graph.lstock(leaf) for leaf in {f.topology.leaf_of_client[c] for c in range(n)}}
    leaving: set[int] = set()
    for op, who, amount in steps:
        c = who % n
        if op == "pay":  # a payment to (+) or from (-) the client, within its channels
            balance[c] = min(max(balance[c] + amount, 0), capacity[c] * 1000)
        elif op == "sell":
            leaf = f.topology.leaf_of_client[c]
            try:
                sale = liquidity_sale(f, leaf, lstock[leaf], amount, P2WSH)
            except FactoryError:
                continue  # the L-stock cannot fund it: no sale
            lstock[leaf] = (sale.tx.outpoint(1), sale.tx.outputs[1])
            capacity[c] += amount
        else:
            leaving.add(c)

    # Cooperative close, with its fee variants.
    amounts = [params.payout_sat(b) for b in balance]
    close = cooperative_close(f, FUNDING, amounts)
    for tx in (close.tx, *(v.tx for v in fee_variants(f, close, FUNDING))):
        paid = {o.script_pubkey: o.value for o in tx.outputs}
        for c in range(n):
            owed = balance[c] // 1000
            assert paid.get(f.scripts.payouts[c], 0) == (owed if owed >= params.dust_limit_sat else 0)
            assert owed - paid.get(f.scripts.payouts[c], 0) < params.dust_limit_sat

    # Rollover (the rolling clients into one next factory), or the ladder's fallback: the close above.
    rolling = [c for c in range(n) if c not in leaving]
    if rolling:
        leaver_amounts = [params.payout_sat(balance[c]) if c in leaving else 0 for c in range(n)]
        specs = [ClientSpec(f"{c:02x}", balance[c] // 1000, capacity[c] - balance[c] // 1000) for c in rolling]
        try:
            b_params = fit_lstock(regtest_params(len(rolling), 100), specs, f, FUNDING, leaver_amounts)
        except (DoesNotFit, CloseError):
            b_params = None
        if b_params is not None:
            keys = [musig2.individual_pk((i + 1).to_bytes(32, "big")) for i in range(len(rolling) + 1)]
            b = Factory(b_params, [ClientTerms(s.balance_sat, s.inbound_sat) for s in specs], keys,
                        FactoryScripts((P2WSH,) * len(rolling), (P2WSH,) * len(rolling), P2WSH))
            roll = rollover_close(f, FUNDING, b.funding_output, leaver_amounts)
            assert roll.tx.outputs[0] == b.funding_output
            for k, c in enumerate(rolling):  # its whole balance, in a channel of at least its capacities
                assert b.terms[k].balance_sat * 1000 <= balance[c] < (b.terms[k].balance_sat + 1) * 1000
                assert b.terms[k].capacity_sat == capacity[c]
            for c in leaving:
                assert TxOut(leaver_amounts[c], f.scripts.payouts[c]) in roll.tx.outputs or leaver_amounts[c] == 0

    # Distribution: the leaf capacity; above it, the client's own exit comes first.
    dist = graph.distribution()
    for c in range(n):
        paid = dist.tx.outputs[c].value
        assert paid == leaf_capacity[c]
        uncovered = balance[c] > paid * 1000
        assert uncovered == (capacity[c] > leaf_capacity[c] and balance[c] > leaf_capacity[c] * 1000)
