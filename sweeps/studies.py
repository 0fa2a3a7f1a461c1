"""Where a sweep's Optuna studies live: one journal file, ``<sweep folder>/optuna.journal``.

Optuna's ``JournalStorage`` with a file backend appends one line per operation and locks by
creating a link file beside it, which works on shared filesystems (NFS, EFS: the KubeRay layout's
sweep folder), where sqlite's locking is unreliable. Every arm's study (named after the arm) is in
the one file. ``optuna-dashboard <sweep folder>/optuna.journal`` opens it (it reads a file path as a
journal), and ``--resume`` continues the studies from it.

A sweep folder written before the journal (its studies in ``optuna.db``, sqlite) cannot be resumed
by this version: ``check_resumable`` says so, and how to finish it.
"""

from __future__ import annotations

from pathlib import Path

from trainers.errors import ConfigError

JOURNAL_FILE = "optuna.journal"
OLD_SQLITE_FILE = "optuna.db"  # where sweeps kept their studies before the journal


def journal_storage(path: str | Path):
    """The journal file at ``path`` as an Optuna storage (created if missing)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(path)))


def check_resumable(sweep_dir: Path) -> None:
    """A ConfigError for a sweep folder whose studies are in the old sqlite file."""
    old, journal = sweep_dir / OLD_SQLITE_FILE, sweep_dir / JOURNAL_FILE
    if old.is_file() and not journal.is_file():
        raise ConfigError(
            f"--resume: sweep '{sweep_dir.name}' was started by an older version that kept its Optuna studies in "
            f"{old} (sqlite); this version keeps them in {JOURNAL_FILE} and cannot continue it. Finish it with "
            "the version that started it, or start a new sweep (another --name); its results and models stay "
            "readable as they are")
