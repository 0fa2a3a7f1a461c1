"""The Optuna study's dashboard: the command the sweep prints works after the `dashboard` extra,
and says so when optuna-dashboard is not installed."""

import importlib.util
import runpy
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_dashboard_extra_holds_optuna_dashboard():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(req.split(">")[0].split("=")[0].strip() == "optuna-dashboard" for req in extras["dashboard"])


def test_the_printed_command_names_the_extra_unless_installed(tmp_path):
    dashboard_command = runpy.run_path(str(ROOT / "platform" / "sweep.py"), run_name="sweep_cli")["dashboard_command"]
    journal = tmp_path / "optuna.journal"
    # by this interpreter's path and its venv's bin folder: runs without an activated venv
    python, script = sys.executable, Path(sys.executable).parent / "optuna-dashboard"
    assert dashboard_command(journal, installed=False) == (f"{python} -m pip install -e '.[dashboard]' && "
                                                           f"{script} {journal}")
    assert dashboard_command(journal, installed=True) == f"{script} {journal}"
    here = importlib.util.find_spec("optuna_dashboard") is not None
    assert dashboard_command(journal) == dashboard_command(journal, installed=here)


def test_optuna_dashboard_reads_the_sweeps_journal_file(tmp_path):
    """The printed command passes the journal's path: optuna-dashboard opens a file path as a
    journal (where the `dashboard` extra is installed; its URL parser is what the CLI calls)."""
    import optuna
    import pytest

    storage_url = pytest.importorskip("optuna_dashboard._storage_url")
    from sweeps.studies import journal_storage

    journal = tmp_path / "optuna.journal"
    optuna.create_study(study_name="clo", storage=journal_storage(journal), direction="maximize").enqueue_trial({"lr": 1e-3})
    opened = storage_url.get_storage(str(journal))
    assert isinstance(opened, optuna.storages.JournalStorage)
    assert [s.study_name for s in opened.get_all_studies()] == ["clo"]
