"""The trained-model cache (prune_cli.cache): stable keys, train once, load after, run-dir links."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import TinyNet

from prune_cli.cache import TrainedCache, cache_key, training_payload
from prune_cli.engine import StageFiles, load_checkpoint
from prune_cli.errors import CheckpointError

CPU = torch.device("cpu")


def payload(**changes) -> dict:
    args = {
        "model": {"name": "resnet20", "shortcut": "B"},
        "dataset": {"name": "shapes", "train_size": 256, "seed": 0, "num_workers": 4},
        "train": {"epochs": 2, "batch_size": 32, "lr": 0.1, "milestones": [0.5, 0.75]},
        "seed": 3,
        "deterministic": False,
        "method_training": {"sparsity": "bn_l1", "lambda": 1e-4},
        "device_type": "cpu",
    }
    return training_payload(**{**args, **changes})


def test_key_is_stable_so_existing_entries_are_found() -> None:
    # Pinned: this payload hashed to this key before the cache logic moved out of the pipeline;
    # a change here orphans every trained model users have cached.
    assert cache_key(payload()) == "30c4813e2e7bce16"
    assert payload()["version"] == 1 and "num_workers" not in payload()["dataset"]
    # the loader worker count does not change the weights; everything else does
    dataset = {"name": "shapes", "train_size": 256, "seed": 0, "num_workers": 0}
    assert cache_key(payload(dataset=dataset)) == cache_key(payload())
    assert cache_key(payload(seed=4)) != cache_key(payload())
    assert cache_key(payload(method_training={})) != cache_key(payload())


def test_options_added_later_keep_old_keys_at_their_old_behaviour() -> None:
    base = payload()
    train = {**base["train"], "optimizer": "sgd", "compile": False}
    model = {**base["model"], "stem": "auto"}
    assert cache_key(payload(train=train, model=model)) == "30c4813e2e7bce16"
    assert cache_key(payload(train={**train, "optimizer": "adamw"})) != "30c4813e2e7bce16"
    assert cache_key(payload(model={**model, "stem": "imagenet"})) != "30c4813e2e7bce16"


class Trainer:
    """A ``train`` callable: perturbs the weights deterministically and records its calls."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.calls: list[StageFiles] = []

    def __call__(self, files: StageFiles) -> tuple[dict, list]:
        self.calls.append(files)
        with torch.no_grad():
            for p in self.model.parameters():
                p.add_(1.0)
        return {"epochs": 1, "best_epoch": 1}, [{"stage": "train", "epoch": 1}]


def test_trains_once_then_loads_and_links_into_each_run(tmp_path: Path) -> None:
    cache = TrainedCache(True, tmp_path / "cache")
    torch.manual_seed(0)
    first = TinyNet()
    train = Trainer(first)
    run1 = StageFiles(
        "train", tmp_path / "run1" / "checkpoints", tmp_path / "run1" / "h.csv", False
    )
    got = cache.train_or_load(first, payload(), run1, label="tiny_shapes", arch="tiny",
                              device=CPU, train=train)  # fmt: skip
    entry = tmp_path / "cache" / f"tiny_shapes_{cache_key(payload())}"
    # trained resumably inside the entry, never writing the run's history CSV from there
    assert len(train.calls) == 1
    assert train.calls[0] == StageFiles("train", entry, None, True)
    assert got.summary == {"epochs": 1, "best_epoch": 1, "from_cache": False,
                           "cache_entry": str(entry)}  # fmt: skip
    assert got.history == [{"stage": "train", "epoch": 1}]
    assert json.loads((entry / "key.json").read_text()) == json.loads(json.dumps(payload()))
    linked = run1.ckpt_dir / "trained.pt"
    assert linked.stat().st_ino == (entry / "trained.pt").stat().st_ino  # a hard link, no copy
    ckpt = load_checkpoint(linked)
    assert ckpt["arch"] == "tiny" and ckpt["summary"] == {"epochs": 1, "best_epoch": 1}

    torch.manual_seed(1)
    second = TinyNet()
    train2 = Trainer(second)
    run2 = StageFiles("train", tmp_path / "run2" / "checkpoints", tmp_path / "run2" / "h.csv")
    got2 = cache.train_or_load(second, payload(), run2, label="tiny_shapes", arch="tiny",
                               device=CPU, train=train2)  # fmt: skip
    assert train2.calls == []
    assert got2.summary["from_cache"] is True and got2.history == got.history
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    assert (run2.ckpt_dir / "trained.pt").stat().st_ino == linked.stat().st_ino
    # another architecture under the same key is refused, not loaded
    with pytest.raises(CheckpointError, match="is for model 'tiny', not 'other'"):
        cache.train_or_load(TinyNet(), payload(), run2, label="tiny_shapes", arch="other",
                            device=CPU, train=Trainer(TinyNet()))  # fmt: skip


