"""End-to-end speed of the served early-exit model (serving.model.ExitPolicyModel) on this machine.

    python benchmarks/serving.py                                   # trains a quick MiniLM first (~3 min)
    python benchmarks/serving.py --model-uri models:/leebert-mr@champion --tracking-uri sqlite:///…/mlflow.db
    python benchmarks/serving.py --exported DIR --policy policy.json

Three ways to answer the same requests, tokenization included in all three, side by side in one
run (they take turns request by request, so load from other processes falls on all three alike;
each request's latency is the median of its --repeats runs, a pass the sum of those):

  (a) the pyfunc with its exit policy (real early exit);
  (b) the same pyfunc forced to full depth (policy 'none');
  (c) a plain deployment of the same weights: the backbone's own full forward and one
      classification head (the last exit's), the tokenizer padding each request.

Requests of 1 and of 64 rows over real MR test sentences. It prints sentences/s, the wall-clock
speed-up of (a) over (c) and over (b) next to the layer speed-up (L / mean exit layer of (a) on
those sentences), p50/p95 latency per request, the tokenization time, and where (a)'s time goes.
Target at batch 64 and at batch 1: wall-clock speed-up over (c) >= 0.9 x the layer speed-up.

Without --model-uri/--exported it trains `fixed --scheme uniform` MiniLM on 800 MR sentences for
one epoch (trainers.train.run), exports it and takes the validation operating point for
--target-speedup (trainers.frontier.operating_point over the summary's validation curve). The
trained model is kept in --work-dir and reused by the next run.
"""

from __future__ import annotations

import argparse
import copy
import csv
import gzip
import json
import os
import platform as std_platform
import statistics
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

TARGET = 0.9  # wall-clock speed-up over the plain model, as a fraction of the layer speed-up


# ------------------------------------------------------------------------------ the model
def quick_model(work: Path, target: float) -> tuple[Path, dict]:
    """Train (or reuse) a quick MiniLM, export it, and pick its exit policy on validation."""
    from serving.export import export_model
    from trainers.config import TrainConfig
    from trainers.frontier import operating_point
    from trainers.layout import EXPORT_META_FILE, POLICY_FILE, SUMMARY_FILE
    from trainers.results import Summary

    exported, policy_file = work / "exported", work / POLICY_FILE
    if not (exported / EXPORT_META_FILE).is_file():
        from trainers.train import run

        cfg = TrainConfig(task="mr", method="fixed", scheme="uniform", model="minilm", train_subset=800, epochs=1,
                          output_dir=str(work / "train"), save_checkpoints=False, wallclock_eval=False,
                          resume=True).validate()
        print("training a quick MiniLM (fixed uniform, 800 MR sentences, 1 epoch) ...", flush=True)
        started = time.perf_counter()
        result = run(cfg, quiet=True)
        print(f"trained in {time.perf_counter() - started:.0f} s", flush=True)
        export_model(result.model, cfg, exported, task=result.task)
        (work / SUMMARY_FILE).write_text(json.dumps(result.summary.to_dict(), default=float))
    points = Summary.from_dict(json.loads((work / SUMMARY_FILE).read_text())).validation_curve
    chosen = operating_point(points, target)
    if chosen is None:
        chosen = max(points, key=lambda p: p.speedup)
        print(f"no validation point reaches {target:g}x; taking the fastest ({chosen.speedup:.2f}x)")
    policy = {"policy": chosen.policy, "setting": chosen.setting, "delta": chosen.delta,
              "validation_speedup": chosen.speedup, "validation_metric": chosen.metric}
    policy_file.write_text(json.dumps(policy, indent=2))
    return exported, policy


def load_served(args):
    """(ExitPolicyModel with the model's policy, a description)."""
    from serving.model import ExitPolicyModel

    if args.model_uri:
        import mlflow

        if args.tracking_uri:
            mlflow.set_tracking_uri(args.tracking_uri)
            mlflow.set_registry_uri(args.tracking_uri)
        model = mlflow.pyfunc.load_model(args.model_uri).unwrap_python_model()
        return model, args.model_uri
    if args.exported:
        if not args.policy:
            sys.exit("error: --exported needs --policy (a policy.json)")
        policy = json.loads(Path(args.policy).read_text())
        return ExitPolicyModel().load(args.exported, policy, max_rows=10**6), args.exported
    exported, policy = quick_model(Path(args.work_dir), args.target_speedup)
    return ExitPolicyModel().load(exported, policy, max_rows=10**6), f"{exported} (quick MiniLM)"


