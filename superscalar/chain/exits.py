"""Unilateral exits, for either role: publish signed factory transactions block by block until they
confirm, and close each leaf channel on chain once its leaf has confirmed.

An exit is a datastore record per factory (`exit`): the signed transactions to publish, parents first,
each with the output it spends; which are out and which confirmed; the CPFP children paying for them;
what conflicted; and which channels to close. Every block (and once when the exit starts):

1. The blocks since the last step are read (`getrawblockbyheight`): a transaction of ours in one is
   confirmed; another transaction spending an input of one of ours is a *conflict* (the distribution,
   the LSP's timeout sweep, another state, see `exit_conflicts`): the record names it and that
   transaction and everything below it are dropped, never retried.
2. A transaction we sent that is neither confirmed nor in bitcoind's mempool any more was evicted: it
   is sent again.
3. A transaction not out yet is offered through lightningd (`sendpsbt`, which also clears a leaf
   channel's `withheld` flag). If bitcoind refuses it for its fee (below the mempool's minimum), it goes
   out as a package with a CPFP child through bitcoind's `submitpackage` (`bitcoind.py`: the
   `bitcoin-*` settings lightningd runs with). Other refusals (parent not confirmed, relative lock not
   passed) are retried at the next block; so an exit resumes by itself after a restart.
4. A transaction still unconfirmed `bump_after` blocks after it went out is bumped by CPFP: a child
   spends its P2A anchor (its last output) and one confirmed coin of the node's wallet (built and
   signed by lightningd's wallet: `reserveinputs`/`signpsbt`). The fee rate follows `fee_schedule`:
   lightningd's estimate while the deadline is far, rising geometrically over its last
   `ESCALATION_BLOCKS` to the cap `superscalar-exit-max-feerate-perkvb`. A later bump replaces the
   child (RBF: it spends the same anchor and, when it still suffices, the same coin) once the schedule
   asks for `cpfp.REBUMP_RATIO` times what the package pays. A child that was not accepted, was replaced
   by one with another coin, or left the mempool, gives its coin back (`unreserveinputs`).

Deadlines: the whole path is due by the factory timeout of the leaves' depth, or by the HTLC expiry
(less `HTLC_RESOLVE_BLOCKS`) when the exit was started for a channel with pending HTLCs; each
transaction is due early enough for the relative locks after it (`fee_schedule.tree_deadlines`); and
a state transaction whose kickoff confirmed is due before an older state of its node could be
(`fee_schedule.race_deadlines`).
"""

from __future__ import annotations

import threading
from decimal import Decimal
from typing import Any, Callable, Optional

from ..bitcoin.tx import OutPoint, Tx
from ..cln.bitcoind import Bitcoind, BitcoindError
from . import cpfp
from .blocks import Blocks
from .conflicts import UNKNOWN, conflict_kind, describe_conflict
from .fee_schedule import (DEFAULT_MAX_FEERATE_PERKVB, estimate_for, exit_deadline,
                           lstock_deadlines, race_deadlines, relative_wait, target_feerate,
                           tree_deadlines)
from ..cln.node import ClnNode
from ..cln.store import Store

# Channel states in which a factory channel is being closed unilaterally: its commitment can only
# confirm once its leaf is on chain, so these start an exit. A mutual close does not: its signed
# closing transaction spends the leaf output too, but nobody needs it on chain (see README).
UNILATERAL_STATES = {"AWAITING_UNILATERAL", "FUNDING_SPEND_SEEN", "ONCHAIN"}
# A channel in any of these is closing already: once its leaf confirms, CLN finishes that close.
CLOSING_STATES = UNILATERAL_STATES | {"CHANNELD_SHUTTING_DOWN", "CLOSINGD_SIGEXCHANGE", "CLOSINGD_COMPLETE"}
DONE = ("closed", "cancelled", "conflicted")

SCAN_LIMIT = 144  # blocks read per step after a long pause (older ones are not looked at)
FEE_REFUSALS = ("min relay fee not met", "mempool min fee not met", "insufficient fee")
MISSING_INPUT = ("missingorspent", "missing-inputs")


def btc_to_sat(value: Any) -> int:
    return int(Decimal(str(value)) * 100_000_000)


