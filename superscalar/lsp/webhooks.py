"""The LSP's LSPS5 (bLIP-55): wallets that sleep register webhooks, and the LSP wakes them when something
needs them.

- `lsps5.set_webhook` / `list_webhooks` / `remove_webhook` (protocol/lsps5.py checks them): a client's
  webhooks are one datastore document (`lsps5-<node id>`), written before the answer, kept until the
  client removes them (bLIP-55 asks for at least 7 days after its last channel). At most
  `max_webhooks` per client (503 above it).
- `notify(peer, method, params)`: for a client that is not connected, the notification goes to each of
  its webhooks (`lsps5.webhook_registered` only to the new one, connected or not, before any other).
  Each post is signed: `x-lsps5-signature` is lightningd's `signmessage` (zbase32) of bLIP-55's
  template with the `x-lsps5-timestamp` and the exact body.
- Posting never blocks the caller: one sender thread takes the posts in order (so a new webhook hears
  `webhook_registered` first). A post has a 10 s timeout; a connection that fails is tried again twice,
  after 2 s and 10 s; an answer other than 200 is logged and otherwise ignored, and a redirection is not
  followed (bLIP-55 "Webhook Call"). One notification method is posted to one client at most once a
  minute (bLIP-55 "LSP: Rate-limiting Notifications By `method`"), except `webhook_registered`.
- `on_block`: the clients of a factory in its dying period are told `lsps5.liquidity_management_request`
  (the LSP takes its liquidity back: they must come online for the rollover) at its first block and
  daily after, and `lsps5.expiry_soon` with the distribution height as `timeout` once that is within
  EXPIRY_SOON_BLOCKS (bLIP-55: a time-bound contract "within 24 blocks of being timed out", whose
  timeout closes the channel: the distribution ends every channel of the factory).
- `hold(peer, answer)`: an HTLC to be forwarded to a client that is not connected and has a webhook is
  held (the client is told `lsps5.payment_incoming`) until it reconnects (`on_connect`) or
  `HOLD_SECONDS` pass, whichever is first, then handed back to lightningd (`continue`), at most
  `MAX_HELD_PER_PEER` per client: bounded, so the rest of the network is not held up for long.
- `hold_onion(peer, path_key, incoming)`: an onion message lightningd could not forward to a sleeping
  client (its `onionmessage_forward_fail` notification) is kept, the client told
  `lsps5.onion_message_incoming`, and given back to lightningd (`injectonionmessage`, which forwards it
  again, now that the client is connected) when it reconnects and its channel is back: at most MAX_ONIONS_PER_PEER per client,
  each for ONION_HOLD_SECONDS (a payer's `fetchinvoice` waits a minute by default).
- `order_state(peer, order_id, state)`: an LSPS1 order of a sleeping client was filled or failed:
  `superscalar.order_state_changed` (an extension method under our own prefix, as bLIP-55 allows).
"""

from __future__ import annotations

import queue
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..cln.node import ClnNode
from ..protocol.lsps0 import LspsError, check_params
from ..factory.params import FactoryParams
from ..protocol.lsps5 import (APP_NAME_NOT_FOUND, EXPIRY_SOON, LIQUIDITY_MANAGEMENT_REQUEST, ONION_MESSAGE_INCOMING,
                              PAYMENT_INCOMING, TOO_MANY_WEBHOOKS, WEBHOOK_REGISTERED,
                              check_remove_webhook, check_set_webhook, message_to_sign, notification, timestamp)
from ..cln.store import Store

DOC_PREFIX = "lsps5-"
DEFAULT_MAX_WEBHOOKS = 4
POST_TIMEOUT_SECONDS = 10.0
RETRY_DELAYS = (2.0, 10.0)  # after a post that could not reach the service
RATE_SECONDS = 60.0  # one notification method to one client at most this often
HOLD_SECONDS = 60.0  # an HTLC for a sleeping client waits this long for it to wake
MAX_HELD_PER_PEER = 16
READY_SECONDS = 10.0  # a reconnected client's channel reestablishes within this, or its HTLCs go on anyway
DYING_NOTICE_BLOCKS = 144  # a sleeping client of a dying factory is reminded daily
EXPIRY_SOON_BLOCKS = 24  # bLIP-55 lsps5.expiry_soon
MAX_ONIONS_PER_PEER = 8
ONION_HOLD_SECONDS = 60.0
ORDER_STATE_CHANGED = "superscalar.order_state_changed"  # not `lsps5.`: that prefix is bLIP-55's own
CONTINUE: dict[str, Any] = {"result": "continue"}

