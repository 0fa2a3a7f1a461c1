#!/usr/bin/env bash
# Create a user on an MLflow server that runs the basic-auth app (server.sh with MLFLOW_AUTH=basic,
# or mlflow.yaml), or set a new password if the user exists. An admin does it: the admin's
# credentials come from the environment, the new user's password from MLFLOW_NEW_USER_PASSWORD
# (or a silent prompt), never from an argument.
#
#   export MLFLOW_TRACKING_URI=http://127.0.0.1:5000 MLFLOW_TRACKING_USERNAME=admin
#   read -rs MLFLOW_TRACKING_PASSWORD && export MLFLOW_TRACKING_PASSWORD   # the admin's password
#   MLFLOW_NEW_USER_PASSWORD="$(openssl rand -hex 24)" clusters/mlflow/create-user.sh leebert-sweep
#   clusters/mlflow/create-user.sh alice --admin                          # prompts for alice's password
#
# The sweep and platform/register.py then run with MLFLOW_TRACKING_USERNAME=leebert-sweep and
# MLFLOW_TRACKING_PASSWORD set to that password (on Kubernetes: the leebert-mlflow-sweep Secret).
# A user owns (MANAGE) what it creates; everyone else gets the server's default_permission.
set -euo pipefail

fail() { echo "error: $*" >&2; exit 2; }

[ $# -ge 1 ] && [ -n "$1" ] || fail "usage: $0 USERNAME [--admin]  (see the header of this script)"
NEW_USER="$1"
ADMIN_FLAG="${2:-}"
[ -z "$ADMIN_FLAG" ] || [ "$ADMIN_FLAG" = "--admin" ] || fail "unknown option '$ADMIN_FLAG'; only --admin"
[ -n "${MLFLOW_TRACKING_URI:-}" ] || fail "set MLFLOW_TRACKING_URI to the server, e.g. http://127.0.0.1:5000"
[ -n "${MLFLOW_TRACKING_USERNAME:-}" ] && [ -n "${MLFLOW_TRACKING_PASSWORD:-}" ] \
    || fail "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to an admin's credentials"
if [ -z "${MLFLOW_NEW_USER_PASSWORD:-}" ]; then
    [ -t 0 ] || fail "set MLFLOW_NEW_USER_PASSWORD (no terminal to prompt on)"
    read -rsp "password for $NEW_USER: " MLFLOW_NEW_USER_PASSWORD && echo >&2
fi
[ ${#MLFLOW_NEW_USER_PASSWORD} -ge 12 ] || fail "the new password must be at least 12 characters"

MLFLOW="$(command -v mlflow)" || fail "mlflow is not on PATH; activate the project's venv (pip install -e .)"
PYTHON="$(dirname "$MLFLOW")/python"
[ -x "$PYTHON" ] || PYTHON=python3
export NEW_USER ADMIN_FLAG MLFLOW_NEW_USER_PASSWORD
exec "$PYTHON" - <<'PY'
import os
import sys

from mlflow.exceptions import MlflowException, RestException
from mlflow.server import get_app_client

uri, name = os.environ["MLFLOW_TRACKING_URI"], os.environ["NEW_USER"]
client = get_app_client("basic-auth", tracking_uri=uri)  # authenticates with MLFLOW_TRACKING_USERNAME/PASSWORD
try:
    try:
        client.create_user(name, os.environ["MLFLOW_NEW_USER_PASSWORD"])
        action = "created"
    except RestException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        client.update_user_password(name, os.environ["MLFLOW_NEW_USER_PASSWORD"])
        action = "exists; password updated"
    if os.environ.get("ADMIN_FLAG") == "--admin":
        client.update_user_admin(name, True)
        action += ", admin"
except MlflowException as err:
    sys.exit(f"error: {uri}: {str(err).splitlines()[0]}")
print(f"user {name} on {uri}: {action}")
PY
