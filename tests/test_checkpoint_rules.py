"""The search's checkpoint rules (sweeps.checkpoints.SearchCheckpoints), on stand-ins for Tune's
trials: which trials' checkpoints go when a trial ends. The smoke sweep checks the same rules
against the real storage after every trial's end (tests/test_sweep_smoke.py)."""

from types import SimpleNamespace

from sweeps.checkpoints import SearchCheckpoints, storage_listing


def trial(trial_id, arm, number, status="TERMINATED", objective=None, final=False):
    result = {} if objective is None else {"objective": objective, **({"final_report": True} if final else {})}
    return SimpleNamespace(trial_id=trial_id, arm=arm, number=number, status=status, last_result=result,
                           checkpoint=SimpleNamespace(path=f"/storage/search/{arm}_{trial_id}/checkpoint_000000"))


def identify(t):
    return t.arm, t.number


def released(rules, ended, trials, error=False):
    """Tune calls the callback before it sets the ended trial's status: it is still RUNNING then."""
    status, ended.status = ended.status, "RUNNING"
    try:
        return sorted(r.trial_id for r in rules.on_trial_end(ended, trials, error))
    finally:
        ended.status = status


def test_stopped_and_failed_trials_lose_their_checkpoint_when_they_end():
    rules = SearchCheckpoints("/storage", "search", identify)
    stopped = trial("s", "clo", 1, objective=0.3)                      # ASHA stopped it: no final report
    failed = trial("f", "clo", 2, status="ERROR", objective=0.9, final=True)  # failed for good (even after its report)
    running = trial("r", "clo", 3, status="RUNNING", objective=0.8)
    trials = [stopped, failed, running]
    assert released(rules, stopped, trials) == ["s"]
    assert released(rules, failed, trials, error=True) == ["f"]
    release = rules.on_trial_end(stopped, trials)[0]
    assert release.train_folder == "/storage/search/_train/s"          # a multi-worker trial's Ray Train run too
    assert release.checkpoint.path.endswith("clo_s/checkpoint_000000")


def test_a_completed_trial_keeps_its_model_only_while_it_is_its_arms_best():
    rules = SearchCheckpoints("/storage", "search", identify)
    first = trial("a", "clo", 1, objective=0.5, final=True)
    other_arm = trial("x", "fixed", 1, objective=0.1, final=True)
    trials = [first, other_arm]
    assert released(rules, first, trials) == []                         # the arm's best so far
    assert released(rules, other_arm, trials) == []                     # another arm: compared within its own
    worse = trial("b", "clo", 2, objective=0.4, final=True)
    trials.append(worse)
    assert released(rules, worse, trials) == ["b"]                      # beaten by the best: its model goes at once
    better = trial("c", "clo", 3, objective=0.7, final=True)
    trials.append(better)
    assert released(rules, better, trials) == ["a"]                     # the old best goes, once
    tie = trial("d", "clo", 4, objective=0.7, final=True)
    trials.append(tie)
    assert released(rules, tie, trials) == ["d"]                        # a tie keeps the lower trial number
    # (the search stage's choice at its end: max over trials in number order keeps the first)
    assert max([t for t in trials if t.arm == "clo"], key=lambda t: t.last_result["objective"]) is better


def test_the_listing_names_each_trials_checkpoint_folders(tmp_path):
    search = tmp_path / "search"
    (search / "clo_a" / "checkpoint_000001").mkdir(parents=True)
    (search / "clo_a" / "result.json").write_text("")
    (search / "fixed_b").mkdir()
    (search / "_train" / "c" / "checkpoint_000000").mkdir(parents=True)
    assert storage_listing(str(tmp_path), "search") == {"clo_a": ["checkpoint_000001"],
                                                        "_train/c": ["checkpoint_000000"]}
