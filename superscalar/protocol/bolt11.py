"""BOLT-11 invoices, only as far as a client of an LSP needs: replace an invoice's route hints (`r`
fields) by single-hop hints through the LSP ("3. Invoice Generation" of bLIP-52, and a factory
client's invoices made before it knows its LSP from gossip: `invoices.py`). lightningd's `invoice`
command cannot put a hint through a channel that does not exist yet, nor through a peer it cannot place
in the graph; `createinvoice` re-signs an invoice string it is given, so the client makes a normal
invoice, rewrites its `r` here, and has lightningd sign the result. Pure: strings in, strings out; the
signature is left for lightningd to replace."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)  # BIP-173 "Checksum"
TIMESTAMP_WORDS = 7  # BOLT-11 "Data Part": 35-bit timestamp
SIGNATURE_WORDS = 104  # 520 bits: 64-byte signature and recovery id
CHECKSUM_WORDS = 6
TAG_R = 3  # BOLT-11 "Tagged Fields": r, routing information
TAG_C = 24  # c, min_final_cltv_expiry_delta
TAG_F = 9  # f, fallback on-chain address


class Bolt11Error(ValueError):
    """Not an invoice string this module can rewrite."""


def _polymod(values: list[int]) -> int:
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            chk ^= _GENERATOR[i] if (top >> i) & 1 else 0
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(x) >> 5 for x in hrp] + [0] + [ord(x) & 31 for x in hrp]


def bech32_decode(text: str) -> tuple[str, list[int]]:
    """(human-readable part, data words without the checksum); BOLT-11 lifts bech32's 90-character limit."""
    if text.lower() != text and text.upper() != text:
        raise Bolt11Error("mixed case")
    text = text.lower()
    pos = text.rfind("1")
    if pos < 1 or pos + 7 > len(text) or any(c not in CHARSET for c in text[pos + 1:]):
        raise Bolt11Error("not bech32")
    hrp, words = text[:pos], [CHARSET.index(c) for c in text[pos + 1:]]
    if _polymod(_hrp_expand(hrp) + words) != 1:
        raise Bolt11Error("bad bech32 checksum")
    return hrp, words[:-CHECKSUM_WORDS]


def bech32_encode(hrp: str, words: list[int]) -> str:
    mod = _polymod(_hrp_expand(hrp) + words + [0] * CHECKSUM_WORDS) ^ 1
    checksum = [(mod >> 5 * (5 - i)) & 31 for i in range(CHECKSUM_WORDS)]
    return hrp + "1" + "".join(CHARSET[w] for w in words + checksum)


def to_words(data: bytes) -> list[int]:
    """Bytes as 5-bit words, the last padded with zero bits."""
    acc, bits, out = 0, 0, []
    for byte in data:
        acc, bits = acc << 8 | byte, bits + 8
        while bits >= 5:
            bits -= 5
            out.append(acc >> bits & 31)
    if bits:
        out.append(acc << (5 - bits) & 31)
    return out


def from_words(words: list[int]) -> bytes:
    acc, bits, out = 0, 0, bytearray()
    for w in words:
        acc, bits = acc << 5 | w, bits + 5
        if bits >= 8:
            bits -= 8
            out.append(acc >> bits & 0xFF)
    return bytes(out)


@dataclass(frozen=True, slots=True)
class RouteHop:
    """One hop of an `r` field: the LSP, the JIT scid, zero fees, the LSP's CLTV delta (bLIP-52)."""

    pubkey: bytes
    short_channel_id: int
    fee_base_msat: int
    fee_proportional_millionths: int
    cltv_expiry_delta: int

    def serialize(self) -> bytes:
        assert len(self.pubkey) == 33
        return (self.pubkey + self.short_channel_id.to_bytes(8, "big") + self.fee_base_msat.to_bytes(4, "big")
                + self.fee_proportional_millionths.to_bytes(4, "big") + self.cltv_expiry_delta.to_bytes(2, "big"))

    @classmethod
    def deserialize(cls, data: bytes) -> "RouteHop":
        if len(data) != 51:
            raise Bolt11Error("a route hop is 51 bytes")
        return cls(data[:33], int.from_bytes(data[33:41], "big"), int.from_bytes(data[41:45], "big"),
                   int.from_bytes(data[45:49], "big"), int.from_bytes(data[49:51], "big"))


