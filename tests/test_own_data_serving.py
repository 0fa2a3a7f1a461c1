"""Your own data end to end (issue 21): a smoke sweep on a CSV the test writes (string labels, a
column named `review`) registers `leebert-reviews`, and `mlflow models serve` answers POSTs with the
task's own column name with label names; the old `sentence` column is refused with a 400 that says
what to send."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import pytest
import requests

from test_sweep_helpers import model_server, run_sweep_cli

pytestmark = pytest.mark.integration

MR_TRAIN = Path(__file__).resolve().parents[1] / "trainers" / "task_data" / "mr" / "train.tsv.gz"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("own-sweep")
    rows = [line.split("\t") for line in gzip.open(MR_TRAIN, "rt").read().splitlines()[1:]][::20][:300]
    with open(root / "reviews.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "sentiment"])
        writer.writerows((sentence, "positive" if label == "1" else "negative") for _, label, sentence in rows)
    proc = run_sweep_cli(root, "own", "--train-file", str(root / "reviews.csv"), "--text-columns", "review",
                         "--label-column", "sentiment", "--task", "reviews", "--arms", "fixed", "--trials", "1",
                         "--set", "train.epochs=1", "--set", "grace_period=1", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "leebert-reviews" in proc.stdout
    uri = f"sqlite:///{root / 'own' / 'mlflow.db'}"
    with model_server(uri, "models:/leebert-reviews@champion", root, ready_s=180) as base:
        yield {"base": base, "uri": uri}


def test_served_predictions_take_the_tasks_columns_and_carry_label_names(served):
    answer = requests.post(f"{served['base']}/invocations", timeout=60, json={"dataframe_records": [
        {"review": "a gripping , funny and moving film ."}, {"review": "tedious and badly acted ."}]})
    assert answer.status_code == 200, answer.text
    rows = answer.json()["predictions"]
    assert len(rows) == 2
    for row in rows:
        assert row["label_name"] == ["negative", "positive"][row["label"]]
        assert len(row["probabilities"]) == 2 and abs(sum(row["probabilities"]) - 1) < 1e-6
    refused = requests.post(f"{served['base']}/invocations", timeout=60,
                            json={"dataframe_records": [{"sentence": "a fine film ."}]})
    assert 400 <= refused.status_code < 500 and "review" in refused.text
