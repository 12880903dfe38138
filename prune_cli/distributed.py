"""Multi-process (DistributedDataParallel) training of one run, started by ``torchrun``.

    torchrun --nproc_per_node=4 -m prune_cli.cli model=resnet56 dataset=cifar10 ratio=0.6

Conventions (everything else behaves as in one process):

- ``train.batch_size`` / ``finetune.batch_size`` stay the **global** batch: each of the
  ``world_size`` ranks takes ``batch_size / world_size`` images of every step's global batch
  (the batch size must divide evenly). Each epoch's permutation and augmentation draws are those
  of the single-process run, and every rank takes its own contiguous slice of each global batch,
  so the ranks see disjoint shards and together exactly the images one process would see.
  DistributedDataParallel averages the gradients, which for equal slices is the gradient of the
  global batch. BatchNorm statistics are per rank (as in torchvision's references without
  ``--sync-bn``), the one expected difference from a single process.
- Evaluation splits are sharded the same way and the sums (loss, correct top-1/top-5, images)
  are all-reduced, so every rank gets the figures of the whole split.
- Only rank 0 writes files (checkpoints, ``metrics.json``, ``history.csv``, the trained-model
  cache, Hydra's ``.hydra/`` and log); the other ranks compute the same things and discard them.
- Method hooks (masks, regularisers) run on every rank on identical weights.

Nothing here does anything unless a process group is initialised, which :func:`init_from_env`
does only when ``torchrun`` has set ``WORLD_SIZE > 1``.
"""

from __future__ import annotations

import datetime
import os
import re
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0, or the only process: the one that writes files."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env() -> bool:
    """Join the process group that ``torchrun`` describes in the environment (once).

    Backend: NCCL for CUDA tensors and gloo for CPU tensors when CUDA is available, gloo alone
    otherwise. Each rank uses GPU ``LOCAL_RANK``. Returns whether this process is distributed.
    """
    if not launched_by_torchrun() or not dist.is_available():
        return False
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            backend = "cpu:gloo,cuda:nccl"
        else:
            backend = "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return is_distributed()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (a decision only rank 0 can take, e.g. a file check)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over the ranks, in place, and return it (unchanged in one process)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def local_batch_size(global_batch: int) -> int:
    """The per-rank share of a global training batch; it must divide evenly."""
    world = world_size()
    if global_batch % world:
        from prune_cli.errors import ConfigError

        raise ConfigError(
            f"batch size {global_batch} does not divide among {world} processes; "
            f"valid: a multiple of {world}"
        )
    return global_batch // world


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` in DistributedDataParallel when distributed, else ``model`` itself.

    Parameters are broadcast from rank 0 at wrapping, so every rank starts from the same
    weights; BatchNorm buffers are broadcast at every forward.
    """
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    if device.type != "cuda":
        return DistributedDataParallel(model)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return DistributedDataParallel(model, device_ids=[index])


def sync_buffers(model: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DistributedDataParallel broadcasts them at the start of each forward, so after the last
    training step each rank holds statistics updated with its own shard; evaluation and
    checkpoints must all use rank 0's.
    """
    if is_distributed():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


_NOW = re.compile(r"\$\{now:([^}]*)\}")


def torchrun_overrides(args: list[str], config_file: Path) -> list[str]:
    """``prune-run`` arguments for this rank of a ``torchrun`` job (joins the process group).

    Hydra names the run directory after the time each process starts, which can differ between
    ranks by a second; rank 0's time is given to all, through ``hydra.run.dir`` built from the
    pattern in ``config.yaml``. The other ranks write no ``.hydra/`` and no log. A sweep
    (``-m``) is refused: torchrun runs one run on several processes; sweeps use a launcher.
    """
    from prune_cli.errors import UserError

    if any(a in ("-m", "--multirun") for a in args):
        raise UserError(
            "torchrun runs one run on several processes; run sweeps without torchrun "
            "(hydra/launcher=slurm with gpus_per_node, or one torchrun per run)"
        )
    init_from_env()
    out = list(args)
    if not any(a.startswith("hydra.run.dir=") for a in args):
        from omegaconf import OmegaConf

        raw = OmegaConf.to_container(OmegaConf.load(config_file), resolve=False)
        pattern = str(raw["hydra"]["run"]["dir"])  # unresolved: ${now:...} kept as text
        now = broadcast_object(datetime.datetime.now())
        out.append("hydra.run.dir=" + _NOW.sub(lambda m: now.strftime(m.group(1)), pattern))
    if not is_main():
        out += ["hydra.output_subdir=null", "hydra/job_logging=none", "hydra/hydra_logging=none"]
    return out


def shutdown() -> None:
    """Leave the process group (at the end of a torchrun job)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
