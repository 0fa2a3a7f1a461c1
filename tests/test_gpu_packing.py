"""Trials that share a GPU: the packed preset's resources, as the sweep builds them, on a real local Ray.

The machine has no GPU, but Ray schedules by declared resources: a Ray started with ``num_gpus=1``
hands out GPU 0 and sets ``CUDA_VISIBLE_DEVICES`` for it, as on a GPU node. What runs in the trials
is a stand-in for training (a few seconds each), not a training: scheduling is what is tested.
"""

import os
import time
from pathlib import Path

import pytest

from sweeps.presets import build_config
from sweeps.search import trial_resources
from trainers.errors import ConfigError


def test_a_fraction_of_a_gpu_is_refused_for_a_data_parallel_trial():
    with pytest.raises(ConfigError, match="needs workers_per_trial 1"):
        build_config(preset="glue-bert-packed", overrides=["workers_per_trial=2"])
    assert build_config(preset="glue-bert", overrides=["gpus_per_trial=1"]).workers_per_trial == 2  # whole GPUs: fine


@pytest.mark.integration
def test_four_quarter_gpu_trials_run_at_once_on_one_device(tmp_path):
    import ray
    from ray import tune

    cfg = build_config(preset="glue-bert-packed")
    resources = trial_resources(cfg)
    assert resources == {"cpu": 2, "gpu": 0.25} and cfg.workers_per_trial == 1
    arrived = tmp_path / "arrived"
    arrived.mkdir()

    def trial(config):
        # a barrier: every trial waits until all 4 have started, so they must run concurrently
        (Path(config["arrived"]) / str(config["i"])).touch()
        deadline = time.monotonic() + 120
        while len(os.listdir(config["arrived"])) < 4 and time.monotonic() < deadline:
            time.sleep(0.2)
        tune.report({"together": len(os.listdir(config["arrived"])) == 4,
                     "gpu_ids": ",".join(str(g) for g in ray.get_gpu_ids()),
                     "visible": os.environ.get("CUDA_VISIBLE_DEVICES", "unset")})

    # address="local": a Ray of its own, never one another test (or `ray start`) left running here
    ray.init(address="local", num_cpus=4 * resources["cpu"], num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        tuner = tune.Tuner(
            tune.with_resources(trial, resources),
            param_space={"i": tune.grid_search([0, 1, 2, 3]), "arrived": str(arrived)},
            run_config=tune.RunConfig(name="packing", storage_path=str(tmp_path / "ray"), verbose=0),
        )
        results = [r.metrics for r in tuner.fit()]
    finally:
        ray.shutdown()
    assert len(results) == 4 and all(r["together"] for r in results), results
    assert {r["gpu_ids"] for r in results} == {"0"} and {r["visible"] for r in results} == {"0"}, results
