#!/usr/bin/env python3
"""A long run of laddering on one LSP, measured: real lightningd and bitcoind on regtest, the ladder on,
clients that stay, one that comes and goes, one that leaves, payments every block, until the ladder
has rolled factories over `--rollovers` times (regtest profile: 30 blocks of life, 10 of dying).

Printed every `--every` rollovers, for the LSP:

    rollovers  height  plugin_ms/block  p50  lightningd_ms/block  rss_MB  datastore_kB  channels  retired  records  archived  log_kB/block  sendraw/block

- plugin_ms/block: the plugin's per-block steps (its "block N: steps took" debug line), mean over the
  blocks since the last row, and their median (p50: a block with a ceremony running beside its steps,
  or the first after a restart, moves the mean);
- lightningd_ms/block: from lightningd's "Adding block" line to its last rebroadcast attempt for that
  block (0 when it rebroadcasts nothing), mean;
- rss_MB: the plugin process's resident memory; datastore_kB: the bytes of every datastore entry;
- channels / retired: `listpeerchannels` length, and how many of them are retired (closing states);
- records / archived: factories whose records the plugin keeps, and those archived to a summary
  (with `--forget`, chain/forget.py);
- log_kB/block, sendraw/block: lightningd's log growth and its failing `sendrawtransaction` calls
  (rebroadcasts of retired channels' closing transactions) per block, mean.

At the end: each figure at the last row against the first (the target with `--forget`: within 1.2×),
and without `--forget` the growth per retired channel. `--kill-every M` kills the LSP with SIGKILL
every M rollovers, restarts it, and checks that every client's balance in its normal channels is the
same before and after, to the msat.

    python contrib/soak_ladder.py [--rollovers 100] [--clients 5] [--every 10] [--forget] [--kill-every 0]

Needs `lightningd` and `bitcoind` on PATH and the test extras; nothing is asserted about time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pyln.testing.utils import sync_blockheight, wait_for  # noqa: E402

from contrib.regtest import PLUGIN, memory_kb, processes, regtest_network, run_main, say  # noqa: E402

CLOSING = {"CHANNELD_SHUTTING_DOWN", "CLOSINGD_SIGEXCHANGE", "CLOSINGD_COMPLETE", "AWAITING_UNILATERAL",
           "FUNDING_SPEND_SEEN", "ONCHAIN"}
REBROADCAST = "Expected error broadcasting tx"
MAX_ALIVE = 4


def stamp(line: str) -> Optional[datetime]:
    parts = line.split()
    if len(parts) < 2:
        return None
    try:
        return datetime.strptime(parts[1], "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        return None


class LogMeter:
    """Reads the LSP's log from where it last stopped: per-block plugin and lightningd time, rebroadcasts."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.offset = 0
        self.plugin_ms: list[float] = []
        self.step_ms: dict[str, float] = {}  # per step: its milliseconds summed over the blocks read
        self.lightningd_ms: list[float] = []
        self.sendraw = 0
        self.blocks = 0
        self.rolled = 0
        self.bytes = 0

    def read(self) -> None:
        path = os.path.join(self.node.daemon.lightning_dir, "regtest", "log")
        if not os.path.exists(path):
            path = os.path.join(self.node.daemon.lightning_dir, "log")
        with open(path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        self.bytes += len(data)
        added: Optional[datetime] = None
        last: Optional[datetime] = None
        for line in data.decode(errors="replace").splitlines():
            if "Adding block" in line:
                if added is not None:
                    self.lightningd_ms.append(((last or added) - added).total_seconds() * 1000)
                added, last = stamp(line), None
                self.blocks += 1
            elif REBROADCAST in line:
                self.sendraw += 1
                last = stamp(line) or last
            m = re.search(r"block \d+: steps took ([\d.]+) ms \((.*)\)", line)
            if m:
                self.plugin_ms.append(float(m.group(1)))
                for part in m.group(2).split("; "):
                    what, _, ms = part.rpartition(" ")
                    if what and ms.replace(".", "", 1).isdigit():
                        self.step_ms[what] = self.step_ms.get(what, 0.0) + float(ms)
            if "ladder: rolled factory" in line:
                self.rolled += 1
        if added is not None:
            self.lightningd_ms.append(((last or added) - added).total_seconds() * 1000)

    def take(self) -> dict[str, float]:
        blocks = max(1, self.blocks)
        row = {"plugin_ms": sum(self.plugin_ms) / max(1, len(self.plugin_ms)),
               "plugin_p50": statistics.median(self.plugin_ms) if self.plugin_ms else 0.0,
               "lightningd_ms": sum(self.lightningd_ms) / max(1, len(self.lightningd_ms)),
               "log_kB": self.bytes / 1024 / blocks, "sendraw": self.sendraw / blocks}
        steps = {what: ms / max(1, len(self.plugin_ms)) for what, ms in self.step_ms.items()}
        self.plugin_ms, self.lightningd_ms, self.sendraw, self.blocks, self.bytes = [], [], 0, 0, 0
        self.step_ms = {}
        return row, steps


def plugin_rss_mb(node: Any) -> float:
    """Resident memory of the node's superscalar plugin process (a child of its lightningd)."""
    root = node.daemon.proc.pid
    return next((memory_kb(pid) / 1024 for pid, (ppid, cmd) in processes().items()
                 if ppid == root and b"superscalar_plugin.py" in cmd), 0.0)


def datastore_kb(node: Any) -> float:
    """The bytes of the plugin's datastore entries (walking its key tree)."""
    stack, seen, total = [["superscalar"]], set(), 0
    while stack:
        key = stack.pop()
        for e in node.rpc.call("listdatastore", {"key": key})["datastore"]:
            name = tuple(e["key"])
            if name in seen:
                continue
            seen.add(name)
            if "hex" in e:
                total += len(e["hex"]) // 2
            elif len(e["key"]) > len(key):
                stack.append(e["key"])
    return total / 1024


def pay(payer: Any, payee: Any, msat: int, label: str) -> bool:
    normal = [ch for ch in payee.rpc.listpeerchannels()["channels"] if ch["state"] == "CHANNELD_NORMAL"
              and "remote" in ch.get("updates", {})]
    if not normal:
        return False
    aliases = [ch.get("short_channel_id") or ch["alias"]["local"] for ch in normal]
    try:
        inv = payee.rpc.call("invoice", {"amount_msat": msat, "label": label, "description": label, "cltv": 24,
                                         "exposeprivatechannels": aliases})["bolt11"]
        payer.rpc.call("xpay", {"invstring": inv, "retry_for": 10})
        return True
    except Exception:
        return False


def balances(client: Any, lsp_id: str) -> int:
    return sum(int(ch["to_us_msat"]) for ch in client.rpc.listpeerchannels(lsp_id)["channels"]
               if ch["state"] == "CHANNELD_NORMAL")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rollovers", type=int, default=100)
    ap.add_argument("--clients", type=int, default=5, help="4 to 8: the last two come and go, and leave")
    ap.add_argument("--every", type=int, default=10, help="print a row every this many rollovers")
    ap.add_argument("--forget", action="store_true", help="superscalar-forget-retired=true on every node")
    ap.add_argument("--kill-every", type=int, default=0, help="kill -9 and restart the LSP every M rollovers")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    with regtest_network("soak", keep=args.keep) as net:
        run(args, net.directory, net.bitcoind, net.nodes)


def run(args: argparse.Namespace, directory: str, bitcoind: Any, factory: Any) -> None:
    say(f"soak: {args.rollovers} rollovers, {args.clients} clients, forget-retired "
        f"{'on' if args.forget else 'off'}, kill every {args.kill_every or 'never'}; logs in {directory}")
    common: dict[str, Any] = {"plugin": str(PLUGIN), "superscalar-profile": "regtest", "log-level": "debug"}
    if args.forget:
        common["superscalar-forget-retired"] = "true"
    lsp = factory.get_node(options={**common, "superscalar-lsp": "true", "superscalar-ladder": "true",
                                    "superscalar-ladder-interval-blocks": "3",
                                    "superscalar-ladder-max-alive": str(MAX_ALIVE)},
                           may_reconnect=True, allow_broken_log=False)
    clients = factory.get_nodes(args.clients, opts={"may_reconnect": True, **common,
                                                    "superscalar-join": lsp.info["id"]})
    lsp_id = lsp.info["id"]
    for c in clients:
        c.rpc.connect(lsp_id, "localhost", lsp.port)
    lsp.fundwallet(50_000_000)
    stable, roamer, leaver = clients[:-2], clients[-2], clients[-1]
    online = {c.info["id"]: True for c in clients}
    left = False
    meter = LogMeter(lsp)
    rows: list[dict[str, float]] = []
    step_rows: list[dict[str, float]] = []
    kills = 0
    block = 0
    say(f"{'rollovers':>9} {'height':>6} {'plugin_ms':>9} {'p50':>5} {'lightningd_ms':>13} {'rss_MB':>7} {'datastore_kB':>12} "
          f"{'channels':>8} {'retired':>7} {'records':>7} {'archived':>8} {'log_kB/blk':>10} {'sendraw/blk':>11} {'payments':>8}")
    paid = failed = 0
    next_row = args.every
    next_kill = args.kill_every or None
    while True:
        block += 1
        up = [lsp, *(c for c in clients if online[c.info["id"]])]
        bitcoind.generate_block(1)
        sync_blockheight(bitcoind, up)
        status = lsp.rpc.call("superscalar-ladder")
        if not status["waiting"] and len(status["alive"]) < MAX_ALIVE:
            for c in [*stable, roamer, *([] if left else [leaver])]:
                if online[c.info["id"]]:
                    lsp.rpc.call("superscalar-ladder-add", {"id": c.info["id"], "inbound_sat": 100_000,
                                                            "balance_sat": 20_000})
        # payments every block, both ways, to a stable client
        c = stable[block % len(stable)]
        for ok in (pay(lsp, c, 1_000_000 + block, f"in-{block}"), pay(c, lsp, 400_000 + block, f"out-{block}")):
            paid, failed = paid + ok, failed + (not ok)
        # the roamer sleeps 6 blocks in every 20
        if block % 20 == 5 and online[roamer.info["id"]]:
            roamer.stop()
            online[roamer.info["id"]] = False
        elif block % 20 == 11 and not online[roamer.info["id"]]:
            roamer.start()
            roamer.rpc.connect(lsp_id, "localhost", lsp.port)
            online[roamer.info["id"]] = True
        meter.read()
        if not left and meter.rolled >= max(1, args.rollovers // 5):
            for f in leaver.rpc.call("superscalar-list")["factories"]:
                try:
                    leaver.rpc.call("superscalar-leave", {"factory_id": f["factory_id"]})
                except Exception:
                    pass
            left = True
        if next_kill is not None and meter.rolled >= next_kill:
            next_kill += args.kill_every
            kills += 1
            wait_for(lambda: not any(ch.get("htlcs") for c in stable for ch in c.rpc.listpeerchannels()["channels"]))
            before = {c.info["id"]: balances(c, lsp_id) for c in stable}
            lsp.daemon.proc.kill()
            lsp.daemon.wait()
            for f in (Path(lsp.daemon.lightning_dir) / "plugin-io").glob("*"):  # what the kill tore
                try:
                    json.loads(f.read_text())
                except ValueError:
                    f.unlink()
            lsp.start()
            for c in clients:
                if online[c.info["id"]]:
                    c.rpc.connect(lsp_id, "localhost", lsp.port)
            wait_for(lambda: all(ch["state"] != "CHANNELD_NORMAL" or ch.get("peer_connected")
                                 for c in stable for ch in c.rpc.listpeerchannels()["channels"]))
            after = {c.info["id"]: balances(c, lsp_id) for c in stable}
            same = before == after
            say(f"  kill -9 #{kills} at rollover {meter.rolled}: every stable client's balance "
                  f"{'the same to the msat' if same else 'CHANGED: ' + json.dumps({k: (before[k], after[k]) for k in before})}")
            meter.read()
        if meter.rolled >= next_row:
            next_row += args.every
            chans = lsp.rpc.listpeerchannels()["channels"]
            info = lsp.rpc.call("superscalar-getinfo")
            taken, steps = meter.take()
            step_rows.append(steps)
            row = {"rollovers": meter.rolled, "height": bitcoind.rpc.getblockcount(), **taken,
                   "rss_MB": plugin_rss_mb(lsp), "datastore_kB": datastore_kb(lsp), "channels": len(chans),
                   "retired": sum(1 for ch in chans if ch["state"] in CLOSING),
                   "records": info["factories"], "archived": info["factories_archived"]}
            rows.append(row)
            say(f"{row['rollovers']:>9} {row['height']:>6} {row['plugin_ms']:>9.1f} {row['plugin_p50']:>5.1f} "
                f"{row['lightningd_ms']:>13.1f} "
                  f"{row['rss_MB']:>7.1f} {row['datastore_kB']:>12.1f} {row['channels']:>8} {row['retired']:>7} "
                  f"{row['records']:>7} {row['archived']:>8} "
                  f"{row['log_kB']:>10.1f} {row['sendraw']:>11.1f} {paid:>4}/{paid + failed:<4}")
            if meter.rolled >= args.rollovers:
                break
    first, last = rows[0], rows[-1]
    say("last row against the first: " + ", ".join(
        f"{k} {last[k] / first[k]:.2f}×" for k in ("plugin_ms", "plugin_p50", "lightningd_ms", "rss_MB", "datastore_kB", "channels",
                                                  "log_kB", "sendraw") if first[k]))
    say("plugin steps, mean ms/block, first row → last row:")
    for what in sorted(step_rows[-1], key=lambda w: -step_rows[-1][w])[:8]:
        say(f"  {what:<28} {step_rows[0].get(what, 0.0):7.1f} → {step_rows[-1][what]:7.1f}")
    grown = last["retired"] - first["retired"]
    if grown > 0:
        say(f"per retired channel ({grown} more): plugin {(last['plugin_ms'] - first['plugin_ms']) / grown:+.2f} ms/block, "
              f"lightningd {(last['lightningd_ms'] - first['lightningd_ms']) / grown:+.2f} ms/block, "
              f"sendraw {(last['sendraw'] - first['sendraw']) / grown:+.2f}/block, "
              f"log {(last['log_kB'] - first['log_kB']) / grown:+.2f} kB/block")
    # lightningd's own (e.g. connectd's "Subd did not close, forcing close": its 5-second timer for a
    # departing peer's channel daemons, connectd/multiplex.c, which a loaded machine can miss) are
    # counted apart from the plugin's, and the first of each kind shown
    ours = theirs = 0
    for n in [lsp, *clients]:
        n.daemon.logs_catchup()
        lines = [line for line in n.daemon.logs if "**BROKEN**" in line]
        plugin = [line for line in lines if "plugin-superscalar" in line]
        ours, theirs = ours + len(plugin), theirs + len(lines) - len(plugin)
        for line in plugin[:3] + [line for line in lines if line not in plugin][:1]:
            say(f"  {line[:300]}")
    say(f"**BROKEN** lines from the plugin: {ours or 'none'}; from lightningd itself: {theirs}")


if __name__ == "__main__":
    run_main(main)
