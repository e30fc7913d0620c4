"""A client's records, backed up at its helper (sealed under its own key), audited, and restored on a
node that has only its hsm_secret; a helper that alters or withholds a backup is caught."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Optional

from superscalar.client.backup import BACKUP_DOC, ClientBackup
from superscalar.crypto import musig2
from superscalar.crypto.backup_blob import open_backup, seal_backup
from superscalar.helper.backups import Backups
from superscalar.helper.distributions import PackageLimits
from superscalar.protocol.wire import BackupBlob, BackupFetch, BackupStore, Message, TowerAnswer
from superscalar.records import factory_key_label

from ..fakes import MemoryDatastore
from .test_helper_exits import path

LSP = "02" + "77" * 32
FID = "f1" * 32


class Node(MemoryDatastore):
    def __init__(self, seed: bytes) -> None:
        super().__init__()
        self.seed = seed
        self.recovered: list[list[str]] = []

    def secret(self, label: str) -> bytes:
        return hashlib.sha256(self.seed + label.encode()).digest()

    def datastore_values(self, prefix: list[str]) -> list[tuple[list[str], str]]:
        return [(list(k), v) for k, (v, _) in self.data.items() if list(k[:-1]) == prefix]

    def peer_channels(self) -> list[dict[str, Any]]:
        return []

    def new_script(self) -> bytes:
        return bytes.fromhex("0014" + "99" * 20)

    @property
    def rpc(self) -> Any:
        node = self

        class Rpc:
            def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
                if method == "staticbackup":
                    return {"scb": ["aa" * 20]}
                if method == "recoverchannel":
                    node.recovered.append(params["scb"])
                    return {"stubs": ["cc" * 32]}
                if method == "getutxout":
                    txs, prevouts = path()
                    return {"amount": f"{prevouts[0].value}sat", "script": prevouts[0].script_pubkey.hex()}
                raise KeyError(method)
        return Rpc()


class Store:
    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        self.docs: dict[str, Any] = {}

    def factory_ids(self) -> list[str]:
        return sorted(self.records)

    def get(self, fid: str, name: str) -> Optional[dict[str, Any]]:
        return json.loads(json.dumps(self.records[fid])) if name == "factory" and fid in self.records else None

    def put(self, fid: str, name: str, data: dict[str, Any]) -> None:
        self.records[fid] = data

    def get_doc(self, name: str) -> Any:
        return json.loads(json.dumps(self.docs[name])) if name in self.docs else None

    def put_doc(self, name: str, data: Any) -> None:
        self.docs[name] = data


def record(node: Node) -> dict[str, Any]:
    txs, prevouts = path()
    pubkey = musig2.individual_pk(node.secret(factory_key_label(LSP, bytes.fromhex(FID), "client")))
    return {"role": "client", "lsp": LSP, "pubkey": pubkey.hex(), "funding_outpoint": f"{'cd' * 32}:0",
            "signed_path": [t.to_hex() for t in txs], "path_prevouts": [[p.value, p.script_pubkey.hex()] for p in prevouts]}


class Wire:
    """The client and its helper, connected: each message delivered at once."""

    def __init__(self, helper: Backups) -> None:
        self.helper = helper
        self.client: Optional[ClientBackup] = None
        self.online = True

    def send(self, peer: str, msg: Message) -> None:
        assert self.client is not None
        if not self.online:
            raise OSError("not connected")
        if isinstance(msg, BackupStore):
            self.client.on_message(peer, self.helper.keep("client", msg))
        elif isinstance(msg, BackupFetch):
            for answer in self.helper.fetch("client", msg):
                self.client.on_message(peer, answer)


def client(node: Node, store: Store, wire: Wire) -> ClientBackup:
    c = ClientBackup(node, store, wire.send, ("h1",), lambda *a, **k: None, audit_blocks=10)
    wire.client = c
    return c


def test_a_backup_opens_only_under_its_key_and_factory() -> None:
    blob = seal_backup(b"k" * 32, b"f" * 32, b"records")
    assert open_backup(b"k" * 32, b"f" * 32, blob) == b"records"
    assert open_backup(b"j" * 32, b"f" * 32, blob) is None
    assert open_backup(b"k" * 32, b"g" * 32, blob) is None  # another factory's backup passed off: refused
    assert seal_backup(b"k" * 32, b"f" * 32, b"records") != blob  # a fresh nonce each time


def test_records_come_back_on_a_node_with_the_same_seed_only() -> None:
    helper_node = Node(b"helper")
    wire = Wire(Backups(helper_node, PackageLimits(), lambda *a, **k: None))
    node, store = Node(b"seed"), Store()
    store.records[FID] = record(node)
    c = client(node, store, wire)
    c.on_block(100)
    assert store.docs[BACKUP_DOC][FID] == {"h1": hashlib.sha256(bytes.fromhex(
        helper_node.data[("superscalar", "backups", "client", FID)][0])).hexdigest()}
    assert b"signed_path" not in bytes.fromhex(helper_node.data[("superscalar", "backups", "client", FID)][0])
    # the data directory is lost; the same seed comes back
    fresh_node, fresh_store = Node(b"seed"), Store()
    out = client(fresh_node, fresh_store, wire).restore(wait=1)
    assert [r["factory_id"] for r in out["restored"]] == [FID] and out["refused"] == [] and out["problems"] == []
    assert fresh_store.records[FID] == store.records[FID]
    assert out["static_backups"] == ["aa" * 20] and fresh_node.recovered == []  # not handed over by default
    again = client(Node(b"seed"), Store(), wire).restore(wait=1, recover_channels=True)
    assert again["channels_recovered"] == ["cc" * 32]
    # another node fetching under the same id (the helper indexes by peer id) cannot open it
    thief_store = Store()
    out = client(Node(b"other seed"), thief_store, wire).restore(wait=1)
    assert out["restored"] == [] and "does not open" in out["problems"][0]["problem"]
    assert thief_store.records == {}


def test_a_record_that_is_not_ours_or_not_signed_is_not_restored() -> None:
    helper_node = Node(b"helper")
    wire = Wire(Backups(helper_node, PackageLimits(), lambda *a, **k: None))
    node, store = Node(b"seed"), Store()
    rec = record(node)
    txs, prevouts = path(break_at=2)
    store.records[FID] = {**rec, "signed_path": [t.to_hex() for t in txs]}
    client(node, store, wire).on_block(100)
    fresh = Store()
    out = client(Node(b"seed"), fresh, wire).restore(wait=1)
    assert out["refused"][0]["reason"] == "path/2 is not signed for the output it spends" and fresh.records == {}
    store.records[FID] = {**rec, "pubkey": "02" + "55" * 32}
    client(node, store, wire).on_block(101)
    out = client(Node(b"seed"), fresh, wire).restore(wait=1)
    assert "factory key" in out["refused"][0]["reason"]


def test_a_helper_that_withholds_backups_is_caught_by_the_audit() -> None:
    helper_node = Node(b"helper")
    wire = Wire(Backups(helper_node, PackageLimits(), lambda *a, **k: None, withhold=True))
    node, store = Node(b"seed"), Store()
    store.records[FID] = record(node)
    c = client(node, store, wire)
    c.on_block(99)
    assert FID in store.docs[BACKUP_DOC]  # it acknowledged...
    assert ("superscalar", "backups", "client", FID) not in helper_node.data  # ...and kept nothing
    c.on_block(100)  # the audit
    assert "returned no backup" in c.info()["suspect_helpers"]["h1"]


def test_what_a_client_may_store_is_bounded() -> None:
    helper = Backups(Node(b"helper"), PackageLimits(per_client=2, package_bytes=100), lambda *a, **k: None)
    def store(fid: bytes, blob: bytes) -> TowerAnswer:
        return helper.keep("c", BackupStore(fid, hashlib.sha256(blob).digest(), blob))
    assert store(b"\x01" * 32, b"x" * 100).accepted == 1
    assert store(b"\x01" * 32, b"y" * 100).accepted == 1  # a newer version of the same factory
    assert store(b"\x02" * 32, b"z").accepted == 1
    assert "2 backups" in str(store(b"\x03" * 32, b"z").reason)
    assert "100 bytes" in str(store(b"\x01" * 32, b"x" * 101).reason)
    assert "SHA-256" in str(helper.keep("c", BackupStore(b"\x01" * 32, bytes(32), b"x")).reason)
    [blob] = helper.fetch("c", BackupFetch(b"\x01" * 32, b"s" * 32))
    assert blob.blob == b"y" * 100 and blob.count == 1
    assert helper.fetch("stranger", BackupFetch(bytes(32), b"s" * 32)) == [BackupBlob(bytes(32), b"s" * 32, 0, 0, b"")]
