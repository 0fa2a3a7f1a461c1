"""The served model over real HTTP: the session's smoke sweep registers `leebert-mr`, then
`mlflow models serve -m models:/leebert-mr@champion --env-manager local` on 127.0.0.1 answers
POSTs of real MR sentences with the registered model's labels and exit layers, answers every bad
request with a 4xx and a message that says what to send, and keeps answering good requests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import requests

from test_sweep_helpers import model_server, sweep_env

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
SENTENCES = [
    "a gripping , funny and moving film .",
    "tedious and badly acted .",
    "one of the most beautiful films of the year , with a wonderful cast .",
    "the plot makes no sense and the jokes fall flat .",
    "it 's fine .",
    "an utterly charming , witty and heartfelt comedy that never once hits a false note .",
]


@pytest.fixture(scope="module")
def served(smoke_sweep):
    root, uri = smoke_sweep["root"], smoke_sweep["uri"]  # the session's smoke sweep (tests/conftest.py)
    with model_server(uri, "models:/leebert-mr@champion", root) as base:
        yield {"base": base, "uri": uri}


def post(base: str, payload) -> requests.Response:
    return requests.post(f"{base}/invocations", json=payload, timeout=60)


def test_served_predictions_equal_the_registered_model(served, monkeypatch):
    import mlflow

    from test_sweep_helpers import use_mlflow_uri

    response = post(served["base"], {"dataframe_split": {"columns": ["sentence"], "data": [[s] for s in SENTENCES]}})
    assert response.status_code == 200, response.text
    rows = pd.DataFrame(response.json()["predictions"])
    assert len(rows) == len(SENTENCES)
    assert rows["label"].isin([0, 1]).all()
    assert rows["exit_layer"].between(1, 3).all()  # tiny-random has 3 layers
    for probabilities in rows["probabilities"]:
        assert len(probabilities) == 2 and sum(probabilities) == pytest.approx(1.0, abs=1e-5)

    use_mlflow_uri(monkeypatch, served["uri"])
    local = mlflow.pyfunc.load_model("models:/leebert-mr@champion").predict(pd.DataFrame({"sentence": SENTENCES}))
    assert rows["label"].tolist() == local["label"].tolist()
    assert rows["exit_layer"].tolist() == local["exit_layer"].tolist()


@pytest.mark.parametrize("payload, fragment", [
    ({"dataframe_split": {"columns": ["text"], "data": [["a fine film ."]]}}, "sentence"),  # a one-field model
    # (extra columns beside the right ones are dropped by MLflow's schema enforcement, with a warning)
    ({"dataframe_split": {"columns": ["sentence"], "data": [[None]]}}, "string"),
    ({"dataframe_split": {"columns": ["sentence"], "data": [[42]]}}, "string"),
    ({"dataframe_split": {"columns": ["sentence"], "data": [["   "]]}}, "empty"),
    ({"dataframe_split": {"columns": ["sentence"], "data": [["a fine film ."]] * 257}}, "256"),
])
def test_bad_requests_get_a_4xx_that_says_what_to_send(served, payload, fragment):
    response = post(served["base"], payload)
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:500])
    assert fragment in response.text, response.text[:1000]
    good = post(served["base"], {"dataframe_split": {"columns": ["sentence"], "data": [["a fine film ."]]}})
    assert good.status_code == 200, good.text  # the server keeps answering


def test_mlflow_models_predict_scores_a_csv_of_any_size(served, tmp_path):
    """Batch scoring of a file far over the server's 256-row limit: `mlflow models predict` runs the
    model in process, where no row limit applies; one prediction per row, in order."""
    import json

    sentences = (SENTENCES * 200)[:1000]
    pd.DataFrame({"sentence": sentences}).to_csv(tmp_path / "big.csv", index=False)
    env = {**sweep_env(PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}"), "MLFLOW_TRACKING_URI": served["uri"]}
    proc = subprocess.run([str(BIN / "mlflow"), "models", "predict", "-m", "models:/leebert-mr@champion",
                           "-i", str(tmp_path / "big.csv"), "-t", "csv", "-o", str(tmp_path / "out.json"),
                           "--env-manager", "local"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = pd.DataFrame(json.loads((tmp_path / "out.json").read_text())["predictions"])
    assert len(rows) == 1000 and rows["exit_layer"].between(1, 3).all()
    first = rows.iloc[:len(SENTENCES)]
    for start in range(0, 1000, len(SENTENCES)):  # the same sentence gets the same answer wherever it is
        block = rows.iloc[start:start + len(SENTENCES)]
        assert block["label"].tolist() == first["label"].tolist()[:len(block)]
        assert block["exit_layer"].tolist() == first["exit_layer"].tolist()[:len(block)]
