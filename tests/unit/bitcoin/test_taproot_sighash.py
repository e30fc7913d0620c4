"""BIP-341 wallet vectors, BIP-341/342 sighash rules and the BIP-143 example."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import coincurve
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from superscalar.bitcoin.address import segwit_address
from superscalar.bitcoin.errors import BitcoinError
from superscalar.bitcoin.script import p2tr_script, p2wpkh_script_code
from superscalar.bitcoin.hashes import tagged_hash
from superscalar.bitcoin.sighash import (
    SIGHASH_EPOCH,
    SIGHASH_ALL,
    SIGHASH_ANYONECANPAY,
    SIGHASH_DEFAULT,
    SIGHASH_NONE,
    SIGHASH_SINGLE,
    segwit_v0_sighash,
    sha_amounts,
    sha_outputs,
    sha_prevouts,
    sha_scriptpubkeys,
    sha_sequences,
    taproot_sighash,
    taproot_sigmsg,
)
from superscalar.bitcoin.taproot import (
    TapLeaf,
    TapTree,
    taproot_construct,
    taproot_output_key,
    taproot_tweak,
    tapbranch_hash,
    tapleaf_hash,
    tweak_seckey,
    xonly_from_seckey,
)
from superscalar.bitcoin.tx import MAX_MONEY, OutPoint, Tx, TxIn, TxOut

from .test_tx import txs

# The official vectors sit beside the repository: /work/main -> /work/shared/vectors.
VECTORS_DIR = Path(__file__).resolve().parents[3] / ".." / "shared" / "vectors"
BIP341_VECTORS = VECTORS_DIR / "bip-0341" / "wallet-test-vectors.json"


@pytest.fixture(scope="module")
def bip341() -> Any:
    if not BIP341_VECTORS.is_file():
        pytest.skip(f"BIP-341 wallet vectors not found at {BIP341_VECTORS.resolve()}")
    return json.loads(BIP341_VECTORS.read_text())


def _tree(node: Any, by_id: dict[int, TapLeaf]) -> TapTree:
    """Convert the vectors' scriptTree JSON into our tree, recording leaves by id."""
    if isinstance(node, dict):
        leaf = TapLeaf(bytes.fromhex(node["script"]), node["leafVersion"])
        by_id[node["id"]] = leaf
        return leaf
    assert len(node) == 2
    return (_tree(node[0], by_id), _tree(node[1], by_id))


def test_bip341_script_pubkey_vectors(bip341: Any) -> None:
    count = 0
    for case in bip341["scriptPubKey"]:
        given, inter, expected = case["given"], case["intermediary"], case["expected"]
        internal = bytes.fromhex(given["internalPubkey"])
        by_id: dict[int, TapLeaf] = {}
        tree = None if given["scriptTree"] is None else _tree(given["scriptTree"], by_id)
        info = taproot_construct(internal, tree)

        root_hex = inter["merkleRoot"]
        assert (info.merkle_root.hex() if info.merkle_root else None) == root_hex
        root = None if root_hex is None else bytes.fromhex(root_hex)
        assert taproot_tweak(internal, root).hex() == inter["tweak"]
        assert info.tweak.hex() == inter["tweak"]
        assert info.output_key.hex() == inter["tweakedPubkey"]
        assert taproot_output_key(internal, tree) == (info.output_key, info.parity)
        assert info.script_pubkey.hex() == expected["scriptPubKey"]
        assert p2tr_script(info.output_key).hex() == expected["scriptPubKey"]
        assert segwit_address("bc", info.script_pubkey) == expected["bip350Address"]
        assert segwit_address("bitcoin", info.script_pubkey) == expected["bip350Address"]

        leaf_hashes = [by_id[i].leaf_hash.hex() for i in sorted(by_id)]
        assert leaf_hashes == inter.get("leafHashes", [])
        direct = [tapleaf_hash(leaf.script, leaf.leaf_version).hex() for _, leaf in sorted(by_id.items())]
        assert direct == leaf_hashes
        blocks = [info.control_block(by_id[i]).hex() for i in sorted(by_id)]
        assert blocks == expected.get("scriptPathControlBlocks", [])
        count += 1
    assert count == 7


