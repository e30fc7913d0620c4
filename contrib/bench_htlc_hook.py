#!/usr/bin/env python3
"""Benchmark: the time the `htlc_accepted` check adds per HTLC on an LSP with many factories.

Builds an in-memory datastore holding 33 LSP factory records of 1,024 clients each (the fields
`lsp.py` writes: every channel with its peer, channel id, leaf outpoint, early-warning blocks and exit
figures; the signed transactions and paths, at their real count and a typical size) and a fake
lightningd listing their 33,792 channels plus some plain ones; then times `HtlcGuard.failure` (what the
hook calls) for HTLCs on known factory channels (a client paying out through the LSP, the LSP
forwarding into a client's channel), on plain channels, and naming unknown short channel ids (the
first sight of one in a block asks lightningd for that one channel; later ones in the block do not). It does the same
for a client node in 33 factories. Prints N factories, clients, HTLCs, p50 and p99 in ms and the index
build time; `--baseline` also times the check this replaced (every record read and every channel
listed per HTLC) on a few HTLCs.

The fake lightningd hands out the listing by decoding JSON text, as pyln's RPC client does; lightningd's
own time to produce it and the RPC round trip (about a millisecond) are not counted: they matter for
the baseline, the per-block refresh and the first sight of an unknown short channel id.

    python contrib/bench_htlc_hook.py [--factories 33] [--clients 1024] [--htlcs 20000] [--baseline]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from superscalar.cln.htlc_exposure import ShortHtlcExposure  # noqa: E402
from superscalar.factory.params import FactoryParams  # noqa: E402
from superscalar.cln.htlc_guard import HtlcGuard  # noqa: E402
from superscalar.cln.htlc_index import CHANNEL_FIELDS, HtlcIndex  # noqa: E402
from superscalar.cln.store import Store  # noqa: E402
from tests.fakes import MemoryDatastore  # noqa: E402

TX_HEX = "02" * 200  # a typical signed factory transaction (~200 bytes)
HEIGHT = 800_000
EWT = 1776  # what the mainnet profile's path gives (any figure: the check does not care)


class ListingNode(MemoryDatastore):
    """A datastore plus lightningd's channel listing, decoded from JSON on each call."""

    def __init__(self, channels: list[dict[str, Any]]) -> None:
        super().__init__()
        self.text = json.dumps({"channels": channels})
        by_peer: dict[str, list[dict[str, Any]]] = {}
        for c in channels:
            by_peer.setdefault(c["peer_id"], []).append(c)
        self.peer_text = {p: json.dumps({"channels": cs}) for p, cs in by_peer.items()}
        self.named_text = {name: json.dumps(c) for c in channels
                           for name in (c["short_channel_id"], c["alias"]["local"]) if name}
        self.filtered: dict[tuple[str, ...], str] = {}
        self.listings = 0

    def peer_channels(self, peer: Optional[str] = None) -> list[dict[str, Any]]:
        self.listings += 1
        text = self.text if peer is None else self.peer_text.get(peer, '{"channels": []}')
        return list(json.loads(text)["channels"])

    def channel_named(self, name: str) -> list[dict[str, Any]]:
        self.listings += 1
        text = self.named_text.get(name)
        return [] if text is None else [json.loads(text)]

    def peer_channels_fields(self, fields: tuple[str, ...]) -> list[dict[str, Any]]:
        """What lightningd sends for a `filter` of `fields` (prepared once), decoded on each call."""
        if fields not in self.filtered:
            self.filtered[fields] = json.dumps({"channels": [{k: v for k, v in c.items() if k in fields}
                                                             for c in json.loads(self.text)["channels"]]})
        self.listings += 1
        return list(json.loads(self.filtered[fields])["channels"])

    def blockheight(self) -> int:
        return HEIGHT


def node_id(n: int) -> str:
    return "02" + f"{n:064x}"


