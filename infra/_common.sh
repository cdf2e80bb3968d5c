# Shared helpers for the infra/*.sh scripts. Source it; do not execute it.
# Everything binds to 127.0.0.1 only. Each service is started in its own
# session/process group (setsid) and its pid (== pgid) is written to
# $STATE_DIR/<name>.pid, so `stop` can end exactly that group and nothing else.
#
# Recorded addresses: once a service is up, `start` writes the exports that reach it (ports,
# URLs, bucket, ...) to $STATE_DIR/<name>.env and refreshes $STATE_DIR/stack.env (the union
# over the services running, plus TOPOZARR_STATE). While a service runs, its recorded values
# are used by every script (status, env, stop, and the clients: setup, worker), whatever the
# environment says: one state dir holds one instance of each service, so a differing
# environment value is reported and ignored. Environment values (or the defaults) only choose
# the addresses of a service that is being started. A new shell therefore finds the running
# stack through the state dir alone: `source .state/stack.env`.

INFRA_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$INFRA_DIR/.." && pwd)"

# Paths given relative are relative to the repo root, not to the caller's cwd.
_abs() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$REPO_ROOT/$1" ;; esac; }

VENV_DIR="$(_abs "${VENV:-.venv}")"
BIN="$VENV_DIR/bin"
STATE_DIR="$(_abs "${TOPOZARR_STATE:-.state}")"
LOG_DIR="$STATE_DIR/logs"   # created on first start_bg

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

require_bin() { [ -x "$BIN/$1" ] || die "$BIN/$1 not found (set VENV=... or run 'make' first)"; }

pidfile() { printf '%s/%s.pid\n' "$STATE_DIR" "$1"; }
recordfile() { printf '%s/%s.env\n' "$STATE_DIR" "$1"; }
STACK_ENV="$STATE_DIR/stack.env"
RECORDED_SERVICES=(s3 postgres prefect-server dask-scheduler worker)   # stack.env order

