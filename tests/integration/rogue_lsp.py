"""A dishonest LSP that is not Core Lightning: a bare Lightning peer (BOLT-8 transport from pyln-proto,
BOLT-2/3 messages and the initial commitment written out here) that runs superscalar's ceremony with
a client and then opens the client's leaf channel on a leaf output paying a script of its own.

Stock lightningd cannot be made to do this (its `fundchannel_complete` refuses a funding transaction
without the channel's 2-of-2 output), which is exactly why a client must check the script itself.
Only what the attack needs is implemented: `init`, `ping`/`pong`, the ceremony's custom messages,
`open_channel` … `channel_ready` with a valid signature on the client's first commitment (option_anchors,
static_remotekey, zero-conf, scid alias). Test-only code.
"""

from __future__ import annotations

import hashlib
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional

from coincurve import PrivateKey, PublicKey
from pyln.proto.primitives import PrivateKey as WirePrivateKey
from pyln.proto.wire import connect

from superscalar.bitcoin.script import funding_script_2of2, p2wsh_script
from superscalar.bitcoin.sighash import segwit_v0_sighash
from superscalar.bitcoin.tx import OutPoint, Tx, TxIn, TxOut
from superscalar.factory.graph import Factory, FactoryScripts
from superscalar.factory.params import ClientTerms, FactoryParams
from superscalar.protocol.ceremony import Completed, Coordinator, Failed, Send
from superscalar.protocol.rounds import construction_round
from superscalar.protocol.wire import (
    SUPERSCALAR_MSG_TYPE,
    Accept,
    Fragment,
    Invite,
    Message,
    Reassembler,
    decode_message,
    split_message,
)
from superscalar.crypto import musig2

# BOLT-1 / BOLT-2 message types.
INIT, ERROR, WARNING, PING, PONG = 16, 17, 1, 18, 19
OPEN_CHANNEL, ACCEPT_CHANNEL, FUNDING_CREATED, FUNDING_SIGNED, CHANNEL_READY = 32, 33, 34, 35, 36
REGTEST_CHAIN = bytes.fromhex("06226e46111a0b59caaf126043eb5bbf28c34f3a5e332a1fc7b2b73cf188910f")
# BOLT-9 feature bits of the channel type: option_static_remotekey, option_anchors, option_scid_alias, option_zeroconf.
CHANNEL_TYPE_BITS = (12, 22, 46, 50)
ANCHOR_SAT = 330  # BOLT-3 anchor output
COMMIT_WEIGHT_ANCHORS = 1124  # BOLT-3 "Fee Calculation", option_anchors, no HTLCs
FEERATE_PER_KW = 2500
TO_SELF_DELAY = 144


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def features(bits: tuple[int, ...]) -> bytes:
    n = max(bits) // 8 + 1
    value = sum(1 << b for b in bits)
    return value.to_bytes(n, "big")


def tlv(records: list[tuple[int, bytes]]) -> bytes:
    return b"".join(bytes([t, len(v)]) + v for t, v in records)  # types and lengths below 253


def point(secret: bytes) -> bytes:
    return PrivateKey(secret).public_key.format()


def derive_pubkey(basepoint: bytes, per_commitment_point: bytes) -> bytes:
    """BOLT-3 "localpubkey … derivation": basepoint + SHA256(per_commitment_point || basepoint)·G."""
    tweak = sha256(per_commitment_point + basepoint)
    return PublicKey(basepoint).add(tweak).format()


def derive_revocation_pubkey(revocation_basepoint: bytes, per_commitment_point: bytes) -> bytes:
    """BOLT-3 "revocationpubkey Derivation"."""
    a = PublicKey(revocation_basepoint).multiply(sha256(revocation_basepoint + per_commitment_point))
    b = PublicKey(per_commitment_point).multiply(sha256(per_commitment_point + revocation_basepoint))
    return PublicKey.combine_keys([a, b]).format()


def to_local_script(revocation_pubkey: bytes, delay: int, delayed_pubkey: bytes) -> bytes:
    """BOLT-3 to_local: OP_IF <revocationpubkey> OP_ELSE <to_self_delay> OP_CSV OP_DROP <local_delayedpubkey> OP_ENDIF OP_CHECKSIG."""
    d = delay.to_bytes(2, "little").rstrip(b"\x00") if delay > 0x7f else bytes([delay])
    if d[-1] & 0x80:
        d += b"\x00"
    return (b"\x63" + b"\x21" + revocation_pubkey + b"\x67" + bytes([len(d)]) + d + b"\xb2\x75"
            + b"\x21" + delayed_pubkey + b"\x68\xac")


def to_remote_anchor_script(payment_pubkey: bytes) -> bytes:
    """BOLT-3 to_remote with option_anchors: <remotepubkey> OP_CHECKSIGVERIFY 1 OP_CSV."""
    return b"\x21" + payment_pubkey + b"\xad\x51\xb2"


def anchor_script(funding_pubkey: bytes) -> bytes:
    """BOLT-3 anchor: <funding_pubkey> OP_CHECKSIG OP_IFDUP OP_NOTIF OP_16 OP_CSV OP_ENDIF."""
    return b"\x21" + funding_pubkey + b"\xac\x73\x64\x60\xb2\x68"