def tagged_fields(invoice: str) -> tuple[str, list[int], list[tuple[int, list[int]]], list[int]]:
    """(hrp, timestamp words, [(tag, data words)], signature words)."""
    hrp, words = bech32_decode(invoice)
    if len(words) < TIMESTAMP_WORDS + SIGNATURE_WORDS:
        raise Bolt11Error("too short for an invoice")
    body, signature = words[:-SIGNATURE_WORDS], words[-SIGNATURE_WORDS:]
    fields, pos = [], TIMESTAMP_WORDS
    while pos < len(body):
        if pos + 3 > len(body):
            raise Bolt11Error("truncated tagged field")
        tag, length = body[pos], body[pos + 1] << 5 | body[pos + 2]
        if pos + 3 + length > len(body):
            raise Bolt11Error("truncated tagged field")
        fields.append((tag, body[pos + 3:pos + 3 + length]))
        pos += 3 + length
    return hrp, body[:TIMESTAMP_WORDS], fields, signature


def route_hints(invoice: str) -> list[list[RouteHop]]:
    _, _, fields, _ = tagged_fields(invoice)
    out = []
    for tag, data in fields:
        if tag == TAG_R:
            raw = from_words(data)
            out.append([RouteHop.deserialize(raw[i:i + 51]) for i in range(0, len(raw) - len(raw) % 51, 51)])
    return out


def with_routes(invoice: str, routes: Sequence[Sequence[RouteHop]]) -> str:
    """`invoice` with its `r` fields replaced by one per route of `routes`; the old signature stays (it
    no longer matches: lightningd's `createinvoice` signs the result)."""
    hrp, timestamp, fields, signature = tagged_fields(invoice)
    hints = [(TAG_R, to_words(b"".join(hop.serialize() for hop in route))) for route in routes]
    words = list(timestamp)
    for tag, data in [f for f in fields if f[0] != TAG_R] + hints:
        if len(data) >= 1 << 10:
            raise Bolt11Error("a tagged field is at most 1023 words")
        words += [tag, len(data) >> 5, len(data) & 31, *data]
    return bech32_encode(hrp, words + signature)


def with_route_hint(invoice: str, hop: RouteHop) -> str:
    """`invoice` with its `r` fields replaced by the single hint `[hop]` (see `with_routes`)."""
    return with_routes(invoice, [[hop]])


def has_field(invoice: str, tag: int) -> bool:
    return any(t == tag for t, _ in tagged_fields(invoice)[2])


# BOLT-11 "Human-Readable Part": the amount's multiplier, as msat per unit of the amount (1 BTC is
# 10^11 msat); `p` is a tenth of an msat.
_MSAT_PER_UNIT = {"": 100_000_000_000, "m": 100_000_000, "u": 100_000, "n": 100}


def amount_msat(invoice: str) -> Optional[int]:
    """The invoice's amount in msat, or None if it has none (any amount)."""
    hrp, _ = bech32_decode(invoice)
    if not hrp.startswith("ln"):
        raise Bolt11Error("not a BOLT-11 human-readable part")
    rest = hrp[2:]
    start = next((i for i, c in enumerate(rest) if c.isdigit()), None)
    if start is None:
        return None
    digits, multiplier = rest[start:], ""
    if digits[-1] in "munp":
        digits, multiplier = digits[:-1], digits[-1]
    if not digits.isdigit() or (len(digits) > 1 and digits[0] == "0"):
        raise Bolt11Error(f"bad amount in {hrp!r}")
    if multiplier == "p":
        if int(digits) % 10:
            raise Bolt11Error("a pico-bitcoin amount must be a whole msat")
        return int(digits) // 10
    return int(digits) * _MSAT_PER_UNIT[multiplier]


TAG_FEATURES = 5  # BOLT-11 "Tagged Fields": 9, feature bits
BASIC_MPP_BITS = (16, 17)  # BOLT-9: basic_mpp


def without_features(invoice: str, bits: tuple[int, ...] = BASIC_MPP_BITS) -> str:
    """`invoice` with feature `bits` cleared (bLIP-52, no-MPP+var-invoice: "disable the basic_mpp
    feature"); its signature is left for lightningd to replace, like `with_route_hint`'s."""
    hrp, timestamp, fields, signature = tagged_fields(invoice)
    words = list(timestamp)
    for tag, data in fields:
        if tag == TAG_FEATURES:
            value = 0
            for w in data:
                value = value << 5 | w
            for bit in bits:
                value &= ~(1 << bit)
            data = [(value >> 5 * (len(data) - 1 - i)) & 31 for i in range(len(data))]
            while data and data[0] == 0:
                data = data[1:]
        words += [tag, len(data) >> 5, len(data) & 31, *data]
    return bech32_encode(hrp, words + signature)


def features(invoice: str) -> int:
    value = 0
    for tag, data in tagged_fields(invoice)[2]:
        if tag == TAG_FEATURES:
            for w in data:
                value = value << 5 | w
    return value
