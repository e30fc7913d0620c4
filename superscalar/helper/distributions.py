"""A sleeping client's distribution, published by its helper (`superscalar-helper=true`).

A factory that reaches its distribution height with its funding output unspent (the LSP neither
closed nor rolled it over: it vanished, or waits for the timeout to take everything) pays every client
its channels' whole capacity through the pre-signed distribution, if somebody publishes it before the
first timeout. A client that is online does so itself (chain/lifecycle.py). One that sleeps through
the dying period has its helper do it: at creation and at each rollover the client sends the signed
distribution and its fee variants (factory/graph.py: 4x, 16x, 64x the agreed rate, the extra fee out of
the LSP's output), and the helper, from the locktime on and while the funding output is unspent in
its chain, offers them as the client would (chain/variants.py: the next variant every `step_blocks`
blocks, or at once when the mempool refuses one for its fee). It pays nothing: every variant carries
its own fee. It stops when the funding output is spent (by any transaction) or at `until_height`.

Before it keeps a package, the helper checks each transaction: one input, the same funding outpoint
and locktime for all, a P2A anchor last, and a valid BIP-340 key-path signature for the funding
output (a client cannot make a helper publish anything else, nor waste its bounds on junk). Packages
live in the datastore (``["superscalar", "helped", <client>, <factory id>]``), bounded per client.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol

from ..bitcoin.script import p2a_script
from ..bitcoin.sighash import SIGHASH_DEFAULT, taproot_sighash
from ..bitcoin.tx import Tx, TxOut
from ..chain.blocks import Blocks
from ..chain.variants import offer
from ..crypto.bip340 import schnorr_verify
from ..protocol.wire import HelpPackage, TowerAnswer

ROOT = ["superscalar", "helped"]
MAX_TXS = 8  # the distribution and its variants
MAX_PACKAGE_BYTES = 400_000  # a 1,024-client distribution is ~45 kB; four of them
SCAN_LIMIT = 144


@dataclass(frozen=True)
class PackageLimits:
    per_client: int = 64  # factories one client may have watched at once
    package_bytes: int = MAX_PACKAGE_BYTES


def check_package(msg: HelpPackage) -> tuple[list[Tx], Optional[str]]:
    """The package's transactions, and why it is refused (None: it may be kept)."""
    if not 1 <= len(msg.txs) <= MAX_TXS:
        return [], f"a package holds 1 to {MAX_TXS} transactions"
    try:
        txs = [Tx.deserialize(raw) for raw in msg.txs]
    except Exception:
        return [], "not a transaction"
    prevout = TxOut(msg.prevout_value, msg.prevout_script)
    if len(msg.prevout_script) != 34 or msg.prevout_script[:2] != b"\x51\x20":
        return txs, "the funding output must be a taproot output"
    first = txs[0]
    for tx in txs:
        if len(tx.inputs) != 1 or tx.inputs[0].prevout != first.inputs[0].prevout or tx.locktime != first.locktime:
            return txs, f"{tx.txid} does not spend the same output at the same locktime as the others"
        if not tx.outputs or tx.outputs[-1].script_pubkey != p2a_script():
            return txs, f"{tx.txid} does not end with a P2A anchor"
        witness = tx.inputs[0].witness
        if len(witness) != 1 or len(witness[0]) != 64 or not schnorr_verify(
                taproot_sighash(tx, 0, [prevout], SIGHASH_DEFAULT), msg.prevout_script[2:], witness[0]):
            return txs, f"{tx.txid} is not signed for the funding output"
    return txs, None


class PackageNode(Protocol):
    def datastore_get(self, key: list[str]) -> Optional[tuple[str, int]]: ...
    def datastore_put(self, key: list[str], value: str, generation: Optional[int]) -> int: ...
    def datastore_del(self, key: list[str]) -> None: ...
    def datastore_list(self, prefix: list[str]) -> list[list[str]]: ...
    def datastore_values(self, prefix: list[str]) -> list[tuple[list[str], str]]: ...
    def broadcast(self, tx_hex: str, prevouts: list[tuple[int, bytes]]) -> Optional[str]: ...
    def output_exists(self, txid: str, vout: int) -> bool: ...


