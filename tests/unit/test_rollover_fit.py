"""A rollover that carries every client: the next factory's L-stock gives up the close's cost."""

from __future__ import annotations

from typing import Any, Optional

import pytest

from superscalar.bitcoin.tx import OutPoint
from superscalar.factory.errors import FactoryError
from superscalar.factory.graph import rollover_close
from superscalar.factory.params import regtest_params
from superscalar.lsp.closing import DoesNotFit, fit_lstock
from superscalar.lsp.leaving import roll_or_close
from superscalar.lsp.creation import ClientSpec

from ..factory_kit import make_kit

FUNDING = OutPoint(bytes(range(32)), 0)


@pytest.mark.parametrize("n", [1, 2, 5, 16])
def test_everyone_carried_over_fits_after_the_lstock_cut(n: int) -> None:
    params = regtest_params(n, 100)
    a = make_kit(params).factory
    specs = [ClientSpec(f"{i:02x}" * 33, t.balance_sat, t.inbound_sat) for i, t in enumerate(a.terms)]
    same = make_kit(regtest_params(n, 200), a.terms).factory  # B with A's L-stock does not fit
    with pytest.raises(FactoryError, match="does not fit"):
        rollover_close(a, FUNDING, same.funding_output, [0] * n)
    fitted = fit_lstock(regtest_params(n, 200), specs, a, FUNDING, [0] * n)
    assert fitted.lstock_sat < params.lstock_sat
    b = make_kit(fitted, a.terms).factory
    close = rollover_close(a, FUNDING, b.funding_output, [0] * n)
    assert close.tx.outputs[0] == b.funding_output
    lsp_rest = close.tx.outputs[-2].value
    leaves = -(-n // params.leaf_arity)
    # the cut is the least whole sats per leaf: one sat less and the LSP's output would be below dust
    assert params.dust_limit_sat <= lsp_rest < params.dust_limit_sat + leaves
    print(f"n={n}: L-stock per leaf {params.lstock_sat} -> {fitted.lstock_sat} sat, LSP rest {lsp_rest} sat")


def test_a_leaver_leaves_room_and_nothing_is_cut() -> None:
    params = regtest_params(4, 100)
    a = make_kit(params).factory
    specs = [ClientSpec(f"{i:02x}" * 33, t.balance_sat, t.inbound_sat) for i, t in enumerate(a.terms)][:3]
    leaving = [0, 0, 0, a.terms[3].balance_sat]
    assert fit_lstock(regtest_params(3, 200), specs, a, FUNDING, leaving).lstock_sat == params.lstock_sat


def test_an_lstock_too_small_to_absorb_the_close_refuses() -> None:
    params = regtest_params(2, 100, lstock_sat=600)
    a = make_kit(params).factory
    specs = [ClientSpec(f"{i:02x}" * 33, t.balance_sat, t.inbound_sat) for i, t in enumerate(a.terms)]
    with pytest.raises(DoesNotFit, match="close instead"):
        fit_lstock(regtest_params(2, 200, lstock_sat=600), specs, a, FUNDING, [0, 0])


class FakeCloser:
    def __init__(self, fits: bool) -> None:
        self.fits, self.calls = fits, []  # type: ignore[var-annotated]

    def rollover(self, fid: str, leave: list[str], progress: Any) -> dict[str, Any]:
        self.calls.append(("rollover", leave))
        if not self.fits:
            raise DoesNotFit("the next factory does not fit")
        return {"rolled": True}

    def close(self, fid: str, progress: Any) -> dict[str, Any]:
        self.calls.append(("close", []))
        return {"closed": True}


class FakeStore:
    def get(self, fid: str, name: str) -> Optional[dict[str, Any]]:
        return {"channels": [{"peer_id": "a"}, {"peer_id": "b"}]} if name == "factory" else None


@pytest.mark.parametrize("fits", [True, False])
def test_ladder_closes_a_factory_that_cannot_roll_over(fits: bool) -> None:
    closer = FakeCloser(fits)
    out = roll_or_close(closer, FakeStore(), "f", lambda _: None)  # type: ignore[arg-type]
    assert out == ({"rolled": True} if fits else {"closed": True})
    assert closer.calls == ([("rollover", [])] if fits else [("rollover", []), ("close", [])])
