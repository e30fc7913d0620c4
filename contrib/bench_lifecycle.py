#!/usr/bin/env python3
"""Benchmark: the per-block work of an LSP holding many factories, and one rollover-sized ceremony.

1. Per block. The plugin's `Roles` (superscalar/cln/plugin.py) is built exactly as lightningd's init does,
   against a fake lightningd (`FakeRpc`: an in-memory datastore, a channel listing decoded from JSON
   text on every call as pyln's client does, synthetic blocks) holding `--factories` LSP factory
   records of `--clients` clients each. The records are what `Lsp.create` stores: one factory is
   built and signed with the engine (`Factory.graph`, `construction_round` over `memlink.run`, the
   record written by creation.py's `_lsp_record` plus the signed transactions, paths, distribution and
   funding PSBT); the others are that record with their own factory id, funding outpoint, peers and
   channel ids (their transactions are the first factory's bytes: same count and size, nothing in the
   per-block steps checks them). Then `Roles.follower.on_block` (the ChainFollower with the steps
   plugin.py names) runs for `--blocks` blocks, each served as an empty block and as a block of
   `--block-txs` synthetic transactions. Prints per step and in total: p50 and max seconds per block,
   the RPC calls a block makes, and memory: RSS before and after the records are loaded, and the
   datastore's size.
2. Rollover ceremony. For `--ceremony-clients` clients (default 1,024) in this one process: the
   construction round of the new factory and the cooperative-close round of the old one, each through
   `memlink.run` (every message encoded, split and decoded; every signature verified), timed.

lightningd's own time to answer each RPC and the socket round trips are not counted.

    python contrib/bench_lifecycle.py [--factories 33] [--clients 64] [--blocks 5] [--ceremony-clients 1024]
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from superscalar.bitcoin.tx import OutPoint, Tx, TxIn, TxOut  # noqa: E402
from superscalar.records import path_entry  # noqa: E402
from superscalar.factory.graph import cooperative_close  # noqa: E402
from superscalar.factory.params import ClientTerms, FactoryParams  # noqa: E402
from superscalar.lsp.creation import ClientSpec, _lsp_record  # noqa: E402
from superscalar.cln.plugin import Roles  # noqa: E402
from superscalar.protocol import memlink  # noqa: E402
from superscalar.protocol.ceremony import Completed, Coordinator, Participant  # noqa: E402
from superscalar.protocol.rounds import Expectation, Kind, close_round, construction_round  # noqa: E402
from tests.factory_kit import construction_participants, make_kit  # noqa: E402
from tests.fakes import node_secret  # noqa: E402

HEIGHT = 900_100
START = 900_000


def rss_mb() -> float:
    """Resident memory now (Linux /proc), MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 1e6


def node_id(n: int) -> str:
    return "02" + f"{n:064x}"


def header_hex(prev: bytes, n_tx_bytes: bytes) -> str:
    """An 80-byte header (nothing checks its proof of work) followed by the transactions."""
    header = (4).to_bytes(4, "little") + prev + bytes(32) + (1_700_000_000).to_bytes(4, "little") \
        + bytes.fromhex("207fffff")[::-1] + bytes(4)
    return (header + n_tx_bytes).hex()


def synthetic_block(height: int, n_txs: int) -> str:
    """A coinbase and `n_txs` one-input, two-output P2TR transactions spending made-up outpoints."""
    def varint(n: int) -> bytes:
        return bytes([n]) if n < 0xfd else b"\xfd" + n.to_bytes(2, "little") if n <= 0xffff else b"\xfe" + n.to_bytes(4, "little")
    coinbase = Tx(2, (TxIn(OutPoint(bytes(32), 0xffffffff), script_sig=b"\x03" + height.to_bytes(3, "little")),),
                  (TxOut(312_500_000, b"\x51\x20" + bytes(32)),), 0)
    txs = [coinbase] + [Tx(2, (TxIn(OutPoint((height * 100_000 + i).to_bytes(32, "big"), 0)),),
                           (TxOut(50_000, b"\x51\x20" + bytes([i % 256]) * 32), TxOut(40_000, b"\x51\x20" + bytes(32))), 0)
                        for i in range(n_txs)]
    body = varint(len(txs)) + b"".join(bytes.fromhex(t.to_hex()) for t in txs)
    return header_hex(height.to_bytes(32, "big"), body)


