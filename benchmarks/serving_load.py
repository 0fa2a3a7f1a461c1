"""The served model under load: a real `mlflow models serve` on 127.0.0.1, C concurrent clients.

    python benchmarks/serving_load.py                          # the quick MiniLM of benchmarks/serving.py
    python benchmarks/serving_load.py --model-uri models:/leebert-mr@champion --tracking-uri sqlite:///…/mlflow.db
    python benchmarks/serving_load.py --model-uri path/to/pyfunc --clients 8 --requests 2000 --duration 300

The server is started exactly as docs/serving.md says (`mlflow models serve -m … --env-manager
local -h 127.0.0.1`, the venv's bin/ on PATH), with `--max-rows` passed the way a user would
(MLFLOW_PYFUNC_INFERENCE_CONFIG). After a warm-up, --clients threads send requests until
--requests have been sent or --duration seconds have passed, whichever comes first:

- good requests: 1 to 32 real MR test sentences (uniformly drawn), all answered 200 with one
  prediction per row, else they count as failed;
- bad requests (--bad-fraction of them): a wrong or missing column, None / a number / an empty or
  blank text, one row more than the server's limit, broken JSON, an unknown content type, a
  mismatched dataframe_split; each must be answered with a 4xx.

It prints (and with --json writes) failed good requests, bad requests answered other than 4xx,
the p50 and p99 latency of good requests, sentences/s (good rows per second of the run), and the
resident memory (RSS) of the server's processes after a warm-up of --warmup requests of the same
mix (not counted) and after the run, with samples in between. Targets: no
failed good request, every bad request a 4xx, RSS growing by less than 10 % over the run; the exit
code is 1 when one is missed (2 for bad arguments).

Without --model-uri it saves the quick MiniLM that benchmarks/serving.py trains (and trains it
first if --work-dir holds none, about 1 minute) as a pyfunc, as registration logs it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from serving.schema import OUTPUT_COLUMNS  # noqa: E402 - what every prediction must carry

BIN = Path(sys.executable).parent
MAX_GOOD_ROWS = 32
RSS_TARGET = 0.10  # the server's RSS may grow by less than this over the run


# ------------------------------------------------------------------------------ the model
def quick_pyfunc(work: Path, serving_work: Path, target: float) -> str:
    """The quick MiniLM of benchmarks/serving.py (trained there if needed), saved as a pyfunc.

    Saved again on every run: a pyfunc ships copies of serving/ and trainers/ (code_paths), and an
    old copy would measure old code."""
    import runpy
    import shutil
    import warnings

    import mlflow

    from serving.register import pyfunc_arguments

    exported, policy = runpy.run_path(str(REPO / "benchmarks" / "serving.py"))["quick_model"](serving_work, target)
    folder = work / "pyfunc"
    for stale in (folder, work / "staging"):
        shutil.rmtree(stale, ignore_errors=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLflow's advice on type hints
        mlflow.pyfunc.save_model(str(folder), **pyfunc_arguments(exported, policy, work / "staging"))
    return str(folder)


def mr_test_sentences() -> list[str]:
    import csv
    import gzip

    with gzip.open(REPO / "trainers" / "task_data" / "mr" / "test.tsv.gz", "rt", encoding="utf-8") as f:
        return [row["sentence"] for row in csv.DictReader(f, delimiter="\t")]


# ------------------------------------------------------------------------------ the server
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model_uri: str, tracking_uri: str | None, max_rows: int | None, workers: int, log_path: Path,
                 timeout: float = 180) -> tuple[subprocess.Popen, str]:
    """`mlflow models serve` on a free loopback port, answering /ping; (process, base URL)."""
    import requests

    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # it runs uvicorn by name
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    if max_rows is not None:
        env["MLFLOW_PYFUNC_INFERENCE_CONFIG"] = json.dumps({"max_rows": max_rows})
    for attempt in range(3):  # a port taken between choosing and binding: another one
        port = free_port()
        with open(log_path, "ab") as log:
            server = subprocess.Popen(
                [str(BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
                 "-h", "127.0.0.1", "-p", str(port), "-w", str(workers)],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + timeout
        while time.time() < deadline and server.poll() is None:
            try:
                if requests.get(f"{base}/ping", timeout=2).ok:
                    return server, base
            except requests.RequestException:
                pass
            time.sleep(0.5)
        stop_server(server)
    raise SystemExit(f"error: `mlflow models serve` did not answer /ping (3 tries); its log:\n"
                     + log_path.read_text(errors="replace")[-3000:])


def stop_server(server: subprocess.Popen) -> None:
    if server.poll() is None:
        try:
            os.killpg(server.pid, signal.SIGTERM)  # the session it leads: uvicorn and its workers
        except ProcessLookupError:
            return
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)


def server_rss(server: subprocess.Popen) -> int:
    """Bytes resident in the processes that hold the model: uvicorn and its workers (the
    `mlflow models serve` launcher only waits for them)."""
    import psutil

    try:
        leader = psutil.Process(server.pid)
        family = [leader, *leader.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for process in family:
        try:
            if process.pid != server.pid and "uvicorn" in " ".join(process.cmdline()):
                total += process.memory_info().rss
        except psutil.Error:
            pass
    return total or sum(p.memory_info().rss for p in family if p.is_running())


def sample_rss(server: subprocess.Popen, samples: list[int], done: threading.Event, every: float) -> None:
    """The server's RSS every ``every`` seconds until ``done``: growth that levels off (allocator
    pools, per-thread arenas) is told apart from a leak, which keeps climbing."""
    while not done.wait(every):
        samples.append(server_rss(server))


def server_pids(server: subprocess.Popen) -> list[int]:
    import psutil

    try:
        leader = psutil.Process(server.pid)
        return [leader.pid, *(p.pid for p in leader.children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


# ------------------------------------------------------------------------------ requests
def good_request(rng: random.Random, texts: list[str]) -> tuple[int, dict]:
    rows = rng.randint(1, MAX_GOOD_ROWS)
    start = rng.randrange(0, len(texts) - rows)
    return rows, {"dataframe_split": {"columns": ["sentence"], "data": [[t] for t in texts[start:start + rows]]}}


def bad_requests(limit: int) -> list[tuple[str, bytes, str]]:
    """(kind, body, content type) of every bad request the clients send."""
    def split(rows):
        return json.dumps({"dataframe_split": {"columns": ["sentence"], "data": rows}}).encode()

    return [
        ("wrong column", json.dumps({"dataframe_split": {"columns": ["text"], "data": [["a fine film ."]]}}).encode(),
         "application/json"),
        ("no column", json.dumps({"dataframe_records": [{}]}).encode(), "application/json"),
        ("None", split([[None]]), "application/json"),
        ("a number", split([[42]]), "application/json"),
        ("empty text", split([[""]]), "application/json"),
        ("blank text", split([["a good one ."], ["  \t "]]), "application/json"),
        (f"{limit + 1} rows", split([["a fine film ."]] * (limit + 1)), "application/json"),
        ("broken JSON", b'{"dataframe_split": {"columns": ["sentence"], "data": [["a fine', "application/json"),
        ("not a DataFrame", json.dumps({"sentences": ["a fine film ."]}).encode(), "application/json"),
        ("mismatched split", json.dumps({"dataframe_split": {"columns": ["sentence"], "data": [["a", "b"]]}}).encode(),
         "application/json"),
        ("unknown content type", b"a fine film .", "text/plain"),
    ]


class Load:
    """Counters shared by the client threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sent = 0
        self.good = self.good_rows = self.failed_good = 0
        self.bad = self.bad_not_4xx = 0
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.bad_statuses: dict[str, dict[int, int]] = {}

    def take(self, limit: int, deadline: float) -> bool:
        with self.lock:
            if self.sent >= limit or time.perf_counter() >= deadline:
                return False
            self.sent += 1
            return True