def full_depth(served):
    from trainers.policies import NoExitPolicy

    model = copy.copy(served)  # shares the weights and the tokenizer
    model.policy = NoExitPolicy()
    return model


def plain_predictor(served):
    """(c): the backbone's own forward and the last exit's head, the tokenizer padding each request."""
    model, tokenizer, meta = served.model, served.tokenizer, served.meta
    head, fields, max_length = model.exits[-1], served.fields, served.max_length

    def predict(frame: pd.DataFrame) -> pd.DataFrame:
        batch = tokenizer(*[frame[f].tolist() for f in fields], truncation=True, max_length=max_length,
                          padding=True, return_tensors="pt")
        with torch.inference_mode():
            hidden = model.backbone(**batch).last_hidden_state
            probs = torch.softmax(head(model.pool(hidden, batch["attention_mask"])).float(), dim=-1)
        return pd.DataFrame({"label": probs.argmax(-1).tolist(), "probabilities": probs.tolist()}, index=frame.index)

    return predict


def mr_test_sentences(n: int) -> list[str]:
    with gzip.open(REPO / "trainers" / "task_data" / "mr" / "test.tsv.gz", "rt", encoding="utf-8") as f:
        rows = [row["sentence"] for row in csv.DictReader(f, delimiter="\t")]
    return rows[:n]


# ------------------------------------------------------------------------------ timing
def requests(texts: list[str], field: str, size: int) -> list[pd.DataFrame]:
    return [pd.DataFrame({field: texts[i:i + size]}) for i in range(0, len(texts), size)]


def time_side_by_side(predictors: dict, reqs: list[pd.DataFrame], repeats: int) -> tuple[dict, dict]:
    """Seconds per pass over ``reqs`` of each predictor, and each request's latency per predictor.

    The predictors take turns request by request (who goes first rotates), so a burst of load from
    another process on the machine falls on all three alike rather than on one predictor's pass.
    A request's latency is the median of its ``repeats`` runs; a pass is the sum of those medians.
    """
    for predict in predictors.values():  # warm-up: first calls pay for allocation and kernel selection
        for frame in reqs[:3]:
            predict(frame)
    keys = list(predictors)
    runs = {key: [[] for _ in reqs] for key in keys}
    for repeat in range(repeats):
        for i, frame in enumerate(reqs):
            turn = (repeat + i) % len(keys)
            for key in keys[turn:] + keys[:turn]:
                start = time.perf_counter()
                predictors[key](frame)
                runs[key][i].append(time.perf_counter() - start)
    latencies = {key: [statistics.median(r) for r in per_request] for key, per_request in runs.items()}
    return {key: sum(values) for key, values in latencies.items()}, latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


STAGES = ("validate", "tokenize", "pad", "early_exit", "to_host", "output")


def breakdown(served, reqs: list[pd.DataFrame], repeats: int) -> dict:
    """Where (a)'s time goes in a pass, stage by stage of the pyfunc's own methods: validation,
    tokenization, padding into tensors, early_exit (of which the encoder layers and the exit heads;
    the rest is embedding, mask, policy, host syncs, indexing), copying back to the host, and the
    answers (softmax, DataFrame). Each stage of each request: the median of ``repeats`` runs."""
    import numpy as np

    from serving.model import output_frame

    model = served.model
    timers = {"layers": 0.0, "heads": 0.0}

    def timed(fn, key):
        def wrapper(*a, **k):
            start = time.perf_counter()
            out = fn(*a, **k)
            timers[key] += time.perf_counter() - start
            return out
        return wrapper

    runner_layer = model.runner.layer
    model.runner.layer = timed(runner_layer, "layers")
    for head in model.exits:
        head.forward = timed(head.forward, "heads")
    runs = [{key: [] for key in (*STAGES, "layers", "heads")} for _ in reqs]
    try:
        for _ in range(repeats):
            for frame, run in zip(reqs, runs):
                timers.update(layers=0.0, heads=0.0)
                t0 = time.perf_counter()
                columns = served.validate(frame)
                t1 = time.perf_counter()
                ids, types = served.tokenize(columns)
                t2 = time.perf_counter()
                batches = list(served.batches(ids, types))
                t3 = time.perf_counter()
                with torch.inference_mode():
                    outs = [(rows, *model.early_exit(served.policy, **batch)) for rows, batch in batches]
                t4 = time.perf_counter()
                logits = np.empty((len(frame), served.meta["num_labels"]), dtype=np.float32)
                layers = np.empty(len(frame), dtype=np.int64)
                for rows, out, layer in outs:
                    logits[rows], layers[rows] = out.float().cpu().numpy(), layer.cpu().numpy()
                t5 = time.perf_counter()
                output_frame(*served.answers(logits, layers), index=frame.index)
                t6 = time.perf_counter()
                for key, value in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)):
                    run[key].append(value)
                run["layers"].append(timers["layers"])
                run["heads"].append(timers["heads"])
    finally:
        model.runner.layer = runner_layer
        for head in model.exits:
            del head.forward
    return {key: sum(statistics.median(run[key]) for run in runs) for key in runs[0]}