class Exits:
    def __init__(self, node: ClnNode, store: Store, log: Callable[[str], None],
                 bitcoind: Optional[Bitcoind] = None, max_feerate: int = DEFAULT_MAX_FEERATE_PERKVB,
                 blocks: Optional[Blocks] = None) -> None:
        self.node, self.store, self.log = node, store, log
        self.blocks = blocks if blocks is not None else Blocks(lambda h: node.raw_block(h))  # shared with the other steps
        self.bitcoind, self.max_feerate = bitcoind, max_feerate
        self._lock = threading.Lock()

    def start(self, factory_id: str, txs: list[list[Any]], channels: list[str], bump_after: int = 6,
              timeout_height: Optional[int] = None, htlc_expiry: Optional[int] = None,
              known: Optional[dict[str, str]] = None, dw_step: Optional[int] = None,
              reason: Optional[dict[str, Any]] = None, confirmed: Optional[dict[str, int]] = None,
              lstock_csv: Optional[int] = None) -> dict[str, Any]:
        """Add `txs` ([name, hex, prevout value, prevout script hex], parents first) and the leaf
        channels at outpoints `channels` to this factory's exit, and take the first step.
        `timeout_height`: the factory timeout the path must beat; `htlc_expiry`: the earliest expiry of
        the HTLCs that made us exit; `known`: txids of this factory's other signed transactions
        (the distribution) and what they are, to name a conflict; `dw_step`: the factory's DW step (an
        older state's head start); `reason`, if given, is added to the record's `reasons` (why this
        exit started, e.g. an HTLC's deadline); `confirmed`: names of `txs` already seen confirmed, with
        their heights (the chain follower saw them before this exit existed); `lstock_csv`: the L-stock's
        delay, after which the LSP alone may take an L-stock a sale of ours must spend first."""
        with self._lock:
            height = self.node.blockheight()
            progress = self.store.get(factory_id, "exit") or {
                "status": "publishing", "txs": [], "published": [], "channels": [], "closed": [], "last_error": None,
                "out_at": {}, "confirmed": [], "bumped": {}, "bump_after": bump_after}
            _upgrade(progress, height)
            known_names = {t[0] for t in progress["txs"]}
            progress["txs"] += [t for t in txs if t[0] not in known_names]
            progress["channels"] += [c for c in channels if c not in progress["channels"]]
            names = {t[0] for t in progress["txs"]}
            for name, at in (confirmed or {}).items():
                if name in names and name not in progress["confirmed"]:
                    progress["confirmed"].append(name)
                    progress["confirmed_at"][name] = at
                    if name not in progress["published"]:
                        progress["published"].append(name)
            if timeout_height is not None:
                progress["timeout_height"] = min(timeout_height, progress.get("timeout_height") or timeout_height)
            if htlc_expiry is not None:
                progress["htlc_expiry"] = min(htlc_expiry, progress.get("htlc_expiry") or htlc_expiry)
            progress["known"].update(known or {})
            if dw_step is not None:
                progress["dw_step"] = dw_step
            if lstock_csv is not None:
                progress["lstock_csv"] = lstock_csv
            if progress["status"] != "conflicted" or len(progress["stopped"]) < len(progress["txs"]):
                progress["status"] = "publishing"
            if reason is not None:
                progress["reasons"] = [*progress.get("reasons", []), reason]
            self.store.put(factory_id, "exit", progress)
        return self.step(factory_id)

    def on_block(self, height: int) -> None:
        active = [fid for fid in self.store.factory_ids()
                  if (p := self.store.get(fid, "exit")) is not None and p["status"] not in DONE]
        for fid in active:
            self.step(fid, height)

    def step(self, factory_id: str, height: Optional[int] = None) -> dict[str, Any]:
        with self._lock:
            progress = self.store.get(factory_id, "exit")
            assert progress is not None
            height = self.node.blockheight() if height is None else height
            _upgrade(progress, height - 1)
            _Step(self, factory_id, progress, height).run()
            self.store.put(factory_id, "exit", progress)
            return progress

    def _close(self, factory_id: str, channel_id: str) -> None:
        try:
            self.log(f"factory {factory_id}: leaf confirmed, closing channel {channel_id}: {self.node.close(channel_id)}")
        except Exception as e:
            self.log(f"factory {factory_id}: close of {channel_id} failed: {e}")


def _upgrade(progress: dict[str, Any], scanned: int) -> None:
    """Fields records written before them lack."""
    for key, default in (("children", {}), ("conflicts", []), ("stopped", []), ("resent", {}), ("known", {}),
                         ("timeout_height", None), ("htlc_expiry", None), ("scanned_height", scanned),
                         ("confirmed_at", {}), ("dw_step", None)):
        progress.setdefault(key, default)