def client(seed: int, base: str, texts: list[str], bad: list, bad_fraction: float, load: Load, limit: int,
           deadline: float, timeout: float) -> None:
    import requests

    rng = random.Random(seed)
    session = requests.Session()
    url = f"{base}/invocations"
    while load.take(limit, deadline):
        if rng.random() < bad_fraction:
            kind, body, content_type = rng.choice(bad)
            try:
                status = session.post(url, data=body, headers={"Content-Type": content_type}, timeout=timeout).status_code
            except requests.RequestException as err:
                status = f"{type(err).__name__}"
            with load.lock:
                load.bad += 1
                counts = load.bad_statuses.setdefault(kind, {})
                counts[status] = counts.get(status, 0) + 1
                if not (isinstance(status, int) and 400 <= status < 500):
                    load.bad_not_4xx += 1
            continue
        rows, payload = good_request(rng, texts)
        started = time.perf_counter()
        problem = None
        try:
            response = session.post(url, json=payload, timeout=timeout)
            took = time.perf_counter() - started
            if response.status_code != 200:
                problem = f"HTTP {response.status_code}: {response.text[:200]}"
            else:
                predictions = response.json()["predictions"]
                if len(predictions) != rows or any(set(p) != set(OUTPUT_COLUMNS) for p in predictions):
                    problem = f"{len(predictions)} predictions for {rows} rows"
        except (requests.RequestException, ValueError, KeyError) as err:
            took, problem = time.perf_counter() - started, f"{type(err).__name__}: {str(err)[:200]}"
        with load.lock:
            load.good += 1
            if problem is None:
                load.good_rows += rows
                load.latencies.append(took)
            else:
                load.failed_good += 1
                load.failures.append(problem)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


