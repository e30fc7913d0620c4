#!/usr/bin/env python3
"""See superscalar work: a regtest bitcoind, one LSP and a few clients (real lightningd nodes, all
running the plugin), a factory with real leaf channels, payments, and one client's unilateral exit.

Needs `lightningd` and `bitcoind` on PATH and the test extras installed (pyln-testing starts the
daemons on loopback ports in a temporary directory). Everything is stopped at the end.

Usage: contrib/regtest_demo.py [--clients N] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
os.environ.setdefault("TEST_NETWORK", "regtest")
os.environ.setdefault("RUST", "0")
os.environ.setdefault("VALGRIND", "0")

from pyln.testing.db import SqliteDbProvider  # noqa: E402
from pyln.testing.utils import BitcoinD, LightningNode, NodeFactory, sync_blockheight, wait_for  # noqa: E402

from superscalar.bitcoin.tx import OutPoint  # noqa: E402
from superscalar.factory.graph import Factory, FactoryScripts  # noqa: E402
from superscalar.factory.params import ClientTerms, FactoryParams  # noqa: E402

PLUGIN = ROOT / "superscalar_plugin.py"


STORY = sys.stdout  # replaced in main(): the story keeps the terminal, the daemons' logs go to a file


def say(text: str = "") -> None:
    print(text, file=STORY, flush=True)


def logs_to_file(path: str) -> None:
    """lightningd writes its log to its stdout (pyln-testing passes `--log-file=-`) and inherits ours; send
    file descriptors 1 and 2, and so every daemon's output, to `path`, and keep the story on the terminal."""
    global STORY
    STORY = os.fdopen(os.dup(1), "w")
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)


def sat(msat: Any) -> str:
    return f"{int(msat) // 1000:,} sat"


def show_tree(lsp: Any, factory_id: str) -> None:
    raw = lsp.rpc.listdatastore(["superscalar", "factories", factory_id, "factory"])["datastore"][0]["string"]
    rec = json.loads(raw)["data"]
    params = FactoryParams.deserialize(rec["params"].encode())
    factory = Factory(params, [ClientTerms(b, i) for b, i in rec["terms"]], [bytes.fromhex(k) for k in rec["pubkeys"]],
                      FactoryScripts(tuple(bytes.fromhex(s) for s in rec["scripts"]["channels"]),
                                     tuple(bytes.fromhex(s) for s in rec["scripts"]["payouts"]),
                                     bytes.fromhex(rec["scripts"]["lsp"])))
    txid, vout = rec["funding_outpoint"].split(":")
    graph = factory.graph(OutPoint.from_hex(txid, int(vout)), rec["state"])
    say(f"funding output {rec['funding_outpoint']}  {rec['funding_value_sat']:,} sat  (MuSig2 of LSP + {params.n_clients} clients,"
        f" or the LSP alone after block {params.timeout(0)})")
    for node in factory.topology.nodes:
        indent = "  " * (2 * node.depth + 1)
        for t in graph.node_txs(node.index):
            wait = f", waits {t.relative_wait} blocks" if t.relative_wait else ""
            say(f"{indent}{t.name:<10} {t.tx.txid[:16]}…  {t.vsize} vB, fee {t.fee} sat{wait}")
            indent += "  "
        if node.is_leaf:
            for c in node.clients:
                op = graph.channel_outpoint(c)
                say(f"{indent}channel of client {c}: {op.txid_hex[:16]}…:{op.vout}  {factory.terms[c].capacity_sat:,} sat")
            say(f"{indent}L-stock {params.lstock_sat:,} sat, P2A anchor {params.anchor_sat} sat")
    dist = graph.distribution()
    say(f"distribution at block {params.distribution_height}: {len(dist.tx.outputs)} outputs, {dist.vsize} vB")


def show_channels(lsp: Any, clients: list[Any]) -> None:
    for i, c in enumerate(clients):
        [ch] = c.rpc.listpeerchannels(lsp.info["id"])["channels"]
        say(f"  client {i}: {ch['state']:<16} client {sat(ch['to_us_msat']):>12}   LSP {sat(ch['total_msat'] - ch['to_us_msat']):>12}"
            f"   funding {ch['funding_txid'][:16]}…:{ch['funding_outnum']}")


