"""A watchtower for other nodes' channels (`superscalar-helper=true`).

A client that names this node among its helpers sends it, on each revocation of its counterparty's
commitment, that commitment's penalty transaction sealed under the commitment's txid
(crypto/tower_blob.py), indexed by the txid's first 16 bytes. The helper keeps each blob in lightningd's
datastore (``["superscalar", "tower", <client>, <locator>]``), bounded per client in count and size
and in the number of clients. Every block, it looks up each transaction's txid: a revoked commitment
of a guarded channel opens its blob, and the penalty inside goes out through lightningd (`sendpsbt`),
again every block until it confirms or RESPONSE_BLOCKS passed. What it learns before that block is a
locator and sealed bytes; what it sends is the client's own penalty, which pays the client.

The bounty the issue names is not taken here: lightningd signs the penalty (SIGHASH_ALL) over one
output to the client's wallet, and the revocation secret it would take to sign another stays in the
client's hsmd. See docs/helper.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol

from ..bitcoin.tx import Tx
from ..chain.blocks import Blocks, BlockView
from ..crypto.tower_blob import LOCATOR_BYTES, unseal
from ..protocol.wire import TowerAnswer, TowerStore

ROOT = ["superscalar", "tower"]
STATE_KEY = ["superscalar", "tower-state"]  # scanned height and the responses, one document
SCAN_LIMIT = 144  # blocks read back after a pause (a day); older commitments are the client's own job
RESPONSE_BLOCKS = 2016  # a penalty is sent again each block until it confirms, or this many blocks
RESPONSES_KEPT = 256  # confirmed or expired responses kept for `superscalar-getinfo`


@dataclass(frozen=True)
class TowerLimits:
    """What one client may make a helper keep: blobs, bytes per blob; and how many clients it serves."""

    blobs_per_client: int = 10_000
    blob_bytes: int = 1_024  # a penalty is one input and one output: ~200 bytes, sealed +16
    clients: int = 1_000


class TowerNode(Protocol):
    def datastore_get(self, key: list[str]) -> Optional[tuple[str, int]]: ...
    def datastore_put(self, key: list[str], value: str, generation: Optional[int]) -> int: ...
    def datastore_list(self, prefix: list[str]) -> list[list[str]]: ...
    def datastore_values(self, prefix: list[str]) -> list[tuple[list[str], str]]: ...
    def broadcast(self, tx_hex: str, prevouts: list[tuple[int, bytes]]) -> Optional[str]: ...


class Tower:
    def __init__(self, node: TowerNode, blocks: Blocks, limits: TowerLimits, log: Callable[..., None]) -> None:
        self.node, self.blocks, self.limits, self.log = node, blocks, limits, log
        # locator -> {client: (channel id hex, blob)}; per client: how many it stored
        self._blobs: Optional[dict[bytes, dict[str, tuple[str, bytes]]]] = None
        self._counts: dict[str, int] = {}
        self._state: Optional[dict[str, Any]] = None
        self._generation: Optional[int] = None

    # --- what clients send ---

    def keep(self, client: str, msg: TowerStore) -> TowerAnswer:
        """Keep `msg`'s blob for `client`, within the bounds; the answer says so or why not."""
        blobs = self._load()
        def answer(accepted: bool, reason: Optional[str] = None) -> TowerAnswer:
            return TowerAnswer(msg.factory_id, msg.session_id, int(accepted), self._counts.get(client, 0), reason)
        if len(msg.locator) != LOCATOR_BYTES:
            return answer(False, "locator must be 16 bytes")
        if len(msg.blob) > self.limits.blob_bytes:
            return answer(False, f"blob of {len(msg.blob)} bytes is over the limit of {self.limits.blob_bytes}")
        held = blobs.get(msg.locator, {})
        if client in held:
            same = held[client] == (msg.factory_id.hex(), msg.blob)
            return answer(same, None if same else "another blob is kept under this locator")
        if client not in self._counts and len(self._counts) >= self.limits.clients:
            return answer(False, f"this helper serves {self.limits.clients} clients already")
        if self._counts.get(client, 0) >= self.limits.blobs_per_client:
            return answer(False, f"{self.limits.blobs_per_client} blobs kept for this client already")
        value = json.dumps({"channel_id": msg.factory_id.hex(), "blob": msg.blob.hex()})
        try:
            self.node.datastore_put([*ROOT, client, msg.locator.hex()], value, None)
        except OSError:
            raise
        except Exception as e:  # kept by an earlier request whose answer was lost: the same bytes
            found = self.node.datastore_get([*ROOT, client, msg.locator.hex()])
            if found is None or found[0] != value:
                return answer(False, f"not kept: {e}")
            return answer(True)
        blobs.setdefault(msg.locator, {})[client] = (msg.factory_id.hex(), msg.blob)
        self._counts[client] = self._counts.get(client, 0) + 1
        return answer(True)

    def _load(self) -> dict[bytes, dict[str, tuple[str, bytes]]]:
        if self._blobs is None:
            blobs: dict[bytes, dict[str, tuple[str, bytes]]] = {}
            counts: dict[str, int] = {}
            for client in sorted({k[2] for k in self.node.datastore_list(ROOT) if len(k) > 2}):
                for full, text in self.node.datastore_values([*ROOT, client]):
                    data = json.loads(text)
                    blobs.setdefault(bytes.fromhex(full[3]), {})[client] = (str(data["channel_id"]),
                                                                          bytes.fromhex(data["blob"]))
                    counts[client] = counts.get(client, 0) + 1
            self._blobs, self._counts = blobs, counts
        return self._blobs

    # --- every block ---

    def on_block(self, height: int) -> None:
        blobs = self._load()
        state = self._read_state()
        if not blobs and not state["responses"]:
            return
        scanned = state.get("scanned")
        if scanned is None or height <= scanned:
            heights = range(height, height + 1)
        else:
            heights = range(max(scanned + 1, height - SCAN_LIMIT + 1), height + 1)
        for h in heights:
            view = self.blocks.at(h)
            for txid in view.by_txid:
                for client, (channel_id, blob) in blobs.get(bytes.fromhex(txid)[:LOCATOR_BYTES], {}).items():
                    self._respond(state, client, channel_id, txid, blob, view)
            for response in state["responses"].values():
                if response["confirmed_height"] is None and response["penalty_txid"] in view.by_txid:
                    response["confirmed_height"] = h
                    self.log(f"helper: the penalty {response['penalty_txid']} for client {response['client']} "
                             f"confirmed at height {h}")
        for response in state["responses"].values():
            if response["confirmed_height"] is None and response["seen_height"] + RESPONSE_BLOCKS > height \
                    and response["sent_height"] < height:
                self._send(response, height)
        state["scanned"] = height
        done = sorted((r for r in state["responses"].values() if r["confirmed_height"] is not None
                       or r["seen_height"] + RESPONSE_BLOCKS <= height), key=lambda r: r["seen_height"])
        for old in done[:max(0, len(done) - RESPONSES_KEPT)]:
            del state["responses"][old["penalty_txid"]]
        self._write_state(state)

    def _respond(self, state: dict[str, Any], client: str, channel_id: str, txid: str, blob: bytes,
                 view: BlockView) -> None:
        penalty = unseal(txid, blob)
        if penalty is None:
            self.log(f"helper: client {client}'s blob for commitment {txid} does not open under its txid "
                     "(a wrong blob): nothing sent", level="unusual")
            return
        try:
            tx = Tx.deserialize(penalty)
        except Exception:
            self.log(f"helper: client {client}'s blob for commitment {txid} is not a transaction", level="unusual")
            return
        commitment = view.by_txid[txid]
        if not tx.inputs or any(i.prevout.txid_hex != txid or i.prevout.vout >= len(commitment.outputs)
                                for i in tx.inputs):
            self.log(f"helper: client {client}'s penalty {tx.txid} does not spend commitment {txid} alone: "
                     "nothing sent", level="unusual")
            return
        if tx.txid in state["responses"]:
            return
        prevouts = [[commitment.outputs[i.prevout.vout].value, commitment.outputs[i.prevout.vout].script_pubkey.hex()]
                    for i in tx.inputs]
        response = {"client": client, "channel_id": channel_id, "commitment_txid": txid, "penalty_txid": tx.txid,
                    "tx": tx.to_hex(), "prevouts": prevouts, "seen_height": view.height, "sent_height": -1,
                    "confirmed_height": None, "error": None}
        state["responses"][tx.txid] = response
        self.log(f"helper: revoked commitment {txid} of channel {channel_id} (client {client}) at height "
                 f"{view.height}: publishing its penalty {tx.txid}", level="unusual")
        self._send(response, view.height)

    def _send(self, response: dict[str, Any], height: int) -> None:
        prevouts = [(int(v), bytes.fromhex(s)) for v, s in response["prevouts"]]
        error = self.node.broadcast(response["tx"], prevouts)
        response["sent_height"], response["error"] = height, error
        if error is not None:
            self.log(f"helper: penalty {response['penalty_txid']} refused: {error}", level="info")

    def _read_state(self) -> dict[str, Any]:
        if self._state is None:
            found = self.node.datastore_get(STATE_KEY)
            self._state = json.loads(found[0]) if found else {"scanned": None, "responses": {}}
            self._generation = found[1] if found else None
        return self._state

    def _write_state(self, state: dict[str, Any]) -> None:
        try:
            self._generation = self.node.datastore_put(STATE_KEY, json.dumps(state, sort_keys=True), self._generation)
        except OSError:
            raise
        except Exception:  # the generation moved: read again next block
            self._state = None

    def info(self) -> dict[str, Any]:
        self._load()
        state = self._read_state()
        return {"clients": len(self._counts), "blobs": sum(self._counts.values()),
                "penalties": [{k: r[k] for k in ("client", "channel_id", "commitment_txid", "penalty_txid",
                                                 "seen_height", "confirmed_height", "error")}
                              for r in state["responses"].values()]}