# ------------------------------------------------------------------------------ main
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-uri", help="what `mlflow models serve -m` serves: models:/NAME@ALIAS or a pyfunc folder "
                                       "(default: the quick MiniLM of benchmarks/serving.py)")
    p.add_argument("--tracking-uri", help="MLflow tracking/registry URI for a models:/ URI")
    p.add_argument("--work-dir", default=str(REPO / "runs" / "benchmarks" / "serving_load"),
                   help="where the quick model's pyfunc and the server log are kept")
    p.add_argument("--clients", type=int, default=4, help="concurrent clients (threads, one HTTP session each)")
    p.add_argument("--requests", type=int, default=1000, help="requests to send at most (good and bad)")
    p.add_argument("--duration", type=float, default=120.0, help="seconds to send for at most")
    p.add_argument("--bad-fraction", type=float, default=0.2, help="share of bad requests")
    p.add_argument("--max-rows", type=int, default=None,
                   help="the server's row limit (MLFLOW_PYFUNC_INFERENCE_CONFIG); default: the model's own (256)")
    p.add_argument("--workers", type=int, default=1, help="uvicorn workers of the server")
    p.add_argument("--warmup", type=int, default=1000,
                   help="requests of the same mix sent before the RSS baseline (not counted in the figures). "
                        "The heap climbs to a high-water mark over the first requests of mixed shapes; with "
                        "--warmup 200 the run measured that climb (+21 %%), with 1000 it grew 4.9 %% "
                        "(docs/serving.md)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds a client waits for one answer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the figures to this file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    problems = [f"--{name} must be >= 1" for name in ("clients", "requests", "workers")
                if getattr(args, name) < 1] + (["--warmup must be >= 0"] if args.warmup < 0 else [])
    if not 0 <= args.bad_fraction <= 1:
        problems.append("--bad-fraction must be in [0, 1]")
    if args.duration <= 0 or (args.max_rows is not None and args.max_rows < MAX_GOOD_ROWS):
        problems.append(f"--duration must be > 0 and --max-rows >= {MAX_GOOD_ROWS} (the largest good request)")
    if problems:
        print(f"error: {'; '.join(problems)}", file=sys.stderr)
        return 2
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    model_uri = args.model_uri or quick_pyfunc(work, REPO / "runs" / "benchmarks" / "serving", 2.0)
    texts = mr_test_sentences()
    limit = args.max_rows or 256
    log_path = work / "server.log"
    log_path.write_text("")
    started = time.perf_counter()
    server, base = start_server(model_uri, args.tracking_uri, args.max_rows, args.workers, log_path)
    try:
        print(f"server: mlflow models serve -m {model_uri} on {base} ({args.workers} worker(s)), "
              f"ready in {time.perf_counter() - started:.1f} s; row limit {limit}", flush=True)
        rss_loaded = server_rss(server)
        bad = bad_requests(limit)
        # the warm-up is the same mix from the same clients: the server's threads, allocator pools and
        # per-thread arenas fill up here, so the run's growth is what keeps growing (a leak)
        warm = Load()
        with ThreadPoolExecutor(args.clients) as pool:
            for future in [pool.submit(client, -1 - i, base, texts, bad, args.bad_fraction, warm, args.warmup,
                                       time.perf_counter() + args.duration, args.timeout) for i in range(args.clients)]:
                future.result()
        rss_before = server_rss(server)
        load = Load()
        began = time.perf_counter()
        deadline = began + args.duration
        samples, done = [], threading.Event()
        sampler = threading.Thread(target=sample_rss, args=(server, samples, done, max(1.0, args.duration / 20)),
                                   daemon=True)
        sampler.start()
        with ThreadPoolExecutor(args.clients) as pool:
            futures = [pool.submit(client, args.seed * 1000 + i, base, texts, bad, args.bad_fraction, load,
                                   args.requests, deadline, args.timeout) for i in range(args.clients)]
            for future in futures:
                future.result()
        elapsed = time.perf_counter() - began
        done.set()
        sampler.join()
        rss_after = server_rss(server)
        alive = server.poll() is None
        pids = server_pids(server)
    finally:
        stop_server(server)
    growth = (rss_after - rss_before) / rss_before if rss_before else float("nan")
    result = {
        "model_uri": model_uri, "clients": args.clients, "workers": args.workers, "row_limit": limit,
        "requests": load.sent, "seconds": round(elapsed, 2), "good": load.good, "bad": load.bad,
        "failed_good": load.failed_good, "bad_not_4xx": load.bad_not_4xx,
        "p50_ms": round(1000 * percentile(load.latencies, 0.5), 1), "p99_ms": round(1000 * percentile(load.latencies, 0.99), 1),
        "sentences_per_s": round(load.good_rows / elapsed, 1), "good_rows": load.good_rows,
        "rss_loaded_mb": round(rss_loaded / 2**20, 1), "rss_before_mb": round(rss_before / 2**20, 1),
        "rss_after_mb": round(rss_after / 2**20, 1), "rss_growth": round(growth, 4), "server_alive": alive,
        "server_pids": pids, "rss_samples_mb": [round(v / 2**20, 1) for v in samples],
        "bad_statuses": {kind: {str(k): v for k, v in counts.items()} for kind, counts in sorted(load.bad_statuses.items())},
        "failures": load.failures[:10],
        "machine": f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end",
    }
    targets = {"no failed good request": load.failed_good == 0, "every bad request a 4xx": load.bad_not_4xx == 0,
               f"RSS growth < {RSS_TARGET:.0%}": growth < RSS_TARGET, "server still up": alive}
    result["targets"] = targets
    print(f"load: {load.sent} requests ({load.good} good, {load.bad} bad) from {args.clients} clients in "
          f"{elapsed:.1f} s ({result['machine']})")
    print(f"  failed good requests:        {load.failed_good}" + (f"  e.g. {load.failures[0]}" if load.failures else ""))
    print(f"  bad answered other than 4xx: {load.bad_not_4xx}  (statuses: "
          + ", ".join(f"{kind} {sorted(counts.items(), key=str)}" for kind, counts in sorted(load.bad_statuses.items())) + ")")
    print(f"  good latency p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms; "
          f"{result['sentences_per_s']:.1f} sentences/s ({load.good_rows} sentences)")
    print(f"  server RSS: {result['rss_loaded_mb']:.0f} MiB loaded, {result['rss_before_mb']:.0f} MiB after "
          f"{warm.sent} warm-up requests, {result['rss_after_mb']:.0f} MiB after the run ({100 * growth:+.1f} %); "
          f"during the run: {' '.join(f'{v:.0f}' for v in result['rss_samples_mb'][::max(1, len(samples) // 10)])} MiB")
    print("  targets: " + "; ".join(f"{name}: {'met' if ok else 'MISSED'}" for name, ok in targets.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0 if all(targets.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