@dataclass
class Keys:
    funding: bytes
    revocation: bytes
    payment: bytes
    delayed: bytes
    htlc: bytes
    shaseed: bytes

    @classmethod
    def from_seed(cls, seed: bytes) -> "Keys":
        return cls(*(sha256(seed + bytes([i])) for i in range(6)))

    def per_commitment_secret(self, n: int) -> bytes:
        """BOLT-3 "Per-commitment Secret Requirements": generate_from_seed(seed, 2^48 - 1 - n)."""
        index = (1 << 48) - 1 - n
        p = bytearray(self.shaseed)
        for b in range(47, -1, -1):
            if index >> b & 1:
                p[b // 8] ^= 1 << (b % 8)
                p = bytearray(sha256(bytes(p)))
        return bytes(p)


class RogueLsp:
    """Connects to `client` (host, port, node id) and plays a dishonest LSP for one factory."""

    def __init__(self, node_secret: bytes, client_id: str, host: str, port: int, log: Callable[[str], None] = print):
        self.node_secret = node_secret
        self.node_id = point(node_secret).hex()
        self.client_id = client_id
        self.conn = connect(WirePrivateKey(node_secret), bytes.fromhex(client_id), host, port)
        self.log = log
        self.reassembler = Reassembler()
        self.inbox: list[tuple[int, bytes]] = []
        self.stop = threading.Event()
        self.lock = threading.Condition()
        self.reader = threading.Thread(target=self._read_loop, daemon=True)

    # --- transport ---

    def send(self, msg_type: int, body: bytes) -> None:
        self.conn.send_message(struct.pack("!H", msg_type) + body)

    def _read_loop(self) -> None:
        while not self.stop.is_set():
            try:
                raw = self.conn.read_message()
            except (ValueError, OSError):
                return
            t = struct.unpack("!H", raw[:2])[0]
            if t == PING:
                num_pong = struct.unpack("!H", raw[2:4])[0]
                self.send(PONG, struct.pack("!H", num_pong) + bytes(num_pong))
                continue
            if t in (ERROR, WARNING):
                self.log(f"client sent {'error' if t == ERROR else 'warning'}: {raw[36:]!r}")
            with self.lock:
                self.inbox.append((t, raw[2:]))
                self.lock.notify_all()

    def expect(self, wanted: int, timeout: float = 30.0) -> bytes:
        with self.lock:
            def found() -> Optional[int]:
                return next((i for i, (t, _) in enumerate(self.inbox) if t == wanted), None)
            if not self.lock.wait_for(lambda: found() is not None, timeout):
                raise TimeoutError(f"no message of type {wanted}; got {[t for t, _ in self.inbox]}")
            i = found()
            assert i is not None
            return self.inbox.pop(i)[1]

    def expect_ceremony(self, timeout: float = 30.0) -> Message:
        """The next whole ceremony message from the client (fragments reassembled)."""
        with self.lock:
            while True:
                i = next((i for i, (t, _) in enumerate(self.inbox) if t == SUPERSCALAR_MSG_TYPE), None)
                if i is None:
                    if not self.lock.wait(timeout):
                        raise TimeoutError("no ceremony message")
                    continue
                t, body = self.inbox.pop(i)
                msg: Optional[Message] = decode_message(struct.pack("!H", t) + body)
                if isinstance(msg, Fragment):
                    msg = self.reassembler.add(msg)
                if msg is not None:
                    return msg

    def send_ceremony(self, msg: Message) -> None:
        for payload in split_message(msg):
            self.conn.send_message(payload)

    # --- the attack ---

    def handshake(self) -> None:
        self.reader.start()
        their_init = self.expect(INIT)
        gflen = struct.unpack("!H", their_init[:2])[0]
        flen = struct.unpack("!H", their_init[2 + gflen:4 + gflen])[0]
        theirs = their_init[4 + gflen:4 + gflen + flen]
        self.send(INIT, struct.pack("!H", 0) + struct.pack("!H", len(theirs)) + theirs)  # mirror its features

    def run(self, params: FactoryParams, balance_sat: int, inbound_sat: int) -> dict[str, Any]:
        """Invite, open, sign the tree with a foreign leaf script, complete the channel on it."""
        capacity = balance_sat + inbound_sat
        fid, invite_id = sha256(b"rogue factory"), sha256(b"rogue invite")
        self.send_ceremony(Invite(fid, invite_id, params.serialize(), balance_sat, inbound_sat))
        accept = self.expect_ceremony()
        assert isinstance(accept, Accept), accept

        ours = Keys.from_seed(self.node_secret + b"channel")
        tmp_id = sha256(b"rogue temporary channel id")
        channel_type = features(CHANNEL_TYPE_BITS)
        self.send(OPEN_CHANNEL, REGTEST_CHAIN + tmp_id + struct.pack(
            "!QQQQQQIHH", capacity, balance_sat * 1000, 546, capacity * 1000, capacity // 100, 1,
            FEERATE_PER_KW, TO_SELF_DELAY, 483)
            + point(ours.funding) + point(ours.revocation) + point(ours.payment) + point(ours.delayed)
            + point(ours.htlc) + point(ours.per_commitment_secret(0)) + b"\x00"
            + tlv([(0, b""), (1, channel_type)]))
        acc = self.expect(ACCEPT_CHANNEL)
        off = 32 + 8 + 8 + 8 + 8 + 4 + 2 + 2  # temporary_channel_id, dust, max_in_flight, reserve, htlc_min, min_depth, to_self_delay, max_accepted
        their_dust = struct.unpack("!Q", acc[32:40])[0]
        names = ("funding", "revocation", "payment", "delayed", "htlc", "first_point")
        their = {n: acc[off + 33 * i:off + 33 * (i + 1)] for i, n in enumerate(names)}

        # The tree, with the client's channel output paying a 2-of-2 of two keys of the LSP's.
        fake_script = p2wsh_script(funding_script_2of2(point(sha256(b"mine 1")), point(sha256(b"mine 2"))))
        lsp_sk = sha256(self.node_secret + b"factory")
        factory = Factory(params, [ClientTerms(balance_sat, inbound_sat)],
                          [musig2.individual_pk(lsp_sk), accept.pubkey],
                          FactoryScripts((fake_script,), (accept.payout_script,), p2wsh_script(b"\x51")))
        funding = OutPoint(sha256(b"a funding transaction never broadcast"), 0)
        graph = factory.graph(funding)
        coordinator = Coordinator(construction_round(factory, graph, fid, sha256(b"rogue session")), lsp_sk)
        outcome = self._ceremony(coordinator)
        assert isinstance(outcome, Completed), outcome

        leaf = graph.states[factory.topology.leaf_of_client[0]].tx
        vout = leaf.outputs.index(TxOut(capacity, fake_script))
        commitment = self._client_commitment(leaf.txid_bytes, vout, capacity, balance_sat, ours, their, their_dust)
        wscript = funding_script_2of2(point(ours.funding), their["funding"])
        digest = segwit_v0_sighash(commitment, 0, wscript, capacity, 1)
        sig = PrivateKey(ours.funding).sign_recoverable(digest, hasher=None)[:64]
        self.send(FUNDING_CREATED, tmp_id + leaf.txid_bytes + struct.pack("!H", vout) + sig)
        signed = self.expect(FUNDING_SIGNED)
        channel_id = bytes(a ^ b for a, b in zip(leaf.txid_bytes, bytes(30) + struct.pack("!H", vout)))
        assert signed[:32] == channel_id
        self.expect(CHANNEL_READY)
        alias = struct.pack("!Q", (1 << 40) | (7 << 16) | 1)
        self.send(CHANNEL_READY, channel_id + point(ours.per_commitment_secret(1)) + tlv([(1, alias)]))
        return {"factory_id": fid.hex(), "leaf_outpoint": f"{leaf.txid}:{vout}", "leaf_script": fake_script.hex(),
                "channel_id": channel_id.hex()}

    def _ceremony(self, coordinator: Coordinator) -> Completed | Failed:
        pending = coordinator.start()
        while True:
            for a in pending:
                if isinstance(a, Send):
                    self.send_ceremony(a.message)
                elif isinstance(a, (Completed, Failed)):
                    return a
            pending = coordinator.receive(0, self.expect_ceremony())

    def _client_commitment(self, funding_txid: bytes, vout: int, capacity: int, balance_sat: int, ours: Keys,
                           their: dict[str, bytes], their_dust: int) -> Tx:
        """The client's first commitment transaction (BOLT-3), which the funder signs in funding_created."""
        per_commitment = their["first_point"]
        fee = FEERATE_PER_KW * COMMIT_WEIGHT_ANCHORS // 1000
        to_local = balance_sat  # the client's side: what we pushed
        to_remote = capacity - balance_sat - fee - 2 * ANCHOR_SAT  # the funder pays fee and anchors
        outputs = []
        if to_local >= their_dust:
            script = to_local_script(derive_revocation_pubkey(point(ours.revocation), per_commitment), TO_SELF_DELAY,
                                     derive_pubkey(their["delayed"], per_commitment))
            outputs += [TxOut(to_local, p2wsh_script(script)), TxOut(ANCHOR_SAT, p2wsh_script(anchor_script(their["funding"])))]
        if to_remote >= their_dust:
            outputs += [TxOut(to_remote, p2wsh_script(to_remote_anchor_script(point(ours.payment)))),
                        TxOut(ANCHOR_SAT, p2wsh_script(anchor_script(point(ours.funding))))]
        outputs.sort(key=lambda o: (o.value, o.script_pubkey))  # BIP-69
        obscure = int.from_bytes(sha256(point(ours.payment) + their["payment"])[-6:], "big")  # commitment 0
        tx = Tx(2, (TxIn(OutPoint(funding_txid, vout), sequence=(0x80 << 24) | (obscure >> 24)),),
                tuple(outputs), (0x20 << 24) | (obscure & 0xFFFFFF))
        return tx

    def close(self) -> None:
        self.stop.set()
        try:
            self.conn.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
