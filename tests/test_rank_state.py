"""Per-rank random state: each data-parallel rank draws its own dropout masks, and a resumed run
continues every rank's own streams, so an interrupted 2-process run ends where an uninterrupted one does.

The processes are a real 2-rank gloo group (a file rendezvous: no port to race for) running the
real trainer on DeepSpeed, as a Ray Train worker group does.
"""

import os

import pytest
import torch

from conftest import start_ranks
from trainers.config import TrainConfig

KILL_AFTER_EPOCH = 1


def train_rank(rank: int, world: int, folder: str, output: str, epochs_before_kill: int | None, resume: bool) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{folder}/rendezvous-{os.path.basename(output)}"
                                         f"-{int(resume)}", rank=rank, world_size=world)
    from trainers.train import run

    cfg = TrainConfig(model="tiny-random", task="mr", train_subset=64, eval_subset=24, max_length=24, batch_size=8,
                      epochs=2, dropout=0.2, method="clo", outer_every=2, threads=1, wallclock_eval=False,
                      log_every=1000, output_dir=output, resume=resume)
    masks = []

    def keep_mask(module, args, out):
        if module.training and not masks:
            masks.append(out == 0)

    def on_epoch(record):
        if record["epoch"] == epochs_before_kill:
            os._exit(0)  # killed: no teardown, the process just ends after the epoch's checkpoint

    original_build = __import__("trainers.train", fromlist=["build_components"]).build_components

    def build_and_hook(c):
        model, data = original_build(c)
        model.exits[0].dropout.register_forward_hook(keep_mask)
        return model, data

    import trainers.train as train_module
    train_module.build_components = build_and_hook
    model = run(cfg, on_epoch=on_epoch, quiet=True).model
    torch.save({"state": model.state_dict(), "mask": masks[0] if masks else None},
               os.path.join(folder, f"{os.path.basename(output)}-{int(resume)}-rank{rank}.pt"))
    torch.distributed.barrier()  # nobody tears the group down while a peer still uses it
    torch.distributed.destroy_process_group()


def spawn(folder, output, epochs_before_kill=None, resume=False):
    start_ranks(train_rank, (2, str(folder), str(output), epochs_before_kill, resume))


@pytest.mark.integration
def test_an_interrupted_two_rank_run_resumes_to_the_uninterrupted_weights(tmp_path):
    spawn(tmp_path, tmp_path / "straight")
    spawn(tmp_path, tmp_path / "interrupted", epochs_before_kill=KILL_AFTER_EPOCH)
    assert (tmp_path / "interrupted" / "checkpoints" / "epoch-1" / "rank_state" / "rank1.pt").is_file()
    assert not (tmp_path / "interrupted-0-rank0.pt").exists(), "the first attempt was killed before the end"
    spawn(tmp_path, tmp_path / "interrupted", resume=True)

    straight = [torch.load(tmp_path / f"straight-0-rank{r}.pt") for r in (0, 1)]
    resumed = torch.load(tmp_path / "interrupted-1-rank0.pt")
    worst = max((straight[0]["state"][k].double() - v.double()).abs().max().item() for k, v in resumed["state"].items())
    assert worst < 1e-6, f"resumed weights differ from the uninterrupted run's by up to {worst:.2e}"
    # every rank its own dropout stream: the two ranks' masks of the first step differ
    mask0, mask1 = straight[0]["mask"], straight[1]["mask"]
    assert mask0.shape == mask1.shape and 0.1 < mask0.float().mean() < 0.3
    assert (mask0 != mask1).float().mean() > 0.2, "the ranks drew the same dropout masks"
