"""lsp/inbound.py: a JIT channel comes from an L-stock sale first, the wallet only when no sale can."""

from __future__ import annotations

from typing import Any, Optional

from superscalar.lsp.inbound import client_factories, sale_first
from superscalar.lsp.sale import SaleError

PEER = "02" * 33


class FakeStore:
    def __init__(self, records: dict[str, dict[str, Any]]) -> None:
        self.records = records

    def factory_ids(self) -> list[str]:
        return list(self.records)

    def get(self, fid: str, name: str) -> Optional[dict[str, Any]]:
        return self.records.get(fid)


class FakeSeller:
    def __init__(self, can: set[str]) -> None:
        self.can, self.tried = can, []  # type: ignore[var-annotated]

    def sell(self, fid: str, peer: str, capacity: int, price_msat: int = 0) -> dict[str, Any]:
        self.tried.append(fid)
        if fid not in self.can:
            raise SaleError("L-stock too small")
        return {"channel_id": f"sale-in-{fid}"}


def rec(start: int, peer: str = PEER, **extra: Any) -> dict[str, Any]:
    return {"role": "lsp", "stage": "funded", "start_height": start, "channels": [{"peer_id": peer}], **extra}


STORE = FakeStore({"a": rec(100), "b": rec(200), "c": rec(300, frozen={"x": 1}), "d": rec(400, "03" * 33),
                   "e": {**rec(500), "role": "client"}})


def test_candidates_are_the_clients_funded_factories_newest_first() -> None:
    assert client_factories(STORE, PEER) == ["b", "a"]  # type: ignore[arg-type]


def test_sale_first_then_the_wallet() -> None:
    wallet: list[tuple[str, int]] = []

    def fallback(peer: str, capacity: int) -> str:
        wallet.append((peer, capacity))
        return "wallet-channel"

    seller = FakeSeller({"a"})
    open_for = sale_first(seller, STORE, fallback, lambda *a, **k: None)  # type: ignore[arg-type]
    assert open_for(PEER, 80_000) == "sale-in-a" and seller.tried == ["b", "a"] and wallet == []
    seller = FakeSeller(set())
    open_for = sale_first(seller, STORE, fallback, lambda *a, **k: None)  # type: ignore[arg-type]
    assert open_for(PEER, 80_000) == "wallet-channel" and wallet == [(PEER, 80_000)]
