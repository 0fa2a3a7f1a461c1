"""θ's gradient clipping, on the device: no value read, no tensor made from host data.

DeepSpeed's own clipping (``gradient_clipping`` > 0) waits on the host every step
(``trainers/ds_config.py`` says where), so the engine's is off and the trainer clips between
``engine.backward`` and ``engine.step``, at the threshold ``build_engine`` recorded on the engine:

- ZeRO-0: the parameters hold their (already averaged) gradients; torch's foreach
  ``clip_grad_norm_`` scales them by min(1, max_norm / (‖g‖ + 1e-6)), a device tensor.
- ZeRO-1/2: the parameters hold none after backward; each process holds its partition of the
  reduced gradients (``averaged_gradients``, what DeepSpeed's own clipping reads). The squared
  norms of the partitions are summed over the data-parallel group (an all-reduce that the device
  queues, the host does not wait for), and the partitions are scaled in place, the same formula.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

MAX_NORM_ATTRIBUTE = "trainer_max_grad_norm"


def clip_gradients(engine) -> None:
    """Clip θ's gradients to the engine's ``trainer_max_grad_norm`` (absent or 0: no clipping)."""
    max_norm = float(getattr(engine, MAX_NORM_ATTRIBUTE, 0.0) or 0.0)
    if max_norm <= 0:
        return
    partitions = zero_gradient_partitions(engine)
    if partitions is None:
        params = [p for p in engine.module.parameters() if p.grad is not None]
        if params:  # meta (the sync tests) has no foreach kernels; CUDA and the CPU do
            torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=params[0].device.type != "meta")
        return
    if not partitions:
        return
    squared = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(partitions)).float()).square()
    group = engine.optimizer.dp_process_group
    if dist.is_initialized() and dist.get_world_size(group) > 1:
        dist.all_reduce(squared, group=group)
    coefficient = (max_norm / (squared.sqrt() + 1e-6)).clamp(max=1.0)
    torch._foreach_mul_(partitions, coefficient)


def zero_gradient_partitions(engine) -> list[torch.Tensor] | None:
    """This process's ZeRO-1/2 gradient partitions after backward, or None for an engine without ZeRO
    (ZeRO-0, or a plain-torch engine in the tests)."""
    stage = engine.zero_optimization_stage() if hasattr(engine, "zero_optimization_stage") else 0
    if stage == 0:
        return None
    groups = engine.optimizer.averaged_gradients
    return [g for grads in groups.values() if grads is not None for g in grads if g is not None]
