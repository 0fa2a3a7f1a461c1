"""Serving a trained multi-exit encoder: the exported model folder and its MLflow pyfunc.

- ``serving.export``  writes and reads the self-contained exported folder (weights, backbone
  config, tokenizer, task description); trials call ``export_model``.
- ``serving.model``   the MLflow pyfunc ``ExitPolicyModel`` (real early exit with an exit policy).
- ``serving.schema``  its input checks, its answer frame, its signature and input example.
- ``serving.lean``    lean forward paths it installs where they give the very same bits.
- ``serving.packaging`` its requirements and the code it ships (``code_paths``).
- ``serving.calibration`` / ``serving.register``  the exit policy for a target; registering a sweep.

A registered model carries copies of ``serving`` ({__init__, export, lean, model, schema}) and
``trainers`` ({__init__, errors, layout, model, model_source, policies}) and needs nothing else from this repository. Nothing is
imported here, so ``import serving`` stays cheap.
"""
