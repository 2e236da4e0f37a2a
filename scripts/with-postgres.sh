#!/usr/bin/env bash
# Run a command with a throw-away PostgreSQL server on 127.0.0.1, its URL in TEST_POSTGRES_URL, so the shared-map
# tests also run on crawlee's SQL client over PostgreSQL. Installs the Debian package if it is missing and this
# is root; stops the server and removes its data when the command ends. Without PostgreSQL, runs the command as
# it is (the PostgreSQL tests are then skipped, and say so).
set -euo pipefail

if [[ -n "${TEST_POSTGRES_URL:-}" ]]; then exec "$@"; fi

find_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
PGBIN=$(find_bin)
if [[ -z "$PGBIN" && $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "Installing PostgreSQL (Debian package) for the tests..."
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    PGBIN=$(find_bin)
fi
if [[ -z "$PGBIN" ]]; then
    echo "PostgreSQL is not available: its tests are skipped."
    exec "$@"
fi

# PostgreSQL refuses to run as root: run it as the postgres user when we are root.
as_pg() { if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }
PGDATA=$(mktemp -d /tmp/shared-map-pg.XXXXXX)
[[ $(id -u) -eq 0 ]] && chown postgres "$PGDATA"
PORT=${TEST_POSTGRES_PORT:-54329}
stop() {
    as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$PGDATA"
}
trap stop EXIT
as_pg "$PGBIN/initdb" -D "$PGDATA" -A trust -U postgres >/dev/null
OPTIONS="-p $PORT -k $PGDATA -c listen_addresses=127.0.0.1 -c max_connections=300"
as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w -o "$OPTIONS" start >/dev/null
echo "PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}') is running on 127.0.0.1:$PORT for the tests."
export TEST_POSTGRES_URL="postgresql+asyncpg://postgres@127.0.0.1:$PORT/postgres"
# For the outage test: how to stop and start this server again.
PREFIX=""; [[ $(id -u) -eq 0 ]] && PREFIX="runuser -u postgres -- "
export TEST_POSTGRES_CTL="${PREFIX}$PGBIN/pg_ctl -D $PGDATA -l $PGDATA/server.log"
export TEST_POSTGRES_OPTIONS="$OPTIONS"
"$@"
