"""bitcoind (regtest) proves the transaction code: every spend here is built by superscalar.bitcoin and
superscalar.crypto.musig2 and judged by a real bitcoind — accepted, rejected with its exact reason, mined."""

from __future__ import annotations

from typing import Any, Sequence

import pytest
from coincurve import PrivateKey  # type: ignore[import-untyped]

from superscalar.crypto import musig2
from superscalar.bitcoin.script import (
    cltv_leaf_script,
    csv_leaf_script,
    funding_script_2of2,
    p2a_script,
    p2tr_script,
    p2wsh_script,
)
from superscalar.bitcoin.sighash import SIGHASH_ALL, SIGHASH_DEFAULT, segwit_v0_sighash, taproot_sighash
from superscalar.bitcoin.taproot import TapLeaf, TaprootInfo, taproot_construct, tweak_seckey, xonly_from_seckey
from superscalar.bitcoin.tx import OutPoint, Tx, TxIn, TxOut

from .chain import Chain

pytestmark = pytest.mark.bitcoind

SEQUENCE_ENABLE_LOCKTIME = 0xFFFFFFFE  # BIP-65: any non-final sequence makes nLockTime count
FEE = 1_000
SCRIPT_FAILED = "mempool-script-verify-flag-failed ({})"  # Bitcoin Core 30 wording


def seckey(i: int) -> bytes:
    return (0x5EED_0000 + i).to_bytes(32, "big")


SIGNERS = [seckey(i) for i in range(3)]
LSP = seckey(99)


def musig_keypath_sig(sks: Sequence[bytes], info: TaprootInfo, msg: bytes) -> bytes:
    """All signers sign `msg` with MuSig2 for the taproot output key of `info` (key path)."""
    pubkeys = [musig2.individual_pk(sk) for sk in sks]
    keygen = musig2.apply_tweak(musig2.key_agg(pubkeys), info.tweak, True)
    assert musig2.get_xonly_pk(keygen) == info.output_key
    nonces = [musig2.nonce_gen(sk, pk, musig2.get_xonly_pk(keygen), msg, None) for sk, pk in zip(sks, pubkeys)]
    ctx = musig2.SessionContext(
        musig2.nonce_agg([pn for _, pn in nonces]), tuple(pubkeys), (info.tweak,), (True,), msg
    )
    psigs = [musig2.sign(sn, sk, ctx) for (sn, _), sk in zip(nonces, sks)]
    for psig, (_, pn), pk in zip(psigs, nonces, pubkeys):
        assert musig2.partial_sig_verify_internal(psig, pn, pk, ctx)
    return musig2.partial_sig_agg(psigs, ctx)


def aggregate_internal_key(sks: Sequence[bytes]) -> bytes:
    return musig2.get_xonly_pk(musig2.key_agg([musig2.individual_pk(sk) for sk in sks]))


def sweep(prevout: OutPoint, value: int, *, version: int = 2, sequence: int = 0xFFFFFFFF, locktime: int = 0) -> Tx:
    """One input to one P2TR output of ours, paying FEE."""
    dest = p2tr_script(xonly_from_seckey(LSP))
    return Tx(version, (TxIn(prevout, sequence=sequence),), (TxOut(value - FEE, dest),), locktime)


def schnorr(sk: bytes, sighash: bytes) -> bytes:
    return PrivateKey(sk).sign_schnorr(sighash)


@pytest.fixture
def chain(bitcoind: Any) -> Chain:
    return Chain(bitcoind)


def test_musig2_3of3_keypath_spend(chain: Chain) -> None:
    info = taproot_construct(aggregate_internal_key(SIGNERS))
    outpoint, prevout = chain.fund(info.script_pubkey, 50_000)
    tx = sweep(outpoint, prevout.value)
    sighash = taproot_sighash(tx, 0, [prevout], SIGHASH_DEFAULT)
    sig = musig_keypath_sig(SIGNERS, info, sighash)

    forged = tx.with_witness(0, [sig[:-1] + bytes([sig[-1] ^ 1])])
    chain.assert_rejected(forged, SCRIPT_FAILED.format("Invalid Schnorr signature"))

    signed = tx.with_witness(0, [sig])
    chain.assert_accepted(signed)
    chain.broadcast_and_confirm(signed)
    assert chain.output_on_chain(signed.txid, 0) == TxOut(50_000 - FEE, tx.outputs[0].script_pubkey)
    assert chain.rpc.gettxout(outpoint.txid_hex, outpoint.vout) is None  # spent


def test_cltv_leaf_only_after_locktime(chain: Chain) -> None:
    timeout = chain.height + 10
    leaf = TapLeaf(cltv_leaf_script(timeout, xonly_from_seckey(LSP)))
    info = taproot_construct(aggregate_internal_key(SIGNERS), leaf)
    outpoint, prevout = chain.fund(info.script_pubkey, 60_000)

    def spend(locktime: int) -> Tx:
        tx = sweep(outpoint, prevout.value, sequence=SEQUENCE_ENABLE_LOCKTIME, locktime=locktime)
        sighash = taproot_sighash(tx, 0, [prevout], SIGHASH_DEFAULT, leaf_hash=leaf.leaf_hash)
        return tx.with_witness(0, info.script_path_witness(leaf, (schnorr(LSP, sighash),)))

    # nLockTime at the timeout: the transaction itself is not final yet.
    chain.assert_rejected(spend(timeout), "non-final")
    # A final nLockTime below the script's timeout: OP_CHECKLOCKTIMEVERIFY fails.
    chain.assert_rejected(spend(chain.height), SCRIPT_FAILED.format("Locktime requirement not satisfied"))

    chain.mine(timeout - chain.height)
    assert chain.height == timeout
    tx = spend(timeout)
    chain.assert_accepted(tx)
    height = chain.broadcast_and_confirm(tx)
    assert height == timeout + 1
    assert chain.output_on_chain(tx.txid, 0).value == 60_000 - FEE


