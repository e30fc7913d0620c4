"""The client's check that its leaf output is its channel's BOLT-3 2-of-2, from its own channeld's log
line: what it accepts, what it refuses, and log entries a peer could try to plant."""

from __future__ import annotations

from typing import Any

from coincurve import PrivateKey

from superscalar.bitcoin.script import funding_script_2of2, p2wsh_script
from superscalar.bitcoin.tx import OutPoint, Tx, TxIn, TxOut
from superscalar.leaf_script import check_leaf_script, funding_wscript

LSP = "02" + "aa" * 32
OURS = PrivateKey((11).to_bytes(32, "big")).public_key.format()
THEIRS = PrivateKey((12).to_bytes(32, "big")).public_key.format()
WSCRIPT = funding_script_2of2(OURS, THEIRS)
LEAF = OutPoint(bytes(range(32)), 1)


def commitment(spends: OutPoint = LEAF) -> Tx:
    return Tx(2, (TxIn(spends, sequence=0x80000000),), (TxOut(1000, b"\x00\x14" + bytes(20)),), 0x20000000)


def entry(tx: Tx = commitment(), wscript: bytes = WSCRIPT, key: bytes = OURS, **change: Any) -> dict[str, Any]:
    line = (f"Creating commit_sig signature 1 3044022000ff01 for tx {tx.to_hex()} "
            f"wscript {wscript.hex()} key {key.hex()}")
    e = {"type": "DEBUG", "time": "1.0", "node_id": LSP, "source": "channeld-chan#1", "log": line}
    e.update(change)
    return e


def test_our_channelds_line_verifies_the_leaf() -> None:
    found = funding_wscript([entry()], LSP, LEAF.txid_hex, LEAF.vout)
    assert found == (WSCRIPT, OURS)
    verdict = check_leaf_script(*found, p2wsh_script(WSCRIPT))
    assert verdict.ok, verdict.reason


def test_a_leaf_paying_another_script_is_refused() -> None:
    lsp_only = p2wsh_script(funding_script_2of2(THEIRS, PrivateKey((13).to_bytes(32, "big")).public_key.format()))
    verdict = check_leaf_script(WSCRIPT, OURS, lsp_only)
    assert not verdict.ok and "not our channel's 2-of-2" in verdict.reason


def test_a_witness_script_without_our_key_or_out_of_order_is_refused() -> None:
    other = PrivateKey((14).to_bytes(32, "big")).public_key.format()
    assert "our funding key is not" in check_leaf_script(funding_script_2of2(other, THEIRS), OURS,
                                                         p2wsh_script(WSCRIPT)).reason
    swapped = WSCRIPT[:2] + WSCRIPT[36:69] + WSCRIPT[1:2] + WSCRIPT[2:35] + WSCRIPT[69:]
    assert len(swapped) == 71 and swapped != WSCRIPT
    assert "not BOLT-3's 2-of-2" in check_leaf_script(swapped, OURS, p2wsh_script(swapped)).reason
    assert "not a 2-of-2" in check_leaf_script(b"\x51", OURS, p2wsh_script(b"\x51")).reason


def test_entries_a_peer_could_plant_or_that_are_not_for_this_leaf_are_ignored() -> None:
    planted = [
        entry(source="lightningd"),  # not a channeld
        entry(node_id="03" + "bb" * 32),  # another peer's channel
        entry(type="INFO"),
        entry(tx=commitment(OutPoint(bytes(32), 1))),  # spends another outpoint
        {**entry(), "log": "They sent error: " + entry()["log"]},  # the peer's own words, behind our prefix
        {**entry(), "log": entry()["log"] + " trailing"},
        {**entry(), "log": entry()["log"].replace(commitment().to_hex(), "zz")},
    ]
    assert funding_wscript(planted, LSP, LEAF.txid_hex, LEAF.vout) is None
    # The newest matching line wins.
    assert funding_wscript([*planted, entry()], LSP, LEAF.txid_hex, LEAF.vout) == (WSCRIPT, OURS)
