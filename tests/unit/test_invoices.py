"""BOLT-11 `r` fields and amounts."""

from __future__ import annotations

import pytest

from superscalar.protocol.bolt11 import (Bolt11Error, RouteHop, amount_msat, bech32_decode, bech32_encode,
                                         route_hints, tagged_fields, with_route_hint, with_routes)
from superscalar.protocol.lsps0 import parse_scid

from .test_htlc_index import LSP_ID
from .test_lsps2 import COFFEE

LSP = bytes.fromhex(LSP_ID)


# --- BOLT-11 ---

def test_routes_replace_every_r_field_one_per_route() -> None:
    a, b = RouteHop(LSP, parse_scid("5x0x2"), 1000, 10, 34), RouteHop(LSP, parse_scid("6x0x2"), 0, 0, 144)
    two = with_routes(with_route_hint(COFFEE, a), [[a], [b]])
    assert route_hints(two) == [[a], [b]]
    assert [f for f in tagged_fields(two)[2] if f[0] != 3] == tagged_fields(COFFEE)[2]
    assert route_hints(with_routes(two, [])) == []
    assert route_hints(with_routes(COFFEE, [[a, b]])) == [[a, b]]  # a two-hop route is one field


def test_amount_from_the_human_readable_part() -> None:
    assert amount_msat(COFFEE) == 250_000_000  # 2500u
    _, words = bech32_decode(COFFEE)
    for hrp, expected in [("lnbcrt20m", 2_000_000_000), ("lnbcrt1230p", 123), ("lntbs7n", 700), ("lnbc1", 10 ** 11),
                          ("lnbcrt", None), ("lntb", None)]:
        assert amount_msat(bech32_encode(hrp, words)) == expected
    for bad in ("lnbcrt1231p", "lnbcrt012u", "lnbcrt1x5u", "bc20m"):
        with pytest.raises(Bolt11Error):
            amount_msat(bech32_encode(bad, words))