def test_csv_leaf_only_after_relative_delay(chain: Chain) -> None:
    delay = 6
    leaf = TapLeaf(csv_leaf_script(delay, xonly_from_seckey(LSP)))
    info = taproot_construct(aggregate_internal_key(SIGNERS), leaf)
    outpoint, prevout = chain.fund(info.script_pubkey, 70_000)
    funded_at = chain.height

    def spend(sequence: int) -> Tx:
        tx = sweep(outpoint, prevout.value, sequence=sequence)
        sighash = taproot_sighash(tx, 0, [prevout], SIGHASH_DEFAULT, leaf_hash=leaf.leaf_hash)
        return tx.with_witness(0, info.script_path_witness(leaf, (schnorr(LSP, sighash),)))

    chain.assert_rejected(spend(delay), "non-BIP68-final")
    # BIP-68: spendable in the block `delay` blocks after the one that confirmed the output.
    chain.mine(delay - 2)
    chain.assert_rejected(spend(delay), "non-BIP68-final")
    chain.mine(1)
    # The output is old enough now, but a shorter nSequence does not satisfy OP_CHECKSEQUENCEVERIFY.
    chain.assert_rejected(spend(delay - 1), SCRIPT_FAILED.format("Locktime requirement not satisfied"))
    tx = spend(delay)
    chain.assert_accepted(tx)
    assert chain.broadcast_and_confirm(tx) == funded_at + delay


def test_p2wsh_2of2_funding_script_spend(chain: Chain) -> None:
    key_a, key_b = seckey(10), seckey(11)
    pub_a = PrivateKey(key_a).public_key.format()
    pub_b = PrivateKey(key_b).public_key.format()
    witness_script = funding_script_2of2(pub_a, pub_b)
    outpoint, prevout = chain.fund(p2wsh_script(witness_script), 80_000)
    tx = sweep(outpoint, prevout.value)
    sighash = segwit_v0_sighash(tx, 0, witness_script, prevout.value, SIGHASH_ALL)

    def der(sk: bytes) -> bytes:
        return PrivateKey(sk).sign(sighash, hasher=None) + bytes([SIGHASH_ALL])

    # BOLT-3: signatures go in the order of the (lexicographically sorted) keys in the script.
    first, second = (key_a, key_b) if pub_a < pub_b else (key_b, key_a)
    wrong = tx.with_witness(0, [b"", der(second), der(first), witness_script])
    # BIP-147 NULLFAIL: OP_CHECKMULTISIG fails on a non-empty signature that does not match its key.
    chain.assert_rejected(wrong, SCRIPT_FAILED.format("Signature must be zero for failed CHECK(MULTI)SIG operation"))
    signed = tx.with_witness(0, [b"", der(first), der(second), witness_script])
    chain.assert_accepted(signed)
    chain.broadcast_and_confirm(signed)
    assert chain.output_on_chain(signed.txid, 0).value == 80_000 - FEE


def test_v3_zero_fee_parent_p2a_cpfp_by_submitpackage(chain: Chain) -> None:
    owner = seckey(20)
    info = taproot_construct(xonly_from_seckey(owner))
    outpoint, prevout = chain.fund(info.script_pubkey, 100_000)
    anchor_value = 240  # BOLT-3: the P2A dust threshold
    key = tweak_seckey(owner, None)

    parent_unsigned = Tx(
        3,
        (TxIn(outpoint),),
        (TxOut(prevout.value - anchor_value, info.script_pubkey), TxOut(anchor_value, p2a_script())),
    )
    # Zero fee: the outputs add up to the input exactly.
    assert sum(o.value for o in parent_unsigned.outputs) == prevout.value
    parent = parent_unsigned.with_witness(
        0, [schnorr(key, taproot_sighash(parent_unsigned, 0, [prevout], SIGHASH_DEFAULT))]
    )
    [verdict] = chain.accept([parent])
    assert verdict["allowed"] is False
    assert verdict["reject-reason"].startswith("min relay fee not met"), verdict

    child_fee = 2_000
    spent = [parent_unsigned.outputs[0], parent_unsigned.outputs[1]]
    child_unsigned = Tx(
        3,
        (TxIn(parent.outpoint(0)), TxIn(parent.outpoint(1))),
        (TxOut(prevout.value - child_fee, info.script_pubkey),),
    )
    child = child_unsigned.with_witness(
        0, [schnorr(key, taproot_sighash(child_unsigned, 0, spent, SIGHASH_DEFAULT))]
    )  # input 1 spends P2A: anyone can, with an empty witness
    result = chain.rpc.submitpackage([parent.to_hex(), child.to_hex()])
    assert result["package_msg"] == "success", result
    assert set(chain.rpc.getrawmempool()) >= {parent.txid, child.txid}
    chain.mine(1)
    assert chain.confirmed_height(parent) == chain.confirmed_height(child) == chain.height
    assert chain.output_on_chain(child.txid, 0).value == prevout.value - child_fee
