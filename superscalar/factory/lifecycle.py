"""A factory's life as heights and recorded facts (pure: no I/O, no clock).

Phases, from the parameters' timelines (`FactoryParams`) and what was seen on chain:

  active        height < expiry_height: channels work, the LSP takes updates
  dying         expiry_height <= height < distribution_height: clients come online to be rolled over
                or closed cooperatively; the LSP must do it before the distribution height
  distributing  height >= distribution_height and the funding output still unspent: the signed
                distribution transaction is valid and every participant that holds it broadcasts it
  closing       a cooperative close is recorded (signed or broadcast) but not confirmed
  closed        the cooperative close confirmed
  distributed   the distribution transaction confirmed
  exiting       a tree transaction is on chain (the funding output was spent by neither the
                distribution nor the close), or an exit is recorded

The record contract for a cooperative close (written by the close ceremony, read here):
``record["close"] = {"tx": hex, "status": "signed"|"broadcast"|"confirmed", "confirmed_height": int|None}``.

A client must be online (`client_online_deadline`) before the distribution height while the tree is
off chain (to be rolled over or closed cooperatively; if it is not, the distribution pays it), and,
once a tree transaction confirmed, early enough that its whole path confirms before its subtree's
timeout: timeout(leaf depth) minus the path's early-warning time.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional

from ..crypto import bip340
from ..bitcoin.tx import Tx
from .errors import FactoryError
from .graph import FEE_VARIANT_MULTIPLIERS, ScriptSpend
from .params import FactoryParams


class Phase(str, enum.Enum):
    ACTIVE = "active"
    DYING = "dying"
    DISTRIBUTING = "distributing"
    CLOSING = "closing"
    CLOSED = "closed"
    DISTRIBUTED = "distributed"
    EXITING = "exiting"


# Cooperative close statuses (record["close"]["status"]).
CLOSE_SIGNED, CLOSE_BROADCAST, CLOSE_CONFIRMED = "signed", "broadcast", "confirmed"


@dataclass(frozen=True, slots=True)
class Facts:
    """What a node recorded about one factory's outputs on chain."""

    close_status: Optional[str] = None  # record["close"]["status"], if a close is recorded
    distribution_confirmed_height: Optional[int] = None
    tree_confirmed_height: Optional[int] = None  # first block in which a tree transaction confirmed
    exit_recorded: bool = False  # this node started an exit (its `exit` record exists)


def phase(params: FactoryParams, height: int, facts: Facts) -> Phase:
    """The phase of a factory at block `height` (see the module docstring); the chain's facts first."""
    if facts.distribution_confirmed_height is not None:
        return Phase.DISTRIBUTED
    if facts.close_status == CLOSE_CONFIRMED:
        return Phase.CLOSED
    if facts.tree_confirmed_height is not None or facts.exit_recorded:
        return Phase.EXITING
    if facts.close_status in (CLOSE_SIGNED, CLOSE_BROADCAST):
        return Phase.CLOSING
    if height >= params.distribution_height:
        return Phase.DISTRIBUTING
    if height >= params.expiry_height:
        return Phase.DYING
    return Phase.ACTIVE


TERMINAL = (Phase.DISTRIBUTED, Phase.CLOSED)


def next_phase(params: FactoryParams, height: int, current: Phase) -> Optional[tuple[Phase, int]]:
    """The phase the timelines bring next and the height it starts at (None when only the chain, not
    the height, can move the factory on)."""
    if current == Phase.ACTIVE:
        return Phase.DYING, params.expiry_height
    if current == Phase.DYING:
        return Phase.DISTRIBUTING, params.distribution_height
    return None


def timeline(params: FactoryParams) -> dict[str, object]:
    """Every height of the factory's life: expiry, distribution, and the absolute timeout of the
    outputs at each depth of the tree (depth 0: the funding output; the leaves' time out first)."""
    return {"expiry_height": params.expiry_height, "distribution_height": params.distribution_height,
            "timeout_heights": {str(d): params.timeout(d) for d in range(params.height + 1)}}


def client_online_deadline(params: FactoryParams, early_warning_blocks: int, tree_on_chain: bool) -> int:
    """The last height by which a client must be online: before the distribution height while the
    tree is off chain; once a tree transaction confirmed, its leaf's timeout minus its path's
    early-warning time (all its path's waits and confirmations)."""
    if not tree_on_chain:
        return params.distribution_height - 1
    return params.timeout(params.height) - early_warning_blocks


def exit_start_height(params: FactoryParams, early_warning_blocks: int) -> int:
    """Once the tree is partly on chain: the height at which a client whose path is not racing an
    older state starts its own path, leaving two confirmation allowances of slack before the last
    safe height (`client_online_deadline`)."""
    return client_online_deadline(params, early_warning_blocks, True) - 2 * params.confirm_blocks


def uncovered_exit_height(params: FactoryParams, early_warning_blocks: int) -> int:
    """The height at which a client whose balance the distribution would not pay in full (its liquidity
    sales added channels the distribution, signed at creation, knows nothing of) starts its own exit,
    if the factory was neither closed nor rolled over by then: its path's root must confirm before the
    distribution height (two confirmation allowances), and its whole path before its leaf's timeout
    (`exit_start_height`). The LSP had the dying period until then to roll the client over."""
    return min(params.distribution_height - 2 * params.confirm_blocks, exit_start_height(params, early_warning_blocks))


def escalate_blocks(timeout_margin_blocks: int) -> int:
    """Blocks one fee variant of the distribution (or of a close) is given to confirm before the next
    replaces it (chain/variants.py): every variant gets its turn well inside the margin between the
    distribution height and the first timeout (at most 6 blocks each)."""
    return max(1, min(6, timeout_margin_blocks // (len(FEE_VARIANT_MULTIPLIERS) + 2)))


def dying_warning_interval(params: FactoryParams) -> int:
    """Blocks between two of the LSP's warnings during a dying period (about twelve per period)."""
    return max(1, params.dying_blocks // 12)


def sign_script_spend(spend: ScriptSpend, seckey: bytes, aux_rand: bytes) -> Tx:
    """Sign a single-key script-path spend (the LSP's timeout or L-stock sweep) with BIP-340 and
    return the finished transaction. Raises FactoryError unless `seckey` is the key the leaf names."""
    script = spend.leaf.script
    # Both leaves end `<32-byte x-only key> OP_CHECKSIG` (bitcoin/script.py cltv/csv_leaf_script).
    if len(script) < 34 or script[-34] != 32 or script[-1] != 0xAC:
        raise FactoryError("not a single-key leaf")
    xonly = script[-33:-1]
    sig = bip340.schnorr_sign(spend.sighash, seckey, aux_rand)
    if not bip340.schnorr_verify(spend.sighash, xonly, sig):
        raise FactoryError("this key is not the one the sweep's leaf names")
    return spend.signed(sig)
