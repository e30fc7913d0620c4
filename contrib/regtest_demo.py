#!/usr/bin/env python3
"""See a factory's life: a regtest bitcoind, one LSP with the ladder on and five clients (real lightningd
nodes, all running the plugin): laddered factories, payments, the dying period, a rollover that carries
three clients' balances into the next factory and pays a leaving client on chain, and an absent client
paid by its factory's distribution. The daemons' logs go to a file; the terminal gets the story.

Needs `lightningd` and `bitcoind` on PATH and the test extras installed (pyln-testing starts the
daemons on loopback ports in a temporary directory). Everything is stopped at the end.

Usage: contrib/regtest_demo.py [--keep]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pyln.testing.utils import sync_blockheight, wait_for  # noqa: E402

from contrib.regtest import PLUGIN, regtest_network, run_main, say  # noqa: E402
from superscalar.bitcoin.tx import OutPoint  # noqa: E402
from superscalar.factory.graph import Factory, FactoryScripts  # noqa: E402
from superscalar.factory.params import ClientTerms, FactoryParams  # noqa: E402


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


def record(node: Any, factory_id: str) -> dict[str, Any]:
    raw = node.rpc.listdatastore(["superscalar", "factories", factory_id, "factory"])["datastore"][0]["string"]
    return dict(json.loads(raw)["data"])


def wallet_sat(node: Any) -> int:
    return sum(int(o["amount_msat"]) // 1000 for o in node.rpc.listfunds()["outputs"] if o["status"] == "confirmed")


def channel_msat(client: Any, lsp: Any, outpoint: str) -> int:
    [ch] = [c for c in client.rpc.listpeerchannels(lsp.info["id"])["channels"]
            if f"{c['funding_txid']}:{c['funding_outnum']}" == outpoint]
    return int(ch["to_us_msat"])


def mine(bitcoind: Any, nodes: list[Any], n: int = 1) -> None:
    for _ in range(n):
        bitcoind.generate_block(1)
        sync_blockheight(bitcoind, nodes)


def ladder_factory(lsp: Any, bitcoind: Any, nodes: list[Any], queue: list[Any], names: dict[str, str]) -> str:
    """Queue clients on the LSP's ladder and mine until it has started their factory and funded it."""
    known = set(lsp.rpc.call("superscalar-ladder")["started"])
    for c in queue:
        lsp.rpc.call("superscalar-ladder-add", {"id": c.info["id"], "inbound_sat": 200_000, "balance_sat": 50_000})
    while len(lsp.rpc.call("superscalar-ladder")["started"]) == len(known):
        mine(bitcoind, nodes)
    [fid] = set(lsp.rpc.call("superscalar-ladder")["started"]) - known
    txid, vout = record(lsp, fid)["funding_outpoint"].split(":")
    # the ladder broadcast it when it recorded the factory: in the mempool, or already in the block just mined
    wait_for(lambda: txid in bitcoind.rpc.getrawmempool() or bitcoind.rpc.gettxout(txid, int(vout), False) is not None)
    mine(bitcoind, nodes)
    view = next(f for f in lsp.rpc.call("superscalar-list")["factories"] if f["factory_id"] == fid)
    say(f"  the ladder started factory {fid[:12]}… at height {view['expiry_height'] - 30} for "
        f"{', '.join(names[c.info['id']] for c in queue)}: active until {view['expiry_height']}, "
        f"distribution at {view['distribution_height']}")
    return str(fid)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (and the logs)")
    args = ap.parse_args()
    with regtest_network("demo", keep=args.keep) as net:
        say(f"daemon logs go to {net.directory}/daemons.log (each node's own log: {net.directory}/lightning-<n>/log)")
        try:
            story(net.bitcoind, net.nodes)
        finally:
            say("\nshutting down …")
    say("done (logs removed with the directory; --keep keeps them)" if not args.keep
        else f"done; logs kept in {net.directory}")