Post = Callable[[str, bytes, dict[str, str]], int]  # url, body, headers -> HTTP status (raises if unreachable)
Answer = Callable[[dict[str, Any]], None]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:  # bLIP-55: SHOULD NOT follow redirections
        return None


def http_post(url: str, body: bytes, headers: dict[str, str]) -> int:
    """POST with the standard library; the HTTP status (an error status is returned, not raised)."""
    opener = urllib.request.build_opener(_NoRedirect)
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with opener.open(request, timeout=POST_TIMEOUT_SECONDS) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


@dataclass
class _Job:
    peer: str
    url: str
    method: str
    body: str
    attempt: int = 0


@dataclass
class _Held:
    answers: list[Answer] = field(default_factory=list)
    timer: Optional[threading.Timer] = None


class Webhooks:
    def __init__(self, node: ClnNode, store: Store, log: Callable[..., None], connected: Callable[[str], bool],
                 max_webhooks: int = DEFAULT_MAX_WEBHOOKS, allow_http: bool = False, post: Post = http_post,
                 clock: Callable[[], float] = time.time, hold_seconds: float = HOLD_SECONDS,
                 ready: Callable[[str], bool] = lambda peer: True) -> None:
        self.node, self.store, self.log, self.connected = node, store, log, connected
        self.ready = ready  # a peer that reconnected has its channel reestablished (HTLCs can go to it)
        self.max_webhooks, self.allow_http, self.post, self.clock = max_webhooks, allow_http, post, clock
        self.hold_seconds = hold_seconds
        self._lock = threading.Lock()
        self._jobs: "queue.Queue[_Job]" = queue.Queue()
        self._sender: Optional[threading.Thread] = None
        self._last: dict[tuple[str, str], float] = {}  # (peer, method) -> when last posted
        self._held: dict[str, _Held] = {}
        self._onions: dict[str, list[tuple[float, str, str]]] = {}  # peer -> (kept at, path_key, incoming)
        self._peers: Optional[set[str]] = None  # clients with a webhook (read once, then kept in step)
        self.sent: list[dict[str, Any]] = []  # what was posted, newest last (bounded): for `superscalar-webhooks`

    # --- LSPS5 methods (inside the custommsg hook: a datastore write, then the answer) ---

    def webhooks(self, peer: str) -> dict[str, str]:
        doc = self.store.get_doc(DOC_PREFIX + peer)
        return dict(doc["webhooks"]) if doc else {}

    def set_webhook(self, peer: str, params: dict[str, Any]) -> dict[str, Any]:
        app_name, url = check_set_webhook(params, self.allow_http)
        with self._lock:
            hooks = self.webhooks(peer)
            no_change = hooks.get(app_name) == url
            if app_name not in hooks and len(hooks) >= self.max_webhooks:
                raise LspsError(TOO_MANY_WEBHOOKS, "too_many_webhooks", {"max_webhooks": self.max_webhooks})
            if not no_change:
                hooks[app_name] = url
                self.store.put_doc(DOC_PREFIX + peer, {"webhooks": hooks, "updated_at": int(self.clock())})
                self._wakeable_peers().add(peer)
        if not no_change:
            self._enqueue(_Job(peer, url, WEBHOOK_REGISTERED, notification(WEBHOOK_REGISTERED)))
            self.log(f"LSPS5: {peer} registered webhook {app_name!r}")
        return {"num_webhooks": len(hooks), "max_webhooks": self.max_webhooks, "no_change": no_change}

    def list_webhooks(self, peer: str, params: dict[str, Any]) -> dict[str, Any]:
        check_params(params, ())
        return {"app_names": sorted(self.webhooks(peer)), "max_webhooks": self.max_webhooks}

    def remove_webhook(self, peer: str, params: dict[str, Any]) -> dict[str, Any]:
        app_name = check_remove_webhook(params)
        with self._lock:
            hooks = self.webhooks(peer)
            if app_name not in hooks:
                raise LspsError(APP_NAME_NOT_FOUND, "app_name_not_found")
            del hooks[app_name]
            self.store.put_doc(DOC_PREFIX + peer, {"webhooks": hooks, "updated_at": int(self.clock())})
            if not hooks:
                self._wakeable_peers().discard(peer)
        return {}

    # --- waking a client ---

    def wakeable(self, peer: str) -> bool:
        """Has `peer` a webhook, so that it may wake when told? (In memory: asked for every HTLC.)"""
        with self._lock:
            return peer in self._wakeable_peers()

    def _wakeable_peers(self) -> set[str]:
        if self._peers is None:
            self._peers = {name[len(DOC_PREFIX):] for name in self.store.doc_names(DOC_PREFIX)
                           if (self.store.get_doc(name) or {}).get("webhooks")}
        return self._peers

    def notify(self, peer: str, method: str, params: Optional[dict[str, Any]] = None) -> int:
        """Post `method` to every webhook of `peer` if it is not connected; how many posts were queued."""
        hooks = self.webhooks(peer)
        if not hooks or self.connected(peer):
            return 0
        now = self.clock()
        with self._lock:
            if now - self._last.get((peer, method), -RATE_SECONDS) < RATE_SECONDS:
                return 0
            self._last[(peer, method)] = now
        body = notification(method, params)
        for url in hooks.values():
            self._enqueue(_Job(peer, url, method, body))
        self.log(f"LSPS5: waking {peer} ({method}) at {len(hooks)} webhooks")
        return len(hooks)

    def hold(self, peer: str, answer: Answer) -> bool:
        """Hold an HTLC to be forwarded to `peer` while it sleeps (see the module docstring); False if
        it is not ours to hold (connected, no webhook, or enough held already)."""
        if not self.wakeable(peer) or self.connected(peer):
            return False
        with self._lock:
            held = self._held.setdefault(peer, _Held())
            if len(held.answers) >= MAX_HELD_PER_PEER:
                return False
            held.answers.append(answer)
            if held.timer is None:
                held.timer = threading.Timer(self.hold_seconds, self.release, (peer, "it did not wake in time"))
                held.timer.daemon = True
                held.timer.start()
        self.notify(peer, PAYMENT_INCOMING)
        return True

    def hold_onion(self, peer: str, path_key: str, incoming: str) -> bool:
        """Keep an onion message lightningd could not forward to sleeping `peer` (see the module
        docstring); False if it is not ours to keep."""
        if not self.wakeable(peer) or self.connected(peer):
            return False
        now = self.clock()
        with self._lock:
            kept = [o for o in self._onions.get(peer, []) if now - o[0] < ONION_HOLD_SECONDS]
            if len(kept) >= MAX_ONIONS_PER_PEER:
                return False
            kept.append((now, path_key, incoming))
            self._onions[peer] = kept
        self.notify(peer, ONION_MESSAGE_INCOMING)
        return True

    def order_state(self, peer: str, order_id: str, order_state: str) -> None:
        """Called by LSPS1 under its lock (also from the HTLC hook): nothing is read for a client
        without a webhook."""
        if self.wakeable(peer):
            self.notify(peer, ORDER_STATE_CHANGED, {"order_id": order_id, "order_state": order_state})

    def _inject_onions(self, peer: str) -> None:
        """Give lightningd back what was kept for `peer`, once its channel is reestablished (at most
        READY_SECONDS): a wallet answers an invoice request over that channel, and before it is back it
        would try to reach the payer directly (seen in CI: Core Lightning's offers plugin then fails)."""
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline and not self.ready(peer):
            time.sleep(0.1)
        now = self.clock()
        with self._lock:
            onions = [o for o in self._onions.pop(peer, []) if now - o[0] < ONION_HOLD_SECONDS]
        for _, path_key, incoming in onions:
            try:  # lightningd processes it again as if just received: the next peer is connected now
                self.node.rpc.call("injectonionmessage", {"path_key": path_key, "message": incoming})
            except Exception as e:
                self.log(f"LSPS5: an onion message kept for {peer} could not be forwarded: {e!r}", level="info")
        if onions:
            self.log(f"LSPS5: forwarded {len(onions)} onion messages kept for {peer}")

    def on_connect(self, peer: str) -> None:
        """The peer is back: the onion messages kept for it go on, and once its channel is reestablished
        (at most READY_SECONDS), the HTLCs held for it (from a thread: the connect notification must not
        wait)."""
        with self._lock:
            onions = peer in self._onions
            if peer not in self._held and not onions:
                return
        if onions:
            threading.Thread(target=self._inject_onions, args=(peer,), name="superscalar-lsps5-onions",
                             daemon=True).start()
        with self._lock:
            if peer not in self._held:
                return

        def go() -> None:
            deadline = time.monotonic() + READY_SECONDS
            while time.monotonic() < deadline and not self.ready(peer):
                time.sleep(0.1)
            self.release(peer, "it reconnected")
        threading.Thread(target=go, name="superscalar-lsps5-release", daemon=True).start()

    def release(self, peer: str, why: str) -> None:
        with self._lock:
            held = self._held.pop(peer, None)
        if held is None:
            return
        if held.timer is not None:
            held.timer.cancel()
        self.log(f"LSPS5: releasing {len(held.answers)} HTLCs held for {peer}: {why}")
        for answer in held.answers:
            answer(CONTINUE)

    def on_block(self, height: int) -> None:
        """A factory of ours in its dying period: its clients must come online for the rollover (their
        liveness duty). Each sleeping one is told `lsps5.liquidity_management_request` at the dying
        period's first block and once every DYING_NOTICE_BLOCKS after, and `lsps5.expiry_soon` with the
        distribution height as `timeout` (when the factory ends if it was not rolled over) at the first
        block within EXPIRY_SOON_BLOCKS of it. With no webhook registered at all, no record is read."""
        with self._lock:
            if not self._wakeable_peers():
                return
        for fid in self.store.factory_ids():
            rec = self.store.get(fid, "factory")
            if rec is None or rec.get("role") != "lsp" or rec.get("stage") != "funded" or rec.get("close"):
                continue
            params = FactoryParams.deserialize(rec["params"].encode())
            if not params.expiry_height <= height < params.distribution_height:
                continue
            notices: list[tuple[str, Optional[dict[str, Any]]]] = []
            if (height - params.expiry_height) % DYING_NOTICE_BLOCKS == 0:
                notices.append((LIQUIDITY_MANAGEMENT_REQUEST, None))
            if height == max(params.expiry_height, params.distribution_height - EXPIRY_SOON_BLOCKS):
                notices.append((EXPIRY_SOON, {"timeout": params.distribution_height}))
            for c in rec["channels"]:
                for method, notice in notices:
                    self.notify(str(c["peer_id"]), method, notice)

    # --- posting (the sender thread) ---

    def _enqueue(self, job: _Job) -> None:
        with self._lock:
            if self._sender is None or not self._sender.is_alive():
                self._sender = threading.Thread(target=self._run, name="superscalar-lsps5", daemon=True)
                self._sender.start()
        self._jobs.put(job)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                self._deliver(job)
            except Exception as e:  # never let the sender die
                self.log(f"LSPS5: posting {job.method} to {job.peer}: {e!r}", level="unusual")

    def _deliver(self, job: _Job) -> None:
        stamp = timestamp(self.clock())
        signature = str(self.node.rpc.call("signmessage", {"message": message_to_sign(stamp, job.body)})["zbase"])
        headers = {"Content-Type": "application/json", "x-lsps5-timestamp": stamp, "x-lsps5-signature": signature}
        try:
            status = self.post(job.url, job.body.encode(), headers)
        except Exception as e:  # unreachable: tried again, a bounded number of times
            if job.attempt < len(RETRY_DELAYS):
                delay = RETRY_DELAYS[job.attempt]
                job.attempt += 1
                timer = threading.Timer(delay, self._jobs.put, (job,))
                timer.daemon = True
                timer.start()
                self.log(f"LSPS5: {job.method} to {job.peer} failed ({e!r}); again in {delay:.0f} s", level="info")
            else:
                self.log(f"LSPS5: {job.method} to {job.peer} failed ({e!r}); given up", level="unusual")
            return
        if status != 200:
            self.log(f"LSPS5: {job.method} to {job.peer}: the service answered {status}", level="unusual")
        self.sent = [*self.sent[-99:], {"peer": job.peer, "method": job.method, "status": status, "timestamp": stamp}]
