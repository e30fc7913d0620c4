"""`run_split`: the in-memory link of superscalar.protocol.memlink spread over forked worker processes,
so a benchmark of a large ceremony uses every core. Not product code: only contrib/bench_factory.py
runs it."""

from __future__ import annotations

import gc
import os
import queue
import threading
import multiprocessing
import resource
import traceback
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, Optional

from superscalar.bitcoin.tx import Tx
from superscalar.protocol.ceremony import LSP_PEER, Action, Completed, Coordinator, Participant, Persist, Send
from superscalar.protocol.memlink import LinkResult, run
from superscalar.protocol.wire import Fragment, Message, Reassembler, decode_message, split_message


@dataclass
class _Worker:
    conn: Connection
    process: multiprocessing.process.BaseProcess
    pending: deque[tuple[int, Message]] = field(default_factory=deque)  # for it, not encoded yet
    in_flight: int = 0  # batches sent and not fully answered
    # Batches go out through a thread of their own: this process never blocks on a full pipe
    # while the worker, busy answering, does not read.
    outbox: "queue.SimpleQueue[Optional[list[tuple[int, bytes]]]]" = field(default_factory=queue.SimpleQueue)
    sender: Optional[threading.Thread] = None

    def start_sender(self) -> None:
        def send_all() -> None:
            while (batch := self.outbox.get()) is not None:
                self.conn.send(batch)
            self.conn.send(None)

        self.sender = threading.Thread(target=send_all, daemon=True)
        self.sender.start()


_CHUNK = 16  # messages encoded and sent to a worker at once: it starts early and holds little


def run_split(coordinator: Coordinator, participants: dict[int, Participant], workers: int = 2,
              local: Collection[int] = ()) -> LinkResult:
    """`run` on several cores: the coordinator and the participants in `local` run here, the others
    in `workers` forked worker processes. A client goes to a worker when the coordinator first
    sends it something, to whichever worker asks for more work first, and stays there: a worker
    that gets more of the CPU takes more clients, and all finish each step together. Every message
    is encoded, split and reassembled as in `run` and crosses the process boundary as those bytes;
    the byte counts are the same.

    Each machine sees its own messages in order; messages of different clients interleave
    differently than in `run`, and the workers' records come after this process's in `persisted`.
    The participant objects of worker clients are left as they were (their outcomes are in the
    result). With no workers, or without the fork start method, this is `run`.
    """
    if workers < 1 or not set(participants) - set(local) or "fork" not in multiprocessing.get_all_start_methods():
        return run(coordinator, participants)
    result = LinkResult(clients={c: [] for c in participants}, sent={c: 0 for c in participants},
                        received={c: 0 for c in participants})
    at_lsp = {c: Reassembler() for c in participants}
    at_client = {c: Reassembler() for c in participants if c in local}
    here: deque[tuple[int, bytes]] = deque()  # wire for the local participants
    unassigned: deque[tuple[int, Message]] = deque()  # for clients no worker has yet
    ctx = multiprocessing.get_context("fork")
    pool: list[_Worker] = []
    where: dict[int, _Worker] = {}

    def next_message(w: _Worker) -> Optional[tuple[int, Message]]:
        while w.pending or unassigned:
            if w.pending:
                return w.pending.popleft()
            peer, message = unassigned.popleft()
            owner = where.setdefault(peer, w)
            if owner is w:
                return peer, message
            owner.pending.append((peer, message))  # a second message for a client just given away
        return None

    def flush(w: _Worker) -> None:
        """Encode and send the worker its next messages, unless it is still busy with the last."""
        while w.in_flight < 2:  # the next batch waits in the pipe while one is worked on
            batch: list[tuple[int, bytes]] = []
            while len(batch) < _CHUNK and (item := next_message(w)) is not None:
                peer, message = item
                for wire in split_message(message):
                    result.received[peer] += len(wire)
                    batch.append((peer, wire))
            if not batch:
                return
            w.outbox.put(batch)
            w.in_flight += 1

    def from_lsp(actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Send) and a.peer in participants:
                if a.peer in at_client:
                    for wire in split_message(a.message):
                        result.received[a.peer] += len(wire)
                        here.append((a.peer, wire))
                elif a.peer in where:
                    where[a.peer].pending.append((a.peer, a.message))
                else:
                    unassigned.append((a.peer, a.message))
        for w in pool:
            flush(w)
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

    def take_reply(w: _Worker) -> None:
        """One part of a worker's answer to its batch (it answers in parts, so the coordinator
        works on them while the worker goes on)."""
        reply = w.conn.recv()
        if isinstance(reply, str):
            raise RuntimeError(f"worker failed: {reply}")
        last, messages = reply
        for client, wire in messages:
            to_lsp(client, wire)
        if last:
            w.in_flight -= 1
            flush(w)

    gc.freeze()  # the workers' collectors then leave the inherited objects (and their pages) alone
    try:
        for _ in range(workers):
            conn, child_conn = ctx.Pipe()
            process = ctx.Process(target=_worker, args=(child_conn, participants), daemon=True)
            process.start()
            child_conn.close()
            pool.append(_Worker(conn, process))
            pool[-1].start_sender()
    finally:
        gc.unfreeze()
    try:
        from_lsp(coordinator.start())
        while True:
            while here:
                for w in pool:
                    if w.in_flight and w.conn.poll():
                        take_reply(w)
                client, wire = here.popleft()
                replies = _client_step(participants[client], at_client[client], client, wire,
                                       result.persisted, result.clients[client])
                for out in replies:
                    to_lsp(client, out)
            busy = {w.conn: w for w in pool if w.in_flight}
            if busy:
                for ready in wait(list(busy)):
                    take_reply(busy[ready])  # type: ignore[index]
            elif unassigned or any(w.pending for w in pool):
                for w in pool:  # an idle worker given a message while another was being filled
                    flush(w)
            elif not here:
                break
        for w in pool:
            w.outbox.put(None)
        for w in pool:
            final = w.conn.recv()
            if isinstance(final, str):
                raise RuntimeError(f"worker failed: {final}")
            txs, kept, persisted, peak_rss = final
            result.workers_peak_rss_kb.append(peak_rss)
            for c, actions in kept.items():
                result.clients[c].extend(Completed(tuple(txs[k] for k in a)) if isinstance(a, list) else a
                                         for a in actions)
            result.persisted.extend(persisted)
    finally:
        for w in pool:
            w.outbox.put(None)
            if w.sender is not None:
                w.sender.join(timeout=10)
            w.conn.close()
            w.process.join(timeout=10)
            if w.process.is_alive():
                w.process.kill()
    return result