def channel(n: int, peer: str, outpoint: str, scid: Optional[str]) -> dict[str, Any]:
    """A listpeerchannels entry with the fields lightningd gives (values typical, not exact)."""
    txid, vout = outpoint.split(":")
    return {"peer_id": peer, "peer_connected": True, "state": "CHANNELD_NORMAL", "channel_id": f"{n:064x}",
            "funding_txid": txid, "funding_outnum": int(vout), "short_channel_id": scid,
            "alias": {"local": f"{n}x1x1", "remote": f"{n}x2x2"}, "private": True, "opener": "local",
            "channel_type": {"bits": [12, 22, 46, 50], "names": ["static_remotekey/even", "anchors/even",
                                                                  "scid_alias/even", "zeroconf/even"]},
            "features": ["option_static_remotekey", "option_anchors", "option_scid_alias", "option_zeroconf"],
            "total_msat": 250_000_000, "to_us_msat": 200_000_000, "min_to_us_msat": 200_000_000,
            "max_to_us_msat": 250_000_000, "fee_base_msat": 1000, "fee_proportional_millionths": 10,
            "dust_limit_msat": 546_000, "max_total_htlc_in_msat": 250_000_000, "their_reserve_msat": 2_500_000,
            "our_reserve_msat": 2_500_000, "spendable_msat": 190_000_000, "receivable_msat": 47_000_000,
            "minimum_htlc_in_msat": 0, "minimum_htlc_out_msat": 0, "maximum_htlc_out_msat": 247_500_000,
            "their_to_self_delay": 144, "our_to_self_delay": 144, "max_accepted_htlcs": 483,
            "status": ["CHANNELD_NORMAL:Channel ready for use."], "in_payments_offered": 3,
            "in_offered_msat": 3_000_000, "in_payments_fulfilled": 3, "in_fulfilled_msat": 3_000_000,
            "out_payments_offered": 2, "out_offered_msat": 2_000_000, "out_payments_fulfilled": 2,
            "out_fulfilled_msat": 2_000_000, "htlcs": [], "updates": {"local": {"htlc_minimum_msat": 0,
                                                                                 "htlc_maximum_msat": 247_500_000,
                                                                                 "cltv_expiry_delta": 34,
                                                                                 "fee_base_msat": 1000,
                                                                                 "fee_proportional_millionths": 10}}}


