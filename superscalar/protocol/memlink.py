"""Run one round between a Coordinator and its Participants over an in-memory link.

Every message is encoded, split to the wire's size limit and reassembled exactly as it would cross a
peer connection, and the bytes each client sends and receives are counted. Used by tests, benchmarks
and the demo; no sockets, no threads. `run_split` puts some participants in a second process, for a
second core.
"""

from __future__ import annotations

import gc
import multiprocessing
import resource
import traceback
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
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
    # run_split only, at the end of the round (both processes alive): this process's and the
    # worker's memory, each {"peak_rss": ..., "pss": ...} in KiB (PSS: shared pages counted once
    # across the two; Linux only, else 0).
    memory_kb: dict[str, int] = field(default_factory=dict)
    worker_memory_kb: dict[str, int] = field(default_factory=dict)

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


def run_split(coordinator: Coordinator, participants: dict[int, Participant], worker_clients: Collection[int]) -> LinkResult:
    """`run` on two cores: the participants in `worker_clients` run in a forked worker process, the
    coordinator and the other participants here. Every message is encoded, split and reassembled as
    in `run`, and crosses the process boundary as those bytes; the byte counts are the same.

    Each machine sees its own messages in order; messages of different clients interleave
    differently than in `run`, and the worker's records come after this process's in `persisted`.
    The participant objects of worker clients are left as they were (their outcomes are in the
    result). Without the fork start method this is `run`.
    """
    remote = {c for c in worker_clients if c in participants}
    if not remote or "fork" not in multiprocessing.get_all_start_methods():
        return run(coordinator, participants)
    result = LinkResult(clients={c: [] for c in participants}, sent={c: 0 for c in participants},
                        received={c: 0 for c in participants})
    at_lsp = {c: Reassembler() for c in participants}
    at_client = {c: Reassembler() for c in participants if c not in remote}
    local: deque[tuple[int, bytes]] = deque()
    to_worker: list[tuple[int, bytes]] = []
    in_flight = False  # at most one batch is in flight, so neither side blocks the other on a full pipe

    ctx = multiprocessing.get_context("fork")
    conn, child_conn = ctx.Pipe()

    def flush() -> None:
        nonlocal to_worker, in_flight
        if to_worker and not in_flight:
            conn.send(to_worker)
            to_worker, in_flight = [], True

    def from_lsp(actions: list[Action]) -> None:
        sends = [a for a in actions if isinstance(a, Send) and a.peer in participants]
        # The worker's messages first: they leave as soon as they are encoded, and the worker
        # starts on them while this process encodes the rest.
        for a in sorted(sends, key=lambda a: a.peer not in remote):
            if a.peer not in remote:
                flush()
            for wire in split_message(a.message):
                result.received[a.peer] += len(wire)
                (to_worker if a.peer in remote else local).append((a.peer, wire))
        flush()
        for a in actions:
            if isinstance(a, Persist):
                result.persisted.append((LSP_PEER, a.record))
            elif not isinstance(a, Send):
                result.lsp.append(a)

    def to_lsp(client: int, wire: bytes) -> None:
        result.sent[client] += len(wire)
        whole = _reassembled(at_lsp[client], wire)
        if whole is not None:
            from_lsp(coordinator.receive(client, whole))

    def take_replies() -> None:
        """One part of the worker's answer to the batch in flight (it answers in parts, so the
        coordinator works on them while the worker goes on)."""
        nonlocal in_flight
        reply = conn.recv()
        if isinstance(reply, str):
            raise RuntimeError(f"worker failed: {reply}")
        last, messages = reply
        for client, wire in messages:
            to_lsp(client, wire)
        if last:
            in_flight = False
            flush()

    worker = ctx.Process(target=_worker, args=(child_conn, {c: participants[c] for c in remote}), daemon=True)
    gc.freeze()  # the worker's collector then leaves the inherited objects (and their pages) alone
    try:
        worker.start()
    finally:
        gc.unfreeze()
    child_conn.close()
    try:
        from_lsp(coordinator.start())
        while True:
            while local:
                if in_flight and conn.poll():
                    take_replies()
                client, wire = local.popleft()
                whole = _reassembled(at_client[client], wire)
                if whole is None:
                    continue
                for a in participants[client].receive(whole):
                    if isinstance(a, Send):
                        for out in split_message(a.message):
                            to_lsp(client, out)
                    elif isinstance(a, Persist):
                        result.persisted.append((client, a.record))
                    else:
                        result.clients[client].append(a)
            if in_flight:
                take_replies()
            elif not to_worker and not local:
                break
        conn.send(None)
        final = conn.recv()
        if isinstance(final, str):
            raise RuntimeError(f"worker failed: {final}")
        kept, persisted, result.worker_memory_kb = final
        result.memory_kb = _memory_kb()
        for c, actions in kept.items():
            result.clients[c].extend(actions)
        result.persisted.extend(persisted)
    finally:
        conn.close()
        worker.join(timeout=10)
        if worker.is_alive():
            worker.kill()
    return result


def _reassembled(at: Reassembler, wire: bytes) -> Optional[Message]:
    decoded = decode_message(wire)
    return at.add(decoded) if isinstance(decoded, Fragment) else decoded


def _memory_kb() -> dict[str, int]:
    pss = 0
    try:
        with open("/proc/self/smaps_rollup") as f:
            pss = next((int(line.split()[1]) for line in f if line.startswith("Pss:")), 0)
    except OSError:
        pass
    return {"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "pss": pss}


_PART = 32  # messages per part of the worker's answer


def _worker(conn: Connection, participants: dict[int, Participant]) -> None:
    """The worker side of `run_split`: batches of (client, bytes from the LSP) in, batches of
    (client, bytes to the LSP) out; None ends the run and returns the kept actions and records."""
    at_client = {c: Reassembler() for c in participants}
    kept: dict[int, list[Action]] = {c: [] for c in participants}
    persisted: list[tuple[int, str]] = []
    try:
        while (batch := conn.recv()) is not None:
            out: list[tuple[int, bytes]] = []
            for client, wire in batch:
                whole = _reassembled(at_client[client], wire)
                if whole is None:
                    continue
                for a in participants[client].receive(whole):
                    if isinstance(a, Send):
                        out += [(client, w) for w in split_message(a.message)]
                    elif isinstance(a, Persist):
                        persisted.append((client, a.record))
                    else:
                        kept[client].append(a)
                if len(out) >= _PART:
                    conn.send((False, out))
                    out = []
            conn.send((True, out))
        conn.send((kept, persisted, _memory_kb()))
    except BaseException:  # report, do not hang the parent
        conn.send(traceback.format_exc())
    finally:
        conn.close()
