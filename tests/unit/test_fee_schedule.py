"""The exit fee schedule and deadline math (superscalar/fee_schedule.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from superscalar.chain.fee_schedule import (ESCALATION_BLOCKS, HTLC_RESOLVE_BLOCKS, child_fee, estimate_for,
                                      exit_deadline, feerate_of, lstock_deadlines, relative_wait, replacement_fee,
                                      target_feerate, tree_deadlines)

ESTIMATES = {2: 60_000, 6: 44_000, 12: 30_000, 100: 15_000}


def test_relative_wait_reads_bip68_blocks() -> None:
    assert relative_wait(6, 3) == 6
    assert relative_wait(0xFFFFFFFF, 3) == 0  # disable flag
    assert relative_wait((1 << 22) | 6, 2) == 0  # time-based: no block wait
    assert relative_wait(6, 1) == 0  # BIP-68 needs version 2+


def test_path_deadlines_leave_room_for_each_relative_lock() -> None:
    # a path of four: kickoff, state (wait 6), kickoff, state (wait 4); due by 200
    assert tree_deadlines([None, 0, 1, 2], [0, 6, 0, 4], 200) == [190, 196, 196, 200]


def test_tree_deadlines_take_the_tightest_child() -> None:
    # root with two children waiting 3 and 10
    assert tree_deadlines([None, 0, 0], [0, 3, 10], 100) == [90, 100, 100]
    with pytest.raises(ValueError):
        tree_deadlines([None, 2, 0], [0, 0, 0], 100)


def test_htlc_expiry_brings_the_deadline_forward() -> None:
    assert exit_deadline(500, None) == 500
    assert exit_deadline(500, 300) == 300 - HTLC_RESOLVE_BLOCKS
    assert exit_deadline(500, 900) == 500


def test_estimate_for_half_the_time_left() -> None:
    assert estimate_for(1000, ESTIMATES) == 15_000
    assert estimate_for(24, ESTIMATES) == 30_000
    assert estimate_for(13, ESTIMATES) == 44_000
    assert estimate_for(3, ESTIMATES) == 60_000
    assert estimate_for(10, {}) is None


def test_schedule_far_near_and_past_the_deadline() -> None:
    cap, floor = 100_000, 1_000
    assert target_feerate(1000, 15_000, floor, cap) == 15_000  # far: the estimate
    assert target_feerate(ESCALATION_BLOCKS, 15_000, floor, cap) == 15_000
    assert target_feerate(1, 60_000, floor, cap) == cap  # one block left: the cap
    assert target_feerate(0, 60_000, floor, cap) == cap
    assert target_feerate(-5, 60_000, floor, cap) == cap
    assert target_feerate(1000, None, floor, cap) == floor  # no estimate: the mempool minimum
    assert target_feerate(1000, 500_000, floor, cap) == cap  # never above the cap
    assert target_feerate(1000, 500, 5_000, 2_000) == 5_000  # the mempool minimum beats a lower cap


@given(st.integers(1, 10_000), st.integers(1, 500_000), st.integers(253, 50_000), st.integers(1_000, 1_000_000))
def test_schedule_grows_as_the_deadline_comes(left: int, estimate: int, floor: int, cap: int) -> None:
    now = target_feerate(left, estimate, floor, cap)
    later = target_feerate(left - 1, estimate, floor, cap)
    assert later >= now
    assert max(floor, min(estimate, cap)) <= now <= max(cap, floor)


def test_child_fee_pays_for_the_pair() -> None:
    # a 200 vB parent paying 400 sat; a 153 vB child; 10 sat/vB for both
    fee = child_fee(10_000, 200, 400, 153)
    assert fee == 3530 - 400
    assert feerate_of(400 + fee, 353) == 10_000
    assert child_fee(1_000, 200, 5_000, 153) == 153  # parent pays enough: at least 1 sat/vB of the child


def test_replacement_pays_more_than_it_replaces() -> None:
    assert replacement_fee(5_000, 3_000, 153, 1_000) == 5_000
    assert replacement_fee(3_000, 3_000, 153, 1_000) == 3_000 + 153 + 1
    assert replacement_fee(3_000, 3_000, 153, 100) == 3_000 + 16 + 1


def test_a_state_races_the_older_states_of_its_node() -> None:
    from superscalar.chain.fee_schedule import race_deadlines

    # node tx (no wait), kickoff (no wait), state waiting 288 blocks; kickoff confirmed at 1,000
    parents, waits = [None, 0, 1], [0, 0, 288]
    assert race_deadlines(parents, waits, [990, 1000, None], 144) == [None, None, 1000 + 288 + 143]
    assert race_deadlines(parents, waits, [990, None, None], 144) == [None, None, None]  # kickoff not on chain
    assert race_deadlines(parents, waits, [990, 1000, None], None) == [None, None, None]


def test_a_sale_must_confirm_before_the_lstock_delay_runs_out() -> None:
    """A sale spends an L-stock the LSP alone may take lstock_csv blocks after it confirmed: the sale's
    deadline is its parent's confirmation height + lstock_csv - 1 (sales chain: each on the one before)."""
    names = ["path/0", "path/1", "sale/1/0", "sale/1/1"]
    parents = [None, 0, 1, 2]
    assert lstock_deadlines(names, parents, [100, 110, None, None], 144) == [None, None, 253, None]
    assert lstock_deadlines(names, parents, [100, 110, 120, None], 144) == [None, None, 253, 263]
    assert lstock_deadlines(names, parents, [100, None, None, None], 144) == [None] * 4  # the leaf is not on chain
    assert lstock_deadlines(names, parents, [100, 110, None, None], None) == [None] * 4
