"""End-to-end speed of the served early-exit model (serving.model.ExitPolicyModel) on this machine.

    python benchmarks/serving.py                                   # trains a quick MiniLM first (~3 min)
    python benchmarks/serving.py --model-uri models:/leebert-mr@champion --tracking-uri sqlite:///…/mlflow.db
    python benchmarks/serving.py --exported DIR --policy policy.json

Three ways to answer the same requests, tokenization included in all three, side by side in one
run (they take turns, median of --repeats passes):

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
    from trainers.frontier import CurvePoint, operating_point

    exported, policy_file = work / "exported", work / "policy.json"
    if not (exported / "exit_model.json").is_file():
        from trainers.train import run

        cfg = TrainConfig(task="mr", method="fixed", scheme="uniform", model="minilm", train_subset=800, epochs=1,
                          output_dir=str(work / "train"), save_checkpoints=False, wallclock_eval=False,
                          resume=True).validate()
        print("training a quick MiniLM (fixed uniform, 800 MR sentences, 1 epoch) ...", flush=True)
        started = time.perf_counter()
        summary = run(cfg, quiet=True)
        print(f"trained in {time.perf_counter() - started:.0f} s", flush=True)
        export_model(summary.pop("model_object"), cfg, exported)
        (work / "summary.json").write_text(json.dumps(summary, default=float))
    summary = json.loads((work / "summary.json").read_text())
    points = [CurvePoint(**{**p, "exit_histogram": tuple(p["exit_histogram"])}) for p in summary["validation_curve"]]
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
    """Median seconds per pass over ``reqs`` of each predictor (taking turns), and per-request latencies."""
    for predict in predictors.values():  # warm-up: first calls pay for allocation and kernel selection
        for frame in reqs[:3]:
            predict(frame)
    passes = {key: [] for key in predictors}
    latencies = {key: [] for key in predictors}
    for repeat in range(repeats):
        keys = list(predictors)
        keys = keys[repeat % len(keys):] + keys[:repeat % len(keys)]  # rotate who goes first
        for key in keys:
            predict, total = predictors[key], 0.0
            for frame in reqs:
                start = time.perf_counter()
                predict(frame)
                took = time.perf_counter() - start
                total += took
                latencies[key].append(took)
            passes[key].append(total)
    return {key: statistics.median(v) for key, v in passes.items()}, latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def breakdown(served, reqs: list[pd.DataFrame], repeats: int) -> dict:
    """Where (a)'s time goes, per pass (median), stage by stage of the pyfunc's own methods:
    validation, tokenization, padding into tensors, early_exit (of which the encoder layers and
    the exit heads; the rest is embedding, mask, policy, host syncs, indexing), copying back to
    the host, and the answers (softmax, DataFrame)."""
    import numpy as np

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
    stages = ("validate", "tokenize", "pad", "early_exit", "to_host", "output")
    results = []
    try:
        for _ in range(repeats):
            timers.update(layers=0.0, heads=0.0)
            parts = dict.fromkeys(stages, 0.0)
            for frame in reqs:
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
                labels, probabilities, exit_layers = served.answers(logits, layers)
                pd.DataFrame({"label": labels, "probabilities": probabilities, "exit_layer": exit_layers},
                             index=frame.index)
                t6 = time.perf_counter()
                for key, value in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)):
                    parts[key] += value
            parts["layers"], parts["heads"] = timers["layers"], timers["heads"]
            results.append(parts)
    finally:
        model.runner.layer = runner_layer
        for head in model.exits:
            del head.forward
    return {key: statistics.median(r[key] for r in results) for key in results[0]}


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
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per predictor (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = parser.parse_args()
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

    print(f"machine: {std_platform.processor() or std_platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
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

    for size, n in ((64, len(texts)), (1, args.batch1_sentences or len(texts))):
        reqs = requests(texts[:n], field, size)
        seconds, latencies = time_side_by_side(predictors, reqs, args.repeats)
        print(f"\nbatch {size} ({len(reqs)} requests of {n} sentences, median of {args.repeats} passes):")
        for key in predictors:
            line = f"  {names[key]:<22} {n / seconds[key]:8.1f} sentences/s  ({seconds[key]:.3f} s per pass)"
            line += (f"  latency p50 {1000 * percentile(latencies[key], 0.5):.1f} ms, "
                     f"p95 {1000 * percentile(latencies[key], 0.95):.1f} ms")
            print(line)
        over_c, over_b = seconds["c"] / seconds["a"], seconds["b"] / seconds["a"]
        ratio = over_c / layer_speedup
        print(f"  wall-clock speed-up (a) over (c): {over_c:.2f}x, over (b): {over_b:.2f}x; "
              f"layer speed-up {layer_speedup:.2f}x; (a)/(c) is {ratio:.2f} of the layer speed-up  "
              f"[target >= {TARGET:.2f}: {'met' if ratio >= TARGET else 'MISSED'}]")
        token_a = statistics.median(_time_tokenize(served, reqs) for _ in range(args.repeats))
        token_c = statistics.median(_time_tokenize_padded(served, reqs) for _ in range(args.repeats))
        print(f"  tokenization: {1000 * token_a:.0f} ms per pass in (a)/(b) ({token_a / seconds['a']:.0%} of (a)), "
              f"{1000 * token_c:.0f} ms in (c) (tokenize + pad to tensors)")
        parts = breakdown(served, reqs, args.repeats)
        total = sum(parts[k] for k in ("validate", "tokenize", "pad", "early_exit", "to_host", "output"))
        other = parts["early_exit"] - parts["layers"] - parts["heads"]
        print(f"  where (a)'s time goes ({1000 * total:.0f} ms per pass): "
              f"validate {1000 * parts['validate']:.0f} ms, tokenize {1000 * parts['tokenize']:.0f}, "
              f"pad {1000 * parts['pad']:.0f}, encoder layers {1000 * parts['layers']:.0f}, "
              f"exit heads {1000 * parts['heads']:.0f}, rest of early_exit (embedding, mask, policy, host syncs) "
              f"{1000 * other:.0f}, copy to host {1000 * parts['to_host']:.0f}, output {1000 * parts['output']:.0f}")


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