class FakeRpc:
    """The lightningd RPCs the per-block steps use, answered in memory; every call is counted."""

    def __init__(self, channels: list[dict[str, Any]], block_txs: int) -> None:
        self.datastore: dict[tuple[str, ...], tuple[str, int]] = {}
        self.listing = json.dumps({"channels": channels})
        self.filtered: dict[str, str] = {}
        self.block_txs = block_txs
        self.blocks: dict[tuple[int, int], str] = {}
        self.calls: Counter[str] = Counter()

    def call(self, method: str, params: Optional[dict[str, Any]] = None, filter: Optional[dict[str, Any]] = None) -> Any:
        self.calls[method] += 1
        p = params or {}
        if method == "listdatastore":
            key = tuple(p.get("key", []))
            return {"datastore": [{"key": list(k), "string": v, "generation": g}
                                  for k, (v, g) in self.datastore.items() if k[:len(key)] == key]}
        if method == "datastore":
            key = tuple(p["key"])
            gen = 0 if p.get("mode") == "must-create" else self.datastore[key][1] + 1
            self.datastore[key] = (p["string"], gen)
            return {"generation": gen}
        if method == "deldatastore":
            self.datastore.pop(tuple(p["key"]), None)
            return {}
        if method == "listpeerchannels":
            if filter:
                fields = tuple(sorted(filter["channels"][0]))
                text = self.filtered.get(str(fields))
                if text is None:
                    text = json.dumps({"channels": [{k: v for k, v in c.items() if k in fields}
                                                    for c in json.loads(self.listing)["channels"]]})
                    self.filtered[str(fields)] = text
                return json.loads(text)
            return json.loads(self.listing)
        if method == "getrawblockbyheight":
            h = int(p["height"])
            if (h, self.block_txs) not in self.blocks:
                self.blocks[(h, self.block_txs)] = synthetic_block(h, self.block_txs)
            return {"block": self.blocks[(h, self.block_txs)], "blockhash": f"{h:064x}"}
        if method == "listconfigs" and p.get("config") == "cltv-delta":
            return {"configs": {"cltv-delta": {"value_int": 34, "source": "default"}}}  # lightningd's default
        if method == "makesecret":
            return {"secret": node_secret(p["string"]).hex()}
        if method in ("getutxout", "gettxout"):
            return {}
        if method == "feerates":
            return {"perkb": {"opening": 1000, "mutual_close": 1000, "unilateral_close": 1000, "floor": 1000,
                              "estimates": [{"blockcount": 2, "feerate": 2000}, {"blockcount": 6, "feerate": 1000}]}}
        raise RuntimeError(f"fake lightningd: {method} not served")

    def getinfo(self) -> dict[str, Any]:
        self.calls["getinfo"] += 1
        return {"id": node_id(0), "blockheight": HEIGHT}

    def listfunds(self) -> dict[str, Any]:
        self.calls["listfunds"] += 1
        return {"outputs": [], "channels": []}


class FakePlugin:
    def __init__(self, rpc: FakeRpc) -> None:
        self.rpc = rpc
        self.lines: Counter[str] = Counter()

    def log(self, message: str, level: str = "info") -> None:
        self.lines[level] += 1