class _Step:
    """One pass over an exit record (see the module docstring); mutates `progress`."""

    def __init__(self, exits: Exits, factory_id: str, progress: dict[str, Any], height: int) -> None:
        self.exits, self.node, self.bitcoind = exits, exits.node, exits.bitcoind
        self.fid, self.p, self.height = factory_id, progress, height
        self.parsed = {name: Tx.from_hex(h) for name, h, _, _ in progress["txs"]}
        self.values = {name: int(v) for name, _, v, _ in progress["txs"]}
        self._fees: Optional[tuple[dict[int, int], int]] = None
        self._incremental: Optional[int] = None

    def log(self, text: str) -> None:
        self.exits.log(f"factory {self.fid} exit: {text}")

    def run(self) -> None:
        self.scan_blocks()
        deadlines = self.deadlines()
        for name in list(self.parsed):
            if name in self.p["confirmed"] or name in self.p["stopped"]:
                continue
            if name in self.p["published"] and not self.still_out(name):
                self.p["published"].remove(name)
                self.release_child(name)  # evicted with its parent
                self.p["resent"][name] = self.p["resent"].get(name, 0) + 1
                self.log(f"{name} ({self.parsed[name].txid}) left the mempool without confirming: sending it again")
            if name in self.p["published"]:
                if self.height - self.p["out_at"].get(name, self.height) >= self.p["bump_after"]:
                    self.bump(name, deadlines.get(name))
            else:
                self.publish(name, deadlines.get(name))
        self.close_channels()
        self.update_status()

    # --- 1. what the chain says ---

    def scan_blocks(self) -> None:
        first = max(int(self.p["scanned_height"]) + 1, self.height - SCAN_LIMIT + 1)
        for h in range(first, self.height + 1):
            self.scan_block(self.exits.blocks.transactions(h), h)
            self.p["scanned_height"] = h

    def scan_block(self, block: tuple[Tx, ...], height: int) -> None:
        ours = {tx.txid: name for name, tx in self.parsed.items()}
        pending = [n for n in self.parsed if n not in self.p["confirmed"] and n not in self.p["stopped"]]
        watched = {i.prevout: n for n in pending for i in self.parsed[n].inputs}
        for tx in block:
            name = ours.get(tx.txid)
            if name is not None:
                if name not in self.p["confirmed"]:
                    self.p["confirmed"].append(name)
                    self.p["confirmed_at"][name] = height
                    if name not in self.p["published"]:
                        self.p["published"].append(name)  # someone else published it
                continue
            for i in tx.inputs:
                victim = watched.get(i.prevout)
                if victim is not None and victim not in self.p["stopped"]:
                    self.conflict(victim, i.prevout, tx)

    def conflict(self, name: str, outpoint: OutPoint, spender: Tx) -> None:
        self.record_conflict(name, outpoint, spender.txid, conflict_kind(spender, outpoint, self.p["known"]))

    def record_conflict(self, name: str, outpoint: OutPoint, spender_txid: Optional[str], kind: str) -> None:
        dropped = self.descendants(name)
        self.p["conflicts"].append({"tx": name, "txid": self.parsed[name].txid,
                                    "outpoint": f"{outpoint.txid_hex}:{outpoint.vout}",
                                    "spent_by": spender_txid, "kind": kind, "height": self.height,
                                    "dropped": dropped})
        for n in dropped:
            self.p["stopped"].append(n)
            if n in self.p["published"]:
                self.p["published"].remove(n)
            self.release_child(n)
        self.log(f"{name} ({self.parsed[name].txid}) can no longer confirm: its input {outpoint.txid_hex}:"
                 f"{outpoint.vout} was spent by {spender_txid or 'a confirmed transaction'}, {describe_conflict(kind)}; "
                 f"not retrying {', '.join(dropped)}")

    def spent_before(self, name: str) -> bool:
        """After bitcoind refused `name` for a missing input: was that input spent before this exit
        could see it (the distribution or a sweep confirmed before the exit started, or blocks older
        than the scan)? Records the conflict and returns True if so.

        An input whose parent is one of ours not confirmed yet is an ordinary wait. The funding output
        cannot be told apart from one never broadcast, so a missing one counts as spent only when a
        transaction this node knows spends it (the distribution) is on chain. A spend still in the
        mempool is left to the block scan."""
        if self.bitcoind is None:
            return False
        ours = {t.txid: n for n, t in self.parsed.items()}
        for i in self.parsed[name].inputs:
            parent = ours.get(i.prevout.txid_hex)
            if parent is not None and parent not in self.p["confirmed"]:
                continue
            try:
                if self.bitcoind.txout(i.prevout.txid_hex, i.prevout.vout) is not None:
                    continue
                if self.bitcoind.mempool_spender(i.prevout.txid_hex, i.prevout.vout) is not None:
                    continue  # spent in the mempool only: the block scan sees it if it confirms
                spender = None  # spent by a confirmed transaction the scan never saw
                if parent is None:
                    spender = next((txid for txid in self.p["known"] if self.exists(txid)), None)
                    if spender is None:
                        continue
            except BitcoindError:
                continue
            kind = self.p["known"].get(spender or "", UNKNOWN)
            self.record_conflict(name, i.prevout, spender, kind)
            return True
        return False

    def exists(self, txid: str) -> bool:
        """Is some output of `txid` unspent (in the UTXO set or the mempool)? A transaction the node
        signed, like the distribution, pays several outputs; one of them still unspent shows it exists."""
        assert self.bitcoind is not None
        for vout in range(8):
            if self.bitcoind.txout(txid, vout) is not None:
                return True
        return False

    def descendants(self, name: str) -> list[str]:
        """`name` and every transaction of this exit that spends one of them, in order."""
        out, txids = [name], {self.parsed[name].txid}
        for n, tx in self.parsed.items():
            if n not in out and any(i.prevout.txid_hex in txids for i in tx.inputs):
                out.append(n)
                txids.add(tx.txid)
        return out

    def still_out(self, name: str) -> bool:
        """Is a transaction we sent (and not seen confirmed) still in the mempool? Without bitcoind's
        RPC (no settings) we cannot tell, and assume it is."""
        if self.bitcoind is None:
            return True
        try:
            return self.bitcoind.in_mempool(self.parsed[name].txid)
        except BitcoindError as e:
            self.p["last_error"] = f"{name}: mempool check failed: {e}"
            return True

    # --- deadlines and fee rates ---

    def deadlines(self) -> dict[str, int]:
        deadline = None
        if self.p["timeout_height"] is not None:
            deadline = exit_deadline(int(self.p["timeout_height"]), self.p["htlc_expiry"])
        elif self.p["htlc_expiry"] is not None:
            deadline = int(self.p["htlc_expiry"])
        names = list(self.parsed)
        index = {self.parsed[n].txid: k for k, n in enumerate(names)}
        parents = [next((index[i.prevout.txid_hex] for i in self.parsed[n].inputs if i.prevout.txid_hex in index), None)
                   for n in names]
        waits = [relative_wait(self.parsed[n].inputs[0].sequence, self.parsed[n].version) for n in names]
        out = dict(zip(names, tree_deadlines(parents, waits, deadline))) if deadline is not None else {}
        confirmed = [self.p["confirmed_at"].get(n) for n in names]
        races = zip(race_deadlines(parents, waits, confirmed, self.p.get("dw_step")),
                    lstock_deadlines(names, parents, confirmed, self.p.get("lstock_csv")))
        for k, pair in enumerate(races):
            for race in pair:
                if race is not None:
                    out[names[k]] = min(out.get(names[k], race), race)
        return out

    def feerate(self, deadline: Optional[int]) -> int:
        if self._fees is None:
            self._fees = self.node.feerate_estimates()
        estimates, floor = self._fees
        blocks_left = 1_000_000 if deadline is None else deadline - self.height
        return target_feerate(blocks_left, estimate_for(blocks_left, estimates), floor, self.exits.max_feerate)

    def incremental(self) -> int:
        if self._incremental is None:
            self._incremental = 1000
            if self.bitcoind is not None:
                try:
                    self._incremental = btc_to_sat(self.bitcoind.mempool_info()["incrementalrelayfee"])
                except (BitcoindError, KeyError):
                    pass
        return self._incremental

    # --- 3. publishing ---

    def prevouts(self, name: str) -> list[tuple[int, bytes]]:
        entry = next(t for t in self.p["txs"] if t[0] == name)
        return [(int(entry[2]), bytes.fromhex(entry[3]))]

    def publish(self, name: str, deadline: Optional[int]) -> None:
        tx_hex = next(t[1] for t in self.p["txs"] if t[0] == name)
        error = self.node.broadcast(tx_hex, self.prevouts(name))
        if error is not None and any(r in error for r in FEE_REFUSALS):
            error = self.send_package(name, deadline, error)
        if error is None:
            self.p["published"].append(name)
            self.p["out_at"][name] = self.height
        elif any(r in error for r in MISSING_INPUT) and self.spent_before(name):
            self.p["last_error"] = f"{name}: {error} (its input was spent: see conflicts)"
        else:
            self.p["last_error"] = f"{name}: {error}"  # retried next block

    def send_package(self, name: str, deadline: Optional[int], refusal: str) -> Optional[str]:
        """`name` with a CPFP child through submitpackage; None once it is in the mempool."""
        if self.bitcoind is None:
            return f"{refusal}; no bitcoind RPC settings to send it as a package"
        rate = self.feerate(deadline)
        child = self.build_child(name, rate, None)
        if isinstance(child, str):
            return f"{refusal}; {child}"
        tx_hex = next(t[1] for t in self.p["txs"] if t[0] == name)
        error = self.submit(name, [tx_hex, child["hex"]], child)
        if error is not None:
            return f"{refusal}; as a package: {error}"
        self.log(f"{name} ({self.parsed[name].txid}) is below the mempool's minimum fee: sent as a package with "
                 f"child {child['txid']} paying {child['fee']} sat ({rate} sat/kvB for both)")
        # lightningd learns of it too (an LSP's leaf: this clears the channel's withheld flag)
        self.node.broadcast(tx_hex, self.prevouts(name))
        return None

    def build_child(self, name: str, rate: int, old: Optional[dict[str, Any]]) -> dict[str, Any] | str:
        """A signed CPFP child of `name` paying for the pair at `rate` (and enough to replace `old`), or
        why there is none."""
        tx = self.parsed[name]
        return cpfp.build_child(self.node, self.bitcoind, tx, self.values[name] - sum(o.value for o in tx.outputs),
                                rate, old, self.incremental(), self.height)

    def submit(self, name: str, package: list[str], child: dict[str, Any]) -> Optional[str]:
        """submitpackage; None if the child is in the mempool, else why (its coin is given back)."""
        assert self.bitcoind is not None
        error = cpfp.submit(self.node, self.bitcoind, package[0], child, self.p["children"].get(name), self.log)
        if error is None:
            self.p["children"][name] = child
            self.p["bumped"][name] = child["txid"]
        return error

    # --- 4. bumping ---

    def bump(self, name: str, deadline: Optional[int]) -> None:
        if self.bitcoind is None:
            return
        tx = self.parsed[name]
        parent_fee = self.values[name] - sum(o.value for o in tx.outputs)
        old = self.p["children"].get(name)
        if old is not None and not cpfp.alive(self.bitcoind, old):
            self.release_child(name)
            old = None
        rate = self.feerate(deadline)
        if rate < cpfp.paying(tx, parent_fee, old) * cpfp.REBUMP_RATIO:
            return
        child = self.build_child(name, rate, old)
        if isinstance(child, str):
            self.p["last_error"] = f"{name}: bump failed: {child}"
            return
        tx_hex = next(t[1] for t in self.p["txs"] if t[0] == name)
        error = self.submit(name, [tx_hex, child["hex"]], child)
        if error is not None:
            self.p["last_error"] = f"{name}: bump failed: {error}"
            return
        blocks_left = "no deadline" if deadline is None else f"{deadline - self.height} blocks before its deadline"
        self.log(f"bumped {name} ({tx.txid}) with child {child['txid']} paying {child['fee']} sat "
                 f"({child['feerate']} sat/kvB for both, {blocks_left}{', replacing ' + old['txid'] if old else ''})")

    def release_child(self, name: str) -> None:
        """The child of `name` is gone (evicted with it, or conflicted): its coin is ours again."""
        child = self.p["children"].pop(name, None)
        if child is not None:
            cpfp.release(self.node, child, self.log)

    # --- channels and status ---

    def close_channels(self) -> None:
        by_outpoint = {f"{c.get('funding_txid')}:{c.get('funding_outnum')}": c for c in self.node.peer_channels()}
        for outpoint in self.p["channels"]:
            channel = by_outpoint.get(outpoint)
            if outpoint in self.p["closed"] or channel is None or not channel.get("short_channel_id"):
                continue  # the leaf has not confirmed yet (only aliases so far)
            self.p["closed"].append(outpoint)
            if channel.get("state") not in CLOSING_STATES:
                threading.Thread(target=self.exits._close, args=(self.fid, str(channel["channel_id"])),
                                 daemon=True).start()

    def update_status(self) -> None:
        if any(n not in self.p["published"] and n not in self.p["stopped"] for n in self.parsed):
            self.p["status"] = "publishing"
            return
        dropped = {self.parsed[n].txid for n in self.p["stopped"]}
        live = [c for c in self.p["channels"] if c.split(":")[0] not in dropped]
        if not live and any(n not in self.p["confirmed"] and n not in self.p["stopped"] for n in self.parsed):
            self.p["status"] = "confirming"  # a path published for itself (no channel to close): until it confirms
            return
        if not set(self.p["closed"]) >= set(live):
            self.p["status"] = "closing"
        else:
            self.p["status"] = "conflicted" if self.p["stopped"] else "closed"
