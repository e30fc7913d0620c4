"""A client whose balance is below the dust limit is paid nothing by a close (FactoryParams.payout_sat),
so its dust never makes a close or a rollover impossible; both sides apply the same rule."""

from __future__ import annotations

import pytest

from superscalar.bitcoin.tx import OutPoint
from superscalar.factory.errors import FactoryError
from superscalar.factory.graph import cooperative_close
from superscalar.factory.params import regtest_params
from superscalar.protocol.rounds import Expectation, Kind, check_close

from ...factory_kit import make_kit

FUNDING = OutPoint(bytes(range(32)), 0)


def test_dust_balance_is_paid_nothing_and_the_close_still_builds() -> None:
    kit = make_kit(regtest_params(4, 100))
    f = kit.factory
    dust = f.params.dust_limit_sat
    assert f.params.payout_sat(dust * 1000 - 1) == 0 and f.params.payout_sat(dust * 1000 + 999) == dust
    balances_msat = [50_000_123, (dust - 1) * 1000 + 999, 0, 70_000_000]
    with pytest.raises(FactoryError, match="dust"):  # whole sats for everyone: an output below dust
        cooperative_close(f, FUNDING, [b // 1000 for b in balances_msat])
    amounts = [f.params.payout_sat(b) for b in balances_msat]
    close = cooperative_close(f, FUNDING, amounts)
    assert amounts == [50_000, 0, 0, 70_000]
    # The dust client's own check accepts it (it expects nothing); the others are paid their balance.
    for c, b in enumerate(balances_msat):
        check_close(Expectation(Kind.CLOSE, f.keys.pubkeys[c + 1], payout_script=f.scripts.payouts[c],
                                payout_sat=f.params.payout_sat(b), funding=(FUNDING, f.funding_output.value)), close.tx)
    paid = {o.script_pubkey: o.value for o in close.tx.outputs}
    assert f.scripts.payouts[1] not in paid and paid[f.scripts.payouts[0]] == 50_000
