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


class CountingDatastore(MemoryDatastore):
    """Counts the reads that reach lightningd."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def datastore_get(self, key: list[str]) -> Any:
        self.reads += 1
        return super().datastore_get(key)

    def datastore_list(self, prefix: list[str]) -> list[list[str]]:
        self.reads += 1
        return super().datastore_list(prefix)


def test_reads_are_served_from_memory_after_the_first() -> None:
    node = CountingDatastore()
    store = Store(node)  # type: ignore[arg-type]
    store.put("f1", "factory", client_record())
    store.put("f1", "exit", {"n": 1})
    before = node.reads
    for _ in range(10):  # what every block's steps do: list the factories, read each record
        assert store.factory_ids() == ["f1"]
        assert store.get("f1", "factory") == client_record()
        assert store.get("f1", "exit") == {"n": 1}
        assert store.get("f1", "sale") is None
    assert node.reads - before <= 2  # the id list and the absent record, once each
    # A caller that changes what it read does not change what the next reader gets.
    got = store.get("f1", "factory")
    assert got is not None
    got["signed_path"].append("ff")
    assert store.get("f1", "factory") == client_record()
    # Writes and deletes go through: the datastore first, memory after.
    store.put("f1", "exit", {"n": 2})
    assert node.data[("superscalar", "factories", "f1", "exit")][0].find('"n": 2') > 0
    assert store.get("f1", "exit") == {"n": 2}
    store.put("f2", "client-signing", {"session_id": "00"})
    assert store.factory_ids() == ["f1", "f2"]
    store.delete_factory("f2")
    assert store.factory_ids() == ["f1"] and store.get("f2", "client-signing") is None
    assert not [k for k in node.data if k[2] == "f2"]


def test_a_write_someone_else_made_is_refused_then_read_afresh() -> None:
    node = MemoryDatastore()
    store, other = Store(node), Store(node)  # type: ignore[arg-type]
    store.put("f1", "exit", {"n": 1})
    assert other.get("f1", "exit") == {"n": 1}
    other.put("f1", "exit", {"n": 2})  # a second writer (the operator's `datastore` command)
    with pytest.raises(StoreError):
        store.put("f1", "exit", {"n": 3})  # memory still said n=1: the compare-and-swap refuses
    assert store.get("f1", "exit") == {"n": 2}  # the refusal forgot it: read afresh
    store.put("f1", "exit", {"n": 3})
    assert other.get("f1", "exit") == {"n": 2}  # memory of the other: refused at its next write
    with pytest.raises(StoreError):
        other.put("f1", "exit", {"n": 4})
    assert Store(node).get("f1", "exit") == {"n": 3}  # type: ignore[arg-type]


def test_a_failed_write_leaves_memory_as_the_datastore() -> None:
    node = MemoryDatastore()
    store = Store(node)  # type: ignore[arg-type]
    store.put("f1", "exit", {"n": 1})
    real_put = node.datastore_put

    def unreachable(key: list[str], value: str, generation: Any) -> int:
        raise OSError("lightningd gone")
    node.datastore_put = unreachable  # type: ignore[method-assign]
    with pytest.raises(OSError):
        store.put("f1", "exit", {"n": 2})
    node.datastore_put = real_put  # type: ignore[method-assign]
    assert store.get("f1", "exit") == {"n": 1}
    store.put("f1", "exit", {"n": 2})
    assert Store(node).get("f1", "exit") == {"n": 2}  # type: ignore[arg-type]