# ------------------------------------------------------------------------------ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-uri", help="an MLflow model URI, e.g. models:/leebert-mr@champion")
    parser.add_argument("--tracking-uri", help="the MLflow tracking/registry URI for --model-uri")
    parser.add_argument("--exported", help="an exported model folder (serving.export)")
    parser.add_argument("--policy", help="its policy.json (with --exported)")
    parser.add_argument("--work-dir", default=str(REPO / "runs" / "benchmarks" / "serving"),
                        help="where the quick model is trained and kept (no --model-uri/--exported)")
    parser.add_argument("--target-speedup", type=float, default=2.0, help="the quick model's operating point")
    parser.add_argument("--sentences", type=int, default=512, help="MR test sentences answered per pass")
    parser.add_argument("--batch1-sentences", type=int, default=None,
                        help="sentences for the batch-1 passes (default: --sentences)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="runs of every request per predictor (each request's median counts)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.sentences < 1 or args.repeats < 1 or (args.batch1_sentences is not None and args.batch1_sentences < 1):
        parser.error("--sentences, --batch1-sentences and --repeats must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=r".*longer than this model's.*")

    served, source = load_served(args)
    if len(served.fields) != 1:
        sys.exit(f"error: this benchmark sends MR sentences; the model reads {served.fields}")
    field, num_layers = served.fields[0], served.meta["num_layers"]
    texts = mr_test_sentences(args.sentences)
    predictors = {"a": lambda f: served.predict(None, f), "b": (lambda m: lambda f: m.predict(None, f))(full_depth(served)),
                  "c": plain_predictor(served)}
    names = {"a": "(a) early exit", "b": "(b) same, full depth", "c": "(c) plain full model"}

    all_out = pd.concat([served.predict(None, r) for r in requests(texts, field, 64)])
    layer_speedup = num_layers / all_out["exit_layer"].mean()
    full_out = pd.concat([predictors["b"](r) for r in requests(texts, field, 64)])
    plain_out = pd.concat([predictors["c"](r) for r in requests(texts, field, 64)])
    lengths = [len(r) for r in served.tokenizer(texts, truncation=True, max_length=served.max_length)["input_ids"]]

    load_at_start = os.getloadavg()
    print(f"machine: {std_platform.processor() or std_platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; load average {load_at_start[0]:.2f} "
          f"(1 min), {load_at_start[1]:.2f} (5 min) at the start")
    print(f"model: {source}; {served.meta['source_model']}, {num_layers} layers, policy "
          f"{served.policy_spec['policy']} {served.policy_spec['setting']:g}"
          + (f" (validation speed-up {served.policy_spec['validation_speedup']:.2f}x)"
             if "validation_speedup" in served.policy_spec else ""))
    print(f"requests: {len(texts)} MR test sentences, {statistics.mean(lengths):.1f} tokens on average "
          f"(max {max(lengths)}); exit layers of (a): "
          + " ".join(f"L{m}:{int((all_out['exit_layer'] == m).sum())}" for m in range(1, num_layers + 1)))
    agree = (full_out["label"].values == plain_out["label"].values).mean()
    print(f"check: (b) and (c) agree on {agree:.1%} of labels; (a) agrees with (b) on "
          f"{(all_out['label'].values == full_out['label'].values).mean():.1%}")
    print(f"layer speed-up of (a): {layer_speedup:.2f}x (L / mean exit layer = {num_layers} / "
          f"{all_out['exit_layer'].mean():.2f})")

    figures = {"source": str(source), "threads": torch.get_num_threads(), "sentences": len(texts),
               "mean_exit_layer": float(all_out["exit_layer"].mean()), "layer_speedup": float(layer_speedup),
               "target": TARGET, "load_average_start": load_at_start[0], "batches": {}}
    for size, n in ((64, len(texts)), (1, args.batch1_sentences or len(texts))):
        reqs = requests(texts[:n], field, size)
        seconds, latencies = time_side_by_side(predictors, reqs, args.repeats)
        print(f"\nbatch {size} ({len(reqs)} requests of {n} sentences; predictors take turns request by request, "
              f"each request's median of {args.repeats} runs):")
        for key in predictors:
            line = f"  {names[key]:<22} {n / seconds[key]:8.1f} sentences/s  ({seconds[key]:.3f} s per pass)"
            line += (f"  latency p50 {1000 * percentile(latencies[key], 0.5):.1f} ms, "
                     f"p95 {1000 * percentile(latencies[key], 0.95):.1f} ms")
            print(line)
        over_c, over_b = seconds["c"] / seconds["a"], seconds["b"] / seconds["a"]
        ratio = over_c / layer_speedup
        figures["batches"][str(size)] = {
            "requests": len(reqs), "speedup_over_plain": over_c, "speedup_over_full_depth": over_b,
            "fraction_of_layer_speedup": ratio, "target_met": bool(ratio >= TARGET),
            **{key: {"name": names[key], "sentences_per_s": n / seconds[key],
                     "p50_ms": 1000 * percentile(latencies[key], 0.5),
                     "p95_ms": 1000 * percentile(latencies[key], 0.95)} for key in predictors}}
        print(f"  wall-clock speed-up (a) over (c): {over_c:.2f}x, over (b): {over_b:.2f}x; "
              f"layer speed-up {layer_speedup:.2f}x; (a)/(c) is {ratio:.2f} of the layer speed-up  "
              f"[target >= {TARGET:.2f}: {'met' if ratio >= TARGET else 'MISSED'}]")
        token_a = statistics.median(_time_tokenize(served, reqs) for _ in range(args.repeats))
        token_c = statistics.median(_time_tokenize_padded(served, reqs) for _ in range(args.repeats))
        print(f"  tokenization: {1000 * token_a:.0f} ms per pass in (a)/(b) ({token_a / seconds['a']:.0%} of (a)), "
              f"{1000 * token_c:.0f} ms in (c) (tokenize + pad to tensors)")
        parts = breakdown(served, reqs, args.repeats)
        total = sum(parts[k] for k in STAGES)
        other = parts["early_exit"] - parts["layers"] - parts["heads"]
        print(f"  where (a)'s time goes ({1000 * total:.0f} ms per pass): "
              f"validate {1000 * parts['validate']:.0f} ms, tokenize {1000 * parts['tokenize']:.0f}, "
              f"pad {1000 * parts['pad']:.0f}, encoder layers {1000 * parts['layers']:.0f}, "
              f"exit heads {1000 * parts['heads']:.0f}, rest of early_exit (embedding, mask, policy, host syncs) "
              f"{1000 * other:.0f}, copy to host {1000 * parts['to_host']:.0f}, output {1000 * parts['output']:.0f}")
        figures["batches"][str(size)]["breakdown_ms"] = {key: 1000 * value for key, value in parts.items()}
    figures["load_average_end"] = os.getloadavg()[0]
    print(f"\nload average {figures['load_average_end']:.2f} (1 min) at the end")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


def _time_tokenize(served, reqs) -> float:
    start = time.perf_counter()
    for frame in reqs:
        served.tokenize([frame[f].tolist() for f in served.fields])
    return time.perf_counter() - start


def _time_tokenize_padded(served, reqs) -> float:
    start = time.perf_counter()
    for frame in reqs:
        served.tokenizer(*[frame[f].tolist() for f in served.fields], truncation=True, max_length=served.max_length,
                         padding=True, return_tensors="pt")
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
