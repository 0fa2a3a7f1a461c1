"""A finished training frees its engine at once: with ``reuse_actors`` the next trial in the same
process needs the GPU memory its optimizer state and ZeRO buffers held."""

import weakref

import pytest

from trainers import engine as ds
from trainers import train as train_module
from trainers.config import TrainConfig


@pytest.mark.parametrize("zero_stage", [0, 2])
def test_of_two_trainings_in_one_process_the_first_ones_engine_and_model_are_freed(tmp_path, monkeypatch, zero_stage):
    built = []
    real_build = ds.build_engine

    def build_and_watch(model, cfg, total_steps):
        engine = real_build(model, cfg, total_steps)
        built.append({"engine": weakref.ref(engine), "optimizer": weakref.ref(ds.base_optimizer(engine)),
                      "model": weakref.ref(model)})
        return engine

    monkeypatch.setattr(ds, "build_engine", build_and_watch)
    for attempt in range(2):
        cfg = TrainConfig(model="tiny-random", task="mr", train_subset=48, eval_subset=24, max_length=24,
                          batch_size=8, epochs=1, method="clo", zero_stage=zero_stage, wallclock_eval=False,
                          save_checkpoints=False, output_dir=str(tmp_path / str(attempt)))
        result = train_module.run(cfg, quiet=True)
        first = built[0]
        # the engine and its optimizer go when run returns; the model lives while the caller holds it
        assert first["engine"]() is None and first["optimizer"]() is None
        assert result.model is built[attempt]["model"]()
        del result
        assert first["model"]() is None, "nothing but the caller may keep the trained model alive"
    assert len(built) == 2
