"""Shared test fixtures: tiny randomly initialized encoders and hand-made batches."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Threads that wait for work sleep instead of spinning (libgomp, which torch uses on the CPU, spins
# by default). The suite runs more processes than cores: a 2-thread MiniLM training beside two busy
# cores took 45 CPU-s spinning against 20 passive, and 67 s against 43 s (2026-12-06: `pytest -n 0
# tests/test_integration.py -k clo_on_minilm` under /usr/bin/time, OMP_WAIT_POLICY unset against
# PASSIVE, with two `python3 -c "while True: pass"` beside it).
# Before torch is imported: libgomp reads it once, at load; subprocesses and Ray workers inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny models are dominated by per-op overhead; a second thread only adds synchronization, and
# with other processes on the 2 cores it made a 1-second run take a minute (measured).
torch.set_num_threads(1)


def make_batch(batch_size=6, seq_len=8, vocab=100, num_labels=3, seed=0, ids_offset=0):
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, vocab, (batch_size, seq_len), generator=gen)
    attention_mask = torch.ones(batch_size, seq_len, dtype=torch.long)
    for row in range(batch_size):  # ragged lengths, as dynamic padding produces
        attention_mask[row, seq_len - (row % 3):] = 0
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": torch.zeros_like(input_ids),
        "labels": torch.randint(0, num_labels, (batch_size,), generator=gen),
        "ids": torch.arange(batch_size) + ids_offset,
    }


def start_ranks(fn, args: tuple, nprocs: int = 2) -> None:
    """Run ``fn(rank, *args)`` in ``nprocs`` processes (torch.multiprocessing), joined. They fork from
    a forkserver that imported torch, transformers and the trainer once, instead of each starting a
    fresh interpreter that imports them again: 4 to 6 CPU-s a rank process here (the two tests
    that use it, alone, idle, before and after: 43.6 -> 19.1 and 15.5 -> 3.5 CPU-s). Each
    rank is still its own process, with its own gloo group and memory."""
    import multiprocessing

    multiprocessing.set_forkserver_preload(["trainers.train", "transformers.models.bert.modeling_bert", fn.__module__])
    torch.multiprocessing.start_processes(fn, args=args, nprocs=nprocs, join=True, start_method="forkserver")


@pytest.fixture
def tiny_model():
    from trainers.model import MultiExitEncoder, tiny_backbone

    def build(num_layers=3, num_labels=3, pooling="mean", dtype=torch.float32, kind="bert", seed=0):
        model = MultiExitEncoder(tiny_backbone(num_layers=num_layers, seed=seed, kind=kind), num_labels, pooling)
        return model.to(dtype)

    return build


@pytest.fixture(scope="session")
def smoke_sweep(tmp_path_factory):
    """One smoke sweep (all three arms, registering `leebert-mr`) for the whole session: the
    smoke tests read its output and stores, the loopback test the sockets it listened on, the
    model-server tests serve its champion. A sweep costs a minute; one run serves them all."""
    from test_sweep_helpers import client, run_sampled_sweep, runs_by_role

    root = tmp_path_factory.mktemp("sweeps")
    name = "smoke-test"
    storage_log = root / "storage.jsonl"  # the driver appends the search's storage listing after each trial's end
    sweep = run_sampled_sweep(root, name, extra_env={"LEEBERT_STORAGE_LOG": str(storage_log)})
    proc = sweep["proc"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    mlflow_client, uri = client(root, name)
    return {**sweep, "root": root, "dir": root / name, "name": name, "client": mlflow_client, "uri": uri,
            "runs": runs_by_role(mlflow_client, name), "storage_log": storage_log}


STUDY_ARMS = ["fixed-pabee", "clo"]
STUDY_SEEDS = [1, 2]
# the mr-study preset shrunk to the smoke sweep's trials, on the tiny model. No ASHA (the preset's):
# both trials of an arm complete, so which one is best is decided by validation alone.
# final_max_concurrent 4: the 4 trainings share the 2 CPUs, so all arms x seeds run at once.
STUDY_SETTINGS = [
    "arms=[fixed-pabee,clo]", "trials=2", "budget_epochs=null", "final_seeds=[1,2]", "final_train.train_subset=384",
    "final_train.epochs=2", "final_max_concurrent=4", "bootstrap=300", "timing_repeats=2", "timing_seeds=1",
    # a tiny trial is mostly imports: one process runs the search's trials in turn (reuse_actors, one at a time)
    "reuse_actors=true", "max_concurrent=1",
    "space.lr=[0.001,0.005]", "space.head_lr=[0.002,0.01]",  # a random tiny model needs large steps
    "train.model=tiny-random", "train.train_subset=512", "train.eval_subset=128", "train.max_length=32",
    "train.epochs=3", "train.batch_size=16", "train.precision=fp32", "train.log_every=100"]
STALE_RESULTS = "# an old document without sections\n\nstale numbers\n"


@pytest.fixture(scope="session")
def study_sweep(tmp_path_factory):
    """One tiny MR study (benchmarks/study.py) for the session: the final-stage tests read its sweep
    (every arm's best configuration retrained with each seed, the timing phase, the comparison), the
    studies test the section it wrote over a stale results document, and continues it."""
    import subprocess
    import sys

    from test_sweep_helpers import ROOT, client, runs_by_role, sweep_env

    root = tmp_path_factory.mktemp("study")
    results = root / "docs" / "results.md"
    results.parent.mkdir()
    results.write_text(STALE_RESULTS)
    name = "tiny-mr"
    command = [sys.executable, "benchmarks/study.py", "--root", str(root / "sweeps"), "--results", str(results),
               "--name", name]
    proc = subprocess.run(command + [a for o in STUDY_SETTINGS for a in ("--set", o)], cwd=ROOT, capture_output=True,
                          text=True, timeout=900, env=sweep_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    mlflow_client, _ = client(root / "sweeps", name)
    return {"root": root / "sweeps", "dir": root / "sweeps" / name, "name": name, "proc": proc, "command": command,
            "results": results, "client": mlflow_client, "runs": runs_by_role(mlflow_client, name)}


BUDGET_SWEEP_BUDGET = 7.0
BUDGET_SWEEP_ARMS = ["fixed-pabee", "clo"]


@pytest.fixture(scope="session")
def budget_sweep(tmp_path_factory):
    """One smoke sweep under a compute budget that registers nothing, for the session: the budget
    test checks what each arm spent, then the registration tests register its best trials with
    platform/register.py (they add model versions and tags; the budget test reads trial runs only)."""
    from test_sweep_helpers import client, run_sweep_cli, runs_by_role

    root = tmp_path_factory.mktemp("sweeps")
    name = "register-test"
    proc = run_sweep_cli(root, name, "--set", "trials=null", "--set", f"budget_epochs={BUDGET_SWEEP_BUDGET}",
                         "--set", f"arms=[{','.join(BUDGET_SWEEP_ARMS)}]", "--set", "register=false")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    mlflow_client, uri = client(root, name)
    return {"root": root, "dir": root / name, "name": name, "proc": proc, "client": mlflow_client, "uri": uri,
            "runs": runs_by_role(mlflow_client, name), "budget": BUDGET_SWEEP_BUDGET, "arms": BUDGET_SWEEP_ARMS}


# ---------------------------------------------------------------- parallel runs (pytest-xdist)
# The suite runs on several xdist workers (pyproject.toml). A fixture shared beyond one test must
# be built once: every test of a module that uses a
# session sweep goes to that sweep's worker, and the tests that share a module-scoped fixture go
# to one worker together (`--dist loadgroup`); every other test is scheduled on its own.
SESSION_SWEEPS = ("smoke_sweep", "budget_sweep", "study_sweep")


def _module_scoped(item) -> bool:
    defs = getattr(item, "_fixtureinfo", None)
    return bool(defs) and any(d.scope == "module" for ds in defs.name2fixturedefs.values() for d in ds)


def pytest_itemcollected(item):
    """Group the test as it is collected, before xdist reads the groups into the node ids (in its
    ``pytest_collection_modifyitems``). xdist 3.8 writes ``item._nodeid``, which pytest 9 no longer
    reads (its node ids live in ``_id``): hence pytest<9 in the dev extra, or every group is ignored
    and a module's fixture is built once per worker (found: the final-stage sweep three times)."""
    used = getattr(item, "fixturenames", ())  # with the fixtures' own fixtures, transitively
    sweeps = [name for name in SESSION_SWEEPS if name in used]
    if sweeps:
        group = "+".join(sweeps)
    elif _module_scoped(item):
        group = item.module.__name__
    else:
        return
    item.add_marker(pytest.mark.xdist_group(group))

