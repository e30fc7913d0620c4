#!/usr/bin/env python3
"""Benchmark the factory engine: build the transaction graph and run the full construction ceremony
(the LSP and every client, every message encoded, split and decoded, every final signature verified
by the LSP and by each client on its path) for N clients with default (mainnet-sized) parameters.

By default both cores are used: the graph derives its output keys on two threads (libsecp256k1 runs
without the GIL), and in the ceremony the LSP runs in this process and the clients in two forked
worker processes (`split_link.run_split`, beside this script: a client goes to whichever worker asks for work first, and the
workers run at lower priority than the LSP, whose aggregation every client waits for).
`--processes 1` runs the ceremony in one process (`memlink.run`).

Printed per N:
  build_s     seconds to build the graph (the LSP's Factory.graph)
  cerem_s     seconds for the ceremony: the round's proposals, then the whole exchange
  total_s     build_s + cerem_s, wall clock
  range_s     the lowest and highest total_s of the repeated runs
  cpu_s       CPU seconds of build and ceremony, summed over every process
  client_s    one client's own work (rebuild and check its path from its proposal) with every
              cache of derived keys emptied first: what a client's own machine spends
  MB          peak memory: the peak RSS of every process, summed (an upper bound: a page the
              forked workers share with this process counts in each)
  txs, sent_B/recv_B (most bytes any client sent/received), exit_tx/exit_vB (the worst-placed
  client's exit path), chain_vB/client (funding tx + cooperative close, divided by N)
Last, the cost growth exponent, fitted (log-log least squares) over every N ≥ 64 measured, for wall
clock and CPU, next to N·log N's over the same sizes.

Derived keys (MuSig2 key aggregation, taproot tweaks, session values) are memoized per process:
each is computed once per process however many clients derive it, so these figures count that
work once per process, not once per client. The workers are forked after the build, so they start
with the keys the LSP derived. client_s shows one client's own cost, with none of that memoized.
Everything else a client does (decoding, rebuilding and checking its path and the distribution,
its nonces and partial signatures, verifying every signature on its path) is done per client.

Each N runs `--repeat R` times (default 3), each in a fresh subprocess; the row shown is the run
with the median total, next to the range of totals (this machine's speed varies from run to run).

Usage: contrib/bench_factory.py [--processes P] [--repeat R] [N ...]   (default: P = 3, R = 3, N = 8 64 256 1024)
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


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _clear_derived_caches() -> None:
    from superscalar.crypto import musig2, secp256k1
    from superscalar.bitcoin import taproot

    for memo in (musig2._key_agg, musig2._key_agg_point, musig2._key_agg_cache, musig2._get_session_values, musig2._cpoint,
                 taproot._tweak_point, secp256k1._tweak_add):
        memo.cache_clear()


def one(n: int, processes: int) -> dict[str, float]:
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
    participants = construction_participants(kit)
    _clear_derived_caches()

    cpu0, t0 = _cpu(), time.perf_counter()
    factory = kit.factory
    graph = factory.graph(funding)
    t_build = time.perf_counter() - t0

    t0 = time.perf_counter()
    rnd = construction_round(factory, graph, b"\x01" * 32, b"\x02" * 32)
    coordinator = Coordinator(rnd, kit.seckeys[0])
    if processes > 1:
        from split_link import run_split

        result = run_split(coordinator, participants, workers=processes - 1)
    else:
        result = memlink.run(coordinator, participants)
    t_ceremony = time.perf_counter() - t0
    cpu = _cpu() - cpu0
    assert isinstance(result.lsp_outcome, Completed), result.lsp_outcome
    assert all(isinstance(result.client_outcome(c), Completed) for c in range(n))
    mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
          + sum(result.workers_peak_rss_kb)) / 1024

    # One client's own checking work, with nothing derived by the others left in memory.
    _clear_derived_caches()
    t0 = time.perf_counter()
    participant_jobs(participants[0].expect, rnd.proposals[0])
    t_client = time.perf_counter() - t0

    worst = max((graph.exit_path(c) for c in range(n)), key=lambda e: e.vbytes)
    close = cooperative_close(factory, funding, [t.capacity_sat // 2 for t in factory.terms])
    return {
        "n": n,
        "build_s": t_build,
        "ceremony_s": t_ceremony,
        "cpu_s": cpu,
        "client_s": t_client,
        "mb": mb,
        "txs": len(graph.txs()) + 1,
        "max_sent": max(result.sent.values()),
        "max_recv": max(result.received.values()),
        "exit_txs": len(worst.txs),
        "exit_vb": worst.vbytes,
        "onchain_vb_per_client": (FUNDING_TX_VBYTES + close.vsize) / n,
    }


def _fit(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log y against log x: the exponent k of y ∝ x^k."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def _run(n: int, processes: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--one", str(n), str(processes)],
                         capture_output=True, text=True, check=True)
    r: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    r["total_s"] = r["build_s"] + r["ceremony_s"]
    return r


def main(argv: list[str]) -> None:
    if argv and argv[0] == "--one":
        print(json.dumps(one(int(argv[1]), int(argv[2]))))
        return
    processes, repeat = 3, 3
    while argv[:1] in (["--processes"], ["--repeat"]):
        if argv[0] == "--processes":
            processes = int(argv[1])
        else:
            repeat = int(argv[1])
        argv = argv[2:]
    sizes = [int(a) for a in argv] or [8, 64, 256, 1024]
    print(f"processes: {processes} ({'the LSP here, clients in ' + str(processes - 1) + ' workers' if processes > 1 else 'one'}); "
          f"each N run {repeat} times, the run with the median total shown, and the range of totals")
    print(f"{'N':>5} {'build_s':>8} {'cerem_s':>8} {'total_s':>8} {'range_s':>11} {'cpu_s':>7} {'client_s':>8} {'MB':>5} "
          f"{'txs':>6} {'sent_B':>7} {'recv_B':>8} {'exit_tx':>7} {'exit_vB':>7} {'chain_vB/client':>15}")
    rows = []
    for n in sizes:
        runs = sorted((_run(n, processes) for _ in range(repeat)), key=lambda r: r["total_s"])
        r = runs[len(runs) // 2]
        rows.append(r)
        spread = f"{runs[0]['total_s']:.2f}-{runs[-1]['total_s']:.2f}"
        print(f"{n:>5} {r['build_s']:8.2f} {r['ceremony_s']:8.2f} {r['total_s']:8.2f} {spread:>11} {r['cpu_s']:7.2f} "
              f"{r['client_s']:8.3f} {r['mb']:5.0f} {r['txs']:>6} {r['max_sent']:>7} {r['max_recv']:>8} "
              f"{r['exit_txs']:>7} {r['exit_vb']:>7} {r['onchain_vb_per_client']:15.1f}")
    fitted = [r for r in rows if r["n"] >= 64] if sum(r["n"] >= 64 for r in rows) >= 2 else rows
    if len(fitted) >= 2:
        ns = [float(r["n"]) for r in fitted]
        nlogn = _fit(ns, [n * math.log(n) for n in ns])
        print(f"cost growth N={fitted[0]['n']}→{fitted[-1]['n']} (log-log fit over {len(fitted)} sizes, median runs): exponent "
              f"{_fit(ns, [r['total_s'] for r in fitted]):.2f} wall clock, {_fit(ns, [r['cpu_s'] for r in fitted]):.2f} CPU "
              f"(N·log N would be {nlogn:.2f})")


if __name__ == "__main__":
    main(sys.argv[1:])
