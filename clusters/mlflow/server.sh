#!/usr/bin/env bash
# MLflow tracking server for sweeps: runs, artifacts and the model registry in one place.
#
#   clusters/mlflow/server.sh                                   # 127.0.0.1:5000, store in ~/mlflow
#   MLFLOW_STORE=runs/sweeps/<name> clusters/mlflow/server.sh   # serve one local sweep's store
#   python platform/sweep.py --tracking-uri http://127.0.0.1:5000
#
# Environment (all optional):
#   MLFLOW_HOST / MLFLOW_PORT        where to listen (default 127.0.0.1:5000; the sweep driver runs
#                                    on the same node, so nothing needs to listen publicly)
#   MLFLOW_STORE                     folder for the default sqlite DB and artifacts (default ~/mlflow)
#   MLFLOW_BACKEND_STORE_URI         tracking + registry database (default sqlite:///$MLFLOW_STORE/mlflow.db;
#                                    postgresql://user:pass@host/db for a shared, durable store)
#   MLFLOW_ARTIFACTS_DESTINATION     artifact root (default $MLFLOW_STORE/mlartifacts; s3://bucket/prefix
#                                    needs boto3 and AWS credentials)
#   MLFLOW_WORKERS                   server worker processes (default 2)
set -euo pipefail

HOST="${MLFLOW_HOST:-127.0.0.1}"
PORT="${MLFLOW_PORT:-5000}"
STORE="${MLFLOW_STORE:-$HOME/mlflow}"
mkdir -p "$STORE"
STORE="$(cd "$STORE" && pwd)"
BACKEND="${MLFLOW_BACKEND_STORE_URI:-sqlite:///$STORE/mlflow.db}"
ARTIFACTS="${MLFLOW_ARTIFACTS_DESTINATION:-$STORE/mlartifacts}"

echo "mlflow server: http://$HOST:$PORT  backend $BACKEND  artifacts $ARTIFACTS" >&2
exec mlflow server \
    --backend-store-uri "$BACKEND" \
    --artifacts-destination "$ARTIFACTS" \
    --host "$HOST" --port "$PORT" \
    --workers "${MLFLOW_WORKERS:-2}"