def _reassembled(at: Reassembler, wire: bytes) -> Optional[Message]:
    decoded = decode_message(wire)
    return at.add(decoded) if isinstance(decoded, Fragment) else decoded


def _client_step(participant: Participant, at: Reassembler, client: int, wire: bytes,
                 persisted: list[tuple[int, str]], kept: list[Action]) -> list[bytes]:
    """One piece of wire from the LSP to a client in `run_split`: the wire pieces it answers; its
    records' names and its other actions are appended to `persisted` and `kept`."""
    whole = _reassembled(at, wire)
    out: list[bytes] = []
    for a in participant.receive(whole) if whole is not None else ():
        if isinstance(a, Send):
            out += split_message(a.message)
        elif isinstance(a, Persist):
            persisted.append((client, a.record))
        else:
            kept.append(a)
    return out


TxKey = tuple[bytes, tuple[tuple[bytes, ...], ...]]  # txid and witnesses: one signed transaction


def _shared_txs(kept: dict[int, list[Action]]) -> tuple[dict[TxKey, Tx], dict[int, list[Any]]]:
    """A worker's outcomes for the trip back: each signed transaction once (many clients hold the
    same ones, e.g. the distribution), a Completed as the list of its transactions' keys."""
    txs: dict[TxKey, Tx] = {}
    out: dict[int, list[Any]] = {}
    for c, actions in kept.items():
        out[c] = []
        for a in actions:
            if isinstance(a, Completed):
                keys = [(tx.txid_bytes, tuple(i.witness for i in tx.inputs)) for tx in a.signed]
                for k, tx in zip(keys, a.signed):
                    txs.setdefault(k, tx)
                out[c].append(keys)
            else:
                out[c].append(a)
    return txs, out


_PART = 32  # messages per part of the worker's answer
_WORKER_NICENESS = 10  # workers yield the CPU to the coordinator's process
_WORKER_GC_THRESHOLDS = (100_000, 50, 1_000)  # gen-0 allocations, gen-1 and gen-2 collection counts


def _worker(conn: Connection, participants: dict[int, Participant]) -> None:
    """The worker side of `run_split`: batches of (client, bytes from the LSP) in, batches of
    (client, bytes to the LSP) out; None ends the run and returns the kept actions and records."""
    # The coordinator is on every client's critical path (a round moves on only when it has
    # aggregated every job): it runs first, and the workers use the CPU it leaves.
    os.nice(_WORKER_NICENESS)
    # Its clients' objects live until the run ends, and it ends soon: collect cycles rarely.
    gc.set_threshold(*_WORKER_GC_THRESHOLDS)
    at_client: dict[int, Reassembler] = {}
    kept: dict[int, list[Action]] = {}  # of the clients given to this worker
    persisted: list[tuple[int, str]] = []
    try:
        while (batch := conn.recv()) is not None:
            out: list[tuple[int, bytes]] = []
            for client, wire in batch:
                if client not in kept:
                    at_client[client], kept[client] = Reassembler(), []
                replies = _client_step(participants[client], at_client[client], client, wire, persisted, kept[client])
                out += [(client, w) for w in replies]
                if len(out) >= _PART:
                    conn.send((False, out))
                    out = []
            conn.send((True, out))
        conn.send((*_shared_txs(kept), persisted, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
    except BaseException:  # report, do not hang the parent
        conn.send(traceback.format_exc())
    finally:
        conn.close()