def listed_channel(k: int, peer: str, outpoint: str, channel_id: str) -> dict[str, Any]:
    """A listpeerchannels entry of a zero-conf leaf channel (fields lightningd gives; values typical)."""
    txid, vout = outpoint.split(":")
    return {"peer_id": peer, "peer_connected": True, "state": "CHANNELD_NORMAL", "channel_id": channel_id,
            "funding_txid": txid, "funding_outnum": int(vout), "alias": {"local": f"{k}x1x1", "remote": f"{k}x2x2"},
            "private": True, "opener": "local", "total_msat": 250_000_000, "to_us_msat": 200_000_000,
            "spendable_msat": 190_000_000, "receivable_msat": 47_000_000, "their_to_self_delay": 144,
            "our_to_self_delay": 144, "max_accepted_htlcs": 483, "htlcs": [],
            "status": ["CHANNELD_NORMAL:Channel ready for use."],
            "updates": {"local": {"htlc_minimum_msat": 0, "htlc_maximum_msat": 247_500_000, "cltv_expiry_delta": 34,
                                  "fee_base_msat": 1000, "fee_proportional_millionths": 10}}}


def signed_record(n_clients: int) -> dict[str, Any]:
    """One LSP factory record as `Lsp.create` stores it once funded, built and signed with the engine."""
    params = FactoryParams(n_clients=n_clients, start_height=START)
    kit = make_kit(params, [ClientTerms(50_000, 200_000)] * n_clients)
    factory = kit.factory
    graph = factory.graph(OutPoint(bytes(range(32)), 0))
    rnd = construction_round(factory, graph, b"\x01" * 32, b"\x02" * 32)
    result = memlink.run(Coordinator(rnd, kit.seckeys[0]), construction_participants(kit))
    assert isinstance(result.lsp_outcome, Completed), result.lsp_outcome
    specs = [ClientSpec(node_id(i + 1), 50_000, 200_000) for i in range(n_clients)]
    record = _lsp_record(factory, graph, specs, [f"{i + 1:064x}" for i in range(n_clients)])
    signed = {t.name: tx for t, tx in zip(rnd.jobs, result.lsp_outcome.signed)}
    record["txs"] = [path_entry(t.name, signed[t.name].to_hex(), t.prevout.value, t.prevout.script_pubkey)
                     for t in graph.txs()]
    record["paths"] = [[t.name for t in graph.path_txs(i)] for i in range(n_clients)]
    record["distribution"] = signed["distribution"].to_hex()
    record["funding_psbt"] = "cHNidP8BAH0CAAAAA" + "A" * 600  # a one-input funding PSBT's size
    record["stage"] = "funded"
    return record


def lsp_records(n_factories: int, n_clients: int) -> tuple[list[tuple[str, dict[str, Any]]], list[dict[str, Any]]]:
    """(factory id, record) for each factory, and lightningd's listing of their channels."""
    first = signed_record(n_clients)
    out, listing = [], []
    k = 0
    for f in range(n_factories):
        rec = copy.deepcopy(first)
        rec["funding_outpoint"] = f"{f + 1:064x}:0"
        for i, ch in enumerate(rec["channels"]):
            k += 1
            txid = f"{(f + 1) << 32 | i // 2:064x}"
            ch["peer_id"] = node_id(1 + i)  # the same clients in every factory (they roll over)
            ch["channel_id"] = f"{k:064x}"
            ch["funding_outpoint"] = f"{txid}:{i % 2}"
            listing.append(listed_channel(k, ch["peer_id"], ch["funding_outpoint"], ch["channel_id"]))
        out.append((f"{f + 1:064x}", rec))
    return out, listing


