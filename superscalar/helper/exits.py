"""A client's exit path, published by its helper with the helper's coins.

A client whose LSP publishes part of the tree (an old state, or the kickoff to force everyone out)
must get its own path on chain in time, and a client with no coin cannot pay to bump it. Its helper
keeps the client's signed path (`HelpExit`: parents first, each with the output it spends) and runs
the same exit a client runs for itself (chain/exits.py: each transaction offered as soon as it is
valid, bumped by CPFP on its P2A anchor with a coin of the helper's wallet, the fee rising towards the
path's deadline), starting when the path's first transaction spends the funding output in a block
(somebody started the tree), or at once when the client asks (`act_now`: its LSP stopped answering).

Before it keeps a path, the helper checks each transaction: its first input spends the previous
transaction's output (the funding output for the first), it is signed for that output (BIP-340 key
path), and it ends with a P2A anchor; so its coins only ever bump transactions of a real tree below a
real output. What it may spend is bounded: `PackageLimits.per_client` paths per client and
`MAX_ACTIVE_PER_CLIENT` exits under way at once, each at most at the exit fee cap
(`superscalar-exit-max-feerate-perkvb`). A path's exit and the path live under their own datastore
subtree (``["superscalar", "helped-exits", <client>.<factory id>, ...]``).
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Optional

from ..bitcoin.tx import Tx, TxOut
from ..chain.blocks import Blocks
from ..chain.exits import DONE, Exits
from ..cln.store import Store
from ..factory.checks import signed_chain_refusal
from ..protocol.wire import HelpExit, TowerAnswer
from .distributions import PackageLimits

ROOT = ("superscalar", "helped-exits")
MAX_TXS = 64
MAX_ACTIVE_PER_CLIENT = 2
SCAN_LIMIT = 144


def path_hash(msg: HelpExit) -> bytes:
    """What names one version of a path (the session id of its request)."""
    return hashlib.sha256(b"".join(msg.txs)).digest()


def check_path(msg: HelpExit) -> tuple[list[Tx], Optional[str]]:
    """The path's transactions, and why it is refused (None: it may be kept)."""
    n = len(msg.txs)
    if not 1 <= n <= MAX_TXS or not len(msg.names) == len(msg.prevout_values) == len(msg.prevout_scripts) == n:
        return [], f"a path holds 1 to {MAX_TXS} transactions, each with its name and spent output"
    try:
        txs = [Tx.deserialize(raw) for raw in msg.txs]
        names = [name.decode() for name in msg.names]
    except Exception:
        return [], "not a transaction"
    if len(set(names)) != n:
        return txs, "names must differ"
    refusal = signed_chain_refusal(names, txs, [TxOut(v, sc) for v, sc in zip(msg.prevout_values, msg.prevout_scripts)])
    if refusal is not None:
        return txs, refusal
    return txs, None


