#!/usr/bin/env bash
# Regenerate docs/mlflow-frontiers.png: the MLflow UI comparing the arms' speed-accuracy frontiers,
# docs/mlflow-experiment.png: the first screen of the link the sweep prints (the experiment's
# charts in the model-training view), and docs/mlflow-run.png: a final/<arm> run's overview (its
# description names the axes).
#
#   docs/make_screenshot.sh [SWEEP_DIR] [OUTPUT_PNG] [EXPERIMENT_PNG] [RUN_PNG]
#
# SWEEP_DIR defaults to the newest runs/sweeps/demo-* (run `python platform/sweep.py` first).
# It starts `mlflow server` on 127.0.0.1 (a free port) on that sweep's store, opens the UI's own
# chart of the `frontier/accuracy` metric history of each arm's search run and `final/<arm>` run
# (step = speed-up × 100; accuracy as a fraction; each arm in the colour its runs are tagged with,
# `mlflow.runColor`, darker for the final stage) in headless Chromium, saves the screenshots and
# stops the server it started. Needs Debian's chromium (apt-get install -y chromium) and the venv's mlflow.
# The metric page (mlflow-frontiers.png) draws with the UI's own palette: only the experiment's
# charts and runs table take the runs' colour tags.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
SWEEP="${1:-$(ls -1td "$ROOT"/runs/sweeps/demo-*/ 2>/dev/null | head -1)}"
OUT="${2:-$ROOT/docs/mlflow-frontiers.png}"
OUT_EXPERIMENT="${3:-$ROOT/docs/mlflow-experiment.png}"
OUT_RUN="${4:-$ROOT/docs/mlflow-run.png}"
METRICS="${METRICS:-frontier/accuracy}"   # comma-separated, e.g. frontier/accuracy,frontier_test/accuracy
# BUDGET_MS: how long the page may render (Chromium's virtual time); raise it on a loaded machine
if [ -z "$SWEEP" ] || [ ! -f "$SWEEP/mlflow.db" ]; then
    echo "error: no sweep store at '${SWEEP}' (run python platform/sweep.py first)" >&2
    exit 2
fi
SWEEP="$(cd "$SWEEP" && pwd)"
PORT="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
# Chromium resolves *.localhost to 127.0.0.1. A name other than "localhost" also keeps the UI's
# assistant side panel (shown only to localhost visitors) from covering the chart.
HOST="mlflow.localhost"

MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true "$(dirname "$PY")/mlflow" server \
    --backend-store-uri "sqlite:///$SWEEP/mlflow.db" --host 127.0.0.1 --port "$PORT" --workers 1 \
    --allowed-hosts "$HOST:$PORT,127.0.0.1:$PORT" --cors-allowed-origins "http://$HOST:$PORT" \
    > "$SWEEP/mlflow-server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 90); do
    "$PY" -c "import urllib.request, sys; urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=2)" 2>/dev/null && break
    sleep 1
done

URL="$("$PY" - "$SWEEP" "http://$HOST:$PORT" "$METRICS" "$ROOT" <<'PYEOF'
import json, sys, urllib.parse as up
from mlflow import MlflowClient

sweep, base, metrics = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
sys.path.insert(0, sys.argv[4])
from trainers.layout import ROLE_ARM, ROLE_FINAL, TAG_ARM, TAG_ROLE, migrate_experiment, tag_filter

name = json.load(open(f"{sweep}/sweep.json"))["name"]
client = MlflowClient(f"sqlite:///{sweep}/mlflow.db")
experiment = client.get_experiment_by_name(name)
migrate_experiment(client, experiment.experiment_id)  # a sweep of an older version: its old tags
arms = json.load(open(f"{sweep}/sweep.json"))["arms"]
runs = []  # each arm's search run, then its final run (a sweep without a final stage has none)
for role in (ROLE_ARM, ROLE_FINAL):
    found = {r.data.tags[TAG_ARM]: r.info.run_id
             for r in client.search_runs([experiment.experiment_id], tag_filter(**{TAG_ROLE: role}))}
    runs += [found[arm] for arm in arms if arm in found]
q = lambda value: up.quote(json.dumps(value), safe="")
# the link platform/sweep.py prints
print(f"{base}/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning&compareRunsMode=CHART")
print(f"{base}/#/metric?runs={q(runs)}&metric={q(metrics[0])}"
      f"&experiments={q([experiment.experiment_id])}&plot_metric_keys={q(metrics)}&plot_layout=%7B%7D"
      "&x_axis=step&y_axis_scale=linear&line_smoothness=1&show_point=true&deselected_curves=%5B%5D"
      "&last_linear_y_axis_range=%5B%5D&workflowType=machine_learning")
# the last arm's final run (its search run without a final stage): its description
print(f"{base}/#/experiments/{experiment.experiment_id}/runs/{runs[-1]}?workflowType=machine_learning")
PYEOF
)"
EXPERIMENT_URL="$(echo "$URL" | sed -n 1p)"
METRIC_URL="$(echo "$URL" | sed -n 2p)"
RUN_URL="$(echo "$URL" | sed -n 3p)"
shoot() {  # URL PNG [HEIGHT]
    echo "screenshot of $1" >&2
    chromium --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update \
        --disable-sync --no-first-run --hide-scrollbars --virtual-time-budget="${BUDGET_MS:-20000}" \
        --screenshot="$2" --window-size=1600,"${3:-1000}" "$1" 2>/dev/null
    echo "wrote $2" >&2
}
shoot "$METRIC_URL" "$OUT"
# the link the sweep prints: the experiment's charts in the model-training view, not GenAI
shoot "$EXPERIMENT_URL" "$OUT_EXPERIMENT"
shoot "$RUN_URL" "$OUT_RUN" 900
