"""bitcoind RPC, reached the way lightningd reaches it.

lightningd talks to bitcoind through its `bcli` plugin, which runs `bitcoin-cli` with the node's
`bitcoin-*` settings. A few things superscalar needs are not relayed by lightningd: `submitpackage`
(a below-minimum-fee tree transaction goes out with its CPFP child as one package), the mempool
(`getmempoolentry`, `gettxspendingprevout`, `getmempoolinfo`) and `gettxout`. `Bitcoind` reads the
same settings from `listconfigs` (bitcoin-cli, bitcoin-datadir, bitcoin-rpcconnect, bitcoin-rpcport,
bitcoin-rpcuser, bitcoin-rpcpassword) and runs the same command line as bcli does, the password on
stdin (`-stdinrpcpass`), so it reaches the same bitcoind with the same credentials (or cookie) and
needs no setting of its own. Arguments are positional, as bcli sends them.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from typing import Any, Optional

# bcli's `chainparams->cli_args`: the flag bitcoin-cli needs for each network (none on mainnet).
NETWORK_FLAGS = {"bitcoin": None, "regtest": "-regtest", "testnet": "-testnet", "signet": "-signet",
                 "testnet4": "-testnet4"}
CALL_TIMEOUT = 60  # seconds one bitcoin-cli call may take


class BitcoindError(RuntimeError):
    """bitcoind (or bitcoin-cli) refused a call; `code` is bitcoind's RPC error code when known."""

    def __init__(self, message: str, code: Optional[int] = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class BitcoindSettings:
    """lightningd's `bitcoin-*` settings (None where unset)."""

    network: str
    cli: str = "bitcoin-cli"
    datadir: Optional[str] = None
    rpcconnect: Optional[str] = None
    rpcport: Optional[str] = None
    rpcuser: Optional[str] = None
    rpcpassword: Optional[str] = None

    @classmethod
    def from_listconfigs(cls, configs: dict[str, Any], network: str) -> "BitcoindSettings":
        def value(name: str) -> Optional[str]:
            entry = configs.get(name)
            if not isinstance(entry, dict):
                return None
            for key in ("value_str", "value_int"):
                if entry.get(key) not in (None, ""):
                    return str(entry[key])
            return None

        return cls(network, value("bitcoin-cli") or "bitcoin-cli", value("bitcoin-datadir"),
                   value("bitcoin-rpcconnect"), value("bitcoin-rpcport"), value("bitcoin-rpcuser"),
                   value("bitcoin-rpcpassword"))

    def argv(self, method: str, params: list[Any]) -> list[str]:
        """bitcoin-cli's command line for one call, in bcli's order."""
        args = [self.cli]
        flag = NETWORK_FLAGS.get(self.network)
        if flag:
            args.append(flag)
        for name, v in (("datadir", self.datadir), ("rpcconnect", self.rpcconnect), ("rpcport", self.rpcport),
                        ("rpcuser", self.rpcuser)):
            if v is not None:
                args.append(f"-{name}={v}")
        if self.rpcpassword is not None:
            args.append("-stdinrpcpass")
        args.append(method)
        args += [p if isinstance(p, str) else json.dumps(p) for p in params]
        return args


class Bitcoind:
    """Calls to lightningd's bitcoind; every method raises BitcoindError when bitcoind refuses."""

    def __init__(self, settings: BitcoindSettings) -> None:
        self.settings = settings

    def call(self, method: str, *params: Any) -> Any:
        s = self.settings
        stdin = f"{s.rpcpassword}\n" if s.rpcpassword is not None else ""
        try:
            done = subprocess.run(s.argv(method, list(params)), input=stdin, capture_output=True, text=True,
                                  timeout=CALL_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise BitcoindError(f"{method}: could not run {s.cli}: {e}") from None
        if done.returncode != 0:
            text = (done.stderr or done.stdout).strip()
            code = None
            if text.startswith("error code:"):
                try:
                    code = int(text.split("\n", 1)[0].split(":", 1)[1])
                except ValueError:
                    pass
            raise BitcoindError(f"{method}: {text}", code)
        out = done.stdout.strip()
        if not out:
            return None
        try:
            return json.loads(out)
        except ValueError:
            return out  # a bare string (a txid, a hex block)

    # --- what the exits use ---

    def submitpackage(self, txs_hex: list[str]) -> dict[str, Any]:
        return dict(self.call("submitpackage", txs_hex))

    def in_mempool(self, txid: str) -> bool:
        try:
            self.call("getmempoolentry", txid)
            return True
        except BitcoindError as e:
            if e.code == -5:  # "Transaction not in mempool"
                return False
            raise

    def mempool_spender(self, txid: str, vout: int) -> Optional[str]:
        """The mempool transaction spending txid:vout, if any."""
        [entry] = self.call("gettxspendingprevout", [{"txid": txid, "vout": vout}])
        spender = entry.get("spendingtxid")
        return str(spender) if spender else None

    def txout(self, txid: str, vout: int, include_mempool: bool = True) -> Optional[dict[str, Any]]:
        """gettxout: the unspent output (with `confirmations`), or None if spent or unknown."""
        res = self.call("gettxout", txid, vout, include_mempool)
        return dict(res) if isinstance(res, dict) else None

    def mempool_info(self) -> dict[str, Any]:
        return dict(self.call("getmempoolinfo"))


def from_lightningd(rpc: Any, network: str) -> Bitcoind:
    """A Bitcoind with the settings lightningd runs with."""
    return Bitcoind(BitcoindSettings.from_listconfigs(dict(rpc.call("listconfigs")["configs"]), network))
