"""Is a factory leaf's channel output really the BOLT-3 2-of-2 of *our* funding key and the LSP's?

Stock Core Lightning does not check a zero-conf channel's funding script before it confirms, and no
RPC of a fundee shows its funding key or script: `fundchannel_start` hands the script to the opener
(the LSP) only. An LSP running a modified node could therefore put a script it alone controls in the
leaf and complete the client's channel on that output; the client's commitment transactions would
then spend an output they can never unlock, and every sat it receives would be the LSP's.

What the client's own lightningd does show: each time its channeld signs a commitment transaction
for the peer it logs (v26.06, debug level, kept in lightningd's in-memory log and read back with
`getlog debug`)::

    Creating commit_sig signature <n> <sig> for tx <commitment tx> wscript <funding witness script> key <our funding key>

That witness script is the one our HSM signs with (BIP-143 commits to it), from our own funding key
and the key the LSP sent in `open_channel`. Before a client takes the first HTLC into a factory
channel that line exists: it signs the LSP's commitment with the HTLC before the HTLC is committed.
So the client checks, from that line alone:

- the entry comes from a channeld of that peer (`source` starts with ``channeld-``, its `node_id` is
  the LSP) and the message *starts* with the text above: a peer's own words (errors, warnings) are
  always logged behind a fixed prefix of ours, so a peer cannot forge such an entry;
- the commitment transaction spends exactly our leaf outpoint;
- the witness script is the BOLT-3 2-of-2 of the logged key (ours) and one other key, in BOLT-3 order;
- its P2WSH is the leaf output's script in the leaf transaction we signed (whose txid:vout is the
  channel's funding outpoint, checked separately).

Everything here is pure; the caller fetches the log entries.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from .bitcoin.errors import BitcoinError
from .bitcoin.script import funding_script_2of2, p2wsh_script
from .bitcoin.tx import Tx

_LINE = re.compile(r"^Creating commit_sig signature \d+ [0-9a-f]+ for tx ([0-9a-f]+) "
                   r"wscript ([0-9a-f]+) key (0[23][0-9a-f]{64})$")


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str
    wscript: bytes = b""


def funding_wscript(entries: Iterable[dict[str, Any]], peer: str, txid: str, vout: int) -> Optional[tuple[bytes, bytes]]:
    """(funding witness script, our funding key) from the newest channeld entry of `peer` that signed a
    commitment spending txid:vout, or None if the log holds none."""
    found = None
    for e in entries:
        if e.get("type") != "DEBUG" or e.get("node_id") != peer or not str(e.get("source", "")).startswith("channeld-"):
            continue
        m = _LINE.match(str(e.get("log", "")))
        if m is None:
            continue
        try:
            tx = Tx.from_hex(m.group(1))
        except (BitcoinError, ValueError):
            continue
        if len(tx.inputs) == 1 and tx.inputs[0].prevout.txid_hex == txid and tx.inputs[0].prevout.vout == vout:
            found = (bytes.fromhex(m.group(2)), bytes.fromhex(m.group(3)))
    return found


def check_leaf_script(wscript: bytes, our_key: bytes, leaf_output_script: bytes) -> Verdict:
    """Does the leaf output pay the BOLT-3 2-of-2 that our channel signs with, our key included?"""
    if len(wscript) != 71:
        return Verdict(False, "the channel's funding witness script is not a 2-of-2", wscript)
    keys = (wscript[2:35], wscript[36:69])
    if our_key not in keys:
        return Verdict(False, "our funding key is not in the channel's funding witness script", wscript)
    other = keys[1] if keys[0] == our_key else keys[0]
    try:
        expected = funding_script_2of2(our_key, other)
    except BitcoinError as e:
        return Verdict(False, f"bad funding key: {e}", wscript)
    if expected != wscript:
        return Verdict(False, "the channel's funding witness script is not BOLT-3's 2-of-2", wscript)
    if p2wsh_script(wscript) != leaf_output_script:
        return Verdict(False, f"the leaf pays {leaf_output_script.hex()}, not our channel's 2-of-2 "
                              f"{p2wsh_script(wscript).hex()}", wscript)
    return Verdict(True, "the leaf output is our channel's BOLT-3 2-of-2", wscript)
