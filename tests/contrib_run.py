"""Running a `contrib/` script as its user would: a subprocess of this interpreter, from the shell's view.

The smoke tests (tests/unit/test_contrib.py, tests/integration/test_contrib.py) run each script the
README and docs/figures.md name at its smallest size, as Bitcoin Core runs `bench_bitcoin -sanity-check`: a benchmark
nothing runs breaks without anyone noticing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

CONTRIB = Path(__file__).resolve().parents[1] / "contrib"


def run_script(script: str, *args: str, timeout: float) -> list[str]:
    """The lines `contrib/<script> <args>` prints, once it exits 0. It runs in a session of its own, so
    a run that outlives `timeout` seconds (a hang, not a slow machine) is killed with every daemon it
    started."""
    command = [sys.executable, str(CONTRIB / script), *args]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"{' '.join(command[1:])} still running after {timeout} s\n{out}\n{err}") from None
    assert proc.returncode == 0, f"{' '.join(command[1:])} exited {proc.returncode}\n{out}\n{err}"
    return out.splitlines()
