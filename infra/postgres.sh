#!/usr/bin/env bash
# PostgreSQL for the Prefect server, as production runs it: Debian's postgresql package, a cluster of
# its own under ${TOPOZARR_STATE:-.state}/postgres (data, socket, password), listening on
# 127.0.0.1:${PG_PORT:-5433} only.
#   infra/postgres.sh start|stop|status|env|url
# `env` prints PG_PORT; `url` prints the Prefect server's connection URL, which holds the generated
# password (mode 600 in $TOPOZARR_STATE/postgres): infra/prefect-server.sh puts it into the server's
# environment only. Neither the record nor stack.env nor any log holds it.
# PostgreSQL refuses to run as root: as root the cluster runs as the `postgres` user the package creates.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

NAME=postgres
use_recorded "$NAME" PG_PORT
PG_PORT="${PG_PORT:-5433}"
PG_DIR="$STATE_DIR/postgres"
DATA="$PG_DIR/data"
RUN="$PG_DIR/run"
PASSFILE="$PG_DIR/password"
DB=prefect
DB_USER=prefect

pg_bin() {
    local dir
    dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
    [ -n "$dir" ] && [ -x "$dir/postgres" ] || die "PostgreSQL is not installed (apt-get install postgresql)"
    printf '%s\n' "$dir"
}

# runuser lives in /usr/sbin, which a plain user's PATH may lack
RUNUSER="$(command -v runuser || echo /usr/sbin/runuser)"

# as_owner CMD... : run CMD as the cluster's owner (the postgres user when we are root)
as_owner() {
    if [ "$(id -u)" = 0 ]; then "$RUNUSER" -u postgres -- "$@"; else "$@"; fi
}

db_url() {
    printf 'postgresql+asyncpg://%s:%s@127.0.0.1:%s/%s\n' "$DB_USER" "$(cat "$PASSFILE")" "$PG_PORT" "$DB"
}

print_env() {
    printf 'export PG_PORT=%q\n' "$PG_PORT"
}

init_cluster() {
    local bin="$1"
    mkdir -p "$PG_DIR" "$RUN"
    # the owner must reach its folders: under a private parent (a test's tmp dir) a root caller opens them
    if [ "$(id -u)" = 0 ]; then
        chown postgres "$PG_DIR" "$RUN"
        local d="$PG_DIR"
        while [ "$d" != / ]; do d="$(dirname "$d")"; chmod o+x "$d" 2>/dev/null || true; done
    fi
    if [ ! -s "$DATA/PG_VERSION" ]; then
        umask 077
        head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$PASSFILE"
        [ "$(id -u)" = 0 ] && chown postgres "$PASSFILE"
        as_owner "$bin/initdb" -D "$DATA" -U "$DB_USER" --pwfile="$PASSFILE" --auth=scram-sha-256 \
            --encoding=UTF8 --locale=C >>"$LOG_DIR/$NAME.log" 2>&1 || die "initdb failed (see $LOG_DIR/$NAME.log)"
        log "$NAME cluster created in $DATA"
    fi
}

case "${1:-}" in
start)
    bin="$(pg_bin)"
    mkdir -p "$LOG_DIR"
    if is_running "$NAME"; then
        log "$NAME already running (pid $(cat "$(pidfile "$NAME")"))"
    else
        port_free "$PG_PORT" || die "127.0.0.1:$PG_PORT is already in use"
        init_cluster "$bin"
        # connection slots for a busy Prefect server (its pool) and the flows' clients
        start_bg "$NAME" bash -c 'if [ "$(id -u)" = 0 ]; then exec "$0" -u postgres -- "$@"; else exec "$@"; fi' \
            "$RUNUSER" "$bin/postgres" -D "$DATA" -h 127.0.0.1 -p "$PG_PORT" -k "$RUN" -c max_connections=200 \
            -c shared_buffers=128MB -c fsync=on
    fi
    wait_for "$NAME" 60 "accept connections" "$bin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" \
        || die "$NAME failed to start"
    if ! PGPASSWORD="$(cat "$PASSFILE")" "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U "$DB_USER" -d postgres -tAc \
            "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1; then
        PGPASSWORD="$(cat "$PASSFILE")" "$bin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U "$DB_USER" "$DB"
        log "database $DB created"
    fi
    log "$NAME ready on 127.0.0.1:$PG_PORT (data $DATA)"
    write_record "$NAME" PG_PORT
    print_env
    ;;
stop)
    stop_bg "$NAME" 30
    drop_record "$NAME"
    ;;
status)
    bin="$(pg_bin)"
    report_status "$NAME" "accepting connections on 127.0.0.1:$PG_PORT" "not accepting connections" \
        "$bin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" || exit $?
    ;;
env)
    print_env
    ;;
url)
    is_running "$NAME" || die "$NAME is not running (infra/postgres.sh start)"
    db_url
    ;;
*)
    echo "usage: $0 start|stop|status|env|url" >&2
    exit 2
    ;;
esac
