"""The pure benchmarks in contrib/ (no lightningd, no bitcoind) run at their smallest sizes and print
their figures. Nothing is asserted about time: only that each starts, does a round and reports it."""

from __future__ import annotations

import re

from tests.contrib_run import run_script

TIMEOUT = 120.0
FIGURE = r"\d+\.\d+"


def rows(lines: list[str], pattern: str) -> list[str]:
    return [line for line in lines if re.fullmatch(pattern, line)]


def factory_row(n: int, txs: int) -> str:
    """bench_factory.py's row for N = n: times, range, CPU, client seconds, MB, then txs and the byte counts."""
    return rf"\s+{n}(\s+{FIGURE}){{3}}\s+{FIGURE}-{FIGURE}(\s+{FIGURE}){{2}}\s+\d+\s+{txs}(\s+\d+){{4}}\s+{FIGURE}"


def test_bench_musig2_with_two_signers() -> None:
    lines = run_script("bench_musig2.py", "2", timeout=TIMEOUT)
    assert lines[0].split() == ["N", "impl", "key_agg", "nonce_gen", "nonce_agg", "sign", "verify", "agg", "total",
                                "(ms)", "ratio"]
    assert len(rows(lines, rf"\s+2\s+ours(\s+{FIGURE}){{7}}\s+{FIGURE}x")) == 1
    assert len(rows(lines, rf"\s+2\s+libsecp(\s+{FIGURE}){{7}}\s*")) == 1


def test_bench_factory_two_sizes_on_worker_processes() -> None:
    lines = run_script("bench_factory.py", "--repeat", "1", "2", "4", timeout=TIMEOUT)
    assert lines[0].startswith("processes: 3 (the LSP here, clients in 2 workers); each N run 1 times")
    assert lines[1].split()[:4] == ["N", "build_s", "cerem_s", "total_s"]
    for n, txs in ((2, 3), (4, 6)):
        assert len(rows(lines, factory_row(n, txs))) == 1
    assert lines[-1].startswith("cost growth N=2→4 (log-log fit over 2 sizes, median runs): exponent ")


def test_bench_factory_in_one_process() -> None:
    lines = run_script("bench_factory.py", "--processes", "1", "--repeat", "1", "2", timeout=TIMEOUT)
    assert lines[0].startswith("processes: 1 (one)")
    assert len(rows(lines, factory_row(2, 3))) == 1


def test_bench_lifecycle_two_factories_of_two() -> None:
    lines = run_script("bench_lifecycle.py", "--factories", "2", "--clients", "2", "--blocks", "1", "--block-txs", "10",
                       "--ceremony-clients", "2", timeout=TIMEOUT)
    assert lines[0].startswith("LSP: 2 factories x 2 clients = 4 leaf channels; records built in ")
    assert lines[1].startswith("steps (as plugin.py builds them): new block, ")
    assert any(line.startswith("  empty blocks: 1 blocks; seconds per block p50 ") for line in lines)
    assert any(line.startswith("  blocks of 10 synthetic txs: 1 blocks; seconds per block p50 ") for line in lines)
    assert len(rows(lines, rf"    HTLC watch\s+p50 {FIGURE} s\s+max {FIGURE} s")) == 2
    assert len([line for line in lines if line.startswith("    RPC calls per block: ")]) == 2
    # A step that raised would be logged as broken by the follower, and the figures would be short of it.
    [levels] = [line for line in lines if line.startswith("  plugin log lines by level: ")]
    assert "broken" not in levels
    assert lines[-1].startswith("rollover ceremony, N=2 clients, one process: graph ")


def test_bench_htlc_hook_small_lsp_and_client() -> None:
    lines = run_script("bench_htlc_hook.py", "--factories", "2", "--clients", "4", "--htlcs", "20", "--baseline",
                       timeout=TIMEOUT)
    assert lines[0].startswith("built the stores in ")
    assert any(line.startswith("LSP: 2 factories, 8 factory channels, 64 plain channels; index built in ")
               for line in lines)
    assert any(line.startswith("client: 2 factories, 2 factory channels, 4 plain channels; index built in ")
               for line in lines)
    figures = rf"HTLCs\s+(\d+)\s+p50\s+{FIGURE} ms\s+p99\s+{FIGURE} ms\s+max\s+{FIGURE} ms"
    counted = [int(m.group(1)) for line in lines if (m := re.search(figures, line))]
    assert counted.count(20) == 5 and counted.count(10) == 4 and counted.count(5) == 2  # both roles, baselines
    assert len([line for line in lines if "LSP forwards into a client's factory channel" in line]) == 1
