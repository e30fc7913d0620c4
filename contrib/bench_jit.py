#!/usr/bin/env python3
"""Benchmark: an LSPS2 JIT channel from the LSP's wallet on regtest, HTLC arrival → payment settled.

A regtest bitcoind and three real lightningd nodes: the LSP (plugin, wallet coins), a plain payer with
a channel to the LSP, and for each round a fresh client (plugin, no channel, no coins) that buys a JIT
channel (`superscalar-jit-invoice`) which the payer pays in `--parts` parts (sendpay by hand). Times,
per round, from the LSP's log: the first part's arrival (`holding part 1`), the last part's, the
channel ready (zero-conf, CHANNELD_NORMAL); and the moment the payer's last `waitsendpay` returns (the
client released the preimage), on the same clock. Prints each round and the median.

Needs `lightningd` and `bitcoind` on PATH and pyln-testing. Daemon logs go to a temporary directory.

    contrib/bench_jit.py [--rounds 3] [--parts 3] [--amount-msat 300000000]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
os.environ.setdefault("TEST_NETWORK", "regtest")
os.environ.setdefault("RUST", "0")

from pyln.testing.db import SqliteDbProvider  # noqa: E402
from pyln.testing.utils import BitcoinD, LightningNode, NodeFactory, sync_blockheight, wait_for  # noqa: E402

from contrib.regtest_demo import logs_to_file, say  # noqa: E402
from tests.integration.test_lsps2 import pay_in_parts  # noqa: E402

PLUGIN = ROOT / "superscalar_plugin.py"
STAMP = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z)")


def log_time(node: Any, pattern: str) -> float:
    """Unix time of the last log line of `node` matching `pattern` (lightningd stamps lines in UTC)."""
    line = node.daemon.is_in_log(pattern)
    assert line, pattern
    found = STAMP.search(line)
    assert found, line
    return datetime.strptime(found.group(1).replace("Z", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--parts", type=int, default=3)
    ap.add_argument("--amount-msat", type=int, default=300_000_000)
    args = ap.parse_args()
    directory = tempfile.mkdtemp(prefix="superscalar-bench-jit-")
    bitcoind = BitcoinD(bitcoin_dir=os.path.join(directory, "bitcoind"))
    executor = ThreadPoolExecutor(max_workers=4)
    logs_to_file(os.path.join(directory, "daemons.log"))  # the daemons' output; the figures keep the terminal
    db = SqliteDbProvider(directory)
    db.start()
    factory = NodeFactory(None, "bench-jit", bitcoind, executor, directory, db, LightningNode, {})
    rows = []
    try:
        bitcoind.start()
        bitcoind.generate_block(101)
        lsp = factory.get_node(options={"plugin": str(PLUGIN), "superscalar-profile": "regtest",
                                        "superscalar-lsp": "true"})
        payer = factory.get_node()
        lsp.fundwallet(50_000_000)
        payer.fundwallet(50_000_000)
        payer.rpc.connect(lsp.info["id"], "localhost", lsp.port)
        payer.rpc.fundchannel(lsp.info["id"], 10_000_000)
        bitcoind.generate_block(6)
        wait_for(lambda: all(c["state"] == "CHANNELD_NORMAL" for c in payer.rpc.listpeerchannels()["channels"]))
        for n in range(args.rounds):
            client = factory.get_node(options={"plugin": str(PLUGIN), "superscalar-profile": "regtest"})
            client.rpc.connect(lsp.info["id"], "localhost", lsp.port)
            inv = client.rpc.call("superscalar-jit-invoice", {"lsp_id": lsp.info["id"], "amount_msat": args.amount_msat,
                                                              "description": f"bench {n}"})
            pay_in_parts(payer, lsp, inv["bolt11"], args.amount_msat, args.parts)
            settled = time.time()
            scid = inv["jit_channel_scid"]
            first = log_time(lsp, f"JIT scid {scid}: holding part 1 ")
            last = log_time(lsp, f"JIT scid {scid}: holding part {args.parts} ")
            ready = log_time(lsp, f"JIT scid {scid}: channel .* ready in")
            rows.append((last - first, ready - last, settled - ready, settled - first))
            say(f"round {n + 1}: parts arrive over {rows[-1][0]:.3f} s; all held → channel ready {rows[-1][1]:.3f} s;"
                  f" ready → settled {rows[-1][2]:.3f} s; first HTLC arrival → settled {rows[-1][3]:.3f} s")
            # the funding transaction confirms before the next round's wallet spend
            bitcoind.generate_block(1, wait_for_mempool=1)
            sync_blockheight(bitcoind, [lsp])
        say(f"median over {len(rows)} rounds: HTLC arrival → settled {statistics.median(r[3] for r in rows):.3f} s,"
              f" of which channel open {statistics.median(r[1] for r in rows):.3f} s")
    finally:
        for node in factory.nodes:
            try:
                node.stop()
            except Exception as e:
                say(f"stopping a node: {e}")
        bitcoind.stop()
        db.stop()
        executor.shutdown()
        if os.environ.get("KEEP") is None:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
