"""Run one round between a Coordinator and its Participants over an in-memory link.

Every message is encoded, split to the wire's size limit and reassembled exactly as it would cross a
peer connection, and the bytes each client sends and receives are counted. Used by tests, benchmarks
and the demo; `run` is one thread in this process. (contrib/split_link.py runs participants in forked
worker processes, for the benchmark.)
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional

from .ceremony import LSP_PEER, Action, Completed, Coordinator, Failed, Participant, Persist, Send
from .wire import Fragment, Message, Reassembler, decode_message, split_message

# A hook may replace (return a message) or drop (return None) what one side sends: for fault tests.
Tamper = Callable[[int, int, Message], Optional[Message]]


@dataclass
class LinkResult:
    lsp: list[Action] = field(default_factory=list)
    clients: dict[int, list[Action]] = field(default_factory=dict)
    sent: dict[int, int] = field(default_factory=dict)  # bytes each client sent
    received: dict[int, int] = field(default_factory=dict)  # bytes each client received
    persisted: list[tuple[int, str]] = field(default_factory=list)  # (peer, record name), in order
    records: list[tuple[int, Persist]] = field(default_factory=list)  # (peer, the record itself), in order
    workers_peak_rss_kb: list[int] = field(default_factory=list)  # run_split: each worker's peak RSS

    @property
    def lsp_outcome(self) -> Optional[Completed | Failed]:
        return next((a for a in self.lsp if isinstance(a, (Completed, Failed))), None)

    def client_outcome(self, c: int) -> Optional[Completed | Failed]:
        return next((a for a in self.clients.get(c, []) if isinstance(a, (Completed, Failed))), None)


def run(coordinator: Coordinator, participants: dict[int, Participant], tamper: Optional[Tamper] = None) -> LinkResult:
    """Drive the round to its end; messages are delivered in the order they were sent."""
    result = LinkResult(clients={c: [] for c in participants}, sent={c: 0 for c in participants},
                        received={c: 0 for c in participants})
    queue: deque[tuple[int, int, Message]] = deque()  # (from, to, message); LSP is LSP_PEER
    reassemblers = {c: (Reassembler(), Reassembler()) for c in participants}  # (at client, at LSP)

    def deliver_all(src: int, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Send):
                dest = a.peer if src == LSP_PEER else LSP_PEER
                queue.append((src, dest, a.message))
            elif isinstance(a, Persist):
                result.persisted.append((src, a.record))  # the payload would go to the datastore
                result.records.append((src, a))
        kept = [a for a in actions if not isinstance(a, (Send, Persist))]
        (result.lsp if src == LSP_PEER else result.clients[src]).extend(kept)

    deliver_all(LSP_PEER, coordinator.start())
    while queue:
        src, dest, msg = queue.popleft()
        if tamper is not None:
            replaced = tamper(src, dest, msg)
            if replaced is None:
                continue
            msg = replaced
        client = dest if src == LSP_PEER else src
        if client not in participants:
            continue
        for wire in split_message(msg):
            if src == LSP_PEER:
                result.received[client] += len(wire)
            else:
                result.sent[client] += len(wire)
            decoded = decode_message(wire)
            at = reassemblers[client][0 if src == LSP_PEER else 1]
            whole = at.add(decoded) if isinstance(decoded, Fragment) else decoded
            if whole is None:
                continue
            if src == LSP_PEER:
                deliver_all(client, participants[client].receive(whole))
            else:
                deliver_all(LSP_PEER, coordinator.receive(client, whole))
    return result
