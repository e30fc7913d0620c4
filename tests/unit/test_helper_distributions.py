"""A helper keeps a client's signed distribution only if every transaction in it is a signed spend of
the funding output, and publishes it, escalating through the fee variants, only while that output is
unspent past the locktime."""

from __future__ import annotations

import json
from typing import Any, Optional

from superscalar.bitcoin.script import p2a_script
from superscalar.bitcoin.sighash import SIGHASH_DEFAULT, taproot_sighash
from superscalar.bitcoin.tx import OutPoint, Tx, TxIn, TxOut
from superscalar.chain.blocks import BlockView
from superscalar.client.tower import PACKAGES_DOC, HelperPackages
from superscalar.crypto.bip340 import schnorr_sign
from superscalar.crypto.secp256k1 import point_mul_g_bytes
from superscalar.helper.distributions import Distributions, PackageLimits, check_package
from superscalar.protocol.wire import HelpPackage, Message, TowerAnswer

from ..fakes import MemoryDatastore

KEY = 0x1234567
XONLY = point_mul_g_bytes(KEY)[1:]
SCRIPT = b"\x51\x20" + XONLY
FUNDING = OutPoint.from_hex("ab" * 32, 1)
VALUE = 1_000_000
LOCKTIME = 500
FID = bytes.fromhex("fa" * 32)


def distribution(fee: int, signed: bool = True, anchor: bool = True, locktime: int = LOCKTIME) -> Tx:
    outs = (TxOut(400_000, bytes.fromhex("0014" + "11" * 20)), TxOut(VALUE - 400_000 - 240 - fee, bytes.fromhex("0014" + "22" * 20)),
            TxOut(240, p2a_script() if anchor else bytes.fromhex("0014" + "33" * 20)))
    tx = Tx(3, (TxIn(FUNDING, b"", 0xFFFFFFFE),), outs, locktime)
    if not signed:
        return tx.with_witness(0, (bytes(64),))
    sig = schnorr_sign(taproot_sighash(tx, 0, [TxOut(VALUE, SCRIPT)], SIGHASH_DEFAULT), KEY.to_bytes(32, "big"), bytes(32))
    return tx.with_witness(0, (sig,))


def package(*txs: Tx) -> HelpPackage:
    return HelpPackage(FID, FID, tuple(t.serialize() for t in txs), VALUE, SCRIPT, 2, 900)


class Node(MemoryDatastore):
    def __init__(self) -> None:
        super().__init__()
        self.offered: list[str] = []
        self.refuse: set[str] = set()
        self.unspent = True

    def output_exists(self, txid: str, vout: int) -> bool:
        return self.unspent and (txid, vout) == (FUNDING.txid_hex, FUNDING.vout)

    def datastore_values(self, prefix: list[str]) -> list[tuple[list[str], str]]:
        return [(list(k), v) for k, (v, _) in self.data.items() if list(k[:-1]) == prefix]

    def broadcast(self, tx_hex: str, prevouts: list[tuple[int, bytes]]) -> Optional[str]:
        assert prevouts == [(VALUE, SCRIPT)]
        txid = Tx.from_hex(tx_hex).txid
        self.offered.append(txid)
        return "mempool min fee not met" if txid in self.refuse else None


class Chain:
    def __init__(self) -> None:
        self.views: dict[int, BlockView] = {}

    def at(self, height: int) -> BlockView:
        return self.views.get(height) or BlockView(height, (), {}, {})


def test_only_signed_spends_of_the_funding_output_are_kept() -> None:
    good = [distribution(300), distribution(1200), distribution(4800)]
    assert check_package(package(*good))[1] is None
    assert "not signed" in str(check_package(package(good[0], distribution(1200, signed=False)))[1])
    assert "P2A anchor" in str(check_package(package(distribution(300, anchor=False)))[1])
    assert "same output" in str(check_package(package(good[0], distribution(1200, locktime=LOCKTIME + 1)))[1])
    other = HelpPackage(FID, FID, (good[0].serialize(),), VALUE + 1, SCRIPT, 2, 900)  # another amount: sighash differs
    assert "not signed" in str(check_package(other)[1])
    assert check_package(HelpPackage(FID, FID, (b"junk",), VALUE, SCRIPT, 2, 900))[1] == "not a transaction"
    node = Node()
    helper = Distributions(node, Chain(), PackageLimits(per_client=1), lambda *a, **k: None)  # type: ignore[arg-type]
    refused = helper.keep("c1", package(distribution(300, signed=False)))
    assert refused.accepted == 0 and refused.session_id == FID
    assert helper.keep("c1", package(*good)).accepted == 1
    assert helper.keep("c1", package(*good)).accepted == 1  # again: the same
    second = HelpPackage(bytes(32), bytes(32), (good[0].serialize(),), VALUE, SCRIPT, 2, 900)
    assert "1 factories" in str(helper.keep("c1", second).reason)  # bounded per client
    assert helper.keep("c2", second).accepted == 1


