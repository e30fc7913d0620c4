#!/usr/bin/env python3
"""Benchmark: an LSPS2 JIT channel on regtest, HTLC arrival → payment settled; and an LSPS1 order
paid → channel usable.

A regtest bitcoind and three real lightningd nodes: the LSP (plugin, wallet coins), a plain payer with
a channel to the LSP, and for each round a fresh client (plugin, no channel, no coins) that buys a JIT
channel (`superscalar-jit-invoice`) which the payer pays in `--parts` parts (sendpay by hand). Times,
per round, from the LSP's log: the first part's arrival (`holding part 1`), the last part's, the
channel ready (zero-conf, CHANNELD_NORMAL); and the moment the payer's last `waitsendpay` returns (the
client released the preimage), on the same clock. Prints each round and the median.

With `--source sale` each round first puts two fresh clients in a factory (`superscalar-create`): the
JIT channel then comes out of the first client's leaf L-stock (a liquidity sale, no wallet
transaction), and the second client buys 40,000 sat of inbound with LSPS1 (`superscalar-buy-inbound`),
which the LSP fills at once by a sale: timed from the LSP holding the order's payment to the order
completed, and to the client's new channel in CHANNELD_NORMAL.

Needs `lightningd` and `bitcoind` on PATH and pyln-testing. Daemon logs go to a temporary directory.

    contrib/bench_jit.py [--rounds 3] [--parts 3] [--amount-msat 300000000] [--source wallet|sale]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pyln.testing.utils import sync_blockheight, wait_for  # noqa: E402

from contrib.regtest import PLUGIN, regtest_network, run_main, say  # noqa: E402
from tests.integration.test_lsps2 import pay_in_parts  # noqa: E402

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
    ap.add_argument("--amount-msat", type=int, default=None,
                    help="default 300000000 (wallet), 30000000 (sale: it must fit a regtest leaf's L-stock)")
    ap.add_argument("--source", choices=("wallet", "sale"), default="wallet")
    args = ap.parse_args()
    if args.amount_msat is None:
        args.amount_msat = 300_000_000 if args.source == "wallet" else 30_000_000
    with regtest_network("bench_jit", keep=os.environ.get("KEEP") is not None) as net:
        run(args, net.bitcoind, net.nodes)


def run(args: argparse.Namespace, bitcoind: Any, factory: Any) -> None:
    rows = []
    ladder = {"superscalar-ladder": "true", "superscalar-ladder-interval-blocks": "0",
              "superscalar-batch-size": "6", "superscalar-batch-wait-blocks": "30",
              "superscalar-lsps1-min-lsp-balance-sat": "20000"} if args.source == "sale" else {}
    lsp = factory.get_node(options={"plugin": str(PLUGIN), "superscalar-profile": "regtest",
                                    "superscalar-lsp": "true", **ladder})
    payer = factory.get_node()
    lsp.fundwallet(50_000_000)
    payer.fundwallet(50_000_000)
    payer.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    payer.rpc.fundchannel(lsp.info["id"], 10_000_000)
    bitcoind.generate_block(6)
    wait_for(lambda: all(c["state"] == "CHANNELD_NORMAL" for c in payer.rpc.listpeerchannels()["channels"]))
    orders = []
    for n in range(args.rounds):
        client = factory.get_node(options={"plugin": str(PLUGIN), "superscalar-profile": "regtest",
                                           "superscalar-join": lsp.info["id"]})
        client.rpc.connect(lsp.info["id"], "localhost", lsp.port)
        if args.source == "sale":
            buyer = factory.get_node(options={"plugin": str(PLUGIN), "superscalar-profile": "regtest",
                                              "superscalar-join": lsp.info["id"]})
            buyer.rpc.connect(lsp.info["id"], "localhost", lsp.port)
            lsp.fundwallet(2_000_000)  # a confirmed coin of its own for each round's factory
            created = lsp.rpc.call("superscalar-create", {"clients": [
                {"id": c.info["id"], "balance_sat": 50_000, "inbound_sat": 100_000} for c in (client, buyer)]})
            bitcoind.generate_block(1, wait_for_mempool=created["funding_txid"])
            sync_blockheight(bitcoind, [lsp, client, buyer])
            wait_for(lambda: all(c["state"] == "CHANNELD_NORMAL" for c in lsp.rpc.listpeerchannels()["channels"]))
            bought = buyer.rpc.call("superscalar-buy-inbound", {"id": lsp.info["id"], "lsp_balance_sat": 40_000})
            order_id = bought["order"]["order_id"]
            wait_for(lambda: len(buyer.rpc.listpeerchannels(lsp.info["id"])["channels"]) == 2 and all(
                c["state"] == "CHANNELD_NORMAL" for c in buyer.rpc.listpeerchannels(lsp.info["id"])["channels"]))
            usable = time.time()
            held = log_time(lsp, f"LSPS1: holding an HTLC .* for order {order_id}")
            completed = log_time(lsp, f"LSPS1: order {order_id} completed at once by sale")
            orders.append((completed - held, usable - held))
            say(f"round {n + 1}: LSPS1 order paid → completed by a sale {orders[-1][0]:.3f} s, → channel usable "
                f"{orders[-1][1]:.3f} s")
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
        if args.source == "wallet":  # the funding transaction confirms before the next round's wallet spend
            bitcoind.generate_block(1, wait_for_mempool=1)
            sync_blockheight(bitcoind, [lsp])
    say(f"median over {len(rows)} rounds ({args.source} channel): HTLC arrival → settled "
        f"{statistics.median(r[3] for r in rows):.3f} s, of which channel open {statistics.median(r[1] for r in rows):.3f} s")
    if orders:
        say(f"median over {len(orders)} LSPS1 orders filled by a sale: paid → completed "
            f"{statistics.median(o[0] for o in orders):.3f} s, paid → channel usable "
            f"{statistics.median(o[1] for o in orders):.3f} s")


if __name__ == "__main__":
    run_main(main)
