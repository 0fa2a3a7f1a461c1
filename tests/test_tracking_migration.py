"""An MLflow store written before the rename (tag `method`, role `method`) on a real sqlite store:
the Tracker migrates its runs once when it opens the experiment, and a resumed sweep finds them by
the new tags (arm, stage) instead of creating them again."""

from __future__ import annotations

import pytest

from sweeps.records import TrialRecord
from sweeps.tracking import PARENT_TAG, Tracker
from trainers.layout import (ROLE_ARM, ROLE_FINAL, ROLE_TRIAL, SCHEMA_TAG, SCHEMA_VERSION, STAGE_FINAL, STAGE_SEARCH,
                             TAG_ARM, TAG_ROLE, TAG_STAGE, TAG_TRIAL_ID, legacy_tags)

EXPERIMENT = "old-sweep"


def old_store(uri: str) -> dict[str, str]:
    """What a sweep of the previous version wrote: a search run and a final run of clo, a search
    trial and a final seed under them, and a comparison run (no arm)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment(EXPERIMENT, tags={"leebert.sweep": "true"})

    def run(name: str, **tags: str) -> str:
        run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
        client.set_terminated(run_id, status="FINISHED")
        return run_id

    ids = {"search": run("clo", role="method", method="clo", sweep=EXPERIMENT),
           "final": run("final/clo", role="final", method="final/clo", arm="clo", sweep=EXPERIMENT),
           "comparison": run("comparison", role="comparison")}
    ids["trial"] = run("clo-01", **{PARENT_TAG: ids["search"], "role": "trial", "method": "clo", "trial_id": "t1",
                                    "logged": "true"})
    ids["seed"] = run("final/clo-01", **{PARENT_TAG: ids["final"], "role": "trial", "method": "final/clo",
                                         "trial_id": "s1", "logged": "true"})
    return ids


def test_legacy_tags_split_the_old_method_tag_into_arm_and_stage():
    assert legacy_tags({"role": "method", "method": "clo"}) == {"arm": "clo", "stage": "search", "role": "arm"}
    assert legacy_tags({"role": "final", "method": "final/fixed-pabee"}) == {"arm": "fixed-pabee", "stage": "final"}
    assert legacy_tags({"role": "trial", "method": "final/clo"}) == {"arm": "clo", "stage": "final"}
    assert legacy_tags({"role": "trial", "method": "bilevel"}) == {"arm": "bilevel", "stage": "search"}
    assert legacy_tags({"role": "comparison"}) is None
    assert legacy_tags({"role": "trial", "arm": "clo", "stage": "search"}) is None  # already migrated


def test_a_tracker_migrates_an_old_store_once_and_finds_its_runs_by_the_new_tags(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ids = old_store(uri)

    tracker = Tracker(uri, EXPERIMENT, (tmp_path / "artifacts").as_uri())
    assert tracker.migrated == 4  # search, final, the trial and the seed; not the comparison run
    experiment = tracker.client.get_experiment(tracker.experiment_id)
    assert experiment.tags[SCHEMA_TAG] == SCHEMA_VERSION

    def tags(key: str) -> dict[str, str]:
        return tracker.client.get_run(ids[key]).data.tags

    assert (tags("search")[TAG_ROLE], tags("search")[TAG_ARM], tags("search")[TAG_STAGE]) == (ROLE_ARM, "clo", STAGE_SEARCH)
    assert (tags("final")[TAG_ROLE], tags("final")[TAG_ARM], tags("final")[TAG_STAGE]) == (ROLE_FINAL, "clo", STAGE_FINAL)
    assert (tags("trial")[TAG_ROLE], tags("trial")[TAG_ARM], tags("trial")[TAG_STAGE]) == (ROLE_TRIAL, "clo", STAGE_SEARCH)
    assert (tags("seed")[TAG_ROLE], tags("seed")[TAG_ARM], tags("seed")[TAG_STAGE]) == (ROLE_TRIAL, "clo", STAGE_FINAL)
    assert all("method" not in tags(key) for key in ids)  # the old tag is gone
    assert tags("comparison")[TAG_ROLE] == "comparison" and TAG_ARM not in tags("comparison")  # no arm: untouched

    # found by the new tags: a resumed sweep reopens its runs, nothing is created twice
    found = tracker.find_run(**{TAG_ROLE: ROLE_ARM, TAG_ARM: "clo", TAG_STAGE: STAGE_SEARCH})
    assert found is not None and found.info.run_id == ids["search"]
    assert tracker.find_run(**{TAG_ROLE: ROLE_TRIAL, TAG_ARM: "clo", TAG_STAGE: STAGE_FINAL, TAG_TRIAL_ID: "s1"}
                            ).info.run_id == ids["seed"]
    assert tracker.arm_run("clo", STAGE_SEARCH, params={}, tags={}) == ids["search"]
    assert tracker.arm_run("clo", STAGE_FINAL, params={}, tags={}) == ids["final"]
    assert tracker.trial_logged("clo", STAGE_SEARCH, "t1") and tracker.trial_logged("clo", STAGE_FINAL, "s1")
    assert not tracker.trial_logged("clo", STAGE_SEARCH, "s1")  # a seed is not a search trial
    record = TrialRecord(arm="clo", stage=STAGE_SEARCH, trial_id="t1", number=1, status="completed", sampled={},
                         train={})
    assert tracker.log_trial(record, ids["search"]) is None  # logged before the rename: not again
    runs = tracker.client.search_runs([tracker.experiment_id], max_results=100)
    assert len(runs) == len(ids)

    # once: a second Tracker (the progress callback's, a resumed driver's) has nothing to migrate
    assert Tracker(uri, EXPERIMENT).migrated == 0


def test_a_new_experiment_is_marked_current_and_needs_no_migration(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "new-sweep", (tmp_path / "artifacts").as_uri())
    assert tracker.migrated == 0
    assert tracker.client.get_experiment(tracker.experiment_id).tags[SCHEMA_TAG] == SCHEMA_VERSION
    parent = tracker.arm_run("fixed-pabee", STAGE_SEARCH, params={}, tags={})
    run = tracker.client.get_run(parent)
    assert run.info.run_name == "fixed-pabee"
    assert {k: run.data.tags[k] for k in (TAG_ROLE, TAG_ARM, TAG_STAGE)} == {
        TAG_ROLE: ROLE_ARM, TAG_ARM: "fixed-pabee", TAG_STAGE: STAGE_SEARCH}
    final = tracker.client.get_run(tracker.arm_run("fixed-pabee", STAGE_FINAL, params={}, tags={}))
    assert final.info.run_name == "final/fixed-pabee" and final.data.tags[TAG_ROLE] == ROLE_FINAL


@pytest.mark.parametrize("stage,name", [(STAGE_SEARCH, "clo-03"), (STAGE_FINAL, "final/clo-03")])
def test_trial_runs_keep_their_names(tmp_path, stage, name):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "names", (tmp_path / "artifacts").as_uri())
    parent = tracker.arm_run("clo", stage, params={}, tags={})
    record = TrialRecord(arm="clo", stage=stage, trial_id="x3", number=3, status="error", sampled={}, train={},
                         error="boom")
    run_id = tracker.log_trial(record, parent)
    run = tracker.client.get_run(run_id)
    assert run.info.run_name == name and run.data.tags[TAG_STAGE] == stage and run.data.tags[TAG_ARM] == "clo"
