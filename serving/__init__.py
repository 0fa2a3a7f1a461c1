"""Serving a trained multi-exit encoder: the exported model folder and its MLflow pyfunc.

- ``serving.export``  writes and reads the self-contained exported folder (weights, backbone
  config, tokenizer, task description); trials call ``export_model``.
- ``serving.model``   the MLflow pyfunc ``ExitPolicyModel`` (real early exit with an exit policy),
  its signature, input example, requirements and the code it ships (``code_paths``).

A registered model carries copies of ``serving`` ({__init__, export, model}) and ``trainers``
({__init__, errors, model, policies}) and needs nothing else from this repository. Nothing is
imported here, so ``import serving`` stays cheap.
"""
