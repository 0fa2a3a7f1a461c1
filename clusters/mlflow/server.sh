#!/usr/bin/env bash
# MLflow tracking server for sweeps on one machine or a VM (Kubernetes: mlflow.yaml): runs,
# artifacts and the model registry in one place.
#
#   clusters/mlflow/server.sh                                   # 127.0.0.1:5000, store in ~/mlflow
#   MLFLOW_STORE=runs/sweeps/<name> clusters/mlflow/server.sh   # serve one local sweep's store
#   python platform/sweep.py --tracking-uri http://127.0.0.1:5000   # or export MLFLOW_TRACKING_URI
#
#   # a durable store: Postgres + S3, credentials from the environment
#   read -rs PGPASSWORD && export PGPASSWORD    # or a ~/.pgpass file; read by libpq
#   export AWS_PROFILE=mlflow                   # or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or an instance role
#   MLFLOW_BACKEND_STORE_URI=postgresql://mlflow@db.internal:5432/mlflow \
#   MLFLOW_ARTIFACTS_DESTINATION=s3://my-bucket/mlflow clusters/mlflow/server.sh
#
# Environment (all optional):
#   MLFLOW_HOST / MLFLOW_PORT        where to listen (default 127.0.0.1:5000; a sweep driver on the
#                                    same node needs nothing public)
#   MLFLOW_STORE                     folder for the default sqlite DB and artifacts (default ~/mlflow)
#   MLFLOW_BACKEND_STORE_URI         tracking + registry database (default sqlite:///$MLFLOW_STORE/mlflow.db);
#                                    postgresql://user@host:5432/db needs psycopg2-binary
#   MLFLOW_ARTIFACTS_DESTINATION     artifact root (default $MLFLOW_STORE/mlartifacts); s3://bucket/prefix
#                                    needs boto3; clients upload through this server, so they need no S3 access
#   MLFLOW_WORKERS                   server worker processes (default 2)
#   MLFLOW_AUTH                      basic: MLflow's basic-auth app, every request needs a user (create
#                                    them with create-user.sh); none: no login. Default: none on
#                                    127.0.0.1/localhost, basic on any other address (none is refused there)
#   MLFLOW_SERVER_ENABLE_JOB_EXECUTION  MLflow 3's job runner (default here: false). The platform runs no
#                                    MLflow jobs (they serve GenAI evaluation); enabled, the server starts
#                                    about six huey consumer processes, each importing mlflow
#   MLFLOW_AUTH_CONFIG_PATH          the auth app's config (default: $MLFLOW_STORE/basic_auth.ini, written
#                                    once, users in $MLFLOW_STORE/basic_auth.db)
# Read by libraries, never written into this file or a URI:
#   PGPASSWORD                       the Postgres password (libpq); a password inside the URI is refused
#   AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE   S3 credentials (boto3)
#   MLFLOW_S3_ENDPOINT_URL           MinIO / S3-compatible endpoint
#   MLFLOW_SERVER_ALLOWED_HOSTS      Host headers MLflow answers (default: localhost and private IPs);
#                                    add the DNS name clients use, e.g. mlflow.internal,mlflow.internal:*
#   MLFLOW_AUTH_ADMIN_PASSWORD       with MLFLOW_AUTH=basic: the admin's password, read the first time
#                                    (MLflow ships none); MLFLOW_AUTH_ADMIN_USERNAME (default admin)
#   MLFLOW_FLASK_SERVER_SECRET_KEY   with MLFLOW_AUTH=basic: signs the UI's sessions and CSRF tokens
#                                    (the same for every worker)
# Clients of an authenticating server: MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD.
set -euo pipefail

HOST="${MLFLOW_HOST:-127.0.0.1}"
PORT="${MLFLOW_PORT:-5000}"
STORE="${MLFLOW_STORE:-$HOME/mlflow}"
BACKEND="${MLFLOW_BACKEND_STORE_URI:-}"
ARTIFACTS="${MLFLOW_ARTIFACTS_DESTINATION:-}"

fail() { echo "error: $*" >&2; exit 2; }

MLFLOW="$(command -v mlflow)" || fail "mlflow is not on PATH; activate the project's venv (pip install -e .)"
PYTHON="$(dirname "$MLFLOW")/python"
[ -x "$PYTHON" ] || PYTHON=python3
needs() {  # needs MODULE PACKAGE WHAT
    "$PYTHON" -c "import $1" 2>/dev/null || fail "$3 needs $2 next to mlflow: $PYTHON -m pip install $2"
}

if [[ "$BACKEND" =~ ^[A-Za-z0-9+.-]+://[^/@]*:[^/@]*@ ]]; then
    fail "MLFLOW_BACKEND_STORE_URI holds a password; leave it out (postgresql://user@host:5432/db) and export PGPASSWORD"
fi
case "$BACKEND" in
    postgresql*) needs psycopg2 psycopg2-binary "a postgresql:// backend store" ;;
esac
case "$ARTIFACTS" in
    s3://*) needs boto3 boto3 "an s3:// artifact store" ;;
esac
if [ -z "$BACKEND" ] || [ -z "$ARTIFACTS" ]; then
    mkdir -p "$STORE"
    STORE="$(cd "$STORE" && pwd)"
    BACKEND="${BACKEND:-sqlite:///$STORE/mlflow.db}"
    ARTIFACTS="${ARTIFACTS:-$STORE/mlartifacts}"
fi

case "$HOST" in
    127.0.0.1|localhost|::1) AUTH="${MLFLOW_AUTH:-none}" ;;
    *) AUTH="${MLFLOW_AUTH:-basic}"
       [ "$AUTH" = basic ] || fail "MLFLOW_HOST=$HOST is reachable from other machines: keep MLFLOW_AUTH=basic (or listen on 127.0.0.1)" ;;
esac
APP=()
case "$AUTH" in
    none) ;;
    basic)
        needs flask_wtf "'mlflow[auth]'" "MLFLOW_AUTH=basic (MLflow's basic-auth app)"
        [ -n "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" ] \
            || fail "MLFLOW_AUTH=basic needs MLFLOW_FLASK_SERVER_SECRET_KEY in the environment (e.g. 32 random bytes from openssl rand -hex 32)"
        if [ -z "${MLFLOW_AUTH_CONFIG_PATH:-}" ]; then
            mkdir -p "$STORE"
            STORE="$(cd "$STORE" && pwd)"
            export MLFLOW_AUTH_CONFIG_PATH="$STORE/basic_auth.ini"
            [ -f "$MLFLOW_AUTH_CONFIG_PATH" ] || printf '%s\n' "[mlflow]" "default_permission = READ" \
                "database_uri = sqlite:///$STORE/basic_auth.db" "admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}" \
                "authorization_function = mlflow.server.auth:authenticate_request_basic_auth" \
                "auth_cache_ttl_seconds = 60" > "$MLFLOW_AUTH_CONFIG_PATH"  # one password hash a minute per user
        fi
        APP=(--app-name basic-auth) ;;
    *) fail "MLFLOW_AUTH must be basic or none, not '$AUTH'" ;;
esac

echo "mlflow server: http://$HOST:$PORT  backend $BACKEND  artifacts $ARTIFACTS  auth $AUTH" >&2
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
exec "$MLFLOW" server "${APP[@]}" \
    --backend-store-uri "$BACKEND" \
    --artifacts-destination "$ARTIFACTS" \
    --serve-artifacts \
    --host "$HOST" --port "$PORT" \
    --workers "${MLFLOW_WORKERS:-2}"
