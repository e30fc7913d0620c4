"""Factory parameters: the shape of the tree, its Decker-Wattenhofer layers, lifetime and fees.

`FactoryParams` holds what every participant must agree on and can check; `ClientTerms` holds one
client's amounts. Both validate on construction and raise `ParamsError` with a message naming the field.

Defaults are sized for mainnet; `REGTEST` keeps timelocks short so tests run in seconds.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from .errors import ParamsError

# BIP-68: relative locks in blocks use the low 16 bits of nSequence.
MAX_RELATIVE_BLOCKS = 0xFFFF
# BIP-65 / consensus: nLockTime values below this are block heights.
LOCKTIME_THRESHOLD = 500_000_000
# Bitcoin Core policy (v28+): the P2A output is dust below 240 sat (BOLT-3 "anchor output" dust limit).
P2A_DUST_SAT = 240
# Bitcoin Core policy: segwit v0/v1 outputs are dust below 330 sat at the default dust relay fee.
SEGWIT_DUST_SAT = 330
# Lightning: the most clients one factory tree is built for (the scale target).
MAX_CLIENTS = 1024


@dataclass(frozen=True, slots=True)
class ClientTerms:
    """One client's agreed amounts: its own balance and the LSP's side (its inbound) in its channel."""

    balance_sat: int
    inbound_sat: int

    def __post_init__(self) -> None:
        if self.balance_sat < 0 or self.inbound_sat < 0:
            raise ParamsError("client amounts must not be negative")

    @property
    def capacity_sat(self) -> int:
        return self.balance_sat + self.inbound_sat


@dataclass(frozen=True, slots=True)
class FactoryParams:
    """What every participant agrees on before signing.

    Tree: clients are grouped `leaf_arity` to a leaf; nodes are grouped `arity` to a parent until one
    root remains, so every leaf sits at the same depth. Only the lowest `dw_layers` depths are
    Decker-Wattenhofer layers (a kickoff and a state transaction per node, re-signable); the depths
    above are static ("static near root"): one transaction per node, never re-signed, no relative wait.
    A re-sign happens where clients change their channels, which is at the leaves; liquidity sales chain
    out of a leaf's L-stock and advance no counter. So an exit waits the DW delay of `dw_layers` layers,
    not of the tree's height.
    Timelines (absolute block heights, all derived from `start_height`):
      expiry = start + active_blocks           the factory stops taking updates; dying period begins
      distribution = expiry + dying_blocks     nLockTime of the distribution transaction
      timeout(depth) = distribution + timeout_margin_blocks + (height - depth) * stagger_blocks
    so the funding output (depth 0) times out last and a child's timeout is earlier than its parent's,
    yet every timeout comes after the distribution transaction is valid.
    """

    n_clients: int
    start_height: int
    leaf_arity: int = 2
    arity: int = 8
    dw_layers: int = 1
    states_per_layer: int = 4
    step_blocks: int = 144
    active_blocks: int = 4320
    dying_blocks: int = 432
    timeout_margin_blocks: int = 144
    stagger_blocks: int = 144
    lstock_csv_blocks: int = 144
    lstock_sat: int = 100_000
    feerate_per_kvb: int = 2_000
    anchor_sat: int = P2A_DUST_SAT
    dust_limit_sat: int = SEGWIT_DUST_SAT
    confirm_blocks: int = 6

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ParamsError(what)

        for f in dataclasses.fields(self):
            need(isinstance(getattr(self, f.name), int) and not isinstance(getattr(self, f.name), bool),
                 f"{f.name} must be an integer")
        need(1 <= self.n_clients <= MAX_CLIENTS, f"n_clients must be 1..{MAX_CLIENTS}")
        need(self.leaf_arity in (1, 2), "leaf_arity must be 1 or 2")
        need(2 <= self.arity <= 64, "arity must be 2..64")
        need(1 <= self.dw_layers <= 8, "dw_layers must be 1..8")
        need(2 <= self.states_per_layer <= 256, "states_per_layer must be 2..256")
        need(self.step_blocks >= 1, "step_blocks must be at least 1")
        need(self.step_blocks * (self.states_per_layer - 1) <= MAX_RELATIVE_BLOCKS,
             "step_blocks * (states_per_layer - 1) exceeds BIP-68's 16-bit block count")
        need(self.active_blocks >= 1 and self.dying_blocks >= 1, "active and dying periods must be positive")
        need(self.timeout_margin_blocks >= 1, "timeout_margin_blocks must be at least 1")
        need(self.stagger_blocks >= 1, "stagger_blocks must be at least 1")
        need(1 <= self.lstock_csv_blocks <= MAX_RELATIVE_BLOCKS, "lstock_csv_blocks must be 1..65535")
        need(self.start_height >= 0, "start_height must not be negative")
        need(self.timeout(0) < LOCKTIME_THRESHOLD, "timeouts must be block heights below 500,000,000")
        need(self.feerate_per_kvb >= 1_000, "feerate_per_kvb must be at least 1000 (1 sat/vB) so each tx relays")
        need(self.anchor_sat >= P2A_DUST_SAT, f"anchor_sat must be at least {P2A_DUST_SAT} (P2A dust)")
        need(self.dust_limit_sat >= SEGWIT_DUST_SAT, f"dust_limit_sat must be at least {SEGWIT_DUST_SAT}")
        need(self.lstock_sat >= self.dust_limit_sat, "lstock_sat must not be below the dust limit")
        need(self.confirm_blocks >= 1, "confirm_blocks must be at least 1")

    # --- derived values ---

    @property
    def height(self) -> int:
        """Depth of the leaves (0 when the root is a leaf)."""
        leaves = -(-self.n_clients // self.leaf_arity)
        depth = 0
        while leaves > 1:
            leaves = -(-leaves // self.arity)
            depth += 1
        return depth

    @property
    def layers(self) -> int:
        """Decker-Wattenhofer layers: the lowest `dw_layers` depths (all of them in a shallower tree)."""
        return min(self.dw_layers, self.height + 1)

    @property
    def first_dw_depth(self) -> int:
        """Depths above this one are static: one transaction per node, state index always 0."""
        return self.height + 1 - self.layers

    def is_static(self, depth: int) -> bool:
        return depth < self.first_dw_depth

    def path_offset(self, depth: int) -> int:
        """Index in a client's exit path of the first transaction of its node at `depth`: one
        transaction per static node above it, two (kickoff, state) per DW node."""
        static = min(depth, self.first_dw_depth)
        return static + 2 * (depth - static)

    @property
    def expiry_height(self) -> int:
        return self.start_height + self.active_blocks

    @property
    def distribution_height(self) -> int:
        return self.expiry_height + self.dying_blocks

    def timeout(self, depth: int) -> int:
        """Absolute timeout of outputs owned by nodes at `depth` (0: the funding output)."""
        if not 0 <= depth <= self.height:
            raise ParamsError(f"depth {depth} outside the tree")
        return self.distribution_height + self.timeout_margin_blocks + (self.height - depth) * self.stagger_blocks

    @property
    def longest_exit_blocks(self) -> int:
        """The early-warning time of a path at state 0, where every DW state waits its longest: per
        static node one transaction allowed `confirm_blocks` to confirm; per DW layer a kickoff and a
        state transaction, each allowed `confirm_blocks`, and the state's relative wait of
        step × (states − 1). `ExitPath.early_warning_blocks` gives the same figure for an actual path
        (tested)."""
        dw = self.layers * (self.step_blocks * (self.states_per_layer - 1) + 2 * self.confirm_blocks)
        return self.first_dw_depth * self.confirm_blocks + dw

    def fee(self, vsize: int, multiplier: int = 1) -> int:
        """The pre-agreed fee of a transaction of `vsize` vbytes (at `multiplier` times the agreed rate,
        for a fee variant), rounded up."""
        return -(-vsize * self.feerate_per_kvb * multiplier // 1000)

    def payout_sat(self, balance_msat: int) -> int:
        """What a cooperative close (or a rollover, to a leaver) pays a client whose channels hold
        `balance_msat`: the whole sats, or nothing below the dust limit (no relayable output can carry
        it; BOLT-3 trims such an output from a commitment the same way). The client agreed to the dust
        limit when it joined, and checks against this same rule, so one client's dust never makes a
        close or a rollover impossible for the others."""
        sat = balance_msat // 1000
        return sat if sat >= self.dust_limit_sat else 0

    # --- encoding (what crosses the wire inside a proposal) ---

    def serialize(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    @lru_cache(maxsize=64)  # immutable, and every proposal of a factory carries the same bytes
    def deserialize(cls, data: bytes) -> "FactoryParams":
        try:
            raw: Any = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise ParamsError(f"factory parameters are not valid JSON: {e}") from None
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(raw, dict) or set(raw) != names:
            raise ParamsError("factory parameters must have exactly the known fields")
        return cls(**raw)


def regtest_params(n_clients: int, start_height: int, **overrides: int) -> FactoryParams:
    """A profile for regtest: every timelock a few blocks, so whole lifecycles fit in one test."""
    values: dict[str, int] = dict(
        step_blocks=2,
        active_blocks=30,
        dying_blocks=10,
        timeout_margin_blocks=5,
        stagger_blocks=3,
        lstock_csv_blocks=5,
        lstock_sat=100_000,
        feerate_per_kvb=2_000,
        confirm_blocks=1,
    )
    values.update(overrides)
    return FactoryParams(n_clients=n_clients, start_height=start_height, **values)
