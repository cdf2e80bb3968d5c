#!/usr/bin/env bash
# Local Prefect 3 API server (with UI) on 127.0.0.1:${PREFECT_PORT:-4200}.
#   infra/prefect-server.sh start|stop|status|env
# State (profiles, lease files; the SQLite db unless infra/postgres.sh runs PostgreSQL, which it then
# uses) lives in ${TOPOZARR_STATE:-.state}/prefect-home.
# `env` prints the exports a shell needs to talk to it. While it runs, the port and home it was
# started with (recorded in $TOPOZARR_STATE/prefect-server.env) are used, whatever PREFECT_PORT says.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

NAME=prefect-server
HEALTH_URL="http://127.0.0.1:${PREFECT_PORT}/api/health"
STARTUP_TIMEOUT="${PREFECT_STARTUP_TIMEOUT:-90}"

SERVER_API_URL="http://127.0.0.1:${PREFECT_PORT}/api"

print_env() {
    printf 'export PREFECT_HOME=%q\n' "$PREFECT_HOME"
    printf 'export PREFECT_API_URL=%q\n' "$SERVER_API_URL"
    printf 'export PREFECT_PORT=%q\n' "$PREFECT_PORT"
}

case "${1:-}" in
start)
    require_bin prefect
    if is_running "$NAME"; then
        log "$NAME already running (pid $(cat "$(pidfile "$NAME")"))"
    else
        port_free "$PREFECT_PORT" || die "127.0.0.1:$PREFECT_PORT is already in use"
        mkdir -p "$PREFECT_HOME"
        # The UI calls the API at PREFECT_UI_API_URL; keep it on loopback too.
        # The repossessor frees the slots of expired concurrency leases (a killed holder's); every 5 s
        # instead of 15 s, so with the write tasks' 60 s leases they are back at most ~65 s after a crash.
        # Leases on disk, not in the server's memory: a restart would forget them and leak their slots.
        # The database: PostgreSQL when infra/postgres.sh runs it (as production does: SQLite serialises
        # every write of the server and answers "database is locked" under load), else SQLite in PREFECT_HOME.
        # The connection URL holds the database's password: it goes to the server's environment, never to a
        # log or a command line.
        if is_running postgres; then
            PREFECT_SERVER_DATABASE_CONNECTION_URL="$("$INFRA_DIR/postgres.sh" url)"
            export PREFECT_SERVER_DATABASE_CONNECTION_URL
            log "$NAME uses PostgreSQL on 127.0.0.1:$(recorded postgres PG_PORT)"
        else
            log "$NAME uses SQLite in $PREFECT_HOME (start infra/postgres.sh first for PostgreSQL)"
        fi
        # (No comment line inside the continuation below: it would end the command there.)
        PREFECT_UI_API_URL="http://127.0.0.1:${PREFECT_PORT}/api" \
        PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS="${PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS:-5}" \
        PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE="${PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE:-prefect.server.concurrency.lease_storage.filesystem}" \
            start_bg "$NAME" "$BIN/prefect" server start \
            --host 127.0.0.1 --port "$PREFECT_PORT" --analytics-off
    fi
    wait_http "$HEALTH_URL" "$STARTUP_TIMEOUT" "$NAME" || die "$NAME failed to start"
    log "$NAME healthy at http://127.0.0.1:${PREFECT_PORT} (UI), API ${HEALTH_URL%/health}"
    PREFECT_API_URL="$SERVER_API_URL" write_record "$NAME" PREFECT_HOME PREFECT_API_URL PREFECT_PORT
    print_env
    ;;
stop)
    stop_bg "$NAME" 30
    drop_record "$NAME"
    ;;
status)
    report_status "$NAME" "healthy at $HEALTH_URL" "$HEALTH_URL not answering" \
        curl -fsS -o /dev/null --max-time 2 "$HEALTH_URL" || exit $?
    ;;
env)
    print_env
    ;;
*)
    echo "usage: $0 start|stop|status|env" >&2
    exit 2
    ;;
esac
