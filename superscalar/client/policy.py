"""What a client accepts from an LSP: bounds on a factory's timelines, fees and amounts, checked
against the client's own block height before it signs anything.

A proposal that parses can still be a trap: a `start_height` of 0 makes every timeout already past
(the LSP could sweep the funding output through its timeout leaf as soon as it confirms), a dying
period of one block leaves no time to come online, a fee rate far above the market burns the tree's
value. `ClientPolicy` holds the client's limits (each one a plugin option); `refusal` says why an
invitation is refused, or None.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from ..factory.graph import FEE_VARIANT_MULTIPLIERS
from ..factory.lifecycle import escalate_blocks, uncovered_exit_height
from ..factory.params import P2A_DUST_SAT, SEGWIT_DUST_SAT, FactoryParams


@dataclass(frozen=True, slots=True)
class ClientPolicy:
    """A client's limits. Defaults are for mainnet; `for_profile("regtest")` scales them down."""

    max_start_drift_blocks: int = 6  # |start_height - our height|
    min_active_blocks: int = 2016  # two weeks of use before the dying period
    max_active_blocks: int = 12_960  # ~90 days: how long funds may sit in one factory
    min_dying_blocks: int = 144  # a day to come online and move funds out
    min_timeout_margin_blocks: int = 72  # distribution valid this long before any timeout
    min_step_blocks: int = 72  # a DW step: time to publish a newer state before an older one matures
    min_feerate_per_kvb: int = 1_000
    max_feerate_per_kvb: int = 100_000
    max_dust_limit_sat: int = 1_000
    max_anchor_sat: int = 1_000
    max_lstock_sat: int = 1_000_000_000  # 10 BTC: an L-stock output beyond this is not credible
    min_lstock_csv_blocks: int = 72  # the LSP's delay before it may take a leaf's L-stock alone
    # An exit longer than this makes our invoices (final CLTV = EWT + 2 confirmations + 12, see
    # htlc_timing.py) unpayable under LDK's 1,008-block cap once a payer's route adds ~250 blocks.
    max_early_warning_blocks: int = 720
    max_confirm_blocks: int = 144
    funding_timeout_blocks: int = 144  # blocks after signing for the funding output to confirm
    # Frozen after our partial signature of a close that nobody completes (a withheld signature, an
    # LSP gone silent): after this many blocks we exit (client/closing.py).
    max_close_wait_blocks: int = 144

    @classmethod
    def for_profile(cls, profile: str) -> "ClientPolicy":
        if profile != "regtest":
            return cls()
        return cls(min_active_blocks=10, max_active_blocks=2_000, min_dying_blocks=3, min_timeout_margin_blocks=2,
                   min_step_blocks=1, min_lstock_csv_blocks=2, max_early_warning_blocks=500, max_confirm_blocks=6,
                   funding_timeout_blocks=6, max_close_wait_blocks=6)

    def with_overrides(self, values: dict[str, int]) -> "ClientPolicy":
        known = {f.name for f in dataclasses.fields(self)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown client policy fields: {sorted(unknown)}")
        if any(not isinstance(v, int) or v < 0 for v in values.values()):
            raise ValueError("client policy values are non-negative integers")
        return dataclasses.replace(self, **values)


def refusal(policy: ClientPolicy, params: FactoryParams, balance_sat: int, inbound_sat: int,
            height: int) -> Optional[str]:
    """Why a client at block `height` refuses a factory of `params` with this channel, or None."""
    p = policy
    checks: tuple[tuple[bool, str], ...] = (
        (abs(params.start_height - height) <= p.max_start_drift_blocks,
         f"start height {params.start_height} is more than {p.max_start_drift_blocks} blocks from ours ({height})"),
        (params.active_blocks >= p.min_active_blocks,
         f"active period {params.active_blocks} blocks is shorter than our minimum {p.min_active_blocks}"),
        (params.active_blocks <= p.max_active_blocks,
         f"active period {params.active_blocks} blocks is longer than our maximum {p.max_active_blocks}"),
        (params.dying_blocks >= p.min_dying_blocks,
         f"dying period {params.dying_blocks} blocks is shorter than our minimum {p.min_dying_blocks}"),
        (params.timeout_margin_blocks >= p.min_timeout_margin_blocks,
         f"timeout margin {params.timeout_margin_blocks} blocks is below our minimum {p.min_timeout_margin_blocks}"),
        (params.start_height < params.expiry_height < params.distribution_height < params.timeout(params.height)
         and params.timeout(params.height) > height,
         "every timeout must come after the distribution height and in the future"),
        (params.step_blocks >= p.min_step_blocks,
         f"DW step {params.step_blocks} blocks is below our minimum {p.min_step_blocks}"),
        (p.min_feerate_per_kvb <= params.feerate_per_kvb <= p.max_feerate_per_kvb,
         f"fee rate {params.feerate_per_kvb} sat/kvB is outside {p.min_feerate_per_kvb}..{p.max_feerate_per_kvb}"),
        (SEGWIT_DUST_SAT <= params.dust_limit_sat <= p.max_dust_limit_sat,
         f"dust limit {params.dust_limit_sat} sat is outside {SEGWIT_DUST_SAT}..{p.max_dust_limit_sat}"),
        (P2A_DUST_SAT <= params.anchor_sat <= p.max_anchor_sat,
         f"anchor {params.anchor_sat} sat is outside {P2A_DUST_SAT}..{p.max_anchor_sat}"),
        (params.lstock_sat <= p.max_lstock_sat, f"L-stock {params.lstock_sat} sat is above {p.max_lstock_sat}"),
        (params.lstock_csv_blocks >= p.min_lstock_csv_blocks,
         f"L-stock delay {params.lstock_csv_blocks} blocks is below our minimum {p.min_lstock_csv_blocks}"),
        (params.confirm_blocks <= p.max_confirm_blocks,
         f"confirmation allowance {params.confirm_blocks} blocks is above {p.max_confirm_blocks}"),
        (params.longest_exit_blocks <= p.max_early_warning_blocks,
         f"an exit takes up to {params.longest_exit_blocks} blocks, more than our {p.max_early_warning_blocks}"),
        (balance_sat + inbound_sat >= params.dust_limit_sat, "channel below the dust limit"),
        # Fees far above the agreed rate: every fee variant of the distribution gets its turn to confirm
        # before the first timeout lets the LSP take the funding output's subtree.
        ((len(FEE_VARIANT_MULTIPLIERS) + 1) * escalate_blocks(params.timeout_margin_blocks)
         < params.timeout_margin_blocks,
         f"timeout margin {params.timeout_margin_blocks} blocks leaves the distribution's fee variants no time"),
        # A client whose sales the distribution does not cover exits before it: that must come after the
        # active period, so the LSP has the dying period to roll it over first.
        (uncovered_exit_height(params, params.longest_exit_blocks) >= params.expiry_height,
         "an exit before the distribution would have to start before the dying period"),
    )
    return next((why for ok, why in checks if not ok), None)