def pay(payer: Any, payee: Any, amount_sat: int, label: str) -> None:
    # a route hint needs the peer's channel_update, which can come a moment after CHANNELD_NORMAL
    wait_for(lambda: all("remote" in ch.get("updates", {}) for ch in payee.rpc.listpeerchannels()["channels"]
                         if ch["state"] == "CHANNELD_NORMAL"))
    aliases = [ch.get("short_channel_id") or ch["alias"]["local"] for ch in payee.rpc.listpeerchannels()["channels"]
               if ch["state"] == "CHANNELD_NORMAL"]
    inv = payee.rpc.call("invoice", {"amount_msat": amount_sat * 1000, "label": label, "description": label,
                                     "cltv": 24, "exposeprivatechannels": aliases})["bolt11"]
    payer.rpc.xpay(inv)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=3, help="number of clients (default 3)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    for binary in ("lightningd", "bitcoind"):
        if shutil.which(binary) is None:
            sys.exit(f"{binary} not found on PATH")

    directory = tempfile.mkdtemp(prefix="superscalar-demo-")
    logs = os.path.join(directory, "daemons.log")
    logs_to_file(logs)
    say(f"daemon logs: {logs} (each node's own log is also in {directory}/lightning-<n>/log)")
    bitcoind = BitcoinD(bitcoin_dir=os.path.join(directory, "bitcoind"))
    executor = ThreadPoolExecutor(max_workers=4)
    db = SqliteDbProvider(directory)
    db.start()
    factory = NodeFactory(None, "demo", bitcoind, executor, directory, db, LightningNode, {})
    try:
        bitcoind.start()
        bitcoind.generate_block(101)
        say(f"bitcoind regtest running; starting an LSP and {args.clients} clients with the plugin …")
        common = {"plugin": str(PLUGIN), "superscalar-profile": "regtest"}
        lsp = factory.get_node(options={**common, "superscalar-lsp": "true"}, may_reconnect=True)
        clients = factory.get_nodes(args.clients, opts={"may_reconnect": True, **common,
                                                         "superscalar-join": lsp.info["id"]})
        for c in clients:
            c.rpc.connect(lsp.info["id"], "localhost", lsp.port)
        lsp.fundwallet(20_000_000)
        say(f"LSP {lsp.info['id'][:16]}… wallet funded with 20,000,000 sat")

        spec = [{"id": c.info["id"], "balance_sat": 50_000, "inbound_sat": 200_000} for c in clients]
        start = time.perf_counter()
        res = lsp.rpc.call("superscalar-create", {"clients": spec})
        elapsed = time.perf_counter() - start
        say(f"\nsuperscalar-create for {args.clients} clients: {elapsed:.1f} s (invite, channel opens, signing ceremony,"
            f" channel completion, funding broadcast)")
        bitcoind.generate_block(1)
        sync_blockheight(bitcoind, [lsp, *clients])
        say(f"factory {res['factory_id'][:16]}… funded by {res['funding_txid']} (confirmed)\n")
        show_tree(lsp, res["factory_id"])

        say("\nleaf channels (zero-conf, never broadcast, CHANNELD_NORMAL on stock Core Lightning):")
        show_channels(lsp, clients)
        say("\npayments: LSP → each client 10,000 sat; each client → LSP 4,000 sat; client 0 → client 1 1,000 sat")
        for i, c in enumerate(clients):
            pay(lsp, c, 10_000, f"to-{i}")
            pay(c, lsp, 4_000, f"from-{i}")
        if len(clients) > 1:
            pay(clients[0], clients[1], 1_000, "0-to-1")
        for c in clients:
            wait_for(lambda: not c.rpc.listpeerchannels(lsp.info["id"])["channels"][0]["htlcs"])
        show_channels(lsp, clients)

        leaver = clients[-1]
        [view] = leaver.rpc.call("superscalar-list")["factories"]
        say(f"\nclient {len(clients) - 1} exits unilaterally: {view['exit']['transactions']} transactions,"
            f" {view['exit']['vbytes']} vB, {view['exit']['wait_blocks']} blocks of relative waits"
            f" (tree fees {view['exit']['fee_sat']} sat, paid inside the factory)")
        before = sum(o["amount_msat"] for o in leaver.rpc.listfunds()["outputs"] if o["status"] == "confirmed")
        leaver.rpc.call("superscalar-exit", {"factory_id": res["factory_id"]})
        for block in range(1, 200):
            bitcoind.generate_block(1)
            sync_blockheight(bitcoind, [lsp, *clients])
            progress = leaver.rpc.call("superscalar-list")["factories"][0]["exit_progress"]
            funds = sum(o["amount_msat"] for o in leaver.rpc.listfunds()["outputs"] if o["status"] == "confirmed")
            if block % 4 == 0 or funds > before:
                say(f"  block +{block}: published {len(progress['published'])}/{view['exit']['transactions']},"
                    f" status {progress['status']}")
            if funds > before:
                say(f"  the client's wallet received {sat(funds - before)} on chain")
                break
        say("\nthe other clients' channels keep working:")
        show_channels(lsp, clients[:-1])
    finally:
        say("\nshutting down …")
        for node in factory.nodes:
            try:
                node.stop()
            except Exception as e:
                say(f"  stopping a node: {e}")
            proc = getattr(node.daemon, "proc", None)
            if proc is not None and proc.poll() is None:  # did not stop in time: make sure it is gone
                proc.kill()
                proc.wait()
        bitcoind.stop()
        if getattr(bitcoind, "proc", None) is not None and bitcoind.proc.poll() is None:
            bitcoind.proc.kill()
        db.stop()
        executor.shutdown()
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)
            say("done (logs removed with the directory; --keep keeps them)")
        else:
            say(f"done; logs kept in {directory}")


if __name__ == "__main__":
    try:
        main()
    except BaseException:  # fd 2 goes to the log file by now: tell the terminal
        traceback.print_exc(file=STORY)
        sys.exit(1)
