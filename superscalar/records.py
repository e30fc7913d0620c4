"""What every role and the chain follower know about a factory record (the datastore document
`factory` of one factory, lsp/creation.py and client/membership.py write it): its funding state,
which channels it backs, a role's exit path, the key labels. Pure: no I/O. It sits below the roles
(`lsp/`, `client/`) and the chain follower (`chain/`), which all read records through it; nothing
here imports them."""

from __future__ import annotations

from typing import Any, Iterable, Protocol

from .sales import OPEN, exit_additions

# A client factory record's `funding.status`: waiting for the funding output, seen confirmed as
# signed, or given up on (never confirmed in time, or confirmed with another value or script).
AWAITING, CONFIRMED, UNFUNDED = "awaiting", "confirmed", "unfunded"
# `verified.leaf_script.status`: see leaf_script.py.
UNVERIFIED, VERIFIED, MISMATCH = "unverified", "verified", "mismatch"


def factory_key_label(lsp: str, factory_id: bytes, role: str) -> str:
    """The `makesecret` label of a factory key: it names the LSP, the factory and the role, so two
    LSPs that pick the same id (or an LSP that reuses one) never get the same key from us."""
    return f"superscalar/factory/{lsp}/{factory_id.hex()}/{role}"


def path_entry(name: str, tx_hex: str, prevout_value: int, prevout_script: bytes) -> list[Any]:
    """One signed transaction of an exit path as records keep it: [name, hex, prevout value, prevout
    script hex]."""
    return [name, tx_hex, prevout_value, prevout_script.hex()]


def funding_ok(record: dict[str, Any]) -> bool:
    """May a client credit this factory's channel? Not once its funding was given up on, nor once its
    leaf was found to pay another script than the channel's 2-of-2."""
    return bool(record.get("funding", {}).get("status", AWAITING) != UNFUNDED
                and leaf_status(record) != MISMATCH)


def leaf_status(record: dict[str, Any]) -> str:
    leaf = record.get("verified", {}).get("leaf_script")
    return str(leaf["status"]) if isinstance(leaf, dict) else UNVERIFIED


def channel_in_factory(record: dict[str, Any], channel: dict[str, Any]) -> bool:
    """Is `channel` (a listpeerchannels entry) the factory leaf channel this client record expects, or
    a channel on the output of a liquidity sale this client bought in it?"""
    outpoint = f"{channel.get('funding_txid')}:{channel.get('funding_outnum', -1)}"
    return outpoint == record["leaf_outpoint"] or outpoint in sale_outpoints(record)


def sale_outpoints(record: dict[str, Any]) -> list[str]:
    """The funding outpoints of the sale channels this client bought in a factory."""
    return [str(s["channel_outpoint"]) for s in record.get("sales", []) if s.get("mine")]


def lsp_exit_path(record: dict[str, Any], peer: str | None) -> tuple[list[list[Any]], list[str]]:
    """The signed transactions and leaf channels of one client's path (`peer`), or of every path, from
    the LSP's record."""
    chans = record["channels"]
    which = [i for i, c in enumerate(chans) if peer is None or c["peer_id"] == peer]
    if not which:
        raise ValueError(f"{peer} is not a client of this factory")
    names = {n for i in which for n in record["paths"][i]}
    sales = record.get("sales", [])
    sale_txs, sale_channels = exit_additions(sales, [k for k, s in enumerate(sales) if s.get("status") == OPEN
                                                     and (peer is None or s["peer_id"] == peer)])
    return ([t for t in record["txs"] if t[0] in names] + sale_txs,
            [chans[i]["funding_outpoint"] for i in which] + sale_channels)


def client_exit_path(record: dict[str, Any], live_outpoints: Iterable[str]) -> tuple[list[list[Any]], list[str]]:
    """A client's signed path and its leaf channel's outpoint, with the sales it bought whose channels
    exist (`live_outpoints`: one whose open died with the LSP backs nothing, its sale stays off chain)."""
    txs = [path_entry(f"path/{i}", h, int(v), bytes.fromhex(s))
           for i, (h, (v, s)) in enumerate(zip(record["signed_path"], record["path_prevouts"]))]
    live = set(live_outpoints)
    sales = record.get("sales", [])
    sale_txs, sale_channels = exit_additions(sales, [k for k, s in enumerate(sales)
                                                     if s.get("mine") and s["channel_outpoint"] in live])
    return txs + sale_txs, [record["leaf_outpoint"], *sale_channels]


class ExitPaths(Protocol):
    """The client role as the chain follower sees it: the signed exit path of a factory it is in."""

    def exit_path(self, factory_id: str) -> tuple[list[list[Any]], list[str]]: ...