def test_without_cache_trains_in_the_run_dir_and_reuses_only_on_resume(tmp_path: Path) -> None:
    cache = TrainedCache(False, tmp_path / "unused")
    ckpt_dir, history = tmp_path / "run" / "checkpoints", tmp_path / "run" / "history.csv"
    model = TinyNet()
    train = Trainer(model)

    def call(resume: bool):
        run = StageFiles("train", ckpt_dir, history, resume)
        return cache.train_or_load(model, payload(), run, label="tiny_shapes", arch="tiny",
                                   device=CPU, train=train)  # fmt: skip

    got = call(resume=False)
    assert train.calls == [StageFiles("train", ckpt_dir, history, False)]
    assert got.summary == {"epochs": 1, "best_epoch": 1, "from_cache": False}
    assert (ckpt_dir / "trained.pt").is_file() and not (tmp_path / "unused").exists()
    assert not (ckpt_dir / "key.json").exists()
    call(resume=False)  # a new run in the same directory trains again
    assert len(train.calls) == 2
    assert call(resume=True).summary["from_cache"] is True and len(train.calls) == 2


def trained_entry(tmp_path: Path) -> tuple[TrainedCache, Path]:
    cache = TrainedCache(True, tmp_path / "cache")
    run = StageFiles("train", tmp_path / "run" / "checkpoints")
    got = cache.train_or_load(TinyNet(), payload(), run, label="tiny_shapes", arch="tiny",
                              device=CPU, train=Trainer(TinyNet()))  # fmt: skip
    assert got.entry == tmp_path / "cache" / f"tiny_shapes_{cache_key(payload())}"
    assert got.checkpoint == got.entry / "trained.pt"
    return cache, got.entry


class Measure:
    """A ``compute`` callable that counts its calls."""

    def __init__(self, value: float) -> None:
        self.value, self.calls = value, 0

    def __call__(self) -> dict:
        self.calls += 1
        return {"top1": self.value, "b1": {"latency_ms": 2.5}}


def test_figures_are_measured_once_per_checkpoint_and_key(tmp_path: Path) -> None:
    cache, entry = trained_entry(tmp_path)
    key = {"kind": "test_eval", "split": "test", "batch_size": 256, "device": "cpu"}
    measure = Measure(81.5)
    first = cache.figures(entry, key, measure)
    assert first.values == {"top1": 81.5, "b1": {"latency_ms": 2.5}}
    assert first.cached is False and measure.calls == 1
    again = cache.figures(entry, dict(reversed(key.items())), Measure(0.0))  # same key
    assert again.values == first.values and again.cached is True
    # another eval batch size is another measurement; both are kept
    other = cache.figures(entry, {**key, "batch_size": 64}, Measure(80.0))
    assert other.cached is False and other.values["top1"] == 80.0
    assert cache.figures(entry, key, Measure(0.0)).values["top1"] == 81.5
    files = sorted((entry / "figures").iterdir())
    assert len(files) == 2 and all(f.suffix == ".json" for f in files)  # no temporary left
    record = json.loads(files[0].read_text())
    assert set(record) == {"key", "checkpoint", "figures"}


def test_corrupt_or_stale_figures_are_measured_again_never_an_error(tmp_path: Path) -> None:
    cache, entry = trained_entry(tmp_path)
    key = {"kind": "latency", "batch_sizes": [1, 64]}
    cache.figures(entry, key, Measure(1.0))
    (stored,) = (entry / "figures").iterdir()
    for broken in ("{not json", "", "[1, 2]", '{"key": 3}'):
        stored.write_text(broken)
        got = cache.figures(entry, key, Measure(2.0))
        assert got.cached is False and got.values["top1"] == 2.0
        assert cache.figures(entry, key, Measure(3.0)).values["top1"] == 2.0  # rewritten
    stored.unlink()
    assert cache.figures(entry, key, Measure(4.0)).cached is False
    # a retrained checkpoint (another size or time) invalidates figures of the old one
    trained = entry / "trained.pt"
    torch.save({"model": {}}, trained)
    os.utime(trained, ns=(1, 1))
    got = cache.figures(entry, key, Measure(5.0))
    assert got.cached is False and got.values["top1"] == 5.0


def test_figures_of_two_checkpoints_in_one_directory_are_kept_apart(tmp_path: Path) -> None:
    # with the cache off, trained.pt and dense_reference.pt lie side by side in checkpoints/
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    for name in ("trained.pt", "dense_reference.pt"):
        torch.save({"model": {}}, ckpt_dir / name)
    cache, key = TrainedCache(False, tmp_path / "unused"), {"kind": "test_eval"}
    assert cache.figures(ckpt_dir / "trained.pt", key, Measure(1.0)).values["top1"] == 1.0
    other = cache.figures(ckpt_dir / "dense_reference.pt", key, Measure(2.0))
    assert other.cached is False and other.values["top1"] == 2.0
    assert cache.figures(ckpt_dir / "trained.pt", key, Measure(3.0)).values["top1"] == 1.0
    assert cache.figures(ckpt_dir, key, Measure(4.0)).values["top1"] == 1.0  # dir: trained.pt


def test_figures_of_an_unwritable_entry_are_measured_and_not_cached(tmp_path: Path) -> None:
    cache, entry = trained_entry(tmp_path)
    (entry / "figures").write_text("a file where the directory should be")
    measure = Measure(1.0)
    assert cache.figures(entry, {"k": 1}, measure).cached is False
    assert cache.figures(entry, {"k": 1}, measure).cached is False
    assert measure.calls == 2
