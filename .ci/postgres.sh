#!/usr/bin/env bash
# Sourced by .ci/run: a private PostgreSQL server for the accounts tests.
#
# Installs the Debian package when no server binaries are present, starts a throw-away cluster
# in $RETOUCH_CI_PGDATA on 127.0.0.1:$RETOUCH_CI_PGPORT (not the system cluster, so a machine
# that already runs PostgreSQL keeps its own), creates the test database and exports
# RETOUCH_TEST_POSTGRES_URL. Safe to run again: an existing cluster is reused, a running one
# is left running.

RETOUCH_CI_PGDATA="${RETOUCH_CI_PGDATA:-/tmp/retouch-ci-pg}"
RETOUCH_CI_PGPORT="${RETOUCH_CI_PGPORT:-54329}"
RETOUCH_CI_PG_STARTED=0

_pg_bindir() {
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

# initdb and pg_ctl refuse to run as root: run them as the postgres account then.
_pg_as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

if [ -z "$(_pg_bindir)" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "PostgreSQL is not installed; run as root or: apt-get install -y postgresql" >&2
        exit 1
    fi
    echo "installing PostgreSQL (Debian package)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q postgresql
fi
_PGBIN="$(_pg_bindir)"

if [ ! -s "$RETOUCH_CI_PGDATA/PG_VERSION" ]; then
    mkdir -p "$RETOUCH_CI_PGDATA"
    if [ "$(id -u)" = 0 ]; then
        chown postgres:postgres "$RETOUCH_CI_PGDATA"
    fi
    chmod 700 "$RETOUCH_CI_PGDATA"
    _pg_as_owner "$_PGBIN/initdb" -D "$RETOUCH_CI_PGDATA" -U postgres --auth=trust \
        -E UTF8 --no-instructions >/dev/null
fi

if ! _pg_as_owner "$_PGBIN/pg_ctl" -D "$RETOUCH_CI_PGDATA" status >/dev/null 2>&1; then
    # fsync=off: a test cluster that is thrown away needs no protection against power loss.
    _pg_as_owner "$_PGBIN/pg_ctl" -D "$RETOUCH_CI_PGDATA" -w -t 60 \
        -l "$RETOUCH_CI_PGDATA/server.log" \
        -o "-c listen_addresses=127.0.0.1 -p $RETOUCH_CI_PGPORT -k $RETOUCH_CI_PGDATA -c fsync=off -c max_connections=200" \
        start >/dev/null
    RETOUCH_CI_PG_STARTED=1
fi

_psql() {
    "$_PGBIN/psql" -h 127.0.0.1 -p "$RETOUCH_CI_PGPORT" -U postgres -v ON_ERROR_STOP=1 -tAq "$@"
}
if [ "$(_psql -d postgres -c "SELECT 1 FROM pg_database WHERE datname = 'retouch_test'")" != 1 ]; then
    _psql -d postgres -c "CREATE DATABASE retouch_test"
fi

export RETOUCH_TEST_POSTGRES_URL="postgresql://postgres@127.0.0.1:$RETOUCH_CI_PGPORT/retouch_test"
echo "PostgreSQL for tests: $RETOUCH_TEST_POSTGRES_URL" >&2

retouch_ci_postgres_stop() {
    if [ "$RETOUCH_CI_PG_STARTED" = 1 ]; then
        _pg_as_owner "$_PGBIN/pg_ctl" -D "$RETOUCH_CI_PGDATA" -m fast stop >/dev/null || true
    fi
}