# is_running NAME -> 0 if the pid in NAME.pid is alive
is_running() {
    local pf; pf="$(pidfile "$1")"
    [ -f "$pf" ] || return 1
    local pid; pid="$(cat "$pf" 2>/dev/null || true)"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

# report_status NAME READY UNREADY CHECK... -> one status line; returns 0 when NAME runs and CHECK
# succeeds ("running ..., READY"), 1 when it runs but CHECK fails ("... but UNREADY"), 3 when not running.
report_status() {
    local name="$1" ready="$2" unready="$3"; shift 3
    if is_running "$name" && "$@"; then
        echo "$name: running (pid $(cat "$(pidfile "$name")")), $ready"
    elif is_running "$name"; then
        echo "$name: process running (pid $(cat "$(pidfile "$name")")) but $unready"
        return 1
    else
        echo "$name: not running"
        return 3
    fi
}

# recorded NAME VAR -> print VAR's value recorded for NAME; fails if NAME is not running or
# recorded no VAR. Records are `export VAR=<value quoted by printf %q>` lines written by us.
recorded() {
    local rec line
    rec="$(recordfile "$1")"
    is_running "$1" && [ -f "$rec" ] || return 1
    line="$(grep -m 1 "^export $2=" "$rec")" || return 1
    eval "printf '%s\n' ${line#export "$2"=}"
}

# use_recorded NAME VAR... : while NAME runs, set (and export) each VAR to its recorded value.
use_recorded() {
    local name="$1" var val; shift
    for var in "$@"; do
        val="$(recorded "$name" "$var")" || continue
        if [ -n "${!var+set}" ] && [ "${!var}" != "$val" ]; then
            log "$var=${!var} ignored: $name is running with $var=$val (recorded in $(recordfile "$name")); stop it to change it"
        fi
        printf -v "$var" '%s' "$val"
        export "${var?}"
    done
}

# write_record NAME VAR... : record the current values of VARs for NAME (call once NAME is up)
write_record() {
    local name="$1" var rec; shift
    rec="$(recordfile "$name")"
    mkdir -p "$STATE_DIR"
    { for var in "$@"; do printf 'export %s=%q\n' "$var" "${!var}"; done; } >"$rec.tmp"
    mv -f "$rec.tmp" "$rec"
    write_stack_env
}

drop_record() { rm -f "$(recordfile "$1")"; write_stack_env; }

# stack.env: the records of the services that are running (first value of a variable wins),
# plus TOPOZARR_STATE; removed when nothing is recorded.
write_stack_env() {
    local n recs=()
    for n in "${RECORDED_SERVICES[@]}"; do
        if is_running "$n" && [ -f "$(recordfile "$n")" ]; then recs+=("$(recordfile "$n")"); fi
    done
    if [ "${#recs[@]}" -eq 0 ]; then rm -f "$STACK_ENV"; return 0; fi
    {
        echo "# written by infra/*.sh: the addresses of the services running from this state dir"
        printf 'export TOPOZARR_STATE=%q\n' "$STATE_DIR"
        awk -F= '!seen[$1]++' "${recs[@]}"
    } >"$STACK_ENV.tmp"
    mv -f "$STACK_ENV.tmp" "$STACK_ENV"
}

# use_s3_record_if_unset : a client started from a shell without the S3 exports (a new shell,
# a restart) gets the recorded ones of the running S3 endpoint.
use_s3_record_if_unset() {
    local rec; rec="$(recordfile s3)"
    if [ -z "${AWS_ENDPOINT_URL:-}" ] && is_running s3 && [ -f "$rec" ]; then
        # shellcheck disable=SC1090
        . "$rec"
        log "S3 settings from $rec (AWS_ENDPOINT_URL=$AWS_ENDPOINT_URL)"
    fi
}

# Prefect CLI/client state (profiles, sqlite db, memo store) never goes to ~/.prefect.
# The server's own address: the recorded one while it runs (see above).
use_recorded prefect-server PREFECT_PORT PREFECT_HOME
export PREFECT_HOME="${PREFECT_HOME:-$STATE_DIR/prefect-home}"
export PREFECT_SERVER_ANALYTICS_ENABLED=false   # no outbound telemetry (there is no network)
export PREFECT_PORT="${PREFECT_PORT:-4200}"
# The API clients talk to (setup, worker): an explicit PREFECT_API_URL wins, else the server's.
export PREFECT_API_URL="${PREFECT_API_URL:-http://127.0.0.1:${PREFECT_PORT}/api}"

# port_free PORT -> 0 if nothing listens on 127.0.0.1:PORT
port_free() {
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# start_bg NAME CMD... : run CMD detached in a new session, log to $LOG_DIR/NAME.log
start_bg() {
    local name="$1"; shift
    if is_running "$name"; then
        log "$name already running (pid $(cat "$(pidfile "$name")"))"
        return 0
    fi
    mkdir -p "$STATE_DIR" "$LOG_DIR"
    local pf; pf="$(pidfile "$name")"
    rm -f "$pf"
    # setsid => a new session and process-group leader: pid == pgid. The inner
    # shell writes its own pid (whether or not setsid had to fork) and then
    # execs the command, so the pid file holds the service's pid/pgid.
    (cd "$REPO_ROOT" && exec setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pf" "$@" \
        </dev/null >>"$LOG_DIR/$name.log" 2>&1) &
    disown $! 2>/dev/null || true
    local i
    for ((i = 0; i < 50; i++)); do [ -s "$pf" ] && break; sleep 0.1; done
    [ -s "$pf" ] || die "$name: no pid file written"
    log "$name started (pid $(cat "$pf"), log $LOG_DIR/$name.log)"
}

# stop_bg NAME [TIMEOUT_S] : SIGTERM the process group from NAME.pid, SIGKILL after timeout
stop_bg() {
    local name="$1" timeout="${2:-20}" pf pid i
    pf="$(pidfile "$name")"
    if [ ! -f "$pf" ]; then log "$name: not running (no pid file)"; return 0; fi
    pid="$(cat "$pf" 2>/dev/null || true)"
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
        log "$name: stale pid file removed"; rm -f "$pf"; return 0
    fi
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < timeout * 10; i++)); do
        kill -0 -- "-$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 -- "-$pid" 2>/dev/null; then
        log "$name: still alive after ${timeout}s, sending SIGKILL to group $pid"
        kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    rm -f "$pf"
    log "$name stopped"
}

# wait_for NAME TIMEOUT_S WHAT PROBE... : poll PROBE until it succeeds; fail early if NAME exits
wait_for() {
    local name="$1" timeout="$2" what="$3" i
    shift 3
    for ((i = 0; i < timeout * 4; i++)); do
        if "$@"; then return 0; fi
        if ! is_running "$name"; then
            log "$name exited during startup; last log lines:"; tail -n 30 "$LOG_DIR/$name.log" >&2 || true
            rm -f "$(pidfile "$name")"
            return 1
        fi
        sleep 0.25
    done
    log "$name did not $what within ${timeout}s; last log lines:"
    tail -n 30 "$LOG_DIR/$name.log" >&2 || true
    return 1
}

_http_ok() { curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null; }
_port_taken() { ! port_free "$1"; }

# wait_http URL TIMEOUT_S NAME : poll until URL answers 2xx
wait_http() { wait_for "$3" "$2" "answer $1" _http_ok "$1"; }

# wait_port PORT TIMEOUT_S NAME : poll until something listens on 127.0.0.1:PORT
wait_port() { wait_for "$3" "$2" "listen on 127.0.0.1:$1" _port_taken "$1"; }