def story(bitcoind: Any, factory: Any) -> None:
    common = {"plugin": str(PLUGIN), "superscalar-profile": "regtest"}
    lsp = factory.get_node(options={**common, "superscalar-lsp": "true", "superscalar-ladder": "true",
                                    "superscalar-ladder-interval-blocks": "4"}, may_reconnect=True)
    clients = factory.get_nodes(5, opts={"may_reconnect": True, **common, "superscalar-join": lsp.info["id"]})
    names = {c.info["id"]: n for c, n in zip(clients, ("alice", "bob", "carol", "dave", "erin"))}
    for c in clients:
        c.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    lsp.fundwallet(20_000_000)
    nodes = [lsp, *clients]
    alice, bob, carol, dave, erin = clients
    say("regtest: an LSP (ladder on, a factory every 4 blocks at most) and five clients, all running the plugin;"
        " the regtest profile: 30 blocks of life, a 10-block dying period")

    say("\n1. laddering: clients queued with superscalar-ladder-add get factories without an operator")
    f1 = ladder_factory(lsp, bitcoind, nodes, [alice, bob, carol, dave], names)
    f2 = ladder_factory(lsp, bitcoind, nodes, [erin, alice], names)
    show_tree(lsp, f1)

    say("\n2. payments in the first factory (zero-conf leaf channels, never broadcast)")
    a_out = {ch["peer_id"]: ch["funding_outpoint"] for ch in record(lsp, f1)["channels"]}
    for i, c in enumerate((alice, bob, carol, dave)):
        pay(lsp, c, 10_000 + i, f"to-{i}")
    pay(bob, lsp, 3_000, "from-bob")
    pay(dave, lsp, 5_000, "from-dave")
    for c in clients:
        wait_for(lambda: all(not ch["htlcs"] for ch in c.rpc.listpeerchannels(lsp.info["id"])["channels"]))
    balances = {c.info["id"]: channel_msat(c, lsp, a_out[c.info["id"]]) for c in (alice, bob, carol, dave)}
    for c in (alice, bob, carol, dave):
        say(f"  {names[c.info['id']]:<6} {balances[c.info['id']]:>12,} msat")

    say("\n3. dave asks to leave at the next rollover (superscalar-leave); erin goes offline for good")
    dave.rpc.call("superscalar-leave", {"factory_id": f1})
    lsp.daemon.wait_for_log("asked to leave")
    erin.stop()
    live = [n for n in nodes if n is not erin]
    dave_before, lsp_before = wallet_sat(dave), wallet_sat(lsp)

    p1 = record(lsp, f1)
    expiry = next(f for f in lsp.rpc.call("superscalar-list")["factories"] if f["factory_id"] == f1)["expiry_height"]
    say(f"\n4. mining to the first factory's dying period (height {expiry}) …")
    while not (record(lsp, f1).get("close") or {}).get("txid"):
        mine(bitcoind, live)
    close = record(lsp, f1)["close"]
    wait_for(lambda: close["txid"] in bitcoind.rpc.getrawmempool())
    tx = bitcoind.rpc.getrawtransaction(close["txid"], True)
    say(f"  at height {bitcoind.rpc.getblockcount()} the ladder rolled it over: one key-path close {close['txid'][:16]}…"
        f" ({tx['vsize']} vB) whose output 0 funds factory {close['next_factory'][:12]}…")
    mine(bitcoind, live)
    wait_for(lambda: record(lsp, f1)["close"]["status"] == "confirmed")
    f3 = close["next_factory"]
    b_out = {ch["peer_id"]: ch["funding_outpoint"] for ch in record(lsp, f3)["channels"]}
    for c in (alice, bob, carol):
        now = channel_msat(c, lsp, b_out[c.info["id"]])
        say(f"  {names[c.info['id']]:<6} carried over: {now:>12,} msat in the new factory "
            f"({'the same to the msat' if now == balances[c.info['id']] else 'DIFFERENT'})")
    wait_for(lambda: wallet_sat(dave) > dave_before)
    say(f"  dave   paid on chain in that close: {wallet_sat(dave) - dave_before:,} sat "
        f"(floor of {balances[dave.info['id']]:,} msat)")
    wait_for(lambda: wallet_sat(lsp) > lsp_before)
    say(f"  the LSP's wallet got the rest: {wallet_sat(lsp) - lsp_before:,} sat (of a {p1['funding_value_sat']:,}-sat factory)")
    pay(lsp, alice, 1_000, "in-new")
    say("  a payment to alice in the new factory went through; the old channels are retired (mutual close,"
        " never broadcastable)")

    dist = next(f for f in lsp.rpc.call("superscalar-list")["factories"] if f["factory_id"] == f2)["distribution_height"]
    say(f"\n5. erin never came back: mining to the second factory's distribution height ({dist}) …")
    while bitcoind.rpc.getblockcount() < dist + 2:
        mine(bitcoind, live)
    wait_for(lambda: next(f for f in lsp.rpc.call("superscalar-list")["factories"]
                          if f["factory_id"] == f2)["phase"] == "distributed")
    say("  every participant broadcast the pre-signed distribution; it confirmed")
    erin.start()
    wait_for(lambda: wallet_sat(erin) > 0)
    say(f"  erin starts again and finds {wallet_sat(erin):,} sat on chain: her channel's whole capacity")

    say("\nphases as superscalar-list shows them on the LSP:")
    for f in lsp.rpc.call("superscalar-list")["factories"]:
        say(f"  {f['factory_id'][:12]}…  {f['phase']:<12} clients {f['n_clients']}")


if __name__ == "__main__":
    run_main(main)