class Distributions:
    def __init__(self, node: PackageNode, blocks: Blocks, limits: PackageLimits, log: Callable[..., None]) -> None:
        self.node, self.blocks, self.limits, self.log = node, blocks, limits, log
        self._packages: Optional[dict[tuple[str, str], dict[str, Any]]] = None  # (client, fid) -> package
        self.published: list[dict[str, Any]] = []  # this run: what confirmed (for superscalar-getinfo)

    def keep(self, client: str, msg: HelpPackage) -> TowerAnswer:
        packages = self._load()
        mine = [k for k in packages if k[0] == client]
        def answer(accepted: bool, reason: Optional[str] = None) -> TowerAnswer:
            return TowerAnswer(msg.factory_id, msg.session_id, int(accepted), len(mine), reason)
        if sum(len(t) for t in msg.txs) > self.limits.package_bytes:
            return answer(False, f"a package is at most {self.limits.package_bytes} bytes")
        key = (client, msg.factory_id.hex())
        if key not in packages and len(mine) >= self.limits.per_client:
            return answer(False, f"{self.limits.per_client} factories watched for this client already")
        txs, refusal = check_package(msg)
        if refusal is not None:
            return answer(False, refusal)
        old = packages.get(key)
        spent = txs[0].inputs[0].prevout
        if old is None and not self.node.output_exists(spent.txid_hex, spent.vout):
            return answer(False, "the funding output is spent (or does not exist): nothing to watch")
        package = {"txs": [t.to_hex() for t in txs], "prevout": [msg.prevout_value, msg.prevout_script.hex()],
                   "funding": f"{txs[0].inputs[0].prevout.txid_hex}:{txs[0].inputs[0].prevout.vout}",
                   "locktime": txs[0].locktime, "step_blocks": max(1, msg.step_blocks),
                   "until_height": msg.until_height, "entry": (old or {}).get("entry", {}), "generation": None}
        if old is not None and old["txs"] == package["txs"]:
            return answer(True)
        self._write(key, package, old)
        packages[key] = package
        if old is None:
            mine.append(key)
        return answer(True)

    def _write(self, key: tuple[str, str], package: dict[str, Any], old: Optional[dict[str, Any]]) -> None:
        data = {k: v for k, v in package.items() if k != "generation"}
        path = [*ROOT, *key]
        generation = (old or {}).get("generation")
        if old is not None and generation is None:
            found = self.node.datastore_get(path)
            generation = found[1] if found else None
        package["generation"] = self.node.datastore_put(path, json.dumps(data), generation)

    def _load(self) -> dict[tuple[str, str], dict[str, Any]]:
        if self._packages is None:
            packages: dict[tuple[str, str], dict[str, Any]] = {}
            for client in sorted({k[2] for k in self.node.datastore_list(ROOT) if len(k) > 2}):
                for key, text in self.node.datastore_values([*ROOT, client]):
                    packages[(client, key[3])] = {**json.loads(text), "generation": None}
            self._packages = packages
        return self._packages

    def on_block(self, height: int) -> None:
        packages = self._load()
        for key, package in list(packages.items()):
            if height >= package["until_height"]:
                self._drop(key, f"past height {package['until_height']}, the factory's first timeout")
                continue
            entry = package["entry"]
            start = max(int(entry.get("scanned", height - 1)) + 1, height - SCAN_LIMIT + 1)
            spender = None
            for h in range(start, height + 1):  # from the block it was kept in on (unspent then)
                spender = self.blocks.at(h).spent.get(package["funding"]) or spender
            if spender is not None:
                ours = spender in {Tx.from_hex(t).txid for t in package["txs"]}
                if ours:
                    self.published.append({"client": key[0], "factory_id": key[1], "txid": spender, "height": height})
                self._drop(key, f"its funding output was spent by {spender}"
                                + (" (the distribution we published)" if ours else ""))
                continue
            if height < package["locktime"]:
                if entry.get("scanned") is None or height % 144 == 0:
                    entry["scanned"] = height
                    self._write(key, package, package)
                else:
                    entry["scanned"] = height  # written with the next change (a restart reads a little back)
                continue  # not valid yet
            entry["scanned"] = height
            prevouts = [(int(package["prevout"][0]), bytes.fromhex(package["prevout"][1]))]
            tx, error = offer(lambda t: self.node.broadcast(t.to_hex(), prevouts),
                              [Tx.from_hex(t) for t in package["txs"]], entry, height, package["step_blocks"],
                              lambda text: self.log(f"helper: client {key[0]}'s distribution {text}", level="info"))
            if entry.get("txid") != tx.txid:
                self.log(f"helper: factory {key[1]} of client {key[0]}: funding output unspent past the "
                         f"distribution's locktime; published {tx.txid}", level="unusual")
            entry.update(txid=tx.txid, last_error=error)
            self._write(key, package, package)

    def _drop(self, key: tuple[str, str], why: str) -> None:
        assert self._packages is not None
        self._packages.pop(key, None)
        try:
            self.node.datastore_del([*ROOT, *key])
        except Exception:
            pass
        self.log(f"helper: factory {key[1]} of client {key[0]} no longer watched: {why}")

    def info(self) -> dict[str, Any]:
        packages = self._load()
        return {"factories_watched": len(packages),
                "distributions": [{"client": c, "factory_id": f, "locktime": p["locktime"],
                                   "until_height": p["until_height"], "published_txid": p["entry"].get("txid"),
                                   "last_error": p["entry"].get("last_error")} for (c, f), p in packages.items()],
                "distributions_confirmed": self.published}
