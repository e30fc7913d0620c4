#!/usr/bin/env python3
"""One factory of K real clients, end to end, measured: K + 1 lightningd nodes each running the plugin
on regtest (default K = 128). The LSP creates the factory, pays every client and is paid by every
client over its leaf channel, then rolls the factory over with every client carried; each client's
balance in its new channel is checked against its old one to the msat.

Printed: the seconds of each step (node start, create, payments to and from every client, rollover),
per client; the memory of each node (proportional set size of lightningd with its subdaemons and
plugins, and of ours), mean and largest, and the machine's available memory before and after; the
funding transaction's and the rollover close's vsize as bitcoind reports them. Client nodes run
without the default plugins a client does not use, and every process with MALLOC_ARENA_MAX=2.

    python contrib/scale_factory.py [K]

Needs `lightningd` and `bitcoind` on PATH and the test extras; nothing is asserted about time.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pyln.testing.utils import sync_blockheight, wait_for  # noqa: E402

from contrib.regtest import PLUGIN, memory_kb, processes, regtest_network, run_main, say  # noqa: E402

BALANCE_SAT, INBOUND_SAT = 20_000, 80_000
# What a factory client does not use, of the plugins lightningd starts by default: each is a process of
# its own on every node (the client keeps bcli, cln-bwatch, topology, pay, xpay, askrene, offers, spenderp).
CLIENT_UNUSED_PLUGINS = ["autoclean", "bookkeeper", "chanbackup", "cln-renepay", "commando", "exposesecret",
                         "funder", "keysend", "recklessrpc", "recover", "sql", "txprepare"]


def tree_rss_mb(root: int) -> tuple[float, float]:
    """Memory (MB, proportional set size) of process `root` and its descendants, without and with the
    plugin."""
    found = processes()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in found.items():
        children.setdefault(ppid, []).append(pid)
    node_kb = plugin_kb = 0
    stack = [root]
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        if b"superscalar_plugin.py" in found.get(pid, (0, b""))[1]:
            plugin_kb += memory_kb(pid, proportional=True)
        else:
            node_kb += memory_kb(pid, proportional=True)
    return node_kb / 1024, plugin_kb / 1024


def available_mb() -> float:
    """The machine's MemAvailable."""
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:")) / 1024


def leaf_msat(client: Any, lsp_id: str, outpoint: str) -> int:
    [ch] = [c for c in client.rpc.listpeerchannels(lsp_id)["channels"]
            if f"{c['funding_txid']}:{c['funding_outnum']}" == outpoint]
    return int(ch["to_us_msat"])


def pay(payer: Any, payee: Any, msat: int, label: str) -> None:
    normal = [c for c in payee.rpc.listpeerchannels()["channels"] if c["state"] == "CHANNELD_NORMAL"]
    wait_for(lambda: all("remote" in c.get("updates", {}) for c in payee.rpc.listpeerchannels()["channels"]
                         if c["state"] == "CHANNELD_NORMAL"))
    aliases = [c.get("short_channel_id") or c["alias"]["local"] for c in normal]
    inv = payee.rpc.call("invoice", {"amount_msat": msat, "label": label, "description": label, "cltv": 24,
                                     "exposeprivatechannels": aliases})["bolt11"]
    payer.rpc.call("xpay", {"invstring": inv})


def main() -> None:
    k = int(sys.argv[1]) if len(sys.argv) > 1 else 128
    # glibc gives each thread that allocates an arena of its own (up to 8 per core): with hundreds of
    # processes on one machine, two per process keep the resident memory of idle threads down
    os.environ.setdefault("MALLOC_ARENA_MAX", "2")
    with regtest_network("scale", workers=8) as net:
        run(k, net.bitcoind, net.nodes)


