"""A client's policy refuses factories whose timelines, fees or amounts a dishonest LSP chose against it."""

from __future__ import annotations

import dataclasses

import pytest

from superscalar.bitcoin.tx import OutPoint
from superscalar.factory.params import FactoryParams, regtest_params
from superscalar.client.policy import ClientPolicy, refusal

from ..factory_kit import make_kit

MAINNET = ClientPolicy()
REGTEST = ClientPolicy.for_profile("regtest")


def test_the_lsps_own_profiles_pass_their_policies() -> None:
    for n in (1, 2, 64, 1024):
        assert refusal(MAINNET, FactoryParams(n_clients=n, start_height=800_000), 0, 100_000, 800_000) is None
        assert refusal(REGTEST, regtest_params(n, 150), 0, 100_000, 150) is None


@pytest.mark.parametrize("change, reason", [
    ({"start_height": 0}, "start height 0 is more than"),
    ({"start_height": 900_000}, "start height 900000 is more than"),
    ({"active_blocks": 100}, "active period 100 blocks is shorter"),
    ({"active_blocks": 100_000}, "active period 100000 blocks is longer"),
    ({"dying_blocks": 1}, "dying period 1 blocks is shorter"),
    ({"timeout_margin_blocks": 1}, "timeout margin 1 blocks"),
    ({"step_blocks": 1}, "DW step 1 blocks"),
    ({"feerate_per_kvb": 500_000}, "fee rate 500000"),
    ({"dust_limit_sat": 50_000}, "dust limit 50000"),
    ({"anchor_sat": 20_000}, "anchor 20000"),
    ({"lstock_sat": 10**12}, "L-stock 1000000000000 sat is above"),
    ({"lstock_csv_blocks": 1}, "L-stock delay 1 blocks"),
    ({"confirm_blocks": 1_000}, "confirmation allowance 1000"),
    ({"states_per_layer": 64}, "an exit takes up to"),
])
def test_each_bound_refuses_with_its_reason(change: dict[str, int], reason: str) -> None:
    params = dataclasses.replace(FactoryParams(n_clients=16, start_height=800_000), **change)
    why = refusal(MAINNET, params, 10_000, 100_000, 800_000)
    assert why is not None and reason in why, why


def test_start_height_is_judged_against_our_own_height() -> None:
    params = FactoryParams(n_clients=4, start_height=800_000)
    assert refusal(MAINNET, params, 0, 100_000, 800_006) is None
    assert "more than 6 blocks" in (refusal(MAINNET, params, 0, 100_000, 800_007) or "")
    assert refusal(MAINNET.with_overrides({"max_start_drift_blocks": 10}), params, 0, 100_000, 800_007) is None


def test_a_channel_below_dust_is_refused() -> None:
    params = regtest_params(2, 100)
    assert "dust" in (refusal(REGTEST, params, 0, 100, 100) or "")


def test_overrides_are_checked() -> None:
    with pytest.raises(ValueError):
        MAINNET.with_overrides({"no_such_bound": 1})
    with pytest.raises(ValueError):
        MAINNET.with_overrides({"min_active_blocks": -1})


@pytest.mark.parametrize("n", [1, 2, 9, 64])
def test_longest_exit_matches_the_graph(n: int) -> None:
    params = regtest_params(n, 100)
    graph = make_kit(params).factory.graph(OutPoint(bytes(32), 0))
    assert params.longest_exit_blocks == max(graph.exit_path(c).early_warning_blocks(params.confirm_blocks)
                                            for c in range(n))


def test_room_for_fee_variants_and_an_uncovered_exit() -> None:
    """The margin before the first timeout must give each distribution fee variant its turn; and a client
    with sale channels must be able to exit before the distribution without leaving the active period
    early (the LSP gets the dying period to roll it over)."""
    params = regtest_params(4, 150, timeout_margin_blocks=4)  # 4 variants need more than 4 blocks
    why = refusal(dataclasses.replace(REGTEST, min_timeout_margin_blocks=1), params, 0, 100_000, 150)
    assert why is not None and "fee variants no time" in why
    params = regtest_params(4, 150, dying_blocks=3)  # an exit of ~10 blocks cannot fit in the dying period
    why = refusal(REGTEST, params, 0, 100_000, 150)
    assert why is not None and "before the dying period" in why
