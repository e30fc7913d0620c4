"""A helper keeps a client's exit path only if it is a chain of signed spends ending in P2A anchors,
starts it when the tree is started on chain or the client asks, and never for a factory that closed."""

from __future__ import annotations

from typing import Any, Optional

from superscalar.bitcoin.script import p2a_script
from superscalar.bitcoin.sighash import SIGHASH_DEFAULT, taproot_sighash
from superscalar.bitcoin.tx import OutPoint, Tx, TxIn, TxOut
from superscalar.chain.blocks import BlockView
from superscalar.crypto.bip340 import schnorr_sign
from superscalar.crypto.secp256k1 import point_mul_g_bytes
from superscalar.helper.distributions import PackageLimits
from superscalar.helper.exits import MAX_ACTIVE_PER_CLIENT, HelpedExits, check_path, path_hash
from superscalar.protocol.wire import HelpExit

from ..fakes import MemoryDatastore

KEYS = [0x1111, 0x2222, 0x3333]
FUNDING = OutPoint.from_hex("cd" * 32, 0)


def p2tr(key: int) -> bytes:
    return b"\x51\x20" + point_mul_g_bytes(key)[1:]


def signed(tx: Tx, prevout: TxOut, key: int) -> Tx:
    sig = schnorr_sign(taproot_sighash(tx, 0, [prevout], SIGHASH_DEFAULT), key.to_bytes(32, "big"), bytes(32))
    return tx.with_witness(0, (sig,))


def path(value: int = 1_000_000, break_at: Optional[int] = None) -> tuple[list[Tx], list[TxOut]]:
    """funding (KEYS[0]) -> kickoff (to KEYS[1]) -> state (to KEYS[2]) -> leaf (to a channel)."""
    txs, prevouts = [], []
    spent, prevout = FUNDING, TxOut(value, p2tr(KEYS[0]))
    for i in range(3):
        out = TxOut(prevout.value - 1_000, p2tr(KEYS[i + 1]) if i < 2 else bytes.fromhex("0020" + "ee" * 32))
        tx = Tx(3, (TxIn(spent, b"", 0xFFFFFFFF),), (out, TxOut(0, p2a_script())))
        tx = signed(tx, prevout, KEYS[i] + (1 if break_at == i else 0))
        txs.append(tx)
        prevouts.append(prevout)
        spent, prevout = OutPoint.from_hex(tx.txid, 0), out
    return txs, prevouts


def message(txs: list[Tx], prevouts: list[TxOut], act_now: int = 0, fid: bytes = bytes.fromhex("f0" * 32)) -> HelpExit:
    msg = HelpExit(fid, bytes(32), tuple(f"path/{i}".encode() for i in range(len(txs))),
                   tuple(t.serialize() for t in txs), tuple(p.value for p in prevouts),
                   tuple(p.script_pubkey for p in prevouts), 2, 500, 3, 10, act_now)
    return HelpExit(msg.factory_id, path_hash(msg), *[getattr(msg, f) for f in
                    ("names", "txs", "prevout_values", "prevout_scripts", "bump_after", "timeout_height",
                     "dw_step", "lstock_csv", "act_now")])


def test_only_a_chain_of_signed_spends_is_kept() -> None:
    txs, prevouts = path()
    assert check_path(message(txs, prevouts))[1] is None
    assert "not signed" in str(check_path(message(*path(break_at=1)))[1])
    assert "does not spend" in str(check_path(message([txs[0], txs[2]], [prevouts[0], prevouts[2]]))[1])
    wrong_value = [prevouts[0], TxOut(prevouts[1].value + 1, prevouts[1].script_pubkey), prevouts[2]]
    assert "does not spend" in str(check_path(message(txs, wrong_value))[1])
    no_anchor = Tx(3, txs[0].inputs, txs[0].outputs[:1])
    assert "P2A anchor" in str(check_path(message([signed(no_anchor, prevouts[0], KEYS[0])], prevouts[:1]))[1])


class FakeExits:
    def __init__(self) -> None:
        self.started: list[tuple[str, Optional[dict[str, int]]]] = []
        self.blocks: list[int] = []

    def start(self, key: str, txs: list[Any], channels: list[str], bump_after: int, timeout: int, htlc: Any,
              known: Any, dw_step: Any, reason: Any, confirmed: Any, lstock_csv: Any) -> None:
        self.started.append((key, confirmed))

    def on_block(self, height: int) -> None:
        self.blocks.append(height)


class Chain:
    def __init__(self) -> None:
        self.views: dict[int, BlockView] = {}

    def at(self, height: int) -> BlockView:
        return self.views.get(height) or BlockView(height, (), {}, {})

    def spend(self, height: int, tx: Tx) -> None:
        self.views[height] = BlockView(height, (tx,), {tx.txid: tx},
                                       {f"{i.prevout.txid_hex}:{i.prevout.vout}": tx.txid for i in tx.inputs})


def helper(exits: FakeExits, chain: Chain, node: Optional[MemoryDatastore] = None) -> HelpedExits:
    return HelpedExits(node or MemoryDatastore(), chain, PackageLimits(per_client=3), lambda *a, **k: None,  # type: ignore[arg-type]
                       lambda store: exits)  # type: ignore[arg-type,return-value]


def test_the_exit_starts_when_the_tree_is_started_on_chain() -> None:
    exits, chain, node = FakeExits(), Chain(), MemoryDatastore()
    h = helper(exits, chain, node)
    txs, prevouts = path()
    assert h.keep("c1", message(txs, prevouts)).accepted == 1
    h.on_block(100)
    assert exits.started == []
    chain.spend(102, txs[0])  # somebody (the LSP) published the kickoff
    again = helper(exits, chain, node)  # across a restart
    again.on_block(103)
    assert exits.started == [(f"c1.{'f0' * 32}", {"path/0": 102})]
    again.on_block(104)
    assert len(exits.started) == 1 and exits.blocks == [100, 103, 104]
    refused = again.keep("c1", message(txs, prevouts))
    assert refused.accepted == 0 and "under way" in str(refused.reason)  # the path cannot change now


def test_a_closed_factory_is_never_exited_and_the_client_may_ask() -> None:
    exits, chain = FakeExits(), Chain()
    h = helper(exits, chain)
    txs, prevouts = path()
    h.keep("c1", message(txs, prevouts))
    h.on_block(100)
    close = Tx(3, (TxIn(FUNDING, b""),), (TxOut(990_000, bytes.fromhex("0014" + "11" * 20)),))
    chain.spend(101, close)
    h.on_block(101)
    assert exits.started == [] and h.info()["exit_paths"][0]["not_needed"] == close.txid
    # another factory: the client asks at once (its LSP stopped answering), within a bound
    for n in range(MAX_ACTIVE_PER_CLIENT):
        assert h.keep("c2", message(txs, prevouts, act_now=1, fid=bytes([n]) * 32)).accepted == 1
    assert len(exits.started) == MAX_ACTIVE_PER_CLIENT
    busy = h.keep("c2", message(txs, prevouts, act_now=1, fid=bytes([9]) * 32))
    assert busy.accepted == 0 and "under way already" in str(busy.reason)
    assert h.keep("c1", message(txs, prevouts, fid=bytes([7]) * 32)).accepted == 1
    assert h.keep("c1", message(txs, prevouts, fid=bytes([8]) * 32)).accepted == 1
    assert "3 paths" in str(h.keep("c1", message(txs, prevouts, fid=bytes([6]) * 32)).reason)
