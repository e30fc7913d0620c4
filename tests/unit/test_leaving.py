"""Leave requests: the LSP records one entry per client of its factory, and nothing from anyone else."""

from __future__ import annotations

from superscalar.lsp.leaving import Leavers, leaving, roll_or_close
from superscalar.protocol.wire import Leave, decode_message, split_message
from superscalar.cln.store import Store

from ..fakes import MemoryDatastore

A, B, STRANGER = "02" + "aa" * 32, "03" + "bb" * 32, "02" + "cc" * 32
FID = "11" * 32


def test_lsp_records_each_client_that_asks_to_leave_once() -> None:
    store = Store(MemoryDatastore())  # type: ignore[arg-type]
    store.put(FID, "factory", {"role": "lsp", "params": "{}", "channels": [{"peer_id": A}, {"peer_id": B}]})
    lines: list[str] = []
    leavers = Leavers(store, lambda text, level="info": lines.append(text), lambda: 700)
    [wire] = split_message(Leave(bytes.fromhex(FID), b"\x01" * 32))
    msg = decode_message(wire)  # it crosses the wire as any other message
    assert leavers.on_message(A, msg) and leavers.on_message(A, msg)  # twice: one entry
    assert leavers.on_message(STRANGER, msg)  # handled (ignored): not a client there
    assert leavers.on_message(B, Leave(b"\x22" * 32, b"\x01" * 32))  # a factory we do not have
    assert leaving(store, FID) == [A]
    assert store.get(FID, "leaving") == {"peers": [A], "heights": {A: 700}}
    assert not leavers.on_message(A, Leave.__mro__[1](bytes.fromhex(FID), b"\x01" * 32))  # not a Leave


def test_ladder_rolls_over_with_leavers_or_closes_when_all_leave() -> None:
    store = Store(MemoryDatastore())  # type: ignore[arg-type]
    store.put(FID, "factory", {"role": "lsp", "params": "{}", "channels": [{"peer_id": A}, {"peer_id": B}]})
    calls: list[tuple[str, object]] = []

    class Closer:
        def close(self, fid: str, progress: object) -> dict[str, str]:
            calls.append(("close", fid))
            return {}

        def rollover(self, fid: str, leave: list[str], progress: object) -> dict[str, str]:
            calls.append(("rollover", leave))
            return {}

    leavers = Leavers(store, lambda text, level="info": None, lambda: 700)
    roll_or_close(Closer(), store, FID, print)  # type: ignore[arg-type]
    leavers.on_message(A, Leave(bytes.fromhex(FID), b"\x01" * 32))
    roll_or_close(Closer(), store, FID, print)  # type: ignore[arg-type]
    leavers.on_message(B, Leave(bytes.fromhex(FID), b"\x02" * 32))
    roll_or_close(Closer(), store, FID, print)  # type: ignore[arg-type]
    assert calls == [("rollover", []), ("rollover", [A]), ("close", FID)]


def test_ladder_closes_after_rollovers_failed_with_channels_opened() -> None:
    """Each rollover that failed after the next factory's channels were completed left them behind for
    good: after MAX_FAILED_ROLLOVERS of those, the ladder closes the factory instead (no channel opened)."""
    from superscalar.lsp.closing import MAX_FAILED_ROLLOVERS

    store = Store(MemoryDatastore())  # type: ignore[arg-type]
    rec = {"role": "lsp", "params": "{}", "channels": [{"peer_id": A}, {"peer_id": B}]}
    calls: list[str] = []

    class Closer:
        def close(self, fid: str, progress: object) -> dict[str, str]:
            calls.append("close")
            return {}

        def rollover(self, fid: str, leave: list[str], progress: object) -> dict[str, str]:
            calls.append("rollover")
            return {}

    for failures in range(MAX_FAILED_ROLLOVERS + 1):
        store.put(FID, "factory", {**rec, "failed_rollovers": failures})
        roll_or_close(Closer(), store, FID, lambda _: None)  # type: ignore[arg-type]
    assert calls == ["rollover"] * MAX_FAILED_ROLLOVERS + ["close"]
