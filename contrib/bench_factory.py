#!/usr/bin/env python3
"""Benchmark the factory engine: build the transaction graph and run the full construction ceremony
(the LSP and every client in this process, every message encoded, split and decoded, every partial
and final signature verified) for N clients with default (mainnet-sized) parameters.

Each N runs in a fresh subprocess so its peak memory is its own. Printed per N: seconds to build the
graph, seconds for the ceremony, peak MB, transactions, the most bytes any client sent and received,
the worst-placed client's exit path (transactions, vbytes), and on-chain vbytes per client when the
factory opens and closes cooperatively (a one-input funding tx plus the close, divided by N). Last, the
exponent of cost growth between the two largest N, next to N·log N's.

Clients' checks use memoized MuSig2 key aggregation: each client's own work (rebuilding and checking
its path) is timed separately for client 0 and printed as `client_s`.

Usage: contrib/bench_factory.py [N ...]        (default: 8 64 256 1024)
"""

from __future__ import annotations

import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FUNDING_TX_VBYTES = 154  # one P2TR wallet input, the funding output and change


def one(n: int) -> dict[str, float]:
    from superscalar.bitcoin.tx import OutPoint
    from superscalar.factory.graph import cooperative_close
    from superscalar.factory.params import ClientTerms, FactoryParams
    from superscalar.protocol import memlink
    from superscalar.protocol.ceremony import Completed, Coordinator
    from superscalar.protocol.rounds import construction_round, participant_jobs
    from tests.factory_kit import construction_participants, make_kit

    params = FactoryParams(n_clients=n, start_height=900_000)
    kit = make_kit(params, [ClientTerms(200_000, 800_000)] * n)
    funding = OutPoint(bytes(range(32)), 0)

    t0 = time.perf_counter()
    factory = kit.factory
    graph = factory.graph(funding)
    t_build = time.perf_counter() - t0

    participants = construction_participants(kit)
    t0 = time.perf_counter()
    rnd = construction_round(factory, graph, b"\x01" * 32, b"\x02" * 32)
    result = memlink.run(Coordinator(rnd, kit.seckeys[0]), participants)
    t_ceremony = time.perf_counter() - t0
    assert isinstance(result.lsp_outcome, Completed), result.lsp_outcome
    assert all(isinstance(result.client_outcome(c), Completed) for c in range(n))

    # One client's own checking work, with nothing memoized from the others (fresh process state
    # would be the honest measure; here the aggregation memo is cleared first).
    from superscalar import musig2
    musig2._key_agg.cache_clear()
    musig2._get_session_values.cache_clear()
    t0 = time.perf_counter()
    participant_jobs(participants[0].expect, rnd.proposals[0])
    t_client = time.perf_counter() - t0

    worst = max((graph.exit_path(c) for c in range(n)), key=lambda e: e.vbytes)
    close = cooperative_close(factory, funding, [t.capacity_sat // 2 for t in factory.terms])
    return {
        "n": n,
        "build_s": t_build,
        "ceremony_s": t_ceremony,
        "client_s": t_client,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "txs": len(graph.txs()) + 1,
        "max_sent": max(result.sent.values()),
        "max_recv": max(result.received.values()),
        "exit_txs": len(worst.txs),
        "exit_vb": worst.vbytes,
        "onchain_vb_per_client": (FUNDING_TX_VBYTES + close.vsize) / n,
    }


def main(argv: list[str]) -> None:
    if argv and argv[0] == "--one":
        print(json.dumps(one(int(argv[1]))))
        return
    sizes = [int(a) for a in argv] or [8, 64, 256, 1024]
    print(f"{'N':>5} {'build_s':>8} {'cerem_s':>8} {'total_s':>8} {'client_s':>8} {'peak_MB':>8} {'txs':>6} "
          f"{'sent_B':>7} {'recv_B':>8} {'exit_tx':>7} {'exit_vB':>7} {'chain_vB/client':>15}")
    rows = []
    for n in sizes:
        out = subprocess.run([sys.executable, __file__, "--one", str(n)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(f"{n:>5} {r['build_s']:8.2f} {r['ceremony_s']:8.2f} {r['build_s'] + r['ceremony_s']:8.2f} "
              f"{r['client_s']:8.3f} {r['peak_mb']:8.0f} {r['txs']:>6} {r['max_sent']:>7} {r['max_recv']:>8} "
              f"{r['exit_txs']:>7} {r['exit_vb']:>7} {r['onchain_vb_per_client']:15.1f}")
    if len(rows) >= 2:
        a, b = rows[-2], rows[-1]
        ta, tb = a["build_s"] + a["ceremony_s"], b["build_s"] + b["ceremony_s"]
        k = math.log(tb / ta) / math.log(b["n"] / a["n"])
        nlogn = math.log((b["n"] * math.log(b["n"])) / (a["n"] * math.log(a["n"]))) / math.log(b["n"] / a["n"])
        print(f"cost growth N={a['n']}→{b['n']}: exponent {k:.2f} (N·log N would be {nlogn:.2f})")


if __name__ == "__main__":
    main(sys.argv[1:])