def test_bip341_key_path_spending_vectors(bip341: Any) -> None:
    rows = 0
    cases = bip341["keyPathSpending"]
    assert len(cases) == 1
    for case in cases:
        given, inter = case["given"], case["intermediary"]
        raw = bytes.fromhex(given["rawUnsignedTx"])
        tx = Tx.deserialize(raw)
        assert tx.serialize() == raw
        prevouts = [TxOut(u["amountSats"], bytes.fromhex(u["scriptPubKey"])) for u in given["utxosSpent"]]

        assert sha_prevouts(tx).hex() == inter["hashPrevouts"]
        assert sha_amounts(prevouts).hex() == inter["hashAmounts"]
        assert sha_scriptpubkeys(prevouts).hex() == inter["hashScriptPubkeys"]
        assert sha_sequences(tx).hex() == inter["hashSequences"]
        assert sha_outputs(tx).hex() == inter["hashOutputs"]

        signed = tx
        for spend in case["inputSpending"]:
            g, i, e = spend["given"], spend["intermediary"], spend["expected"]
            idx, hash_type = g["txinIndex"], g["hashType"]
            seckey = bytes.fromhex(g["internalPrivkey"])
            root = None if g["merkleRoot"] is None else bytes.fromhex(g["merkleRoot"])
            internal = xonly_from_seckey(seckey)
            assert internal.hex() == i["internalPubkey"]
            assert taproot_tweak(internal, root).hex() == i["tweak"]
            tweaked = tweak_seckey(seckey, root)
            assert tweaked.hex() == i["tweakedPrivkey"]

            msg = taproot_sigmsg(tx, idx, prevouts, hash_type)
            assert (b"\x00" + msg).hex() == i["sigMsg"]
            sighash = taproot_sighash(tx, idx, prevouts, hash_type)
            assert sighash.hex() == i["sigHash"]

            # The tweaked key must match the output key being spent.
            spk = prevouts[idx].script_pubkey
            assert xonly_from_seckey(tweaked) == spk[2:]
            if root is None:
                assert taproot_output_key(internal, None)[0] == spk[2:]

            # BIP-341 vectors sign with aux_rand = 32 zero bytes.
            sig = coincurve.PrivateKey(tweaked).sign_schnorr(sighash, bytes(32))
            suffix = b"" if hash_type == SIGHASH_DEFAULT else bytes([hash_type])
            assert [(sig + suffix).hex()] == e["witness"]
            assert coincurve.PublicKeyXOnly(spk[2:]).verify(sig, sighash)
            signed = signed.with_witness(idx, [sig + suffix])
            rows += 1

        # The auxiliary fully signed tx carries exactly these key-path witnesses.
        full = Tx.from_hex(case["auxiliary"]["fullySignedTx"])
        assert full.serialize().hex() == case["auxiliary"]["fullySignedTx"]
        unsigned_again = Tx(
            full.version,
            tuple(TxIn(i.prevout, b"", i.sequence) for i in full.inputs),
            full.outputs,
            full.locktime,
        )
        assert unsigned_again.serialize() == raw
        for spend in case["inputSpending"]:
            idx = spend["given"]["txinIndex"]
            assert full.inputs[idx].witness == signed.inputs[idx].witness

        # Input 5 spends P2WPKH: check its ECDSA signature against our BIP-143 sighash.
        wit = full.inputs[5].witness
        assert prevouts[5].script_pubkey[2:] == p2wpkh_script_code(wit[1])[3:23]
        h = segwit_v0_sighash(tx, 5, p2wpkh_script_code(wit[1]), prevouts[5].value, wit[0][-1])
        assert coincurve.PublicKey(wit[1]).verify(wit[0][:-1], h, hasher=None)
    assert rows == 7


# -- BIP-143 "Native P2WPKH" example ---------------------------------------------------

BIP143_UNSIGNED = (
    "0100000002fff7f7881a8099afa6940d42d1e7f6362bec38171ea3edf433541db4e4ad969f0000000000eeffffff"
    "ef51e1b804cc89d182d279655c3aa89e815b1b309fe287d9b2b55d57b90ec68a0100000000ffffffff02202cb206"
    "000000001976a9148280b37df378db99f66f85c95a783a76ac7a6d5988ac9093510d000000001976a9143bde42db"
    "ee7e4dbe6a21b2d50ce2f0167faa815988ac11000000"
)
BIP143_SECKEY = "619c335025c7f4012e556c2a58b2506e30b8511b53ade95ea316fd8c3286feb9"


