"""BIP-173 / BIP-350 bech32(m) and segwit addresses (vectors from the BIP texts)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from superscalar.bitcoin.address import (
    CHARSET,
    AddressError,
    Encoding,
    address_to_script,
    bech32_decode,
    bech32_encode,
    decode_segwit_address,
    encode_segwit_address,
    segwit_address,
)
from superscalar.bitcoin.errors import BitcoinError

# BIP-173 "Test vectors": valid Bech32 strings.
VALID_BECH32 = [
    "A12UEL5L",
    "a12uel5l",
    "an83characterlonghumanreadablepartthatcontainsthenumber1andtheexcludedcharactersbio1tt5tgs",
    "abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw",
    "11qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqc8247j",
    "split1checkupstagehandshakeupstreamerranterredcaperred2y9e3w",
    "?1ezyfcl",
]
# BIP-350 "Test vectors for Bech32m": valid Bech32m strings.
VALID_BECH32M = [
    "A1LQFN3A",
    "a1lqfn3a",
    "an83characterlonghumanreadablepartthatcontainsthetheexcludedcharactersbioandnumber11sg7hg6",
    "abcdef1l7aum6echk45nj3s0wdvt2fg8x9yrzpqzd3ryx",
    "11" + "l" * 83 + "udsr8",  # 90 characters
    "split1checkupstagehandshakeupstreamerranterredcaperredlc445v",
    "?1v759aa",
]
# BIP-173 "Test vectors": invalid Bech32 strings.
INVALID_BECH32 = [
    "\x201nwldj5",
    "\x7f1axkwrx",
    "\x801eym55h",
    "an84characterslonghumanreadablepartthatcontainsthenumber1andtheexcludedcharactersbio1569pvx",
    "pzry9x0s0muk",
    "1pzry9x0s0muk",
    "x1b4n0q5v",
    "li1dgmt3",
    "de1lg7wt\xff",
    "A1G7SGD8",
    "10a06t8",
    "1qzzfhee",
]
# BIP-350: valid segwit addresses and their scriptPubKeys.
VALID_ADDRESSES = [
    ("BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4", "0014751e76e8199196d454941c45d1b3a323f1433bd6"),
    (
        "tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7",
        "00201863143c14c5166804bd19203356da136c985678cd4d27a1b8c6329604903262",
    ),
    (
        "bc1pw508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7kt5nd6y",
        "5128751e76e8199196d454941c45d1b3a323f1433bd6751e76e8199196d454941c45d1b3a323f1433bd6",
    ),
    ("BC1SW50QGDZ25J", "6002751e"),
    ("bc1zw508d6qejxtdg4y5r3zarvaryvaxxpcs", "5210751e76e8199196d454941c45d1b3a323"),
    (
        "tb1qqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesrxh6hy",
        "0020000000c4a5cad46221b2a187905e5266362b99d5e91c6ce24d165dab93e86433",
    ),
    (
        "tb1pqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesf3hn0c",
        "5120000000c4a5cad46221b2a187905e5266362b99d5e91c6ce24d165dab93e86433",
    ),
    (
        "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0",
        "512079be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798",
    ),
]
# BIP-350: invalid segwit addresses (checked against both "bc" and "tb").
INVALID_ADDRESSES = [
    "tc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq5zuyut",  # invalid HRP
    "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqh2y7hd",  # bech32 for v1
    "tb1z0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqglt7rf",  # bech32 for v2
    "BC1S0XLXVLHEMJA6C4DQV22UAPCTQUPFHLXM9H8Z3K2E72Q4K9HCZ7VQ54WELL",  # bech32 for v16
    "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kemeawh",  # bech32m for v0
    "tb1q0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq24jc47",  # bech32m for v0
    "bc1p38j9r5y49hruaue7wxjce0updqjuyyx0kh56v8s25huc6995vvpql3jow4",  # bad checksum character
    "BC130XLXVLHEMJA6C4DQV22UAPCTQUPFHLXM9H8Z3K2E72Q4K9HCZ7VQ7ZWS8R",  # witness version 17
    "bc1pw5dgrnzv",  # 1-byte program
    "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7v8n0nx0muaewav253zgeav",  # 41 bytes
    "BC1QR508D6QEJXTDG4Y5R3ZARVARYV98GJ9P",  # v0 program of 16 bytes
    "tb1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq47Zagq",  # mixed case
    "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7v07qwwzcrf",  # >4 bits padding
    "tb1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vpggkg4j",  # non-zero padding
    "bc1gmk9yu",  # empty data
]


def test_charset() -> None:
    assert len(CHARSET) == 32 == len(set(CHARSET))


@pytest.mark.parametrize("s", VALID_BECH32)
def test_valid_bech32(s: str) -> None:
    hrp, data, enc = bech32_decode(s)
    assert enc is Encoding.BECH32
    assert bech32_encode(hrp, data, enc) == s.lower()


@pytest.mark.parametrize("s", VALID_BECH32M)
def test_valid_bech32m(s: str) -> None:
    hrp, data, enc = bech32_decode(s)
    assert enc is Encoding.BECH32M
    assert bech32_encode(hrp, data, enc) == s.lower()


@pytest.mark.parametrize("s", INVALID_BECH32)
def test_invalid_bech32(s: str) -> None:
    with pytest.raises(AddressError):
        bech32_decode(s)


@pytest.mark.parametrize(("addr", "spk"), VALID_ADDRESSES)
def test_valid_addresses(addr: str, spk: str) -> None:
    hrp = addr[:2].lower()
    script = address_to_script(addr, hrp)
    assert script.hex() == spk
    assert segwit_address(hrp, script) == addr.lower()
    network = "bitcoin" if hrp == "bc" else "testnet"
    assert address_to_script(addr, network) == script
    # The same address is rejected for another network.
    with pytest.raises(AddressError):
        address_to_script(addr, "regtest")


@pytest.mark.parametrize("addr", INVALID_ADDRESSES)
def test_invalid_addresses(addr: str) -> None:
    for hrp in ("bc", "tb"):
        with pytest.raises(AddressError):
            decode_segwit_address(hrp, addr)


def test_networks() -> None:
    spk = bytes.fromhex("512079be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")
    for network, prefix in [("bitcoin", "bc1p"), ("mainnet", "bc1p"), ("testnet", "tb1p"),
                            ("signet", "tb1p"), ("regtest", "bcrt1p")]:
        addr = segwit_address(network, spk)
        assert addr.startswith(prefix)
        assert address_to_script(addr, network) == spk
    with pytest.raises(BitcoinError):
        segwit_address("bc", bytes.fromhex("76a914751e76e8199196d454941c45d1b3a323f1433bd688ac"))
    with pytest.raises(BitcoinError):
        encode_segwit_address("bc", 0, bytes(21))
    with pytest.raises(BitcoinError):
        encode_segwit_address("bc", 17, bytes(32))


_hrps = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20).map(
    str.lower
)


@given(_hrps, st.lists(st.integers(0, 31), max_size=60), st.sampled_from(list(Encoding)))
def test_bech32_roundtrip(hrp: str, data: list[int], enc: Encoding) -> None:
    s = bech32_encode(hrp, data, enc)
    assert bech32_decode(s) == (hrp, data, enc)
    assert bech32_decode(s.upper()) == (hrp, data, enc)


@given(st.sampled_from(["bc", "tb", "bcrt"]), st.integers(0, 16), st.data())
def test_segwit_address_roundtrip(hrp: str, version: int, data: st.DataObject) -> None:
    size = data.draw(st.sampled_from([20, 32]) if version == 0 else st.integers(2, 40))
    program = data.draw(st.binary(min_size=size, max_size=size))
    addr = encode_segwit_address(hrp, version, program)
    assert decode_segwit_address(hrp, addr) == (version, program)


@given(st.text(max_size=100), st.sampled_from(["bc", "tb", "bcrt", "regtest"]))
@settings(max_examples=500)
def test_random_text_only_address_error(text: str, network: str) -> None:
    try:
        address_to_script(text, network)
    except AddressError:
        pass


@given(st.sampled_from([a for a, _ in VALID_ADDRESSES]), st.data())
@settings(max_examples=300)
def test_mutated_addresses(addr: str, data: st.DataObject) -> None:
    pos = data.draw(st.integers(0, len(addr) - 1))
    ch = data.draw(st.sampled_from(CHARSET + CHARSET.upper() + "1bio!"))
    mutated = addr[:pos] + ch + addr[pos + 1 :]
    try:
        address_to_script(mutated, addr[:2].lower())
    except AddressError:
        return
    # BIP-173: any single substitution is detected by the checksum.
    assert mutated.lower() == addr.lower()