def run(k: int, bitcoind: Any, factory: Any) -> None:
    timeout = max(60, 2 * k)
    common = {"plugin": str(PLUGIN), "superscalar-profile": "regtest", "superscalar-timeout": str(timeout),
              "dev-bitcoind-poll": 5, "log-level": "info"}
    free_before = available_mb()
    t0 = time.perf_counter()
    lsp = factory.get_node(options={**common, "superscalar-lsp": "true"}, may_reconnect=True)
    clients = factory.get_nodes(k, opts={"may_reconnect": True, **common, "superscalar-join": lsp.info["id"],
                                         "disable-plugin": CLIENT_UNUSED_PLUGINS})
    lsp_id = lsp.info["id"]
    for c in clients:
        c.rpc.connect(lsp_id, "localhost", lsp.port)
    t_start = time.perf_counter() - t0
    lsp.fundwallet((BALANCE_SAT + INBOUND_SAT) * k * 2 + 1_000_000)
    nodes = [lsp, *clients]
    sync_blockheight(bitcoind, nodes)

    spec = [{"id": c.info["id"], "balance_sat": BALANCE_SAT, "inbound_sat": INBOUND_SAT} for c in clients]
    t0 = time.perf_counter()
    created = lsp.rpc.call("superscalar-create", {"clients": spec})
    t_create = time.perf_counter() - t0
    funding_vb = bitcoind.rpc.getmempoolentry(created["funding_txid"])["vsize"]
    bitcoind.generate_block(1)
    sync_blockheight(bitcoind, nodes)
    outpoints = {ch["peer_id"]: ch["funding_outpoint"] for ch in created["channels"]}

    t0 = time.perf_counter()
    for i, c in enumerate(clients):
        pay(lsp, c, 2_000_000 + i, f"to-{i}")
    t_to = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i, c in enumerate(clients):
        pay(c, lsp, 1_000_000 + 7 * i, f"from-{i}")
    t_from = time.perf_counter() - t0
    wait_for(lambda: not any(ch["htlcs"] for ch in lsp.rpc.listpeerchannels()["channels"]))
    before = {c.info["id"]: leaf_msat(c, lsp_id, outpoints[c.info["id"]]) for c in clients}
    expected = {c.info["id"]: BALANCE_SAT * 1000 + 2_000_000 + i - (1_000_000 + 7 * i) for i, c in enumerate(clients)}
    paid_ok = before == expected

    mem = [tree_rss_mb(n.daemon.proc.pid) for n in nodes]
    free_after = available_mb()
    sync_blockheight(bitcoind, nodes)
    t0 = time.perf_counter()
    rolled = lsp.rpc.call("superscalar-rollover", {"factory_id": created["factory_id"]})
    t_roll = time.perf_counter() - t0
    close_vb = bitcoind.rpc.getmempoolentry(rolled["close_txid"])["vsize"]
    raw = lsp.rpc.call("listdatastore", {"key": ["superscalar", "factories", rolled["next_factory"], "factory"]})
    new = {ch["peer_id"]: ch["funding_outpoint"] for ch in json.loads(raw["datastore"][0]["string"])["data"]["channels"]}
    after = {c.info["id"]: leaf_msat(c, lsp_id, new[c.info["id"]]) for c in clients}
    carried = after == before

    node_mb = [m[0] for m in mem]
    plugin_mb = [m[1] for m in mem]
    say(f"K={k}: nodes started and connected {t_start:.1f} s ({t_start / k:.2f} s per client)")
    say(f"K={k}: superscalar-create {t_create:.1f} s ({t_create / k:.3f} s per client); funding {funding_vb} vB")
    say(f"K={k}: a payment to every client {t_to:.1f} s, from every client {t_from:.1f} s; "
          f"every balance as paid: {'yes' if paid_ok else 'NO'}")
    say(f"K={k}: superscalar-rollover {t_roll:.1f} s ({t_roll / k:.3f} s per client); close {close_vb} vB; "
          f"every balance carried to the msat: {'yes' if carried else 'NO'}")
    say(f"K={k}: memory per node: lightningd and subdaemons mean {sum(node_mb) / len(node_mb):.0f} MB "
          f"(largest {max(node_mb):.0f}), plugin mean {sum(plugin_mb) / len(plugin_mb):.0f} MB "
          f"(largest {max(plugin_mb):.0f}); all {len(nodes)} nodes {sum(node_mb) + sum(plugin_mb):.0f} MB; "
          f"the machine's available memory {free_before:.0f} MB before the nodes started, {free_after:.0f} MB "
          "with them")
    if not (paid_ok and carried):
        sys.exit("balances differ")


if __name__ == "__main__":
    run_main(main)
