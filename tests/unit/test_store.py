"""The factory store: compare-and-swap writes, and a funded factory's record is never replaced by
another factory's data, whoever asks."""

from __future__ import annotations

from typing import Any

import pytest

from superscalar.cln.store import Store, StoreError

from ..fakes import MemoryDatastore


def client_record(**change: Any) -> dict[str, Any]:
    rec = {"role": "client", "params": "{}", "funding_outpoint": "aa" * 32 + ":0", "lsp": "02" + "11" * 32,
           "pubkey": "03" + "22" * 32, "client_index": 0, "leaf_outpoint": "bb" * 32 + ":0",
           "signed_path": ["00"], "funding": {"status": "awaiting"}}
    rec.update(change)
    return rec


def test_a_factory_record_is_never_replaced_by_another_factorys() -> None:
    node = MemoryDatastore()
    store = Store(node)  # type: ignore[arg-type]
    store.put("f1", "factory", client_record())
    # The same factory's record can change (its funding watch, its stage).
    store.put("f1", "factory", client_record(funding={"status": "confirmed"}))
    for change in ({"funding_outpoint": "cc" * 32 + ":1"}, {"leaf_outpoint": "dd" * 32 + ":0"},
                   {"pubkey": "03" + "33" * 32}, {"lsp": "02" + "44" * 32}, {"params": "{\"x\":1}"}):
        with pytest.raises(StoreError, match="refusing to replace"):
            store.put("f1", "factory", client_record(**change))
        # Another Store over the same datastore (a second writer, a restart) refuses too.
        with pytest.raises(StoreError, match="refusing to replace"):
            Store(node).put("f1", "factory", client_record(**change))  # type: ignore[arg-type]
    assert store.get("f1", "factory") == client_record(funding={"status": "confirmed"})


def test_concurrent_writers_do_not_clobber_each_other() -> None:
    node = MemoryDatastore()
    a, b = Store(node), Store(node)  # type: ignore[arg-type]
    a.put("f1", "exit", {"n": 1})
    assert b.get("f1", "exit") == {"n": 1}
    a.put("f1", "exit", {"n": 2})
    with pytest.raises(StoreError):
        b.put("f1", "exit", {"n": 3})


def test_unfinished_ceremonies_are_pruned_but_factories_are_kept() -> None:
    node = MemoryDatastore()
    store = Store(node)  # type: ignore[arg-type]
    store.put("f1", "client-signing", {"session_id": "00"})
    store.put("f2", "client-signed", {"session_id": "00"})
    store.put("f2", "factory", client_record())
    store.delete_factory("f1")
    assert store.factory_ids() == ["f2"]
    with pytest.raises(StoreError):
        store.delete_factory("f2")
    assert store.get("f2", "client-signed") is not None


def test_start_up_prunes_what_no_ceremony_can_finish_any_more() -> None:
    node = MemoryDatastore()
    store = Store(node)  # type: ignore[arg-type]
    store.put("f1", "lsp-round", {"session_id": "00"})
    store.put("f2", "lsp-signed", {"session_id": "00"})
    store.put("f2", "factory", client_record())
    assert store.prune_unfinished() == ["f1"]
    assert store.factory_ids() == ["f2"] and store.get("f2", "lsp-signed") is not None


def test_lightningd_gone_is_not_reported_as_a_write_conflict() -> None:
    """At shutdown the RPC socket refuses connections: callers see OSError (logged as shutdown), not
    a StoreError (which the plugin reports as broken)."""

    class Gone(MemoryDatastore):
        def datastore_put(self, key: list[str], value: str, generation: Any) -> int:
            raise ConnectionRefusedError(111, "Connection refused")

    store = Store(Gone())  # type: ignore[arg-type]
    with pytest.raises(ConnectionRefusedError):
        store.put("f1", "factory", client_record())
