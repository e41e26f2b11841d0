#!/usr/bin/env bash
# Run the test suite: scripts/test.sh [-m MARKER_EXPRESSION] [more pytest arguments]
# Makes sure the services the tests use are up (Redis; PostgreSQL for tests marked postgres)
# and, as root, installs Debian's Chromium for the browser tests. pytest's exit code 5
# ("no tests collected") counts as a failure.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

[ -x "$PY" ] || die "no virtualenv in $VENV: run 'make setup' first."

MARKERS=""
if [ "${1:-}" = "-m" ]; then
  MARKERS="$2"
  shift 2
fi

# The same defaults as tests/conftest.py; override with TEST_REDIS_URL / TEST_POSTGRES_URL.
REDIS_TEST_URL="${TEST_REDIS_URL:-redis://127.0.0.1:6379/15}"
POSTGRES_TEST_URL="${TEST_POSTGRES_URL:-postgresql://postgres@127.0.0.1:5432/test}"

say "Services for the tests"
ensure_redis "$REDIS_TEST_URL"
if ! ensure_postgres "$POSTGRES_TEST_URL"; then
  if [ -n "${CI:-}" ]; then
    die "PostgreSQL does not answer at $POSTGRES_TEST_URL (CI runs the PostgreSQL tests)."
  fi
  warn "PostgreSQL does not answer at $POSTGRES_TEST_URL: the tests marked 'postgres' are
         left out of this run. Start PostgreSQL or set TEST_POSTGRES_URL to run them."
  MARKERS="${MARKERS:+($MARKERS) and }not postgres"
fi
ensure_chromium

say "Running pytest${MARKERS:+ -m \"$MARKERS\"}"
rc=0
if [ -n "$MARKERS" ]; then
  "$PY" -m pytest -q -m "$MARKERS" "$@" || rc=$?
else
  "$PY" -m pytest -q "$@" || rc=$?
fi
if [ "$rc" -eq 5 ]; then
  die "pytest collected no tests (exit code 5): that counts as a failure."
fi
exit "$rc"
