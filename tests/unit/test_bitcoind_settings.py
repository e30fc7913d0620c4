"""bitcoin-cli's command line from lightningd's settings (superscalar/cln/bitcoind.py), as bcli builds it."""

from __future__ import annotations

from superscalar.cln.bitcoind import BitcoindSettings

CONFIGS = {
    "bitcoin-datadir": {"value_str": "/data/btc", "source": "cmdline"},
    "bitcoin-rpcuser": {"value_str": "user", "source": "cmdline"},
    "bitcoin-rpcpassword": {"value_str": "secret", "source": "cmdline"},
    "bitcoin-rpcport": {"value_int": 18443, "source": "cmdline"},
    "bitcoin-retry-timeout": {"value_int": 60, "source": "default"},
}


def test_settings_as_bcli_passes_them() -> None:
    s = BitcoindSettings.from_listconfigs(CONFIGS, "regtest")
    argv = s.argv("submitpackage", [["00", "11"]])
    assert argv == ["bitcoin-cli", "-regtest", "-datadir=/data/btc", "-rpcport=18443", "-rpcuser=user",
                    "-stdinrpcpass", "submitpackage", '["00", "11"]']
    assert "secret" not in " ".join(argv)  # the password goes on stdin


def test_mainnet_defaults() -> None:
    s = BitcoindSettings.from_listconfigs({"bitcoin-cli": {"value_str": "/opt/bitcoin-cli"}}, "bitcoin")
    assert s.argv("gettxout", ["ab" * 32, 1, True]) == ["/opt/bitcoin-cli", "gettxout", "ab" * 32, "1", "true"]
