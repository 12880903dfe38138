"""Multi-process training of one run (prune_cli.distributed): sharding, DDP equivalence, torchrun.

Two CPU processes with the gloo backend. Without BatchNorm, DistributedDataParallel over two
ranks that each take half of every global batch computes the same update as one process on the
whole batch, up to float rounding: that is what the equivalence test checks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from prune_cli.data.base import DatasetBundle, Split
from prune_cli.data.loaders import TensorLoader, shard_slice
from prune_cli.engine.loop import StageFiles, evaluate, fit


def bundle(n_train: int = 40, n_test: int = 22) -> DatasetBundle:
    gen = torch.Generator().manual_seed(0)

    def split(n: int) -> Split:
        images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=gen)
        return Split(labels=torch.randint(0, 4, (n,), generator=gen), images=images)

    return DatasetBundle(
        name="toy",
        num_classes=4,
        in_channels=3,
        image_size=8,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        splits={"train": split(n_train), "test": split(n_test)},
        class_names=["a", "b", "c", "d"],
        crop_padding=2,
    )


def loader(data: DatasetBundle, bs: int, train: bool, rank: int, world: int) -> TensorLoader:
    part = data.splits["train" if train else "test"]
    return TensorLoader(part.images, part.labels, bs, train=train, mean=data.mean, std=data.std,
                        device=torch.device("cpu"), seed=3, crop_padding=2, rank=rank,
                        world_size=world)  # fmt: skip


def test_shard_slice_splits_evenly() -> None:
    assert [shard_slice(10, r, 3) for r in range(3)] == [slice(0, 4), slice(4, 7), slice(7, 10)]
    assert shard_slice(5, 0, 1) == slice(0, 5)


def test_ranks_take_disjoint_slices_of_each_global_batch() -> None:
    data = bundle(n_train=10)
    single = list(loader(data, 4, True, 0, 1))  # global batches of 4, 4, 2
    ranks = [list(loader(data, 4, True, r, 2)) for r in range(2)]
    assert [len(b[1]) for b in single] == [4, 4, 2]
    assert [[len(b[1]) for b in r] for r in ranks] == [[2, 2, 1], [2, 2, 1]]
    for step, (x, y) in enumerate(single):
        # same images, same crops and flips: rank 0 the first half, rank 1 the second
        assert torch.equal(torch.cat([ranks[0][step][0], ranks[1][step][0]]), x)
        assert torch.equal(torch.cat([ranks[0][step][1], ranks[1][step][1]]), y)
    # With 3 ranks the last global batch (2 images) cannot feed every rank: dropped by all.
    assert [len(loader(data, 4, True, r, 3)) for r in range(3)] == [2, 2, 2]


def test_evaluation_shards_cover_the_split_once() -> None:
    data = bundle(n_test=22)
    labels = [torch.cat([y for _, y in loader(data, 4, False, r, 2)]) for r in range(2)]
    assert [len(v) for v in labels] == [11, 11]
    assert torch.equal(torch.cat(labels), data.splits["test"].labels)


class NoBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


CFG = {"epochs": 2, "batch_size": 8, "lr": 0.2, "momentum": 0.9, "weight_decay": 1e-4,
       "schedule": "constant", "eval_batch_size": 16, "select_best": False,
       "precision": "fp32", "memory_format": "contiguous"}  # fmt: skip


def _train(ckpt_dir: Path) -> tuple[dict, list, dict]:
    torch.manual_seed(0)
    model = NoBN()
    data = bundle()
    files = StageFiles("train", ckpt_dir)
    result = fit(model, data, CFG, device=torch.device("cpu"), files=files)
    ev = evaluate(model, data.loader("test", 16, train=False), "cpu").as_dict()
    return model.state_dict(), result.history, ev


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)  # fmt: skip
    try:
        state, history, ev = _train(Path(out) / f"ckpt_rank{rank}")
        torch.save({"state": state, "history": history, "eval": ev}, Path(out) / f"r{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_fit_on_two_processes_matches_one_process(tmp_path: Path) -> None:
    state, history, ev = _train(tmp_path / "single")
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(tmp_path / f"r{rank}.pt", weights_only=False)
        for key, value in state.items():
            torch.testing.assert_close(got["state"][key], value, rtol=1e-4, atol=1e-5)
        # epoch figures are all-reduced: both ranks report the whole split and epoch
        for mine, ref in zip(got["history"], history):
            assert mine["train_loss"] == pytest.approx(ref["train_loss"], abs=1e-4)
            assert mine["train_top1"] == ref["train_top1"]
            assert mine["eval_top1"] == ref["eval_top1"]
        assert got["eval"]["n"] == 22 and got["eval"]["top1"] == ev["top1"]
    # only rank 0 wrote checkpoints
    assert sorted(p.name for p in (tmp_path / "ckpt_rank0").iterdir()) == ["train_last.pt"]
    assert not (tmp_path / "ckpt_rank1").exists()


def _prune_run(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=600
    )


def test_torchrun_cli_trains_one_run_on_two_processes(tmp_path: Path) -> None:
    tiny = [
        "dataset.train_size=128",
        "dataset.test_size=50",
        "train.epochs=1",
        "train.batch_size=32",
        "finetune.epochs=1",
        "finetune.batch_size=32",
        "metrics.latency.enabled=false",
        "finetune.kd.alpha=0.5",
    ]  # fmt: skip  (the teacher runs on each rank, unwrapped)
    proc = _prune_run("-m", "torch.distributed.run", "--nproc_per_node=2", "-m",
                      "prune_cli.cli", *tiny, cwd=tmp_path, env={})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((tmp_path / "outputs" / "runs").glob("*/*"))
    assert len(runs) == 1  # both ranks used rank 0's run directory
    run = runs[0]
    m = json.loads((run / "metrics.json").read_text())
    assert m["status"] == "completed"
    for stage in ("baseline", "pruned", "final"):
        # accuracy over all 50 test images, not one rank's 25: a multiple of 2%
        assert (m[stage]["top1"] * 50 / 100) == pytest.approx(round(m[stage]["top1"] / 2))
    assert m["train"]["from_cache"] is False
    assert m["finetune"]["kd"]["alpha"] == 0.5
    rows = (run / "history.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["train", "finetune"]
    assert (run / ".hydra" / "config.yaml").is_file() and (run / "prune-run.log").is_file()
    assert len(list((tmp_path / "outputs" / "cache").glob("*/trained.pt"))) == 1


def test_torchrun_refuses_a_sweep(tmp_path: Path) -> None:
    proc = _prune_run("-m", "prune_cli.cli", "-m", "ratio=0.3,0.5", cwd=tmp_path,
                      env={"WORLD_SIZE": "2"})  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.startswith("prune-run: error: torchrun runs one run on several processes")
