#!/usr/bin/env bash
# Run the integration tests with every lightningd on PostgreSQL, as an LSP that replicates its node's
# database runs it. The plugin keeps its records in lightningd's datastore, so they live in whichever
# database lightningd uses; this checks that nothing in the plugin or the tests assumes SQLite.
#
#   contrib/test_postgres.sh                                   # all of tests/integration
#   contrib/test_postgres.sh -k rollover                       # extra pytest arguments
#   contrib/test_postgres.sh tests/integration/test_lsps1.py   # a path (from the top of the tree)
#                                                              # replaces tests/integration
#
# Needs: lightningd built with PostgreSQL (its configure found libpq), bitcoind, and PostgreSQL's
# server binaries (Debian: `apt-get install postgresql`, found through `pg_config --bindir`).
# pyln-testing starts one throw-away PostgreSQL server per test (TEST_DB_PROVIDER=postgres), and
# `initdb` refuses to run as root. Run as root, this script therefore runs the tests as an
# unprivileged user (SSC_PG_USER, default `sscitest`, created if missing, without a home directory) on
# a copy of this tree in a fresh directory that user owns; nothing in the checkout or in the user's
# environment is changed. Run as anyone else, it runs them as that user, on the same kind of copy.
#
# Environment:
#   SSC_PG_USER   the unprivileged user when run as root (default sscitest)
#   SSC_PG_VENV   an existing virtual environment with '.[test]' installed, readable by that user;
#                 default: a new one in the copy (pip needs to reach PyPI)
#   SSC_PG_PYTHON the Python (≥ 3.11) for that new environment; default: the first of python3 on
#                 PATH, /usr/bin/python3, /usr/local/bin/python3 that the user can run
#   SSC_PG_KEEP=1 keep the copy (and its venv) afterwards; its path is printed first
# pyln-testing's own variables (TEST_DEBUG, SLOW_MACHINE, TIMEOUT) and PYTEST_ADDOPTS are passed on.
# The exit status is pytest's.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
user="${SSC_PG_USER:-sscitest}"

die() { echo "test_postgres.sh: $*" >&2; exit 2; }

for b in lightningd bitcoind pg_config; do
    command -v "$b" >/dev/null || die "$b not found on PATH"
done
pg_bin="$(pg_config --bindir)"
[ -x "$pg_bin/initdb" ] && [ -x "$pg_bin/postgres" ] \
    || die "no initdb and postgres in $pg_bin (pg_config --bindir): install the PostgreSQL server"
# A lightningd built without libpq stops at once on a postgres:// wallet; say so before any test.
# (ldd's whole output first: under pipefail, `ldd | grep -q` fails whenever grep stops ldd early.)
if command -v ldd >/dev/null; then
    case "$(ldd "$(command -v lightningd)")" in
        *libpq*) ;;
        *) die "$(command -v lightningd) is not linked with libpq: install libpq-dev, re-run its configure, rebuild" ;;
    esac
fi

if [ "$(id -u)" -eq 0 ]; then
    if ! id "$user" >/dev/null 2>&1; then
        useradd --system --no-create-home --shell /usr/sbin/nologin "$user"
        echo "created user $user"
    fi
    as_user() { runuser -u "$user" -- "$@"; }
else
    user="$(id -un)"
    as_user() { "$@"; }
fi

work="$(mktemp -d /tmp/ssc-postgres.XXXXXX)"
cleanup() {
    if [ "${SSC_PG_KEEP:-0}" = 1 ]; then
        echo "kept $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
echo "copy of the tree: $work/src (tests run as $user)"

# The tree as it is now (tracked files and new ones not ignored, so uncommitted edits are tested);
# outside a git checkout, everything but virtual environments and caches.
mkdir "$work/src"
if git -C "$repo" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$repo" && git ls-files -z --cached --others --exclude-standard \
        | xargs -0 -r sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh \
        | tar --null -T - -cf -) | tar -xf - -C "$work/src"
else
    tar -C "$repo" --exclude=.venv --exclude=__pycache__ --exclude=.git -cf - . | tar -xf - -C "$work/src"
fi
chown -R "$user" "$work"
chmod 700 "$work"

if [ -n "${SSC_PG_VENV:-}" ]; then
    venv="$SSC_PG_VENV"
    as_user test -x "$venv/bin/python" || die "$venv/bin/python is not there or $user cannot run it"
else
    venv="$work/venv"
    # The first Python ≥ 3.11 that user can run (python3 on PATH may live in root's home, as pyenv's does).
    python=
    for p in ${SSC_PG_PYTHON:-} "$(command -v python3)" /usr/bin/python3 /usr/local/bin/python3; do
        if [ -x "$p" ] && as_user "$p" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            python="$p"; break
        fi
    done
    [ -n "$python" ] || die "no Python ≥ 3.11 with venv that $user can run; name one in SSC_PG_PYTHON"
    as_user env HOME="$work" "$python" -m venv "$venv"
    as_user env HOME="$work" PIP_CACHE_DIR="$work/pip-cache" \
        "$venv/bin/pip" install -q -e "$work/src[test]"
fi

# An argument naming a file or directory of the tree (a test id's part before `::` too) says what to
# run; without one, all of tests/integration.
targets=(tests/integration)
for a in "$@"; do
    if [ -n "$a" ] && [ -e "$work/src/${a%%::*}" ]; then targets=(); break; fi
done
passed=()
for v in TEST_DEBUG SLOW_MACHINE TIMEOUT PYTEST_ADDOPTS; do
    if [ -n "${!v:-}" ]; then passed+=("$v=${!v}"); fi
done

echo "lightningd $(lightningd --version), $(bitcoind --version | head -n 1), $("$pg_bin/postgres" --version)"
cd "$work/src"
status=0
as_user env -i \
    HOME="$work" LANG=C.UTF-8 \
    PATH="$venv/bin:$pg_bin:$(dirname "$(command -v lightningd)"):$(dirname "$(command -v bitcoind)"):/usr/bin:/bin" \
    TEST_DB_PROVIDER=postgres RUST=0 VALGRIND=0 "${passed[@]}" \
    "$venv/bin/python" -m pytest "${targets[@]}" "$@" || status=$?
exit "$status"
