"""What a factory channel's HTLCs need and what invoices ask for."""

from __future__ import annotations

from superscalar.factory.params import FactoryParams
from superscalar.htlc_timing import (
    INVOICE_SLACK_BLOCKS,
    enforce_blocks,
    invoice_final_cltv,
    required_final_cltv,
    with_final_cltv,
)


def test_mainnet_invoices_of_a_1024_factory_fit_ldks_cap() -> None:
    params = FactoryParams(n_clients=1024, start_height=800_000)
    cltv = invoice_final_cltv(params.longest_exit_blocks, params.confirm_blocks)
    assert cltv == 462 + 2 * 6 + INVOICE_SLACK_BLOCKS == 486
    assert cltv + 34 + 250 <= 1008  # the LSP's delta (CLN's default) and a payer's route
    assert enforce_blocks(462, 6) == 474


def test_required_final_cltv_is_the_largest_need() -> None:
    assert required_final_cltv([]) is None
    assert required_final_cltv([(9, 1), (450, 6)]) == 450 + 12 + INVOICE_SLACK_BLOCKS


def test_invoice_parameters_are_raised_never_lowered() -> None:
    assert with_final_cltv({"amount_msat": 1, "label": "a", "description": "d"}, 100)["cltv"] == 100
    assert with_final_cltv({"amount_msat": 1, "label": "a", "description": "d", "cltv": None}, 100)["cltv"] == 100
    assert with_final_cltv({"amount_msat": 1, "label": "a", "description": "d", "cltv": 8}, 100)["cltv"] == 100
    assert with_final_cltv({"amount_msat": 1, "label": "a", "description": "d", "cltv": 144}, 100) is None
    assert with_final_cltv([1000, "a", "d"], 100) == [1000, "a", "d", None, None, None, None, 100]
    assert with_final_cltv([1000, "a", "d", 60, None, None, None, 5, True], 100) == \
        [1000, "a", "d", 60, None, None, None, 100, True]
    assert with_final_cltv([1000, "a", "d", 60, None, None, None, 200], 100) is None
    assert with_final_cltv("nonsense", 100) is None