def test_bip143_native_p2wpkh() -> None:
    tx = Tx.from_hex(BIP143_UNSIGNED)
    assert tx.locktime == 0x11
    pub = coincurve.PrivateKey(bytes.fromhex(BIP143_SECKEY)).public_key.format()
    script_code = p2wpkh_script_code(pub)
    assert script_code.hex() == "76a9141d0f172a0ecb48aee1be1f2687d2963ae33f71a188ac"
    sighash = segwit_v0_sighash(tx, 1, script_code, 600_000_000, SIGHASH_ALL)
    assert sighash.hex() == "c37af31116d1b27caf68aae9e3ac82f1477929014d5b917657d0eb49478cb670"


def test_segwit_v0_hash_types() -> None:
    tx = Tx.from_hex(BIP143_UNSIGNED)
    code = bytes.fromhex("76a9141d0f172a0ecb48aee1be1f2687d2963ae33f71a188ac")
    seen = {segwit_v0_sighash(tx, 1, code, 600_000_000, ht) for ht in (1, 2, 3, 0x81, 0x82, 0x83)}
    assert len(seen) == 6
    for bad in (0, 4, 0x80, 0x84, 0x41):
        with pytest.raises(BitcoinError):
            segwit_v0_sighash(tx, 1, code, 600_000_000, bad)
    with pytest.raises(BitcoinError):
        segwit_v0_sighash(tx, 2, code, 1, SIGHASH_ALL)


# -- BIP-341/342 rules ---------------------------------------------------------------


def _sample() -> tuple[Tx, list[TxOut]]:
    key = xonly_from_seckey(bytes(31) + b"\x01")
    spk = p2tr_script(key)
    tx = Tx(
        2,
        (TxIn(OutPoint(bytes(32), 0)), TxIn(OutPoint(b"\x11" * 32, 7), sequence=5)),
        (TxOut(1000, spk),),
        0,
    )
    return tx, [TxOut(5000, spk), TxOut(6000, spk)]


@pytest.mark.parametrize("hash_type", [0x00, 0x01, 0x02, 0x03, 0x81, 0x82, 0x83])
@pytest.mark.parametrize("script_path", [False, True])
@pytest.mark.parametrize("annex", [None, b"\x50\x01"])
def test_taproot_sigmsg_lengths(hash_type: int, script_path: bool, annex: bytes | None) -> None:
    tx, prevouts = _sample()
    leaf = tapleaf_hash(b"\x51") if script_path else None
    msg = taproot_sigmsg(tx, 0, prevouts, hash_type, leaf, annex)
    acp = bool(hash_type & SIGHASH_ANYONECANPAY)
    none = hash_type & 3 == SIGHASH_NONE
    # BIP-341: 174 - is_anyonecanpay*49 - is_none*32 + has_annex*32 (+37 ext, BIP-342).
    assert len(msg) == 174 - 49 * acp - 32 * none + 32 * (annex is not None) + 37 * script_path
    assert len(msg) <= 206 + 37


