"""How much an exit transaction pays, and by when it must confirm (pure: numbers in, numbers out).

Deadlines. An exit path must be on chain before the LSP can take what it spends: the whole path is
due by the factory timeout of the leaves' depth (`FactoryParams.timeout(height)`, the earliest timeout
on any path, as a child's timeout comes before its parent's), or earlier when the exit was started
because of pending HTLCs (their expiry less `HTLC_RESOLVE_BLOCKS` for the commitment and HTLC
transactions). Each transaction's own deadline leaves room for every relative lock after it:
deadline(parent) = min over its children of deadline(child) - wait(child), a leaf's being the path's.
And once a kickoff confirmed, its state transaction must confirm before an older state of that node
could (`race_deadlines`): within `step_blocks` of becoming valid.

Fee rates (sat per 1000 vB of parent and child together). With `blocks_left` before a transaction's
deadline:
- at least `ESCALATION_BLOCKS` left: the node's fee estimate for confirming within half of the time
  left (lightningd's `feerates` estimates; the tightest one it has below that), never below the
  mempool's minimum;
- fewer: that rate grows geometrically, block by block, up to the cap (`superscalar-exit-max-feerate-perkvb`)
  which it reaches one block before the deadline; at or past the deadline the cap is paid.
Each bump replaces the previous CPFP child (BIP-125 rules as Bitcoin Core applies them to TRUC
children: more absolute fee by at least the incremental relay fee times the new child's size, and a
higher fee rate), so a re-bump pays at least that much more, even when the schedule asks for less.
"""

from __future__ import annotations

from typing import Optional, Sequence

ESCALATION_BLOCKS = 144  # the last day before a deadline: the fee rate climbs to the cap
DEFAULT_MAX_FEERATE_PERKVB = 100_000  # 100 sat/vB: default cap of `superscalar-exit-max-feerate-perkvb`
HTLC_RESOLVE_BLOCKS = 6  # blocks kept after the leaf for the commitment and HTLC transactions to confirm
# BIP-68: relative lock in blocks (type flag clear), unless the disable flag is set.
SEQUENCE_DISABLE_FLAG = 1 << 31
SEQUENCE_TYPE_FLAG = 1 << 22
SEQUENCE_MASK = 0xFFFF


def relative_wait(sequence: int, version: int) -> int:
    """Blocks an input with `sequence` waits after its parent confirmed (BIP-68); 0 if none."""
    if version < 2 or sequence & SEQUENCE_DISABLE_FLAG or sequence & SEQUENCE_TYPE_FLAG:
        return 0
    return sequence & SEQUENCE_MASK


def tree_deadlines(parents: Sequence[Optional[int]], waits: Sequence[int], deadline: int) -> list[int]:
    """The height by which each transaction must confirm so that every one below it, after its
    relative wait, still confirms by `deadline`. Transactions come parents first; `parents[i]` is the
    index of transaction i's parent among them (None: it spends an output already on chain) and
    `waits[i]` its relative wait after that parent."""
    out = [deadline] * len(waits)
    for i in range(len(waits) - 1, -1, -1):
        parent = parents[i]
        if parent is not None:
            if not 0 <= parent < i:
                raise ValueError(f"transaction {i}: its parent must come before it")
            out[parent] = min(out[parent], out[i] - waits[i])
    return out


def race_deadlines(parents: Sequence[Optional[int]], waits: Sequence[int], confirmed_at: Sequence[Optional[int]],
                   dw_step: Optional[int]) -> list[Optional[int]]:
    """Decker-Wattenhofer: the state transaction of a node whose kickoff confirmed at height h becomes
    valid at h + wait, and any older state of that node (which waits `dw_step` more) at
    h + wait + dw_step; so ours must confirm by h + wait + dw_step - 1. None where no such race runs
    (no relative wait, the parent not confirmed, or no step known). The oldest state (the longest
    wait) has no older rival, but a client cannot tell it apart, so every state is raced."""
    out: list[Optional[int]] = [None] * len(waits)
    if not dw_step:
        return out
    for i, (parent, wait) in enumerate(zip(parents, waits)):
        if wait and parent is not None and confirmed_at[parent] is not None:
            out[i] = int(confirmed_at[parent]) + wait + dw_step - 1  # type: ignore[arg-type]
    return out


def lstock_deadlines(names: Sequence[str], parents: Sequence[Optional[int]], confirmed_at: Sequence[Optional[int]],
                     lstock_csv: Optional[int]) -> list[Optional[int]]:
    """A liquidity sale ("sale/...") spends an L-stock output whose script path lets the LSP alone take it
    `lstock_csv` blocks after that output confirmed (its leaf, or the sale before it): the sale must
    confirm by the parent's height + lstock_csv - 1. None where no such race runs (not a sale, the
    parent not confirmed yet, or no delay known)."""
    out: list[Optional[int]] = [None] * len(names)
    if not lstock_csv:
        return out
    for i, (name, parent) in enumerate(zip(names, parents)):
        if name.startswith("sale/") and parent is not None and confirmed_at[parent] is not None:
            out[i] = int(confirmed_at[parent]) + lstock_csv - 1  # type: ignore[arg-type]
    return out


def exit_deadline(timeout_height: int, htlc_expiry: Optional[int]) -> int:
    """The height by which the whole path must be confirmed."""
    if htlc_expiry is None:
        return timeout_height
    return min(timeout_height, htlc_expiry - HTLC_RESOLVE_BLOCKS)


def estimate_for(blocks_left: int, estimates: dict[int, int]) -> Optional[int]:
    """The estimate (sat/kvB) for confirming within half of `blocks_left`: that of the largest
    block count not above it, or of the smallest there is. None without estimates."""
    if not estimates:
        return None
    target = max(1, blocks_left // 2)
    fitting = [n for n in estimates if n <= target]
    return estimates[max(fitting) if fitting else min(estimates)]


def target_feerate(blocks_left: int, estimate: Optional[int], floor: int, cap: int) -> int:
    """The package fee rate (sat/kvB) to aim for with `blocks_left` blocks before the deadline."""
    cap = max(cap, floor)
    if blocks_left <= 0:
        return cap
    start = min(max(floor, estimate or floor), cap)
    if blocks_left >= ESCALATION_BLOCKS:
        return start
    # geometric from `start` at ESCALATION_BLOCKS left to `cap` at 1 left
    progress = (ESCALATION_BLOCKS - blocks_left) / (ESCALATION_BLOCKS - 1)
    return min(cap, max(start, int(start * (cap / start) ** progress)))


def child_fee(feerate: int, parent_vsize: int, parent_fee: int, child_vsize: int) -> int:
    """What a CPFP child of `child_vsize` must pay for parent and child to pay `feerate` together,
    and never less than one sat per vbyte of the child itself."""
    package = -(-feerate * (parent_vsize + child_vsize) // 1000)
    return max(package - parent_fee, child_vsize)


def replacement_fee(wanted: int, old_fee: int, new_vsize: int, incremental_perkvb: int) -> int:
    """The fee of a child replacing one that paid `old_fee`: what the schedule wants, but at least the
    old fee plus the incremental relay fee for the new child's size (BIP-125 rule 4)."""
    return max(wanted, old_fee + -(-incremental_perkvb * new_vsize // 1000) + 1)


def feerate_of(fee: int, vsize: int) -> int:
    """sat/kvB, rounded down."""
    return fee * 1000 // vsize
