"""Clients that asked to leave: a client sends `Leave` for a factory it is in (`superscalar-leave`), and
the LSP pays it on chain in that factory's next cooperative close instead of carrying it into the next
factory (the ladder's rollover reads the list). The list is the factory's own `leaving` record, apart
from the `factory` record the ceremonies write, so a request never races a ceremony's write; it holds
at most one entry per client of the factory, whatever a peer sends."""

from __future__ import annotations

from typing import Any, Callable

from ..protocol.wire import Leave, Message
from ..cln.store import Store, StoreError
from .closing import MAX_FAILED_ROLLOVERS, Closer, DoesNotFit


def leaving(store: Store, factory_id: str) -> list[str]:
    """The node ids of the clients of `factory_id` that asked to leave."""
    rec = store.get(factory_id, "leaving")
    return list(rec["peers"]) if rec else []


def roll_or_close(closer: Closer, store: Store, factory_id: str, progress: Callable[[str], None]) -> dict[str, Any]:
    """What the ladder does with a dying factory: roll it over, paying those who asked to leave on chain,
    or, when every client asked to leave or the next factory cannot fit in its close (its L-stock sold
    down to the dust limit), close it cooperatively: each client is paid its balance on chain, which the
    distribution would not do (it pays each client its channel's whole capacity). After
    MAX_FAILED_ROLLOVERS rollovers of it failed with the next factory's channels already completed (a
    client withholding its signature of the close; those channels are never forgotten by lightningd),
    it is closed too: a plain close opens no channel, so its failures leave nothing behind."""
    rec = store.get(factory_id, "factory") or {}
    leavers = leaving(store, factory_id)
    if {c["peer_id"] for c in rec.get("channels", [])} <= set(leavers) or rec.get("unfinished_close") is not None:
        return closer.close(factory_id, progress)  # (an unfinished close is finished, never replaced)
    if int(rec.get("failed_rollovers", 0)) >= MAX_FAILED_ROLLOVERS:
        progress(f"factory {factory_id}: {rec['failed_rollovers']} rollovers failed after its next factory's "
                 "channels were opened: closing it instead")
        return closer.close(factory_id, progress)
    try:
        return closer.rollover(factory_id, leavers, progress)
    except DoesNotFit as e:
        progress(f"factory {factory_id} cannot roll over ({e}): closing it")
        return closer.close(factory_id, progress)


class Leavers:
    def __init__(self, store: Store, log: Callable[..., None], height: Callable[[], int]) -> None:
        self.store, self.log, self.height = store, log, height

    def on_message(self, peer: str, msg: Message) -> bool:
        """Record a `Leave` from a client of an LSP factory of ours; True if `msg` was a Leave."""
        if not isinstance(msg, Leave):
            return False
        fid = msg.factory_id.hex()
        try:
            rec: dict[str, Any] | None = self.store.get(fid, "factory")
            if rec is None or rec.get("role") != "lsp" or peer not in {c["peer_id"] for c in rec["channels"]}:
                self.log(f"ignoring a leave request from {peer} for factory {fid}: not a client of ours there",
                         level="info")
                return True
            peers = leaving(self.store, fid)
            if peer not in peers:
                self.store.put(fid, "leaving", {"peers": [*peers, peer], "heights": {
                    **((self.store.get(fid, "leaving") or {}).get("heights", {})), peer: self.height()}})
                self.log(f"factory {fid}: client {peer} asked to leave; it is paid on chain at the next close")
        except StoreError as e:  # the client may ask again
            self.log(f"factory {fid}: recording {peer}'s leave request: {e}", level="unusual")
        return True
