#!/usr/bin/env python3
"""Benchmark, real lightningd and bitcoind on regtest: `superscalar-create` with K clients against
Core Lightning's own `multifundchannel` to K peers, for each K given (default 32 and 64).

One LSP node (running the plugin) and K client nodes (running the plugin, `superscalar-join` the
LSP) are started with pyln-testing's fixtures. The LSP first opens one channel to each of the K
clients with a single `multifundchannel` (250,000 sat each, unannounced; the clients' plugins answer
its `openchannel` hook with CLN's normal policy, as for any channel that is not a factory's), then
creates a factory with the same K clients (50,000 sat balance, 200,000 sat inbound each). Printed
per K: the wall-clock seconds of each RPC, their ratio (create / multifund; the issue's target is
≤ 1.0) and each funding transaction's vsize as bitcoind reports it. Then the factory, confirmed, is
rolled over into the next one with every client carried over (`superscalar-rollover`), timed the same
way against the same `multifundchannel` figure.

The fair baseline (issue 22) is a second `multifundchannel` to the same K peers with what the factory's
leaves have: `mindepth: 0` and the same `push_msat` (50,000 sat) per destination, 250,000 sat,
unannounced, accepted zero-conf by the peers (a second plugin on each client answers `openchannel` with
`mindepth: 0`, as the superscalar client does for a factory's channel). Its channels are usable at once,
like the leaves: the same channel work, without the factory. Both ratios are printed against it. Each
RPC starts once every node has processed the
chain tip (a node still handling the last block would slow whichever RPC runs beside it), and each
is followed by its steps: the seconds from one of the LSP's progress log lines to the next (or to the
RPC's return), named by what the line says starts.

    python contrib/bench_create_vs_multifund.py [K ...]

It runs itself under pytest (the fixtures need it); nothing is asserted about time.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = ROOT / "superscalar_plugin.py"
ZEROCONF = ROOT / "tests" / "integration" / "zeroconf_plugin.py"  # answers openchannel with mindepth 0

if __name__ == "__main__":
    import pytest

    ks = [int(k) for k in sys.argv[1:]] or [32, 64]
    os.environ["BENCH_KS"] = ",".join(map(str, ks))
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    if max(ks) > 64:
        os.environ.setdefault("TIMEOUT", "180")
    sys.exit(pytest.main([__file__, "-s", "-q", "-p", "no:cacheprovider", "--rootdir", str(ROOT)]))

os.environ.setdefault("TEST_NETWORK", "regtest")
os.environ.setdefault("VALGRIND", "0")
os.environ.setdefault("RUST", "0")
sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402
from pyln.testing.fixtures import *  # noqa: E402,F401,F403
from pyln.testing.utils import wait_for  # noqa: E402

from tests.pyln_threads import serialize_bitcoind_proxies  # noqa: E402

serialize_bitcoind_proxies()

KS = [int(k) for k in os.environ.get("BENCH_KS", "32").split(",")]
CAPACITY_SAT = 250_000


@pytest.mark.parametrize("k", KS)
def test_bench_create_vs_multifund(node_factory: Any, bitcoind: Any, k: int) -> None:
    common = {"plugin": str(PLUGIN), "superscalar-profile": "regtest", "dev-bitcoind-poll": 5}
    lsp = node_factory.get_node(options={**common, "superscalar-lsp": "true"}, may_reconnect=True)
    clients = node_factory.get_nodes(k, opts={"may_reconnect": True, **common, "plugin": [str(PLUGIN), str(ZEROCONF)],
                                              "superscalar-join": lsp.info["id"]})
    for c in clients:
        c.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    lsp.fundwallet(CAPACITY_SAT * k * 2)
    lsp.fundwallet(CAPACITY_SAT * k * 2)
    lsp.fundwallet(CAPACITY_SAT * k * 2)

    def synced() -> None:  # every node has processed the tip: no block work runs beside the timed RPC
        tip = bitcoind.rpc.getblockcount()
        wait_for(lambda: all(n.rpc.getinfo()["blockheight"] == tip for n in [lsp, *clients]))

    synced()
    destinations = [{"id": f"{c.info['id']}@localhost:{c.port}", "amount": CAPACITY_SAT, "announce": False}
                    for c in clients]
    t0 = time.perf_counter()
    multi = lsp.rpc.call("multifundchannel", {"destinations": destinations})
    t_multi = time.perf_counter() - t0
    multi_vb = bitcoind.rpc.getmempoolentry(multi["txid"])["vsize"]
    bitcoind.generate_block(1)
    wait_for(lambda: bitcoind.rpc.getmempoolinfo()["size"] == 0)
    synced()

    # the fair baseline: the leaves' channel work (zero-conf, pushed balance), without the factory
    fair_destinations = [{**d, "mindepth": 0, "push_msat": 50_000_000} for d in destinations]
    t0 = time.perf_counter()
    fair = lsp.rpc.call("multifundchannel", {"destinations": fair_destinations})
    t_fair = time.perf_counter() - t0
    fair_vb = bitcoind.rpc.getmempoolentry(fair["txid"])["vsize"]
    fair_ids = {ch["channel_id"] for ch in fair["channel_ids"]}
    wait_for(lambda: all(ch["state"] == "CHANNELD_NORMAL" for ch in lsp.rpc.listpeerchannels()["channels"]
                         if ch["channel_id"] in fair_ids))  # usable before any confirmation
    bitcoind.generate_block(1)
    wait_for(lambda: bitcoind.rpc.getmempoolinfo()["size"] == 0)
    synced()

    spec = [{"id": c.info["id"], "balance_sat": 50_000, "inbound_sat": 200_000} for c in clients]
    t0 = time.perf_counter()
    created = lsp.rpc.call("superscalar-create", {"clients": spec})
    t_create = time.perf_counter() - t0
    end = datetime.now(timezone.utc).replace(tzinfo=None)
    create_vb = bitcoind.rpc.getmempoolentry(created["funding_txid"])["vsize"]
    assert len(created["channels"]) == k
    print(f"\nK={k}: superscalar-create {t_create:.1f} s (funding {create_vb} vB); "
          f"multifundchannel {t_multi:.1f} s (funding {multi_vb} vB); ratio create/multifund {t_create / t_multi:.2f}")
    print(f"K={k}: multifundchannel zero-conf with push (the fair baseline) {t_fair:.1f} s (funding {fair_vb} vB); "
          f"ratio create/fair {t_create / t_fair:.2f}")
    report_steps("create", phases(lsp, "superscalar-create: ", end), t_fair)

    # A rollover of the confirmed factory into the next one: every client carried over (no wallet input)
    bitcoind.generate_block(1)
    wait_for(lambda: all(ch["state"] == "CHANNELD_NORMAL" for ch in lsp.rpc.listpeerchannels()["channels"]))
    synced()
    t0 = time.perf_counter()
    rolled = lsp.rpc.call("superscalar-rollover", {"factory_id": created["factory_id"]})
    t_roll = time.perf_counter() - t0
    end = datetime.now(timezone.utc).replace(tzinfo=None)
    roll_vb = bitcoind.rpc.getmempoolentry(rolled["close_txid"])["vsize"]
    print(f"K={k}: superscalar-rollover {t_roll:.1f} s (close {roll_vb} vB); ratio rollover/multifund "
          f"{t_roll / t_multi:.2f}; ratio rollover/fair {t_roll / t_fair:.2f}")
    report_steps("rollover", phases(lsp, "superscalar-rollover: ", end), t_fair)


def report_steps(what: str, steps: list[tuple[str, float]], t_base: float) -> None:
    """Print an RPC's steps, then the floor its channel opens set: the seconds of the steps in which
    lightningd opens the leaf channels (`fundchannel_start`, then `fundchannel_complete` of zero-conf
    channels), against the fair baseline's whole time."""
    print(f"  {what}'s steps (from the LSP's progress log lines): "
          + ("; ".join(f"{name} {sec:.2f} s" for name, sec in steps) or "no progress lines found in the LSP's log"))
    opens = sum(sec for name, sec in steps if name.startswith("opening") or name.startswith("completing"))
    if opens:
        print(f"  {what}'s channel opens alone: {opens:.2f} s, {opens / t_base:.2f} × the fair baseline")


def phases(lsp: Any, prefix: str, end: datetime) -> list[tuple[str, float]]:
    """Seconds from each of an RPC's progress lines in the LSP's log (those after `prefix`) to the next,
    the last one's to `end` (the RPC's return), each named by the step its line says starts."""
    lsp.daemon.logs_catchup()
    marks = [(datetime.strptime(line.split()[1], "%Y-%m-%dT%H:%M:%S.%fZ"), line.split(prefix, 1)[1])
             for line in lsp.daemon.logs if "plugin-superscalar" in line and prefix in line]
    if not marks:
        return []
    marks.append((max(end, marks[-1][0]), "end"))
    return [(_step(text), (b - a).total_seconds()) for (a, text), (b, _) in zip(marks, marks[1:])]


def _step(text: str) -> str:
    """What a progress line says starts: its last clause, without ids."""
    words = [w for w in text.split(";")[-1].split() if len(w) < 40]
    return " ".join(words)[:48]
