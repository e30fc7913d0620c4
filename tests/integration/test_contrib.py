"""The contrib/ scripts that run real daemons (the demo and the regtest benchmarks) run at their
smallest sizes and print their story or figures. Each script starts its own regtest bitcoind and
lightningd nodes through pyln-testing, and stops them; nothing is asserted about time."""

from __future__ import annotations

import re

import pytest

from tests.contrib_run import run_script

pytestmark = pytest.mark.lightningd

TIMEOUT = 900.0  # a hang, not a slow machine: pyln-testing's own waits give up long before
SECONDS = r"\d+\.\d+"


def test_bench_create_vs_multifund_two_clients() -> None:
    lines = run_script("bench_create_vs_multifund.py", "2", timeout=TIMEOUT)
    assert any(re.fullmatch(rf"K=2: superscalar-create {SECONDS} s \(funding \d+ vB\); multifundchannel {SECONDS} s "
                            rf"\(funding \d+ vB\); ratio create/multifund {SECONDS}", line) for line in lines)
    assert any(re.fullmatch(rf"K=2: multifundchannel zero-conf with push \(the fair baseline\) {SECONDS} s "
                            rf"\(funding \d+ vB\); ratio create/fair {SECONDS}", line) for line in lines)
    assert any(line.startswith("  create's steps (from the LSP's progress log lines): ") for line in lines)
    assert any(re.fullmatch(rf"K=2: superscalar-rollover {SECONDS} s \(close \d+ vB\); ratio rollover/multifund "
                            rf"{SECONDS}; ratio rollover/fair {SECONDS}", line) for line in lines)
    assert any(line.startswith("  rollover's steps (from the LSP's progress log lines): ") for line in lines)


def test_bench_jit_one_round_from_the_wallet() -> None:
    lines = run_script("bench_jit.py", "--rounds", "1", "--parts", "2", timeout=TIMEOUT)
    assert any(re.fullmatch(rf"round 1: parts arrive over {SECONDS} s; all held → channel ready {SECONDS} s; "
                            rf"ready → settled {SECONDS} s; first HTLC arrival → settled {SECONDS} s", line)
               for line in lines)
    assert lines[-1].startswith("median over 1 rounds (wallet channel): HTLC arrival → settled ")


def test_bench_jit_one_round_from_a_sale() -> None:
    lines = run_script("bench_jit.py", "--rounds", "1", "--parts", "2", "--source", "sale", timeout=TIMEOUT)
    assert any(re.fullmatch(rf"round 1: LSPS1 order paid → completed by a sale {SECONDS} s, → channel usable "
                            rf"{SECONDS} s", line) for line in lines)
    assert any(line.startswith("round 1: parts arrive over ") for line in lines)
    assert any(line.startswith("median over 1 rounds (sale channel): HTLC arrival → settled ") for line in lines)
    assert lines[-1].startswith("median over 1 LSPS1 orders filled by a sale: paid → completed ")


def test_regtest_demo_tells_the_whole_story() -> None:
    lines = run_script("regtest_demo.py", timeout=TIMEOUT)
    headings = [line.split(" ")[0] for line in lines if re.match(r"\d\. ", line)]
    assert headings == ["1.", "2.", "3.", "4.", "5."]
    assert sum("carried over:" in line and "the same to the msat" in line for line in lines) == 3
    assert not any("DIFFERENT" in line for line in lines)
    assert any(line.startswith("  dave   paid on chain in that close: ") for line in lines)
    assert any(line.startswith("  erin starts again and finds ") for line in lines)
    assert lines[-1] == "done (logs removed with the directory; --keep keeps them)"


def test_scale_factory_two_clients() -> None:
    lines = run_script("scale_factory.py", "2", timeout=TIMEOUT)
    assert any(re.fullmatch(rf"K=2: superscalar-create {SECONDS} s \({SECONDS} s per client\); funding \d+ vB", line)
               for line in lines)
    assert any(line.startswith("K=2: a payment to every client ") and line.endswith("every balance as paid: yes")
               for line in lines)
    assert any(line.endswith("every balance carried to the msat: yes") for line in lines)
    assert any(line.startswith("K=2: memory per node: ") for line in lines)


def test_soak_ladder_two_rollovers() -> None:
    lines = run_script("soak_ladder.py", "--rollovers", "2", "--every", "1", "--clients", "4", "--forget",
                       "--kill-every", "2", timeout=TIMEOUT)
    assert lines[1].split()[:3] == ["rollovers", "height", "plugin_ms"]
    assert any(line.startswith("  kill -9 #1 at rollover ") and line.endswith("the same to the msat")
               for line in lines)
    assert any(line.startswith("last row against the first: ") for line in lines)
    assert lines[-1].startswith("**BROKEN** lines from the plugin: none; ")
