#!/usr/bin/env bash
# Runs a command with a private PostgreSQL server for the accounts tests
# (exports RETOUCH_TEST_POSTGRES_URL; see postgres.sh). Set RETOUCH_SKIP_POSTGRES=1 to run the
# command without it, in which case the PostgreSQL variants of the tests are skipped.
set -euo pipefail
if [ "${RETOUCH_SKIP_POSTGRES:-0}" != 1 ] && [ -z "${RETOUCH_TEST_POSTGRES_URL:-}" ]; then
    source "$(dirname "$0")/postgres.sh"
    trap retouch_ci_postgres_stop EXIT
fi
"$@"
