"""One command that checks the trainer on a GPU, one line per check (docs/gpu.md).

    python benchmarks/gpu_check.py                         # on one GPU: a few minutes
    python benchmarks/gpu_check.py --device cpu --quick    # its code paths on a CPU, tiny model (the test suite)

On a machine with torch (CUDA) and no network, install the wheels ``benchmarks/gpu_bundle.sh``
collected first (docs/gpu.md). The model is BERT-base-shaped and randomly initialized (12 layers,
hidden 768, 12 heads, no download); the data is a synthetic learnable task, so no tokenizer or data
set is needed. The checks, in order (docs/gpu.md's table says what each asserts): import_deepspeed
(first, timed: with Triton it builds kernels at import; the torch, CUDA and DeepSpeed versions),
engine, train/<method>, syncs/zero2 and syncs/zero0 (per steady-state step, target 0, counted by
``torch.cuda.set_sync_debug_mode`` and by the profiler's CUDA runtime sync calls, which also see
``torch.cuda.synchronize()``), hypergradient, resume (deterministic mode), step_cost, packing
(1, 2 and 4 trainings at once on one device), compile (torch.compile on the fixed step), early_exit.

``--only NAME ...`` reruns some checks. Exit code 0 when every check passes, 1 otherwise, 2 without
a working CUDA (``--device cuda``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# cuBLAS is deterministic only with a fixed workspace, read once when CUDA initializes (resume check)
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import torch  # noqa: E402

DEEPSPEED_PRELOADED = "deepspeed" in sys.modules  # the import check times the first import
import gpu_packing  # noqa: E402  (benchmarks/gpu_packing.py: trainings sharing a device, torch.compile)
import step_cost  # noqa: E402  (benchmarks/step_cost.py: the same measurement as on the CPU)
from trainers import engine as ds  # noqa: E402
from trainers.config import TrainConfig  # noqa: E402
from trainers.data import synthetic_task_data  # noqa: E402
from trainers.errors import ConfigError  # noqa: E402
from trainers.divergence import DivergenceMonitor  # noqa: E402
from trainers.model import MultiExitEncoder  # noqa: E402
from trainers.objective import LossTerms, LossWeights  # noqa: E402
from trainers.policies import make_policy, simulate  # noqa: E402
from trainers.train import (History, ProgressLog, StepDraw, rank_seed, restore_rng, rng_state,  # noqa: E402
                            train_steps)
from trainers.weight_strategies import build_strategy, exact_hypergradient, hypergradient  # noqa: E402

GPU_CONFIG = "clusters/deepspeed/gpu_bf16_zero2.json"
FP32_ZERO2_CONFIG = "clusters/deepspeed/cpu_zero2.json"  # the same engine without autocast (--precision fp32)
ZERO0_CONFIG = "clusters/deepspeed/cpu_zero0.json"  # fp32 (--precision fp32)
ZERO0_GPU_CONFIG = "clusters/deepspeed/gpu_bf16_zero0.json"  # the packed presets' engine
# CUDA runtime calls that make the host wait for the device (cudaMemcpy: the blocking one, not ...Async)
SYNC_CALLS = ("cudaDeviceSynchronize", "cudaStreamSynchronize", "cudaEventSynchronize", "cudaMemcpy")
SHAPES = {  # BERT-base, and a tiny one for --quick
    "full": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
    "quick": dict(num_hidden_layers=3, hidden_size=64, num_attention_heads=2, intermediate_size=128),
}
VOCAB = 30522


class Checks:
    def __init__(self, only: list[str] | None = None):
        self.results: list[dict] = []
        self.only = only

    def run(self, name: str, fn, *args) -> object:
        if self.only and name not in self.only and name.split("/")[0] not in self.only:
            return None
        start = time.perf_counter()
        try:
            detail = fn(*args)
            ok = True
        except Exception as err:  # one failed check must not hide the others
            detail, ok = f"{type(err).__name__}: {err}".splitlines()[0], False
            traceback.print_exc(file=sys.stderr)
        seconds = time.perf_counter() - start
        text = detail if isinstance(detail, str) else detail.get("text", "")
        print(f"{'PASS' if ok else 'FAIL'} {name}: {text} ({seconds:.1f} s)", flush=True)
        self.results.append({"check": name, "ok": ok, "seconds": round(seconds, 1),
                             **({"figures": detail["figures"]} if isinstance(detail, dict) else {})})
        return detail


def make_model(shape: str, dropout: float, seed: int, dtype=torch.float32, attn: str = "sdpa") -> MultiExitEncoder:
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=VOCAB, max_position_embeddings=512, attn_implementation=attn,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, **SHAPES[shape])
    return MultiExitEncoder(BertModel(config), num_labels=2, pooling="cls", dropout=dropout).to(dtype)


def config(args, method: str, deepspeed_config: str | None = None, **extra) -> TrainConfig:
    if deepspeed_config is None:
        deepspeed_config = GPU_CONFIG if args.precision == "bf16" else FP32_ZERO2_CONFIG
    values = dict(task="mr", model="tiny-random", method=method, batch_size=args.batch_size, max_length=args.max_length,
                  precision=args.precision, device=args.device, deepspeed_config=deepspeed_config, zero_stage=2,
                  outer_every=3, log_every=10, weight_log_every=10, seed=1, output_dir=str(args.out / "run"))
    return TrainConfig(**{**values, **extra}).validate()


def build(args, method: str, data, dropout: float = 0.1, **extra):
    cfg = config(args, method, **extra)
    model = make_model(args.shape, dropout, seed=cfg.seed)
    engine = ds.build_engine(model, cfg, total_steps=10**6)
    strategy = build_strategy(cfg, LossTerms.build(model.num_layers, cfg.kd)).to(engine.device)
    torch.manual_seed(rank_seed(cfg.seed, 0))
    return cfg, model, engine, strategy


def check_import_deepspeed(args):
    started = time.perf_counter()
    import deepspeed

    seconds = time.perf_counter() - started
    triton = "triton" in sys.modules
    figures = {"torch": torch.__version__, "cuda": torch.version.cuda, "deepspeed": deepspeed.__version__,
               "import_s": round(seconds, 1), "triton_loaded": triton, "preloaded": DEEPSPEED_PRELOADED}
    return {"text": f"deepspeed {deepspeed.__version__} imported in {seconds:.1f} s"
                    + (" (already imported)" if DEEPSPEED_PRELOADED else "") + f" on torch {torch.__version__}"
                    + (f", CUDA {torch.version.cuda}" if torch.version.cuda else "") + (", Triton loaded" if triton else ""),
            "figures": figures}


def check_engine(args):
    cfg = config(args, "fixed")
    engine = ds.build_engine(make_model(args.shape, 0.1, 1), cfg, total_steps=100)
    from deepspeed.runtime.torch_autocast import get_comm_dtype

    facts = {"device": engine.device.type, "zero_stage": engine.zero_optimization_stage(),
             "autocast": engine.torch_autocast_enabled(), "timer": engine.tput_timer.config.enabled,
             "params": sorted({str(p.dtype) for p in engine.module.parameters()}),
             "reduction": sorted({str(get_comm_dtype(p)) for p in engine.module.parameters()}),
             "clipping": (engine.gradient_clipping(), engine.trainer_max_grad_norm)}
    ds.release_engine(engine)
    assert facts["device"] == args.device, facts
    assert facts["zero_stage"] == 2 and facts["autocast"] == (args.precision == "bf16") and not facts["timer"], facts
    assert facts["params"] == facts["reduction"] == ["torch.float32"] and facts["clipping"] == (0.0, 1.0), facts
    return (f"device {facts['device']}, ZeRO-{facts['zero_stage']}, autocast {facts['autocast']}, fp32 master weights "
            "and gradient reduction, clipping by the trainer, no throughput timer")


def check_training(args, data, method: str):
    cfg, model, engine, strategy = build(args, method, data)
    seen = []
    model.exits[-1].register_forward_hook(lambda m, a, out: seen.append((out.dtype, out.device.type)) if m.training else None)
    monitor = DivergenceMonitor(engine.device)
    progress = ProgressLog(History(), lambda msg: None, args.steps, cfg.weight_log_every)
    loss = train_steps(engine, strategy, strategy.terms, data, cfg, 0, 5, progress, monitor)  # warm-up
    ds.synchronize(engine.device)
    start = time.perf_counter()
    loss = train_steps(engine, strategy, strategy.terms, data, cfg, 5, args.steps, progress, monitor)
    progress.check(monitor, ds.current_lrs(engine)[0])  # raises if any step diverged
    rate = (args.steps - 5) / (time.perf_counter() - start)
    want = torch.bfloat16 if args.precision == "bf16" else torch.float32
    params = list(model.parameters())
    assert {s for s in seen} == {(want, args.device)}, f"exit logits {set(seen)}"
    assert loss.dtype == torch.float32 and loss.device.type == args.device and torch.isfinite(loss)
    assert all(p.dtype == torch.float32 and p.device.type == args.device for p in params)
    assert all(torch.isfinite(p).all() for p in params), "non-finite parameters"
    weights = strategy.weights()
    assert weights.device.type == args.device and weights.dtype == torch.float32 and torch.isfinite(weights).all()
    ds.release_engine(engine)
    return {"text": f"{args.steps} steps, loss {loss.item():.3f}, logits {want}, loss/θ/w fp32, {rate:.2f} steps/s",
            "figures": {"steps_per_s": round(rate, 3)}}


def count_syncs(args, data, method: str, deepspeed_config: str, steps: int) -> tuple[float, float]:
    """(debug-mode sync warnings, profiled CUDA runtime sync calls) per steady-state step."""
    cfg, model, engine, strategy = build(args, method, data, deepspeed_config=deepspeed_config,
                                         zero_stage=0 if "zero0" in deepspeed_config else 2, log_every=10**6)
    monitor = DivergenceMonitor(engine.device)
    progress = ProgressLog(History(), lambda msg: None, 10**6, 10**6)
    train_steps(engine, strategy, strategy.terms, data, cfg, 0, 3, progress, monitor)  # one-time set-up
    ds.synchronize(engine.device)
    # the CUDA runtime calls are CPU-side events; on a CPU (no such calls) the profiler, slow there, stays off
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    cuda = args.device == "cuda"
    with warnings.catch_warnings(record=True) as caught, \
            (torch.profiler.profile(activities=activities) if cuda else contextlib.nullcontext()) as prof:
        warnings.simplefilter("always")
        debug = torch.cuda.set_sync_debug_mode if cuda else (lambda mode: None)
        debug("warn")
        try:
            train_steps(engine, strategy, strategy.terms, data, cfg, 3, 3 + steps, progress, monitor)
        finally:
            debug("default")
    ds.release_engine(engine)
    profiled = sum(e.count for e in prof.key_averages() if e.key in SYNC_CALLS) if cuda else 0
    return sum("synchroniz" in str(w.message) for w in caught) / steps, profiled / steps


def check_syncs(args, data, zero_stage: int):
    if args.precision == "bf16":
        deepspeed_config = GPU_CONFIG if zero_stage == 2 else ZERO0_GPU_CONFIG
    else:
        deepspeed_config = FP32_ZERO2_CONFIG if zero_stage == 2 else ZERO0_CONFIG
    steps = 6 if args.device == "cuda" else 2  # the CPU only runs the code: it has no CUDA calls to count
    per = {method: count_syncs(args, data, method, deepspeed_config, steps) for method in ("fixed", "bilevel", "clo")}
    text = ", ".join(f"{m} {debug:.1f}/{profiled:.1f}" for m, (debug, profiled) in per.items())
    text += " syncs per step (debug mode/profiler)" if args.device == "cuda" else \
        " (CPU: no CUDA runtime calls to see; tests/test_gpu_steps.py counts DeepSpeed's syncs there)"
    worst = max(max(pair) for pair in per.values())
    assert worst == 0, f"host syncs in a steady-state step ({deepspeed_config}): {text}"
    return {"text": text, "figures": {m: {"debug_mode": d, "profiler": p} for m, (d, p) in per.items()}}


def check_hypergradient(args, data):
    device = torch.device(args.device)
    # 1. FD against the exact hypergradient: a small fp64 model (double backward needs eager attention)
    model = make_model("quick", 0.0, 3, dtype=torch.float64, attn="eager").to(device)
    terms = LossTerms.build(model.num_layers, "all", temperature=2.0)
    weights = LossWeights(len(terms)).double().to(device)
    with torch.no_grad():
        weights.phi.copy_(torch.linspace(-0.5, 0.5, len(terms), dtype=torch.float64))
    draw = StepDraw(data, 0, (8, 8), 1, device=device)
    b1, b2 = draw.b1(), draw.b2()
    xi = [0.05] * sum(1 for _ in model.parameters())
    same = lambda tensors: tensors  # noqa: E731
    fd = hypergradient(model, terms, weights, b1, b2, xi, 0.01, reduce=same)
    exact = exact_hypergradient(model, terms, weights, b1, b2, xi)
    cos_exact = torch.nn.functional.cosine_similarity(fd, exact, dim=0).item()
    rel_exact = ((fd - exact).norm() / exact.norm()).item()
    assert fd.device.type == args.device and cos_exact >= 0.99 and rel_exact <= 0.05, (cos_exact, rel_exact)
    # 2. FD in fp32 at the trainer's ξ (its learning rates) and fd_eps, TF32 allowed around it ("high"),
    #    against the exact hypergradient of the same model in fp64
    trainer = TrainConfig()
    model = make_model("quick", 0.0, 3, attn="eager").to(device)
    xi = [trainer.head_lr if n.startswith("exits.") else trainer.lr for n, _ in model.named_parameters()]
    weights32 = LossWeights(len(terms)).to(device)
    with torch.no_grad():
        weights32.phi.copy_(torch.linspace(-0.5, 0.5, len(terms)))
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        fd32 = hypergradient(model, terms, weights32, b1, b2, xi, trainer.fd_eps, reduce=same)
    finally:
        torch.set_float32_matmul_precision(previous)
    exact32 = exact_hypergradient(model.double(), terms, weights32.double(), b1, b2, xi)
    cos_fp32 = torch.nn.functional.cosine_similarity(fd32.double(), exact32, dim=0).item()
    assert cos_fp32 >= 0.99, cos_fp32
    # 3. bf16 gradient passes against fp32 ones, on the full shape at the trainer's learning rates
    model = make_model(args.shape, 0.0, 4).to(device)
    terms = LossTerms.build(model.num_layers, "all")
    weights = LossWeights(len(terms)).to(device)
    with torch.no_grad():
        weights.phi.copy_(torch.linspace(-0.5, 0.5, len(terms)))
    draw = StepDraw(data, 1, (16, 16), 1, device=device)
    xi = [1e-3 if n.startswith("exits.") else 5e-5 for n, p in model.named_parameters() if p.requires_grad]
    fp32 = hypergradient(model, terms, weights, draw.b1(), draw.b2(), xi, 0.01, reduce=same)
    bf16 = hypergradient(model, terms, weights, draw.b1(), draw.b2(), xi, 0.01, reduce=same, grad_dtype=torch.bfloat16)
    cos_bf16 = torch.nn.functional.cosine_similarity(fp32.double(), bf16.double(), dim=0).item()
    assert cos_bf16 >= 0.99, cos_bf16
    return {"text": f"FD vs exact (fp64): cosine {cos_exact:.5f}, relative error {rel_exact:.4f}; FD in fp32 at the "
                    f"trainer's ξ vs exact: cosine {cos_fp32:.5f}; bf16 g/v passes vs fp32: cosine {cos_bf16:.4f}",
            "figures": {"fd_vs_exact_cosine": cos_exact, "fd_fp32_trainer_xi_cosine": cos_fp32,
                        "bf16_vs_fp32_cosine": cos_bf16}}


def check_resume(args, data):
    """Stop after a checkpoint, build everything anew, load, continue: the same weights as straight on."""
    def steps(engine, strategy, cfg, start, stop, monitor):
        progress = ProgressLog(History(), lambda msg: None, stop, 10**6, start)
        train_steps(engine, strategy, strategy.terms, data, cfg, start, stop, progress, monitor)
        progress.check(monitor, 0.0)

    torch.use_deterministic_algorithms(True, warn_only=True)  # an op with no deterministic kernel warns
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = _resume(args, data, steps)
    finally:
        torch.use_deterministic_algorithms(False)
    nondeterministic = sorted({str(w.message).split(" does not have")[0] for w in caught if "deterministic" in str(w.message)})
    if nondeterministic:
        result["text"] += f"; ops without a deterministic kernel: {', '.join(nondeterministic)}"
    assert result["figures"]["max_abs_theta_diff"] <= 1e-6 and result["figures"]["max_abs_phi_diff"] <= 1e-6, result
    return result


def _resume(args, data, steps):
    half, total = 6, 12
    cfg, model, engine, strategy = build(args, "clo", data, dropout=0.1)
    monitor = DivergenceMonitor(engine.device)
    steps(engine, strategy, cfg, 0, half, monitor)
    out = str(args.out / "resume")
    ds.save_checkpoint(engine, out, "epoch-1", {"strategy": strategy.state_dict()}, rank_state=rng_state())
    steps(engine, strategy, cfg, half, total, monitor)
    straight = [p.detach().clone() for p in model.parameters()]
    phi_straight = strategy.loss_weights.phi.detach().clone()
    ds.release_engine(engine)

    cfg, model, engine, strategy = build(args, "clo", data, dropout=0.1)
    state = ds.load_checkpoint(engine, out, "epoch-1")
    strategy.load_state_dict(state["strategy"])
    assert restore_rng(ds.load_rank_state(out, "epoch-1")), "no random state saved for rank 0"
    steps(engine, strategy, cfg, half, total, DivergenceMonitor(engine.device))
    worst = max((a - b).abs().max().item() for a, b in zip(straight, model.parameters()))
    phi_worst = (phi_straight - strategy.loss_weights.phi).abs().max().item()
    ds.release_engine(engine)
    return {"text": f"deterministic mode; clo, stopped at step {half} of {total}, dropout 0.1: max |Δθ| {worst:.1e}, max |Δφ| {phi_worst:.1e}",
            "figures": {"max_abs_theta_diff": worst, "max_abs_phi_diff": phi_worst}}


def check_step_cost(args, data):
    base = config(args, "fixed")
    model = make_model(args.shape, 0.1, 1)
    arms = {name: step_cost.Arm(name, model, base, 10**6) for name in step_cost.ARMS}
    plain = step_cost.PlainLoop(model, arms["fixed"].cfg, 10**6, args.device)
    steps = step_cost.per_step(arms, plain, data, rounds=args.rounds, warmup=2, device=args.device)
    for arm in arms.values():
        ds.release_engine(arm.engine)
    fixed = steps["fixed/step"]
    cost = {arm: round((steps[f"{arm}/outer"] - steps[f"{arm}/step"]) / fixed, 2) for arm in ("bilevel", "clo")}
    ratio = fixed / steps["plain/step"]
    text = (f"fixed step {fixed * 1e3:.1f} ms = {ratio:.2f}x the plain PyTorch loop's; outer_step_cost bilevel "
            f"{cost['bilevel']:.2f}, clo {cost['clo']:.2f} fixed steps ({args.device} {args.precision}, ZeRO-2)")
    return {"text": text, "figures": {"seconds_per_step": steps, "fixed_over_plain": round(ratio, 3), "outer_step_cost": cost}}


@torch.no_grad()
def check_early_exit(args, data):
    device = torch.device(args.device)
    model = make_model(args.shape, 0.0, 5).to(device).eval()
    split = data.test
    from trainers.data import eval_batches

    checked = 0
    for kind, setting in (("patience", 2), ("entropy", 0.6), ("confidence", 0.55)):
        policy = make_policy(kind, setting)
        for _, batch in eval_batches(split, 64, data.pad_token_id):
            batch = {k: v.to(device) for k, v in batch.items()}
            all_logits = model(**batch)
            layers, logits = simulate(policy, all_logits)
            got_logits, got_layers = model.early_exit(policy, **batch)
            assert torch.equal(got_layers.cpu(), layers.cpu()), f"{kind}: exit layers differ"
            assert torch.allclose(got_logits.float(), logits.float(), atol=1e-3, rtol=1e-3), f"{kind}: logits differ"
            checked += len(layers)
    return f"{checked} examples: exit layers equal and logits within 1e-3 for patience, entropy and confidence"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--quick", action="store_true", help="a tiny model and few steps (a smoke run, e.g. on a CPU)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/leebert-gpu-check"), help="scratch folder (checkpoints)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--only", nargs="+", metavar="CHECK", help="run only these checks (a rerun), e.g. packing compile")
    args = parser.parse_args()
    # the packing workers: fewer steps each; compile: inductor on a GPU, dynamo alone on a CPU (no C++ build)
    args.packing_steps, args.packing_timeout_s = (2, 600) if args.quick else (30, 240)
    args.compile_backend = "inductor" if args.device == "cuda" else "eager"
    args.shape = "quick" if args.quick else "full"
    args.steps, args.rounds = (8, 2) if args.quick else (30, 8)
    args.batch_size, args.max_length = (8, 24) if args.quick else (32, 128)
    started = time.perf_counter()
    try:
        ds.select_device(args.device, args.precision)  # fails at once without CUDA
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.device == "cuda":
        torch.cuda.set_device(0)
    print(f"gpu_check: torch {torch.__version__}, "
          + (f"{torch.cuda.get_device_name()}, CUDA {torch.version.cuda}" if args.device == "cuda" else "CPU")
          + f", {args.precision}, model {'BERT-base shape' if args.shape == 'full' else 'tiny'} (random), "
            f"batch {args.batch_size}, length <= {args.max_length}", flush=True)
    data = synthetic_task_data(2048, 256, VOCAB, args.max_length, seed=0)
    checks = Checks(args.only)
    checks.run("import_deepspeed", check_import_deepspeed, args)
    checks.run("engine", check_engine, args)
    for method in ("fixed", "bilevel", "clo"):
        checks.run(f"train/{method}", check_training, args, data, method)
    checks.run("syncs/zero2", check_syncs, args, data, 2)
    checks.run("syncs/zero0", check_syncs, args, data, 0)
    checks.run("hypergradient", check_hypergradient, args, data)
    checks.run("resume", check_resume, args, data)
    checks.run("step_cost", check_step_cost, args, data)
    checks.run("packing", gpu_packing.check_packing, args)
    checks.run("compile", gpu_packing.check_compile, args)
    checks.run("early_exit", check_early_exit, args, data)
    failed = [r["check"] for r in checks.results if not r["ok"]]
    print(f"gpu_check: {len(checks.results) - len(failed)}/{len(checks.results)} passed in "
          f"{time.perf_counter() - started:.0f} s" + (f"; failed: {', '.join(failed)}" if failed else ""))
    if args.json:
        args.json.write_text(json.dumps(checks.results, indent=2, default=float))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
