"""Hyper-parameter sweeps that compare LeeBERT's loss-weight methods (fixed, bilevel, clo).

``platform/sweep.py`` is the command line; the pieces are:

- ``sweeps.config``   the typed sweep config and its validation (every arm's ``TrainConfig`` included)
- ``sweeps.presets``  ``build_config``: defaults, presets (``sweeps/presets/*.yaml``), a file, --set
- ``sweeps.state``    a sweep's folder: its saved config (``sweep.json``), start and ``--resume``
- ``sweeps.preflight`` reachability of the MLflow store and the Ray cluster, checked once at the start
- ``sweeps.runner``   ``run_sweep``: the whole sweep, top to bottom
- ``sweeps.ray_cluster`` start a private loopback-only Ray, or join a cluster
- ``sweeps.search``   the search stage: every arm's search at once, in one Ray Tune experiment
- ``sweeps.searchers`` per-arm Searcher/TrialScheduler wrappers: each arm's Optuna sampler, budget
                      (``sweeps.budget``) and ASHA rungs
- ``sweeps.final``    the final stage (all arms x seeds in one experiment) and the comparison,
                      composed of ``sweeps.arm_statistics`` (its numbers), ``sweeps.report`` (its
                      tables and files) and ``sweeps.tracking`` (its MLflow runs)
- ``sweeps.arm_statistics`` each arm's figures over seeds, paired bootstrap differences to the reference
- ``sweeps.experiment`` ``run_experiment``: the one Tune procedure both stages run
- ``sweeps.spec``     ``TrialSpec``: what a trial is; the only writer and reader of a trial's Tune config
- ``sweeps.trial``    the Ray Tune trial: ``trainers.train.run`` with DeepSpeed, one worker or a
                      Ray Train group, per-epoch checkpoints, divergence markers
- ``sweeps.progress`` console lines; each trial logged to MLflow as it ends
- ``sweeps.records``  trial records from Ray Tune's view of a trial
- ``sweeps.tracking`` the MLflow layout (experiment, arm runs, trial runs) and run lifecycle
- ``sweeps.report``   summary table, Pareto overlay, Optuna storage; the final comparison's tables
The served model lives in its own package, ``serving`` (export, pyfunc, calibration,
registration), so a registered model loads with the trainer's model code alone.

Kept free of imports: trials and the logged MLflow model import submodules only.
"""