def lsp_store(n_factories: int, n_clients: int) -> tuple[ListingNode, Store, list[str], list[str]]:
    """The LSP's datastore and channels: returns (node, store, factory channel names, plain names)."""
    params = FactoryParams(n_clients=n_clients, start_height=HEIGHT - 100)
    n_txs = 2 * (-(-n_clients // params.leaf_arity)) + 2 * 64  # kickoff+state per leaf and per upper node
    channels, factory_names = [], []
    records = []
    k = 0
    for f in range(n_factories):
        chans = []
        for i in range(n_clients):
            k += 1
            op = f"{(f << 20) + i // 2:064x}:{i % 2}"
            peer = node_id(k)
            chans.append({"peer_id": peer, "channel_id": f"{k:064x}", "funding_outpoint": op,
                          "capacity_msat": 250_000_000, "early_warning_blocks": EWT,
                          "exit": {"transactions": 2 * params.layers, "vbytes": 1500, "fee_sat": 3000,
                                   "wait_blocks": 1700}})
            channels.append(channel(k, peer, op, None))
            factory_names.append(f"{k}x1x1")
        records.append({
            "role": "lsp", "params": params.serialize().decode(), "state": [0] * params.layers,
            "pubkeys": ["02" + "11" * 32] * (n_clients + 1), "terms": [[50_000, 200_000]] * n_clients,
            "scripts": {"channels": ["0020" + "22" * 32] * n_clients, "payouts": ["5120" + "33" * 32] * n_clients,
                        "lsp": "5120" + "44" * 32},
            "funding_outpoint": f"{f + 1:064x}:0", "funding_value_sat": 260_000_000, "channels": chans,
            "txs": [[f"tx/{t}", TX_HEX, 1000, "5120" + "55" * 32] for t in range(n_txs)],
            "paths": [[f"tx/{t}" for t in range(2 * params.layers)] for _ in range(n_clients)],
            "distribution": TX_HEX * 10, "funding_psbt": "cHNidP8B" * 100, "stage": "funded"})
    plain = []
    for p in range(64):  # the LSP's public channels to the network
        k += 1
        channels.append(channel(k, node_id(10_000_000 + p), f"{k:064x}:0", f"{800_000 + p}x1x0"))
        plain.append(f"{800_000 + p}x1x0")
    node = ListingNode(channels)
    store = Store(node)  # type: ignore[arg-type]
    for f, rec in enumerate(records):
        store.put(f"{f:064x}", "factory", rec)
    return node, store, factory_names, plain


def client_store(n_factories: int, n_clients: int) -> tuple[ListingNode, Store, list[str], list[str]]:
    """A client in `n_factories` factories of one LSP (the fields `client.py` writes)."""
    params = FactoryParams(n_clients=n_clients, start_height=HEIGHT - 100)
    lsp = node_id(1)
    channels, names = [], []
    node_records = []
    for f in range(n_factories):
        op = f"{(f << 20) + 7:064x}:1"
        channels.append(channel(f + 1, lsp, op, None))
        names.append(f"{f + 1}x1x1")
        node_records.append({
            "role": "client", "lsp": lsp, "params": params.serialize().decode(), "client_index": 15,
            "state_indices": [3] * params.layers, "pubkey": "03" + "66" * 32, "capacity_sat": 250_000,
            "balance_sat": 50_000, "leaf_outpoint": op, "funding_outpoint": f"{f + 1:064x}:0",
            "signed_path": [TX_HEX] * (2 * params.layers), "path_prevouts": [[1000, "5120" + "55" * 32]] * (2 * params.layers),
            "path_waits": [0, 432] * params.layers, "distribution": TX_HEX * 10,
            "exit": {"transactions": 2 * params.layers, "vbytes": 1500, "fee_sat": 3000, "wait_blocks": 1700},
            "early_warning_blocks": EWT,
            "verified": {"params_at_height": HEIGHT - 100, "signed_at_height": HEIGHT - 100,
                         "leaf_script": {"status": "verified", "reason": "ok", "at_height": HEIGHT - 90,
                                         "funding_wscript": "52" + "21" * 70 + "52ae"}},
            "funding": {"status": "confirmed", "scanned_height": HEIGHT - 95, "deadline_height": HEIGHT + 44,
                        "watch_until_height": HEIGHT + 4000, "confirmed_height": HEIGHT - 95, "reason": None}})
    plain = []
    for p in range(4):
        channels.append(channel(10_000 + p, node_id(20_000 + p), f"{10_000 + p:064x}:0", f"{700_000 + p}x1x0"))
        plain.append(f"{700_000 + p}x1x0")
    node = ListingNode(channels)
    store = Store(node)  # type: ignore[arg-type]
    for f, rec in enumerate(node_records):
        store.put(f"{f:064x}", "factory", rec)
    return node, store, names, plain


class VerifiedLeaves:
    def verify_leaf(self, fid: str) -> Optional[bool]:
        return True


def htlc(incoming: str, relative: int, outgoing: Optional[str] = None, out_relative: int = 0,
         height: int = HEIGHT, htlc_id: int = 0, peer: Optional[str] = None) -> tuple[dict[str, Any], dict[str, Any]]:
    onion: dict[str, Any] = {"payload": "00", "forward_msat": 1_000_000}
    if outgoing is not None:
        onion.update(short_channel_id=outgoing, outgoing_cltv_value=height + out_relative)
    h = {"short_channel_id": incoming, "id": htlc_id, "amount_msat": 1_000_000, "cltv_expiry": height + relative,
         "cltv_expiry_relative": relative, "payment_hash": "00" * 32}
    if peer is not None:
        h["peer_id"] = peer
    return onion, h


def timed(check: Callable[[dict[str, Any], dict[str, Any]], Any], cases: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[float]:
    out = []
    for onion, h in cases:
        t = time.perf_counter()
        check(onion, h)
        out.append((time.perf_counter() - t) * 1000)
    return out


def report(what: str, ms: list[float]) -> None:
    ms = sorted(ms)
    p50, p99 = ms[len(ms) // 2], ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    print(f"  {what:<58} HTLCs {len(ms):>6}   p50 {p50:8.4f} ms   p99 {p99:8.4f} ms   max {ms[-1]:8.3f} ms")


class OldViews:
    """The check this replaced: every record read and every channel listed, for each HTLC."""

    def __init__(self, node: ListingNode, store: Store) -> None:
        self.node, self.store = node, store

    def failure(self, onion: dict[str, Any], h: dict[str, Any]) -> None:
        wanted: dict[str, int] = {}
        for fid in self.store.factory_ids():
            rec = self.store.get(fid, "factory")
            if rec is not None and rec.get("role") == "lsp":
                wanted.update({c["channel_id"]: int(c["early_warning_blocks"]) for c in rec["channels"]})
            elif rec is not None:
                wanted[rec["leaf_outpoint"]] = int(rec["early_warning_blocks"])
        headroom = {}
        for ch in self.node.peer_channels():
            ew = wanted.get(ch["channel_id"])
            if ew is not None:
                headroom.update({x: ew for x in (ch.get("short_channel_id"), *ch["alias"].values()) if x})


def run(role: str, node: ListingNode, store: Store, factory_names: list[str], plain: list[str], n_htlcs: int,
        baseline: bool) -> None:
    node.peer_channels_fields(CHANNEL_FIELDS)  # lightningd's side of the first listing, not timed
    t = time.perf_counter()
    index = HtlcIndex()
    store.listen(index.on_record)
    index.load(store)
    index.set_channels(node.peer_channels_fields(CHANNEL_FIELDS))
    build = (time.perf_counter() - t) * 1000
    node.peer_channels_fields((*CHANNEL_FIELDS, "htlcs"))  # lightningd's side, not timed
    t = time.perf_counter()
    index.set_channels(node.peer_channels_fields((*CHANNEL_FIELDS, "htlcs")))
    per_block = (time.perf_counter() - t) * 1000
    guard = HtlcGuard(node, index, VerifiedLeaves(), ShortHtlcExposure())  # type: ignore[arg-type]
    rng = random.Random(7)
    print(f"{role}: {len(store.factory_ids())} factories, {len(factory_names)} factory channels, "
          f"{len(plain)} plain channels; index built in {build:.0f} ms; "
          f"per-block channel refresh (HTLC watch, not in the hook) {per_block:.0f} ms")
    listings = node.listings
    if role == "LSP":
        report("client pays out (factory channel → plain, short CLTV)",
               timed(guard.failure, [htlc(rng.choice(factory_names), 39, rng.choice(plain), 5, htlc_id=i)
                                     for i in range(n_htlcs)]))
        report("LSP forwards into a client's factory channel",
               timed(guard.failure, [htlc(rng.choice(plain), EWT + 60, rng.choice(factory_names), EWT + 20)
                                     for _ in range(n_htlcs)]))
    else:
        report("payment into the client's factory channel",
               timed(guard.failure, [htlc(rng.choice(factory_names), EWT + 20) for _ in range(n_htlcs)]))
    report("plain channel → plain channel",
           timed(guard.failure, [htlc(rng.choice(plain), 60, rng.choice(plain), 20) for _ in range(n_htlcs)]))
    assert node.listings == listings, "a known channel made the check list channels"
    repeated = [htlc(f"{9_000_000 + i % 10}x9x9", 60, rng.choice(plain), 20) for i in range(n_htlcs)]
    unknown = timed(guard.failure, repeated)
    report("unknown scid, seen before in this block (no refresh)", [m for i, m in enumerate(unknown) if i >= 10])
    report("unknown scid, first sight in this block (asks for it)", unknown[:10])
    if baseline:
        old = OldViews(node, store)
        n = 5
        report("BASELINE: old check (all records + all channels per HTLC)",
               timed(old.failure, [htlc(rng.choice(factory_names), EWT + 20) for _ in range(n)]))
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--factories", type=int, default=33)
    ap.add_argument("--clients", type=int, default=1024)
    ap.add_argument("--htlcs", type=int, default=20_000)
    ap.add_argument("--baseline", action="store_true", help="also time the old check (slow: seconds per HTLC)")
    args = ap.parse_args()
    t = time.perf_counter()
    lsp = lsp_store(args.factories, args.clients)
    client = client_store(args.factories, args.clients)
    print(f"built the stores in {time.perf_counter() - t:.1f} s "
          f"(LSP datastore {sum(len(v[0]) for v in lsp[0].data.values()) / 1e6:.0f} MB of JSON)\n")
    run("LSP", *lsp, args.htlcs, args.baseline)
    run("client", *client, args.htlcs, args.baseline)


if __name__ == "__main__":
    main()
