"""Multi-process (DistributedDataParallel) training under ``torchrun``.

``torchrun --nproc_per_node N -m wtal train ...`` starts N processes with
``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` (and the rendezvous address) in
their environment; :func:`setup` reads them, joins the process group (nccl on
CUDA, gloo on CPU) and, on CUDA, puts each rank on ``cuda:LOCAL_RANK``.
Without ``WORLD_SIZE > 1`` nothing changes: no process group, the configured
device.

Batches keep their single-process meaning: ``train.batch_size`` is the global
batch. Every rank draws the same global batch from an identically seeded
``TrainBatches`` and keeps its contiguous slice of ``batch_size / N`` videos
(:meth:`DistContext.shard`); DDP averages the gradients, and where a model's
loss is a mean over the videos of its batch, the average of the N per-slice
gradients is the gradient of the global-batch mean loss. The co-activity loss
(CO2-Net, W-TALC, and so the paper's model on its default CO2-Net base) is a mean
over the same-class pairs instead: each rank averages the pairs in its slice, so
the ranks' pairs are weighed equally rather than each pair (the logged value
differs from one process's in the fourth digit on the tiny preset). Rank 0 alone
evaluates and writes the run directory; the other ranks wait at a barrier.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from wtal.errors import WtalError

# Rank 0 evaluates while the others wait at a barrier: allow a long evaluation.
BARRIER_TIMEOUT = timedelta(hours=2)
# DDP's unused-parameter search (an extra graph traversal per step); no model needs it.
FIND_UNUSED_PARAMETERS = False


def _env_int(name: str, default: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None:
        if default is None:
            raise WtalError(f"distributed training: environment variable {name} is not set (start with torchrun)")
        return default
    try:
        return int(value)
    except ValueError:
        raise WtalError(f"distributed training: {name}={value!r} is not an integer") from None


def world_size_from_env() -> int:
    """``WORLD_SIZE`` as torchrun sets it; 1 outside torchrun."""
    return _env_int("WORLD_SIZE", 1)


def is_main_process() -> bool:
    """True outside torchrun and on rank 0 (e.g. to print a run's results once)."""
    return world_size_from_env() <= 1 or _env_int("RANK", 0) == 0


@dataclass
class DistContext:
    """This process's place in the run: ``world_size`` 1 means single-process (no group)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def shard(self, batch: dict[str, Any]) -> dict[str, Any]:
        """This rank's contiguous slice of a global batch (tensors and lists along dim 0)."""
        if not self.enabled:
            return batch
        size = len(batch["videos"]) // self.world_size
        begin, end = self.rank * size, (self.rank + 1) * size
        return {key: value[begin:end] for key, value in batch.items()}

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """Average of ``values`` over the ranks (a detached copy; unchanged single-process)."""
        if not self.enabled:
            return values.detach()
        values = values.detach().clone()
        torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.SUM)
        return values / self.world_size

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (picklable objects)."""
        if not self.enabled:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """``model`` in DistributedDataParallel (the model itself single-process).

        Every parameter of every model reaches the loss (checked for all models and
        the whole_video_bg ablations), so DDP runs without ``find_unused_parameters``;
        a model that leaves some out must set :data:`FIND_UNUSED_PARAMETERS`."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=FIND_UNUSED_PARAMETERS)

    def close(self) -> None:
        """Leave the process group if :func:`setup` joined it."""
        if self.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        self.owns_group = False


def check_batch_size(batch_size: int, world_size: int) -> None:
    if world_size > 1 and isinstance(batch_size, int) and batch_size % world_size:
        raise WtalError(
            f"train.batch_size: {batch_size} is the global batch and must be divisible by the number of "
            f"processes ({world_size}); use a multiple of {world_size}"
        )


def setup(device: torch.device, batch_size: int) -> tuple[DistContext, torch.device]:
    """Join torchrun's process group when ``WORLD_SIZE > 1``: (context, this rank's device).

    ``device`` is the resolved ``train.device``: on CUDA each rank gets
    ``cuda:LOCAL_RANK`` and the nccl backend, else gloo on the CPU."""
    world_size = world_size_from_env()
    if world_size <= 1:
        return DistContext(), device
    rank, local_rank = _env_int("RANK"), _env_int("LOCAL_RANK")
    check_batch_size(batch_size, world_size)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise WtalError(
                f"distributed training: LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA devices"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    owns = not torch.distributed.is_initialized()
    if owns:
        kwargs = {"device_id": device} if backend == "nccl" else {}
        torch.distributed.init_process_group(
            backend, rank=rank, world_size=world_size, timeout=BARRIER_TIMEOUT, **kwargs
        )
    elif torch.distributed.get_world_size() != world_size:
        raise WtalError(
            f"distributed training: the process group has {torch.distributed.get_world_size()} ranks, "
            f"WORLD_SIZE says {world_size}"
        )
    return DistContext(world_size=world_size, rank=rank, local_rank=local_rank, owns_group=owns), device