def test_taproot_sighash_rules() -> None:
    tx, prevouts = _sample()
    for bad in (0x04, 0x80, 0x84, 0xFF, 0x41):
        with pytest.raises(BitcoinError):
            taproot_sighash(tx, 0, prevouts, bad)
    # Input 1 has no matching output under SIGHASH_SINGLE.
    taproot_sighash(tx, 0, prevouts, SIGHASH_SINGLE)
    with pytest.raises(BitcoinError):
        taproot_sighash(tx, 1, prevouts, SIGHASH_SINGLE)
    with pytest.raises(BitcoinError):
        taproot_sighash(tx, 1, prevouts, SIGHASH_SINGLE | SIGHASH_ANYONECANPAY)
    with pytest.raises(BitcoinError):
        taproot_sighash(tx, 0, prevouts[:1], SIGHASH_DEFAULT)
    with pytest.raises(BitcoinError):
        taproot_sighash(tx, 2, prevouts, SIGHASH_DEFAULT)
    with pytest.raises(BitcoinError):
        taproot_sighash(tx, 0, prevouts, SIGHASH_DEFAULT, annex=b"\x51")
    # DEFAULT and ALL commit to the same data but differ in the hash_type byte.
    assert taproot_sighash(tx, 0, prevouts, SIGHASH_DEFAULT) != taproot_sighash(tx, 0, prevouts, SIGHASH_ALL)
    # Key path and script path differ; codesep_pos is committed in script path.
    leaf = tapleaf_hash(b"\x51")
    assert taproot_sighash(tx, 0, prevouts, 0) != taproot_sighash(tx, 0, prevouts, 0, leaf)
    with_sep = taproot_sighash(tx, 0, prevouts, 0, leaf, codesep_pos=3)
    assert taproot_sighash(tx, 0, prevouts, 0, leaf) != with_sep
    # ANYONECANPAY does not commit to other inputs.
    other = Tx(tx.version, (tx.inputs[0], TxIn(OutPoint(b"\x22" * 32, 1))), tx.outputs, tx.locktime)
    acp = SIGHASH_ALL | SIGHASH_ANYONECANPAY
    other_prevouts = [prevouts[0], TxOut(1, b"")]
    assert taproot_sighash(tx, 0, prevouts, acp) == taproot_sighash(other, 0, other_prevouts, acp)
    assert taproot_sighash(tx, 0, prevouts, SIGHASH_ALL) != taproot_sighash(other, 0, prevouts, SIGHASH_ALL)


def test_script_path_spend_sign_verify() -> None:
    seckey = bytes(31) + b"\x07"
    xonly = xonly_from_seckey(seckey)
    leaf_a, leaf_b, leaf_c = TapLeaf(b"\x51"), TapLeaf(bytes([0x20]) + xonly + b"\xac"), TapLeaf(b"\x52")
    info = taproot_construct(xonly_from_seckey(bytes(31) + b"\x09"), ((leaf_a, leaf_b), leaf_c))
    ab = tapbranch_hash(leaf_a.leaf_hash, leaf_b.leaf_hash)
    assert info.merkle_root == tapbranch_hash(ab, leaf_c.leaf_hash)
    cb = info.control_block(leaf_b)
    assert len(cb) == 33 + 32 * 2 and cb[0] & 0xFE == 0xC0 and cb[0] & 1 == info.parity
    assert cb[33:65] == leaf_a.leaf_hash and cb[65:] == leaf_c.leaf_hash
    with pytest.raises(BitcoinError):
        info.control_block(TapLeaf(b"\x53"))
    tx = Tx(2, (TxIn(OutPoint(b"\x01" * 32, 0)),), (TxOut(900, info.script_pubkey),), 0)
    prevouts = [TxOut(1000, info.script_pubkey)]
    sighash = taproot_sighash(tx, 0, prevouts, SIGHASH_DEFAULT, leaf_hash=leaf_b.leaf_hash)
    sig = coincurve.PrivateKey(seckey).sign_schnorr(sighash, bytes(32))
    assert coincurve.PublicKeyXOnly(xonly).verify(sig, sighash)
    assert info.script_path_witness(leaf_b, (sig,)) == (sig, leaf_b.script, cb)


def test_tapleaf_version_validation() -> None:
    for bad in (0xC1, 0x50, 0x100, -2):
        with pytest.raises(BitcoinError):
            TapLeaf(b"", bad)
    with pytest.raises(BitcoinError):
        taproot_construct(b"\x00" * 31)
    with pytest.raises(BitcoinError):
        tweak_seckey(bytes(32), None)


@settings(max_examples=80, deadline=None)
@given(txs(with_witness=False), st.integers(0, MAX_MONEY), st.binary(max_size=80))
def test_one_input_key_path_default_equals_the_general_message(tx: Tx, value: int, spk: bytes) -> None:
    """taproot_sighash takes a written-out path for a one-input key-path SIGHASH_DEFAULT spend;
    it must hash exactly the general SigMsg."""
    one = Tx(tx.version, tx.inputs[:1], tx.outputs, tx.locktime)
    spent = [TxOut(value, spk)]
    general = tagged_hash("TapSighash", SIGHASH_EPOCH + taproot_sigmsg(one, 0, spent, SIGHASH_DEFAULT))
    assert taproot_sighash(one, 0, spent, SIGHASH_DEFAULT) == general
