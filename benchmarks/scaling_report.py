"""benchmarks/scaling.py's output: its progress lines and its figures as text."""

from __future__ import annotations


def say(message: str) -> None:
    print(f"[scaling] {message}", flush=True)


def pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def num(value, fmt: str = "{:.1f}") -> str:
    return "-" if value is None else fmt.format(value)


def table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


def report(figures: dict, setups) -> str:
    """The figures as text; ``setups``: the cluster setups measured, in order."""
    lines = []
    tp = figures["throughput"]
    rows = []
    for key in setups:
        s = tp[key]
        rows.append((f"{key} {s['label']} ({'+'.join(map(str, s['node_cpus']))} CPUs)",
                     f"run_sweep {num(s['run_sweep_wall_s'])} s -> {num(s['trials_per_hour_run_sweep'])} trials/h; "
                     f"trials span {num(s['trials_span_s'])} s -> {num(s['trials_per_hour_span'])} trials/h; "
                     f"slots busy {pct(s['slot_utilisation'])} ({s['completed']}/{s['trials'] * s['repeats']} completed)"))
    rows.append(("ratio B / A (trials/h)", f"run_sweep {num(tp['ratio_B_over_A_run_sweep'], '{:.2f}')}x, "
                                           f"trials span {num(tp['ratio_B_over_A_span'], '{:.2f}')}x"))
    a = tp["A"]
    lines += [f"Sweep throughput: smoke-sized trials, arm fixed, {a['trials']} trials per sweep, 2 at a time, 1 CPU each, "
              f"{a['repeats']} sweep(s) per setup (medians)", table(rows),
              "  (run_sweep: the whole call, Ray join to report; trials span: first trial start to last final result; "
              "slots busy: sum of trainer walls / (2 x run_sweep))", ""]
    rows = []
    for key in setups:
        s = tp[key]
        rows.append((f"{key} per trial", f"kept model checkpoint {num(s['storage_model_checkpoint_mb'])} MB; "
                                         f"trainer state copied by Tune's experiment sync {num(s['storage_trainer_state_mb_per_trial'])} MB; "
                                         f"'Saving experiment state ... failed' errors: {s['experiment_state_sync_errors']}"))
    demo = figures.get("demo_sweep")
    if demo:
        rows.append(("demo-sized per trial", f"kept model checkpoint {num(demo['storage_model_checkpoint_mb'])} MB; "
                                             f"trainer state copied by Tune's experiment sync "
                                             f"{num(demo['storage_trainer_state_mb_per_trial'])} MB; errors: "
                                             f"{demo['experiment_state_sync_errors']}"))
    lines += ["Tune storage after the sweep (trials' files under <storage>/fixed/<trial>/)", table(rows), ""]
    rows = []
    for label, o in figures["overhead"].items():
        if o is None:
            rows.append((label, "skipped"))
            continue
        rows.append((label, f"median {pct(o['overhead_median'])}, max {pct(o['overhead_max'])} "
                            f"(Tune time_total_s: median {pct(o['overhead_tune_median'])}, max {pct(o['overhead_tune_max'])}); "
                            f"trial {num(o['trial_wall_s_median'])} s vs trainer {num(o['trainer_wall_s_median'])} s "
                            f"(medians, {o['trials']} trials)"))
    lines += ["Platform overhead per trial = (trial wall - trainer wall) / trial wall (target <= 5 % on demo-sized trials)",
              table(rows), ""]
    c = figures["checkpoint"]
    if c is None:
        lines += ["Checkpoint cost: skipped", ""]
    else:
        rows = [
            ("config", f"{c['preset']}-sized: {c['model']}, {c['epochs']} epochs, 1 thread, {c['repeats']} run(s) each"),
            ("trainer wall, no checkpoints", f"{c['wall_off_s']:.1f} s ({c['epoch_s_without_checkpoints']:.1f} s per epoch)"),
            ("trainer wall, per-epoch checkpoints", f"{c['wall_on_s']:.1f} s"),
            ("wall difference per epoch", f"{c['wall_diff_per_epoch_s']:+.2f} s ({c['wall_diff_per_epoch_pct']:+.1f} %)"),
            ("DeepSpeed save per epoch (timed)", f"{num(c['save_per_epoch_s'], '{:.2f}')} s "
                                                 f"({num(c['save_per_epoch_pct'])} % of an epoch)"),
            ("copy to Tune storage (local)", f"{num(c['persist_copy_s'], '{:.2f}')} s per checkpoint"),
            ("checkpoint size on disk", f"{num(c['checkpoint_mb'])} MB ({c['model']}, weights + AdamW state)"),
        ]
        lines += ["Per-epoch checkpoint cost (trainers.train.run, save_checkpoints False vs True)", table(rows), ""]
    m = figures["machine"]
    lines += [f"Machine: {m['cpus']} CPUs, load average {m['load_start']} at the start, {m['load_end']} at the end; "
              f"took {figures['took_s'] / 60:.1f} min"]
    return "\n".join(lines)
