"""What the regtest scripts of contrib/ share: the environment pyln-testing needs, the terminal kept for
the story or the figures while every daemon's output goes to a file, and a regtest network (bitcoind,
the nodes' database, a pyln-testing NodeFactory) in a temporary directory, stopped at the end.

A script imports it after putting the repository root on `sys.path`:

    ROOT = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(ROOT))
    from contrib.regtest import PLUGIN, regtest_network, say  # noqa: E402
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import traceback
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
os.environ.setdefault("TEST_NETWORK", "regtest")
os.environ.setdefault("RUST", "0")
os.environ.setdefault("VALGRIND", "0")

from pyln.testing.db import PostgresDbProvider, SqliteDbProvider  # noqa: E402
from pyln.testing.utils import BitcoinD, LightningNode, NodeFactory  # noqa: E402

from tests.pyln_threads import serialize_bitcoind_proxies  # noqa: E402

serialize_bitcoind_proxies()

PLUGIN = ROOT / "superscalar_plugin.py"
STORY = sys.stdout  # replaced by logs_to_file: the story keeps the terminal, the daemons' logs go to a file


def say(*text: Any) -> None:
    print(*text, file=STORY, flush=True)


def logs_to_file(path: str) -> None:
    """lightningd writes its log to its stdout (pyln-testing passes `--log-file=-`), and pyln-testing
    echoes it; send file descriptors 1 and 2, and so every daemon's output, to `path`, and keep the
    story on the terminal."""
    global STORY
    STORY = os.fdopen(os.dup(1), "w")
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)


def run_main(main: Callable[[], None]) -> None:
    """Run a script's `main`; a failure's traceback goes to the terminal (fd 2 goes to the log file by
    then) and the exit status is 1."""
    try:
        main()
    except Exception:
        traceback.print_exc(file=STORY)
        sys.exit(1)


def db_provider(directory: str) -> SqliteDbProvider | PostgresDbProvider:
    """The nodes' database, chosen as pyln-testing's fixture chooses it: TEST_DB_PROVIDER=postgres puts
    every node on a throw-away PostgreSQL server (contrib/test_postgres.sh), otherwise SQLite."""
    providers = {"sqlite3": SqliteDbProvider, "postgres": PostgresDbProvider}
    name = os.environ.get("TEST_DB_PROVIDER", "sqlite3")
    if name not in providers:
        sys.exit(f"TEST_DB_PROVIDER={name}: expected one of {', '.join(providers)}")
    return providers[name](directory)


def need_binaries() -> None:
    for binary in ("lightningd", "bitcoind"):
        if shutil.which(binary) is None:
            sys.exit(f"{binary} not found on PATH")


def processes() -> dict[int, tuple[int, bytes]]:
    """Every process this user can see: pid → (parent pid, command line)."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{name}/cmdline", "rb") as f:
                found[int(name)] = (ppid, f.read())
        except OSError:
            continue
    return found


def memory_kb(pid: int, proportional: bool = False) -> int:
    """A process's resident memory (VmRSS), or its proportional set size (a page shared by n
    processes, such as the binaries' and libraries', counts 1/n); 0 once it is gone."""
    path, field = (f"/proc/{pid}/smaps_rollup", "Pss:") if proportional else (f"/proc/{pid}/status", "VmRSS:")
    try:
        with open(path) as f:
            return next((int(line.split()[1]) for line in f if line.startswith(field)), 0)
    except OSError:
        return 0


@dataclass(frozen=True)
class Network:
    directory: str
    bitcoind: Any  # pyln-testing's BitcoinD, started, 101 blocks mined
    nodes: Any  # pyln-testing's NodeFactory


@contextmanager
def regtest_network(name: str, workers: int = 4, keep: bool = False) -> Iterator[Network]:
    """A regtest bitcoind with 101 blocks and a NodeFactory in a temporary directory; every daemon's
    output goes to `daemons.log` there. At the end every node and bitcoind are stopped (killed if they
    do not stop) and the directory is removed unless `keep`. `name` becomes part of each node's
    PostgreSQL database name: an identifier, no "-"."""
    need_binaries()
    directory = tempfile.mkdtemp(prefix=f"superscalar-{name}-")
    logs_to_file(os.path.join(directory, "daemons.log"))
    bitcoind = BitcoinD(bitcoin_dir=os.path.join(directory, "bitcoind"))
    executor = ThreadPoolExecutor(max_workers=workers)
    db = db_provider(directory)
    db.start()
    factory = NodeFactory(None, name, bitcoind, executor, directory, db, LightningNode, {})
    try:
        bitcoind.start()
        bitcoind.generate_block(101)
        yield Network(directory, bitcoind, factory)
    finally:
        for node in factory.nodes:
            try:
                node.stop()
            except Exception as e:
                say(f"  stopping a node: {e}")
            proc = getattr(node.daemon, "proc", None)
            if proc is not None and proc.poll() is None:  # did not stop in time: make sure it is gone
                proc.kill()
                proc.wait()
        bitcoind.stop()
        if getattr(bitcoind, "proc", None) is not None and bitcoind.proc.poll() is None:
            bitcoind.proc.kill()
        db.stop()
        executor.shutdown()
        if not keep:
            shutil.rmtree(directory, ignore_errors=True)
