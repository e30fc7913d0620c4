"""The arithmetic of a JIT channel's migration (client/migration.py): how much one circular payment moves."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from superscalar.client.migration import MIN_MOVE_MSAT, forward_fee_msat, move_amount_msat

UPDATE = {"fee_base_msat": 1, "fee_proportional_millionths": 10, "cltv_expiry_delta": 6}


def test_fee_is_bolt7_base_plus_proportional() -> None:
    assert forward_fee_msat(UPDATE, 117_746_822) == 1 + 1_177
    assert forward_fee_msat({}, 5_000_000) == 0


def test_move_is_bounded_by_both_channels() -> None:
    # all of the JIT channel fits: everything but the fee goes
    assert move_amount_msat(117_748_000, 300_000_000, UPDATE) == 117_748_000 - forward_fee_msat(UPDATE, 117_748_000)
    # the factory channel can take less: that much goes, the rest waits
    assert move_amount_msat(117_748_000, 50_000_000, UPDATE) == 50_000_000
    # too little to be worth an HTLC
    assert move_amount_msat(MIN_MOVE_MSAT - 1, 10**9, UPDATE) == 0
    assert move_amount_msat(10**9, MIN_MOVE_MSAT - 1, UPDATE) == 0


@given(st.integers(0, 10**12), st.integers(0, 10**12), st.integers(0, 10_000), st.integers(0, 100_000))
def test_move_never_overspends(spendable: int, receivable: int, base: int, ppm: int) -> None:
    update = {"fee_base_msat": base, "fee_proportional_millionths": ppm}
    amount = move_amount_msat(spendable, receivable, update)
    assert amount == 0 or (MIN_MOVE_MSAT <= amount <= receivable and amount + forward_fee_msat(update, amount) <= spendable)

