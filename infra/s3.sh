#!/usr/bin/env bash
# S3-compatible endpoint for development: moto server on 127.0.0.1:${S3_PORT:-5555}
# with bucket ${S3_BUCKET:-topozarr}. Data is in memory only (gone after stop).
#   infra/s3.sh start|stop|status|env
# `start` and `env` print the exports for boto3 / obstore / icechunk, e.g.
#   eval "$(infra/s3.sh env)"
# While it runs, the port and bucket it was started with (recorded in $TOPOZARR_STATE/s3.env)
# are the ones status/env report, whatever S3_PORT / S3_BUCKET say.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

NAME=s3
use_recorded "$NAME" S3_PORT S3_BUCKET   # while it runs: the recorded port and bucket
S3_PORT="${S3_PORT:-5555}"
S3_BUCKET="${S3_BUCKET:-topozarr}"
ENDPOINT="http://127.0.0.1:${S3_PORT}"
AWS_ENDPOINT_URL="$ENDPOINT" AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 AWS_ALLOW_HTTP=true
ENV_VARS=(AWS_ENDPOINT_URL AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION AWS_DEFAULT_REGION
          AWS_ALLOW_HTTP S3_BUCKET S3_PORT)

print_env() { local v; for v in "${ENV_VARS[@]}"; do printf 'export %s=%q\n' "$v" "${!v}"; done; }

case "${1:-}" in
start)
    require_bin moto_server
    if ! is_running "$NAME"; then
        port_free "$S3_PORT" || die "127.0.0.1:$S3_PORT is already in use"
        start_bg "$NAME" "$BIN/moto_server" -H 127.0.0.1 -p "$S3_PORT"
    else
        log "$NAME already running (pid $(cat "$(pidfile "$NAME")"))"
    fi
    wait_http "$ENDPOINT/moto-api/" 30 "$NAME" || die "$NAME failed to start"
    # Create the bucket (idempotent) without awscli.
    ENDPOINT="$ENDPOINT" S3_BUCKET="$S3_BUCKET" "$BIN/python" - <<'PY'
import os
import boto3
s3 = boto3.client("s3", endpoint_url=os.environ["ENDPOINT"], region_name="us-east-1",
                  aws_access_key_id="testing", aws_secret_access_key="testing")
bucket = os.environ["S3_BUCKET"]
if bucket not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
    s3.create_bucket(Bucket=bucket)
print(f"bucket s3://{bucket} ready at {os.environ['ENDPOINT']}", flush=True)
PY
    write_record "$NAME" "${ENV_VARS[@]}"
    print_env
    ;;
stop)
    stop_bg "$NAME" 10
    drop_record "$NAME"
    ;;
status)
    if is_running "$NAME" && curl -fsS -o /dev/null --max-time 2 "$ENDPOINT/moto-api/"; then
        echo "$NAME: running (pid $(cat "$(pidfile "$NAME")")) at $ENDPOINT"
    else
        echo "$NAME: not running"; exit 3
    fi
    ;;
env)
    print_env
    ;;
*)
    echo "usage: $0 start|stop|status|env" >&2
    exit 2
    ;;
esac
