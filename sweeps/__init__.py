"""Hyper-parameter sweeps that compare LeeBERT's loss-weight methods (fixed, bilevel, clo).

``platform/sweep.py`` is the command line; the pieces are:

- ``sweeps.config``   the typed sweep config, presets (``sweeps/presets/*.yaml``), validation
- ``sweeps.runner``   Ray Tune searches (OptunaSearch + ASHA), one per method, resume
- ``sweeps.trial``    the Ray Tune trial: ``trainers.train.run`` with DeepSpeed
- ``sweeps.tracking`` the MLflow layout (experiment, method runs, trial runs)
- ``sweeps.report``   summary table, Pareto overlay, Optuna storage
- ``sweeps.export`` / ``sweeps.serving``  the exported model and its MLflow pyfunc (early exit)

Kept free of imports: trials and the logged MLflow model import submodules only.
"""
