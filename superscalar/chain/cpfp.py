"""CPFP through a P2A anchor, for any signed transaction this node wants confirmed (an exit's tree
transactions, a cooperative close): a child spends the parent's anchor (its last output) and one
confirmed coin of the node's wallet (built and signed by lightningd's wallet, `ClnNode.anchor_child`),
and goes out with its parent as a package (bitcoind's `submitpackage`), so that a parent below the
mempool's minimum fee is accepted too.

A child is a dict kept in the caller's record: {"txid", "hex", "coin", "fee", "vsize", "psbt",
"feerate", "height"}. A later child replaces an earlier one (RBF: it spends the same anchor and,
when it still suffices, the same coin) and must pay `replacement_fee` more. A child that was not
accepted, was replaced, or is gone gives its coin back (`release`)."""

from __future__ import annotations

from typing import Any, Callable, Optional

from ..bitcoin.script import p2a_script
from ..bitcoin.tx import Tx
from ..cln.bitcoind import Bitcoind, BitcoindError
from ..cln.node import CHILD_VSIZE_P2WPKH, ClnNode
from .fee_schedule import child_fee, feerate_of, replacement_fee

REBUMP_RATIO = 1.1  # a child is replaced once the schedule asks for this much more than it pays


def paying(parent: Tx, parent_fee: int, child: Optional[dict[str, Any]]) -> int:
    """The package fee rate (sat/kvB) the parent pays now, with its child if it has one."""
    if child is None:
        return feerate_of(parent_fee, parent.vsize)
    return feerate_of(parent_fee + int(child["fee"]), parent.vsize + int(child["vsize"]))


def build_child(node: ClnNode, bitcoind: Optional[Bitcoind], parent: Tx, parent_fee: int, rate: int,
                old: Optional[dict[str, Any]], incremental: int, height: int) -> dict[str, Any] | str:
    """A signed CPFP child of `parent` paying for the pair at `rate` (and enough to replace `old`),
    or why there is none. Its coin is reserved until `release`."""
    anchor = parent.outputs[-1]
    if anchor.script_pubkey != p2a_script():
        return "it has no P2A anchor to bump it with"
    if bitcoind is None:
        return "no bitcoind RPC settings to finalise a child"

    def fee_for(vsize: int) -> int:
        fee = child_fee(rate, parent.vsize, parent_fee, vsize)
        return fee if old is None else replacement_fee(fee, int(old["fee"]), vsize, incremental)

    try:
        built = node.anchor_child(parent.outpoint(len(parent.outputs) - 1), anchor.value, anchor.script_pubkey,
                                  fee_for, parent.version, old["coin"] if old else None)
    except Exception as e:
        return f"building a CPFP child failed: {e}"
    if built is None:
        return f"no confirmed wallet coin can pay a {fee_for(CHILD_VSIZE_P2WPKH)} sat CPFP child"
    try:
        final = bitcoind.call("finalizepsbt", built.signed_psbt)
    except BitcoindError as e:
        node.release(built.reserved_psbt)
        return f"finalizing the child failed: {e}"
    if not final.get("complete"):
        node.release(built.reserved_psbt)
        return "the wallet did not sign the child"
    child = Tx.from_hex(str(final["hex"]))
    return {"txid": child.txid, "hex": child.to_hex(), "coin": built.coin, "fee": built.fee, "vsize": child.vsize,
            "psbt": built.reserved_psbt, "feerate": feerate_of(parent_fee + built.fee, parent.vsize + child.vsize),
            "height": height}


def submit(node: ClnNode, bitcoind: Bitcoind, parent_hex: str, child: dict[str, Any],
           old: Optional[dict[str, Any]], log: Callable[[str], None]) -> Optional[str]:
    """submitpackage [parent, child]; None if the child is in the mempool (then `old`, which it
    replaced, gives its coin back), else why not (and `child` gives its coin back)."""
    try:
        res = bitcoind.submitpackage([parent_hex, child["hex"]])
    except BitcoindError as e:
        node.release(child["psbt"])
        return str(e)
    if res.get("package_msg") != "success":
        errors = [f"{r.get('txid')}: {r['error']}" for r in res.get("tx-results", {}).values() if r.get("error")]
        node.release(child["psbt"])
        return f"{res.get('package_msg')} ({'; '.join(errors)})"
    if old is not None:  # replaced: its coin is free, or (the same coin) reserved once, by the new child
        release(node, old, log)
    return None


def alive(bitcoind: Bitcoind, child: dict[str, Any]) -> bool:
    """Is the child still in the mempool (when bitcoind cannot tell: assume so)?"""
    try:
        return bitcoind.in_mempool(str(child["txid"]))
    except BitcoindError:
        return True


def release(node: ClnNode, child: dict[str, Any], log: Callable[[str], None]) -> None:
    """The child is gone (evicted, replaced or conflicted): its coin is the wallet's again."""
    try:
        node.release(child["psbt"])
    except Exception as e:  # already spent or unreserved: nothing to give back
        log(f"releasing the coin of child {child['txid']}: {e}")
