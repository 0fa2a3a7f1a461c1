"""Shared test fixtures: tiny randomly initialized encoders and hand-made batches."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Threads that wait for work sleep instead of spinning (libgomp, which torch uses on the CPU, spins
# by default). The suite runs more processes than cores: a 2-thread MiniLM training beside two busy
# cores took 45 CPU-s spinning against 20 passive, and 67 s against 43 s (measured, 2026-12-06).
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
SESSION_SWEEPS = ("smoke_sweep", "budget_sweep")


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

