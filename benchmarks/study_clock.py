"""A study's time file (``<root>/<name>/study_time.json``): every invocation's wall time, command
line and commit, kept current while it runs (benchmarks/study.py)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TIME_FILE = "study_time.json"


def command_line() -> str:
    return "python benchmarks/study.py" + "".join(f" {shlex.quote(a)}" for a in sys.argv[1:])


def checkout_commit() -> dict:
    """The commit of the checkout this runs from (``git rev-parse --short HEAD``), and whether
    tracked files differ from it."""
    def git(*argv) -> str | None:
        try:
            out = subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"hash": git("rev-parse", "--short", "HEAD") or "unknown", "dirty": bool(status) if status is not None else None}


class InvocationClock:
    """This invocation's entry in the study's time file (wall time, command line, commit): written
    when it starts and rewritten every ``every`` seconds, so an invocation that is killed outright
    (SIGKILL, a closed session) still counts up to its last minute; ``stop`` writes the end."""

    def __init__(self, folder: Path, started: float, invocation: dict, every: float = 60.0):
        import threading

        self.path, self.started = folder / TIME_FILE, started
        folder.mkdir(parents=True, exist_ok=True)
        record = self._read()
        record["invocations"].append({"started": time.strftime("%Y-%m-%d %H:%M", time.gmtime(started)),
                                      "seconds": 0.0, "finished": False, **invocation})
        self.index = len(record["invocations"]) - 1
        self._write(record)
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        threading.Thread(target=self._tick, args=(every,), name="study-clock", daemon=True).start()

    def _tick(self, every: float) -> None:
        while not self._stopped.wait(every):
            self._update(finished=False)

    def stop(self, finished: bool) -> dict:
        """Write the invocation's end; returns the whole record."""
        self._stopped.set()
        return self._update(finished)

    def discard(self) -> None:
        """Take this invocation's entry back (a refused command leaves nothing behind)."""
        self._stopped.set()
        with self._lock:
            record = self._read()
            del record["invocations"][self.index]
            if record["invocations"]:
                self._write(record)
            else:
                self.path.unlink(missing_ok=True)
                if not any(self.path.parent.iterdir()):
                    self.path.parent.rmdir()

    def _update(self, finished: bool) -> dict:
        with self._lock:
            record = self._read()
            record["invocations"][self.index].update(seconds=round(time.time() - self.started, 1), finished=finished)
            self._write(record)
            return record

    def _read(self) -> dict:
        return json.loads(self.path.read_text()) if self.path.is_file() else {"invocations": []}

    def _write(self, record: dict) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2))
        tmp.replace(self.path)