class HelpedExits:
    def __init__(self, node: Any, blocks: Blocks, limits: PackageLimits, log: Callable[..., None],
                 exits: Callable[[Store], Exits]) -> None:
        self.node, self.blocks, self.limits, self.log = node, blocks, limits, log
        self.store = Store(node, ROOT)
        self.exits = exits(self.store)
        self._scanned: dict[str, int] = {}  # per path: the last block read (written now and then)

    @staticmethod
    def key(client: str, factory_id: str) -> str:
        return f"{client}.{factory_id}"

    def keep(self, client: str, msg: HelpExit) -> TowerAnswer:
        mine = [k for k in self.store.factory_ids() if k.startswith(client + ".")]
        def answer(accepted: bool, reason: Optional[str] = None) -> TowerAnswer:
            return TowerAnswer(msg.factory_id, msg.session_id, int(accepted), len(mine), reason)
        key = self.key(client, msg.factory_id.hex())
        if key not in mine and len(mine) >= self.limits.per_client:
            return answer(False, f"{self.limits.per_client} paths kept for this client already")
        if sum(len(t) for t in msg.txs) > self.limits.package_bytes:
            return answer(False, f"a path is at most {self.limits.package_bytes} bytes")
        txs, refusal = check_path(msg)
        if refusal is not None:
            return answer(False, refusal)
        old = self.store.get(key, "plan")
        if old is not None and old.get("started"):
            if msg.act_now:
                return answer(True)  # under way already
            return answer(False, "its exit is under way; the path can no longer change")
        active = sum(1 for k in mine if (self.store.get(k, "plan") or {}).get("started")
                     and (self.store.get(k, "exit") or {}).get("status") not in DONE)
        if msg.act_now and active >= MAX_ACTIVE_PER_CLIENT:
            return answer(False, f"{MAX_ACTIVE_PER_CLIENT} exits of this client are under way already")
        first = txs[0].inputs[0].prevout
        plan = {"txs": [[n.decode(), t.to_hex(), v, s.hex()] for n, t, v, s in
                        zip(msg.names, txs, msg.prevout_values, msg.prevout_scripts)],
                "funding": f"{first.txid_hex}:{first.vout}", "bump_after": msg.bump_after,
                "timeout_height": msg.timeout_height, "dw_step": msg.dw_step or None,
                "lstock_csv": msg.lstock_csv or None, "started": False, "scanned": (old or {}).get("scanned")}
        self.store.put(key, "plan", plan)
        if key not in mine:
            mine.append(key)
        if msg.act_now:
            self._start(key, plan, None, {"reason": "the client asked (its LSP stopped answering)"})
        return answer(True)

    def _start(self, key: str, plan: dict[str, Any], confirmed: Optional[dict[str, int]],
               reason: dict[str, Any]) -> None:
        plan["started"] = True
        self.store.put(key, "plan", plan)  # first: a restart finds the exit, never starts it twice
        self.log(f"helper: publishing the exit path of {key} ({reason['reason']})", level="unusual")
        self.exits.start(key, plan["txs"], [], int(plan["bump_after"]), int(plan["timeout_height"]), None, {},
                         plan["dw_step"], reason, confirmed, plan["lstock_csv"])

    def on_block(self, height: int) -> None:
        for key in self.store.factory_ids():
            plan = self.store.get(key, "plan")
            if plan is None:
                continue
            exit_ = self.store.get(key, "exit")
            if height >= int(plan["timeout_height"]) + SCAN_LIMIT and (exit_ is None or exit_["status"] in DONE):
                self.store.delete_factory(key)  # long past: nothing of it can matter any more
                continue
            if plan["started"] or plan.get("not_needed"):
                continue  # the exit steps below
            scanned = self._scanned.get(key, plan.get("scanned"))
            start = max(int(scanned if scanned is not None else height - 1) + 1, height - SCAN_LIMIT + 1)
            first = Tx.from_hex(plan["txs"][0][1]).txid
            for h in range(start, height + 1):
                spender = self.blocks.at(h).spent.get(plan["funding"])
                if spender == first:
                    self._start(key, plan, {plan["txs"][0][0]: h},
                                {"reason": f"the tree was started at height {h}", "height": height})
                    break
                if spender is not None:  # a close or the distribution: nothing to publish, ever
                    plan["not_needed"] = spender
                    self.log(f"helper: {key}: funding spent by {spender}: its path is not needed")
                    break
            if plan["started"]:
                continue
            first_scan = plan.get("scanned") is None
            plan["scanned"] = self._scanned[key] = height
            if first_scan or plan.get("not_needed") or height % 144 == 0:  # else a restart reads back a little
                self.store.put(key, "plan", plan)
        self.exits.on_block(height)

    def info(self) -> dict[str, Any]:
        out = []
        for key in self.store.factory_ids():
            plan = self.store.get(key, "plan") or {}
            progress = self.store.get(key, "exit") or {}
            out.append({"path": key, "started": bool(plan.get("started")), "not_needed": plan.get("not_needed"),
                        "status": progress.get("status"),
                        "published": progress.get("published", []), "confirmed": progress.get("confirmed", [])})
        return {"exit_paths": out}
