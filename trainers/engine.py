"""DeepSpeed: the process group, the engine config, the engine, and crash-safe checkpoints.

On CPU DeepSpeed needs a rendezvous even for one process (else it falls back to MPI discovery and
fails on a missing mpi4py), so ``ensure_process_group`` sets a single-process gloo group up unless
a launcher (deepspeed, torchrun, Ray) already described one in RANK/WORLD_SIZE.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import torch

from trainers.config import DEVICES, resolve_precision
from trainers.ds_config import check_resolved_precision, deepspeed_config  # noqa: F401 (ds.deepspeed_config)
from trainers.errors import ConfigError
from trainers.layout import COMPLETE_MARKER, LATEST_FILE, checkpoints_dir, rank_state_file

if not torch.cuda.is_available():  # before deepspeed is imported anywhere: no accelerator probing
    os.environ.setdefault("DS_ACCELERATOR", "cpu")



# ---------------------------------------------------------------------------- the device
def select_device(requested: str, precision: str) -> str:
    """``cpu`` or ``cuda``, for ``requested`` in auto | cpu | cuda; fails at once, never falls back.
    ``select_device_and_precision`` without the precision it resolves."""
    return select_device_and_precision(requested, precision)[0]


def select_device_and_precision(requested: str, precision: str) -> tuple[str, str]:
    """(device, precision): the device for ``requested`` in auto | cpu | cuda, and ``precision``
    (fp32 | bf16 | auto) resolved for it, once, here. Fails at once, never falls back.

    ``auto`` device is CUDA when torch sees a GPU, else the CPU (a laptop). ``cuda`` without a
    working CUDA, or bf16 on a GPU without bf16, is a ConfigError naming the cause: a broken GPU
    setup must not train for hours on the CPU, and must not fail late inside a collective (Ray
    picks NCCL for a trial given GPUs while DeepSpeed, seeing no CUDA, would pick gloo).
    ``auto`` precision is bf16 where the device has bf16 units (``trainers.config.resolve_precision``:
    a GPU with bf16 support, a CPU with avx512_bf16 or amx_bf16), else fp32. bf16 asked for by
    name stays allowed on any CPU.
    """
    if requested not in DEVICES:
        raise ConfigError(f"unknown device '{requested}'; choose one of: {', '.join(DEVICES)}")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if requested == "auto" else requested
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device 'cuda' was asked for, but {_why_no_cuda()}; fix the GPU setup, or pass "
                          "--device cpu to train on the CPU on purpose")
    resolved = resolve_precision(precision, device)
    if device == "cuda" and resolved == "bf16" and not torch.cuda.is_bf16_supported():
        name = torch.cuda.get_device_name()
        major, minor = torch.cuda.get_device_capability()
        raise ConfigError(f"precision bf16 needs a GPU with bf16 support, and {name} (compute capability "
                          f"{major}.{minor}) has none; pass --precision fp32 (or auto), or use an Ampere or newer GPU")
    _pin_deepspeed_accelerator(device)
    return device, resolved


def _why_no_cuda() -> str:
    if torch.version.cuda is None:
        return (f"this torch build ({torch.__version__}) has no CUDA support (on a GPU machine, "
                f"pip install torch=={torch.__version__.split('+')[0]} from the registry is the CUDA build)")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return f"no GPU is visible (CUDA_VISIBLE_DEVICES='{visible}')"
    try:
        torch.cuda.init()
    except Exception as err:  # the driver's own reason: no device, driver too old, ...
        return f"CUDA failed to initialise ({str(err).splitlines()[0]})"
    return "torch sees no CUDA device"


def _pin_deepspeed_accelerator(device: str) -> None:
    """DeepSpeed picks its accelerator once, at first use: make it the device the run asked for."""
    if "deepspeed" not in sys.modules:
        os.environ["DS_ACCELERATOR"] = device
        return
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() != device:
        raise ConfigError(f"DeepSpeed was already set up for '{get_accelerator().device_name()}' in this process; "
                          f"start a new process to train on '{device}'")


def ensure_process_group(device: str | None = None) -> None:
    """Join the launcher's process group, or make a private group of one.

    A group of one needs no rendezvous: it uses an in-process store, so it opens no listening
    port (a TCP store listens on every interface, whatever host the URL names), and gloo is kept
    on the loopback interface. Nothing is written into ``os.environ``: processes started later from
    this one (Ray workers, test subprocesses) would inherit RANK or MASTER_PORT and take
    themselves for launched ranks.
    """
    os.environ.setdefault("LOCAL_RANK", "0")
    if torch.distributed.is_initialized():
        return
    deepspeed = import_deepspeed()
    without_shm_comm_op()  # init_distributed below starts DeepSpeed's comm backend
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    backend = "nccl" if device == "cuda" else "gloo"
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # started by deepspeed, torchrun or a Ray trainer
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)
    else:
        previous = os.environ.get("GLOO_SOCKET_IFNAME")
        if sys.platform == "linux":
            os.environ["GLOO_SOCKET_IFNAME"] = "lo"
        try:
            torch.distributed.init_process_group(backend, store=torch.distributed.HashStore(), rank=0, world_size=1)
        finally:
            if previous is None:
                os.environ.pop("GLOO_SOCKET_IFNAME", None)
            else:
                os.environ["GLOO_SOCKET_IFNAME"] = previous


def world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def linear_warmup_decay(optimizer, total_steps: int, warmup_ratio: float):
    warmup = int(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _trainable(model: torch.nn.Module):
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def _group_key(name: str, param: torch.Tensor) -> tuple[bool, bool]:
    """(is an exit-head parameter, is exempt from weight decay: biases and LayerNorm weights)."""
    return name.startswith("exits."), param.ndim < 2


def param_groups(model: torch.nn.Module, cfg) -> list[dict]:
    """AdamW's groups: backbone and exit heads at their own learning rates, no weight decay on
    biases and LayerNorm weights."""
    head_lr = cfg.head_lr if cfg.head_lr is not None else cfg.lr
    groups: dict[tuple[bool, bool], list] = {}
    for name, param in _trainable(model):
        groups.setdefault(_group_key(name, param), []).append(param)
    return [
        {"params": params, "lr": head_lr if is_head else cfg.lr,
         "weight_decay": 0.0 if no_decay else cfg.weight_decay, "name": ("heads" if is_head else "backbone")}
        for (is_head, no_decay), params in sorted(groups.items())
    ]


def build_optimizer(model: torch.nn.Module, cfg, total_steps: int):
    """The fused AdamW and its warm-up + linear-decay schedule. The fused kernel runs AdamW on CPU
    about 6x faster than the default per-tensor loop (measured on MiniLM's 22.7 M parameters: 13 ms
    against 87 ms a step), and it skips a flagged step on the device (``skip_update_unless``)."""
    optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, fused=True)
    return optimizer, linear_warmup_decay(optimizer, total_steps, cfg.warmup_ratio)


# DeepSpeed's CPU accelerator JIT-builds this op (g++ + ninja, 37-50 s: stack-notes) when its comm
# backend starts, and every other process on the machine waits on the build's lock meanwhile.
SHM_COMM_OP = "deepspeed_shm_comm"


def import_deepspeed():
    """``deepspeed``, imported without the optional ``import mlflow`` of its autotuner.

    ``deepspeed.runtime.config`` imports the autotuner, which tries ``import mlflow`` (for the
    autotuner's own runs, which this platform never starts). Where mlflow is installed, that adds
    mlflow's import to every trainer process (benchmarks/import_cost.py measures it); our trainers
    report to the driver, which alone logs to MLflow. A process that has already imported mlflow
    keeps it: only a missing one is hidden, and only while deepspeed imports.
    """
    if "deepspeed" in sys.modules:
        return sys.modules["deepspeed"]
    hide_mlflow = "mlflow" not in sys.modules
    if hide_mlflow:
        sys.modules["mlflow"] = None  # `import mlflow` raises ImportError: the autotuner's has_mlflow is False
    try:
        import deepspeed
    finally:
        if hide_mlflow and sys.modules.get("mlflow", "") is None:
            del sys.modules["mlflow"]
    return deepspeed


def without_shm_comm_op() -> None:
    """Start DeepSpeed's comm backend without building its shared-memory all-reduce op.

    Only ``inference_all_reduce`` (DeepSpeed-Inference's tensor parallelism on CPU) uses that op;
    training all-reduces through torch.distributed (gloo for several CPU workers). Building it
    anyway cost every fresh machine a minute, needed a C++ compiler, and made each trainer that
    started meanwhile wait on the build's lock (a killed build left the lock behind, and torch
    then waits forever). The backend treats a missing op as "use torch.distributed".
    """
    import importlib

    # by module name: `import deepspeed.comm.torch as m` gives the torch package (deepspeed.comm's `torch` attribute)
    backend_module = importlib.import_module("deepspeed.comm.torch")
    backend_module.build_shm_op = lambda: None


def build_engine(model: torch.nn.Module, cfg, total_steps: int):
    """AdamW with separate backbone / exit-head learning rates, warm-up + linear decay, in a DeepSpeed engine."""
    ensure_process_group()
    deepspeed = import_deepspeed()
    without_shm_comm_op()

    optimizer, scheduler = build_optimizer(model, cfg, total_steps)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler,
        config=deepspeed_config(cfg, world()[1]), dist_init_required=False,
    )
    engine.trainer_max_grad_norm = cfg.max_grad_norm  # DeepSpeed's clipping is off: trainers.gradient_clipping
    return engine


def base_optimizer(engine) -> torch.optim.Optimizer:
    """The torch optimizer inside the engine (ZeRO wraps it in its own, which calls its ``step``)."""
    optimizer = engine.optimizer
    while not isinstance(optimizer, torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


def skip_update_unless(engine, ok: torch.Tensor) -> None:
    """Make the coming ``engine.step()`` leave θ untouched unless ``ok`` (a device bool), without a host sync.

    The trainer's AdamW is fused: it reads ``found_inf`` (as GradScaler sets it) on the device and
    skips the whole update, moments and weight decay included. Another optimizer (a plain-torch
    engine in the tests) gets zero gradients instead, so its update stays finite.
    """
    optimizer = base_optimizer(engine)
    if optimizer.defaults.get("fused"):
        optimizer.found_inf = (~ok).float()
        return
    with torch.no_grad():
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.copy_(torch.where(ok, p.grad, torch.zeros_like(p.grad)))


def release_engine(engine) -> None:
    """Free what a finished training holds: ZeRO buffers, optimizer state, hooks that keep the engine
    alive through the model. With ``reuse_actors`` the next trial of this process needs that memory."""
    engine.destroy()
    for name in ("module_forward_pre_hook", "module_forward_post_hook", "first_dataloader_check"):
        handle = getattr(engine, name, None)
        if handle is not None:
            handle.remove()
            setattr(engine, name, None)
    base_optimizer(engine).state.clear()


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work (a no-op on the CPU): call before reading a clock."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def current_lrs(engine) -> list[float]:
    return [group["lr"] for group in engine.optimizer.param_groups]


def parameter_lrs(engine, fixed: float | None = None) -> list[float]:
    """The current learning rate of each trainable parameter (ξ for the virtual step), in
    ``model.parameters()`` order. ZeRO replaces the groups' tensors by flat partitions but keeps
    the groups' order, so parameters are mapped through their group key, not their identity."""
    params = _trainable(engine.module)
    if fixed is not None:
        return [fixed] * len(params)
    keys = sorted({_group_key(name, p) for name, p in params})
    lrs = current_lrs(engine)
    return [lrs[keys.index(_group_key(name, p))] for name, p in params]


# ---------------------------------------------------------------------------- checkpoints
def save_checkpoint(engine, output_dir: str, tag: str, client_state: dict, rank_state: dict | None = None) -> Path:
    """Write ``output_dir/checkpoints/tag`` so that a crash never leaves a complete-looking one.

    DeepSpeed writes into a staging folder; the folder is renamed into place and only then marked
    complete, and ``latest`` is replaced atomically. ``client_state`` is the run's (saved once);
    ``rank_state`` is this process's own (its random streams), saved by every rank as
    ``rank_state/rank<N>.pt``.
    """
    root = checkpoints_dir(output_dir)
    staging = root / ".staging"
    # One process per folder finalizes it: rank 0 on a shared filesystem; with DeepSpeed's
    # node-local storage (each node keeps a full checkpoint of its own) local rank 0 of each node.
    leader = (int(os.environ.get("LOCAL_RANK", "0")) if engine.use_node_local_storage() else world()[0]) == 0
    if leader:
        shutil.rmtree(staging / tag, ignore_errors=True)
    engine.save_checkpoint(str(staging), tag=tag, client_state=client_state, save_latest=False)
    if rank_state is not None:
        path = rank_state_file(staging / tag, world()[0])
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(rank_state, path)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    final = root / tag
    if leader:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging / tag, final)
        (final / COMPLETE_MARKER).write_text("ok\n")
        tmp = root / f"{LATEST_FILE}.tmp"
        tmp.write_text(tag)
        os.replace(tmp, root / LATEST_FILE)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    return final


def latest_checkpoint(output_dir: str) -> str | None:
    """The tag of the newest complete checkpoint, or None."""
    root = checkpoints_dir(output_dir)
    latest = root / LATEST_FILE
    if latest.is_file():
        tag = latest.read_text().strip()
        if (root / tag / COMPLETE_MARKER).is_file():
            return tag
    return None


def load_rank_state(output_dir: str, tag: str) -> dict | None:
    """This rank's own saved state, or None (a checkpoint written by fewer processes, or before 2026-12)."""
    path = rank_state_file(checkpoints_dir(output_dir) / tag, world()[0])
    return torch.load(path, weights_only=False) if path.is_file() else None


def load_checkpoint(engine, output_dir: str, tag: str) -> dict:
    root = checkpoints_dir(output_dir)
    _, client_state = engine.load_checkpoint(
        str(root), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if client_state is None:
        raise ConfigError(f"checkpoint {root / tag} could not be loaded; delete it or start without --resume")
    return client_state
