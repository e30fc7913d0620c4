"""The client role in process, against an LSP driven from the test: what it refuses, and that the
record an exit needs is durable before Done goes out."""

from __future__ import annotations

import dataclasses
from typing import Any

from superscalar.crypto import musig2
from superscalar.bitcoin.script import funding_script_2of2, p2tr_script, p2wsh_script
from superscalar.bitcoin.tx import OutPoint
from superscalar.client.membership import Client
from superscalar.records import factory_key_label
from superscalar.factory.graph import Factory, FactoryScripts
from superscalar.factory.params import ClientTerms, regtest_params
from superscalar.client.policy import ClientPolicy
from superscalar.protocol.ceremony import Completed, Coordinator, Send
from superscalar.protocol.rounds import construction_round
from superscalar.protocol.wire import Abort, Accept, Done, Invite
from superscalar.cln.store import Store

from ..fakes import ClientNode, Outbox

LSP = "02" + "aa" * 32
HEIGHT = 150
LSP_SK = (7).to_bytes(32, "big")
FUNDING = OutPoint(bytes(range(32)), 1)


def setup(height: int = HEIGHT) -> tuple[Client, ClientNode, list[tuple[str, Any]]]:
    journal: list[tuple[str, Any]] = []
    node = ClientNode(height, journal)
    client = Client(node, Store(node), Outbox(journal), {LSP}, lambda _: None,  # type: ignore[arg-type]
                    policy=ClientPolicy.for_profile("regtest"))
    return client, node, journal


def sent(journal: list[tuple[str, Any]]) -> list[Any]:
    return [v[1] for k, v in journal if k == "send"]


def invite(fid: bytes, start: int = HEIGHT) -> Invite:
    return Invite(fid, b"\x01" * 32, regtest_params(1, start).serialize(), 20_000, 100_000)


def test_exit_record_is_durable_before_done_and_keys_name_the_lsp() -> None:
    client, node, journal = setup()
    fid = b"\x05" * 32
    client.on_message(LSP, invite(fid))
    [accept] = sent(journal)
    assert isinstance(accept, Accept)
    assert musig2.individual_pk(node.secret(factory_key_label(LSP, fid, "client"))) == accept.pubkey
    params = regtest_params(1, HEIGHT)
    channel = p2wsh_script(funding_script_2of2(b"\x02" + b"\x11" * 32, b"\x03" + b"\x22" * 32))
    factory = Factory(params, [ClientTerms(20_000, 100_000)], [musig2.individual_pk(LSP_SK), accept.pubkey],
                      FactoryScripts((channel,), (accept.payout_script,), p2tr_script(b"\x33" * 32)))
    coordinator = Coordinator(construction_round(factory, factory.graph(FUNDING), fid, b"\x02" * 32), LSP_SK)
    queue = [a.message for a in coordinator.start() if isinstance(a, Send)]
    outcome = None
    while queue:
        before = len(sent(journal))
        client.on_message(LSP, queue.pop(0))
        for msg in sent(journal)[before:]:
            for a in coordinator.receive(0, msg):
                if isinstance(a, Send):
                    queue.append(a.message)
                elif isinstance(a, Completed):
                    outcome = a
    assert isinstance(outcome, Completed)
    key = ("superscalar", "factories", fid.hex(), "factory")
    record_at = journal.index(("put", key))
    done_at = next(i for i, (k, v) in enumerate(journal) if k == "send" and isinstance(v[1], Done))
    assert record_at < done_at
    record = client.store.get(fid.hex(), "factory")
    assert record is not None and record["funding"]["status"] == "awaiting"
    assert record["funding"]["deadline_height"] == HEIGHT + 6
    assert record["funding_outpoint"] == f"{FUNDING.txid_hex}:1"
    # The same id again, from the same LSP (or a co-client that learnt it): refused, record untouched.
    client.on_message(LSP, invite(fid))
    abort = sent(journal)[-1]
    assert isinstance(abort, Abort) and "factory id already used" in abort.reason
    assert client.store.get(fid.hex(), "factory") == record


def test_a_proposal_outside_policy_is_refused_with_its_reason() -> None:
    client, node, journal = setup()
    client.on_message(LSP, invite(b"\x06" * 32, start=0))
    [abort] = sent(journal)
    assert isinstance(abort, Abort) and "start height 0" in abort.reason
    assert node.addresses == 0 and client.invitations == {}  # no key, no address handed out


def test_one_pending_invitation_per_lsp_and_stale_ones_are_dropped() -> None:
    client, node, journal = setup()
    client.on_message(LSP, invite(b"\x07" * 32))
    client.on_message(LSP, invite(b"\x08" * 32))
    assert "another invitation from this LSP is pending" in sent(journal)[-1].reason
    client.stale_after = 0.0  # the LSP went quiet: its invitation is dropped at the next one
    client.on_message(LSP, invite(b"\x09" * 32))
    assert isinstance(sent(journal)[-1], Accept) and set(client.invitations) == {b"\x09" * 32}
    stranger = "03" + "bb" * 32
    client.on_message(stranger, dataclasses.replace(invite(b"\x0a" * 32)))
    assert "does not join factories of that LSP" in sent(journal)[-1].reason


def test_lsp_refuses_a_broadcast_txid_other_than_the_signed_one() -> None:
    import pytest

    from superscalar.lsp.creation import CreateError, Lsp

    class Node(ClientNode):
        def send_prepared(self, prepared: Any) -> str:
            return "bb" * 32  # what sendpsbt says went out

    node = Node(HEIGHT)
    lsp = Lsp(node, Store(node), Outbox([]), lambda n, h: regtest_params(n, h), lambda _: None)  # type: ignore[arg-type]
    record = {"role": "lsp", "params": "{}", "funding_outpoint": "aa" * 32 + ":0", "funding_psbt": "", "stage": "funding"}
    lsp.store.put("f", "factory", dict(record))
    with pytest.raises(CreateError, match="not the signed funding"):
        lsp.broadcast_funding("f", dict(record))
    stored = lsp.store.get("f", "factory")
    assert stored is not None and stored["stage"] == "funding-mismatch"