def per_block(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    rss0 = rss_mb()
    records, listing = lsp_records(args.factories, args.clients)
    t_build = time.perf_counter() - t0
    rpc = FakeRpc(listing, 0)
    plugin = FakePlugin(rpc)
    roles = Roles(plugin, {"superscalar-lsp": "true", "superscalar-profile": "mainnet"},  # type: ignore[arg-type]
                  {"network": "regtest"})
    for fid, rec in records:
        roles.store.put(fid, "factory", rec)
    del records
    roles.load_index()
    rss1 = rss_mb()
    size = sum(len(v) for v, _ in rpc.datastore.values())
    print(f"LSP: {args.factories} factories x {args.clients} clients = {args.factories * args.clients} leaf channels; "
          f"records built in {t_build:.1f} s; datastore {size / 1e6:.1f} MB of JSON; "
          f"RSS {rss0:.0f} MB before the records, {rss1:.0f} MB with them loaded (+{rss1 - rss0:.0f} MB)")
    print(f"steps (as plugin.py builds them): {', '.join(name for name, _ in roles.follower.steps)}")
    for label, n_txs in (("empty blocks", 0), (f"blocks of {args.block_txs} synthetic txs", args.block_txs)):
        rpc.block_txs = n_txs
        rows: dict[str, list[float]] = {}
        totals = []
        calls_before = Counter(rpc.calls)
        for b in range(args.blocks):
            done = roles.follower.on_block(HEIGHT + 1 + b)
            totals.append(done.total_seconds)
            for name, s in done.seconds:
                rows.setdefault(name, []).append(s)
        calls = {m: (n - calls_before.get(m, 0)) / args.blocks for m, n in rpc.calls.items() if n != calls_before.get(m, 0)}
        print(f"  {label}: {args.blocks} blocks; seconds per block p50 {statistics.median(totals):.4f}, "
              f"max {max(totals):.4f}; RSS {rss_mb():.0f} MB")
        for name, secs in rows.items():
            print(f"    {name:<18} p50 {statistics.median(secs):.4f} s   max {max(secs):.4f} s")
        print(f"    RPC calls per block: {', '.join(f'{m} {n:g}' for m, n in sorted(calls.items()))}")
    reported = {k: v for k, v in plugin.lines.items()}
    print(f"  plugin log lines by level: {reported}")


def ceremony(n: int) -> None:
    params = FactoryParams(n_clients=n, start_height=START)
    kit = make_kit(params, [ClientTerms(50_000, 200_000)] * n)
    factory = kit.factory
    funding = OutPoint(bytes(range(32)), 0)
    t0 = time.perf_counter()
    graph = factory.graph(funding)
    t_graph = time.perf_counter() - t0
    t0 = time.perf_counter()
    rnd = construction_round(factory, graph, b"\x01" * 32, b"\x02" * 32)
    result = memlink.run(Coordinator(rnd, kit.seckeys[0]), construction_participants(kit))
    t_construction = time.perf_counter() - t0
    assert isinstance(result.lsp_outcome, Completed), result.lsp_outcome
    amounts = [t.balance_sat for t in factory.terms]
    t0 = time.perf_counter()
    close = cooperative_close(factory, funding, amounts)
    participants = {c: Participant(Expectation(Kind.CLOSE, factory.keys.pubkeys[c + 1], payout_script=factory.scripts.payouts[c],
                                               payout_sat=amounts[c], funding=(funding, factory.funding_output.value)),
                                   kit.seckeys[c + 1]) for c in range(n)}
    closed = memlink.run(Coordinator(close_round(factory, close, funding, b"\x03" * 32, b"\x04" * 32), kit.seckeys[0]),
                         participants)
    t_close = time.perf_counter() - t0
    assert isinstance(closed.lsp_outcome, Completed), closed.lsp_outcome
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"rollover ceremony, N={n} clients, one process: graph {t_graph:.1f} s; construction round "
          f"({len(graph.txs()) + 1} transactions) {t_construction:.1f} s; close round (1 transaction, "
          f"{close.vsize} vB) {t_close:.1f} s; total {t_graph + t_construction + t_close:.1f} s; peak RSS {peak:.0f} MB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--factories", type=int, default=33)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--blocks", type=int, default=5)
    ap.add_argument("--block-txs", type=int, default=3_000)
    ap.add_argument("--ceremony-clients", type=int, default=1024, help="0 skips the ceremony")
    args = ap.parse_args()
    per_block(args)
    if args.ceremony_clients:
        ceremony(args.ceremony_clients)


if __name__ == "__main__":
    main()