def test_the_helper_publishes_escalating_until_the_funding_is_spent() -> None:
    node, chain = Node(), Chain()
    log: list[str] = []
    helper = Distributions(node, chain, PackageLimits(), lambda text, **k: log.append(text))  # type: ignore[arg-type]
    txs = [distribution(300), distribution(1200), distribution(4800)]
    helper.keep("c1", package(*txs))
    helper.on_block(LOCKTIME - 1)
    assert node.offered == []  # not valid before its locktime
    node.refuse = {txs[0].txid}  # the market ignores the agreed rate: the next variant at once
    helper.on_block(LOCKTIME)
    assert node.offered == [txs[0].txid, txs[1].txid]
    helper.on_block(LOCKTIME + 1)
    assert node.offered[-1] == txs[1].txid
    helper.on_block(LOCKTIME + 2)  # step_blocks 2 without confirming: the next variant
    assert node.offered[-1] == txs[2].txid
    # a restart keeps where it was
    again = Distributions(node, chain, PackageLimits(), lambda *a, **k: None)  # type: ignore[arg-type]
    again.on_block(LOCKTIME + 3)
    assert node.offered[-1] == txs[2].txid
    chain.views[LOCKTIME + 4] = BlockView(LOCKTIME + 4, (txs[2],), {txs[2].txid: txs[2]},
                                          {f"{FUNDING.txid_hex}:{FUNDING.vout}": txs[2].txid})
    again.on_block(LOCKTIME + 4)
    assert again.info()["factories_watched"] == 0 and again.info()["distributions_confirmed"][0]["txid"] == txs[2].txid
    assert not [k for k in node.data if k[1] == "helped"]


def test_a_closed_factory_is_never_published_and_a_late_one_dropped() -> None:
    node, chain = Node(), Chain()
    helper = Distributions(node, chain, PackageLimits(), lambda *a, **k: None)  # type: ignore[arg-type]
    assert helper.keep("c1", package(distribution(300))).accepted == 1
    helper.on_block(LOCKTIME - 40)
    close = Tx(3, (TxIn(FUNDING, b""),), (TxOut(VALUE - 500, bytes.fromhex("0014" + "44" * 20)),))
    chain.views[LOCKTIME - 30] = BlockView(LOCKTIME - 30, (close,), {close.txid: close},
                                           {f"{FUNDING.txid_hex}:{FUNDING.vout}": close.txid})
    helper.on_block(LOCKTIME - 25)  # it reads every block since: the close
    assert helper.info()["factories_watched"] == 0
    helper.on_block(LOCKTIME + 1)
    assert node.offered == []
    node.unspent = False  # a package for an output already spent is refused
    refused = helper.keep("c1", package(distribution(300)))
    assert refused.accepted == 0 and "spent" in str(refused.reason)
    node.unspent = True
    helper.keep("c1", package(distribution(300)))
    helper.on_block(899)
    helper.on_block(900)  # the factory's first timeout: dropped
    assert helper.info()["factories_watched"] == 0


class ClientStore:
    def __init__(self, records: dict[str, dict[str, Any]]) -> None:
        self.records, self.docs = records, {}

    def factory_ids(self) -> list[str]:
        return sorted(self.records)

    def get(self, fid: str, name: str) -> Optional[dict[str, Any]]:
        return self.records.get(fid) if name == "factory" else None

    def get_doc(self, name: str) -> Any:
        return json.loads(json.dumps(self.docs[name])) if name in self.docs else None

    def put_doc(self, name: str, data: Any) -> None:
        self.docs[name] = data


def test_a_client_sends_each_factorys_distribution_until_answered(monkeypatch: Any) -> None:
    from superscalar.client import tower
    watch = type("W", (), {"distributions": (distribution(300), distribution(1200)), "funding_prevout": (VALUE, SCRIPT),
                           "params": type("P", (), {"timeout": lambda self, d: 900, "timeout_margin_blocks": 12})()})()
    monkeypatch.setattr(tower, "watch_of", lambda fid, rec: watch)
    store = ClientStore({FID.hex(): {"role": "client"}, ("ee" * 32): {"role": "lsp"}})
    sent: list[tuple[str, Message]] = []
    packages = HelperPackages(store, lambda p, m: sent.append((p, m)), ("h1",), lambda *a, **k: None)
    packages.on_block(100)
    [(peer, msg)] = sent
    assert peer == "h1" and isinstance(msg, HelpPackage) and msg.factory_id == FID and msg.until_height == 900
    assert check_package(msg)[1] is None
    packages.on_block(101)
    assert len(sent) == 1  # waiting for the answer
    packages.on_block(106)
    assert len(sent) == 2  # none came: again
    assert packages.on_message("h1", TowerAnswer(FID, FID, 1, 1))
    assert store.docs[PACKAGES_DOC] == {FID.hex(): {"h1": "kept"}}
    packages.on_block(200)
    assert len(sent) == 2  # kept there: never again
    assert not packages.on_message("h1", TowerAnswer(FID, bytes(32), 1, 1))  # a watchtower answer: not ours
