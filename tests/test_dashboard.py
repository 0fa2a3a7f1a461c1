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
    db = tmp_path / "optuna.db"
    # by this interpreter's path and its venv's bin folder: runs without an activated venv
    python, script = sys.executable, Path(sys.executable).parent / "optuna-dashboard"
    assert dashboard_command(db, installed=False) == (f"{python} -m pip install -e '.[dashboard]' && "
                                                      f"{script} sqlite:///{db}")
    assert dashboard_command(db, installed=True) == f"{script} sqlite:///{db}"
    here = importlib.util.find_spec("optuna_dashboard") is not None
    assert dashboard_command(db) == dashboard_command(db, installed=here)
