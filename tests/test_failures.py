"""What a user sees when something goes wrong: unreadable data files named (and skippable),
expected failures of the machine explained in one line, bugs pointing at the kept traceback,
and ``prune-run`` never printing a traceback (issue 16)."""

from __future__ import annotations

import errno
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import TINY_DATA, TINY_FINETUNE, prune_run
from fakedata import (
    face,
    write_cifar10,
    write_fer_csv,
    write_ferplus_csv,
    write_image,
    write_image_in_mode,
    write_imagenet,
    write_not_an_image,
    write_truncated_image,
)
from hydra import compose, initialize_config_dir

from prune_cli.cli import CONFIG_DIR
from prune_cli.data import build_dataset
from prune_cli.data.loaders import BadFiles, FileLoader
from prune_cli.errors import (
    AccessError,
    BadFileError,
    CheckpointError,
    ConfigError,
    DataLoaderWorkerError,
    ResourceError,
    explain,
)
from prune_cli.pipeline import Pipeline

WNIDS = ["n01", "n02"]


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


def imagenet(root: Path, workers: int = 0, **cfg: object):
    return build_dataset(
        {"name": "imagenet", "root": str(root), "image_size": 8, "resize": 8,
         "num_workers": workers, **cfg}
    )  # fmt: skip


def read_all(bundle, split: str = "train", epochs: int = 1) -> torch.Tensor:
    loader = bundle.loader(split, 4, train=split == "train", seed=0)
    return torch.cat([y for _ in range(epochs) for _, y in loader])


# ----------------------------------------------------------------------------- folder data
@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("not_an_image", "not an image"),
        ("truncated_jpeg", "truncated"),
        ("truncated_png", "OSError"),
        ("dangling_link", "FileNotFoundError"),
    ],
)
def test_imagenet_bad_file_is_named_at_first_read(
    tmp_path: Path, workers: int, kind: str, reason: str
) -> None:
    write_imagenet(tmp_path, WNIDS, n_train=3, n_val=1, side=12)
    bad = tmp_path / "train" / "n02" / ("bad.png" if kind == "truncated_png" else "bad.JPEG")
    if kind == "not_an_image":
        write_not_an_image(bad)
    elif kind == "dangling_link":
        bad.symlink_to(tmp_path / "gone.JPEG")
    else:
        write_truncated_image(bad, keep=0.4)
    bundle = imagenet(tmp_path, workers)  # listing the folders reads no image
    with pytest.raises(BadFileError) as err:
        read_all(bundle)
    msg = one_line(err)
    assert msg.startswith(f"imagenet: cannot read {bad}: ") and reason.lower() in msg.lower()
    assert msg.endswith("fix or remove it, or set dataset.on_bad_file=skip")


@pytest.mark.parametrize("workers", [0, 1])
def test_imagenet_skip_leaves_bad_files_out_and_counts_each_once(
    tmp_path: Path, workers: int
) -> None:
    write_imagenet(tmp_path, WNIDS, n_train=3, n_val=1, side=12)
    write_not_an_image(tmp_path / "train" / "n01" / "x_note.JPEG")
    write_truncated_image(tmp_path / "val" / "n02" / "cut.JPEG", keep=0.3)
    bundle = imagenet(tmp_path, workers, on_bad_file="skip")
    assert len(bundle.splits["train"]) == 7  # listed: found only when read
    labels = read_all(bundle, epochs=2)
    assert sorted(labels.tolist()) == [0] * 6 + [1] * 6  # 2 epochs x 6 good images
    assert read_all(bundle, "test").tolist() == [0, 1]
    summary = bundle.bad_files.summary()
    assert summary["on_bad_file"] == "skip" and summary["skipped_files"] == 2
    assert any("x_note.JPEG" in s and "not an image" in s for s in summary["first_skipped"])


def test_imagenet_a_batch_of_only_bad_files_is_skipped(tmp_path: Path) -> None:
    write_imagenet(tmp_path, WNIDS, n_train=1, n_val=1, side=12)
    for i in range(4):
        write_not_an_image(tmp_path / "train" / "n02" / f"z{i}.JPEG")
    bundle = imagenet(tmp_path, on_bad_file="skip")
    loader = bundle.loader("train", 4, train=False)  # in order: the last batch is all bad
    assert [len(y) for _, y in loader] == [2]
    assert bundle.bad_files.summary()["skipped_files"] == 4


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "P", "I;16"])
def test_images_in_other_modes_are_converted_to_rgb(tmp_path: Path, mode: str) -> None:
    """Decided as torchvision's ImageFolder: converted (RGBA loses alpha), not an error."""
    write_imagenet(tmp_path, WNIDS, n_train=1, n_val=1, side=12)
    write_image_in_mode(tmp_path / "train" / "n02" / "odd.JPEG", mode)
    x = torch.cat([x for x, _ in imagenet(tmp_path).loader("train", 4, train=False)])
    assert x.shape == (3, 3, 8, 8) and torch.isfinite(x).all()


def test_non_image_suffixes_are_not_samples_and_are_logged(tmp_path: Path, caplog) -> None:
    write_imagenet(tmp_path, WNIDS, n_train=1, n_val=1, side=12)
    (tmp_path / "train" / "n01" / "README.txt").write_text("notes")
    with caplog.at_level("WARNING", logger="prune_cli"):
        bundle = imagenet(tmp_path)
    assert len(bundle.splits["train"]) == 2
    assert "1 file(s)" in caplog.text and "README.txt" in caplog.text


def test_a_failing_worker_is_one_line(tmp_path: Path) -> None:
    write_imagenet(tmp_path, WNIDS, n_train=2, n_val=1, side=12)
    files = sorted(str(p) for p in (tmp_path / "train").rglob("*.JPEG"))

    loader = FileLoader(
        files, torch.zeros(len(files), dtype=torch.long), 2, transform=_broken_transform,
        train=False, mean=(0.5,) * 3, std=(0.2,) * 3, device=torch.device("cpu"), num_workers=1,
    )  # fmt: skip
    with pytest.raises(DataLoaderWorkerError) as err:
        list(loader)
    msg = one_line(err)
    assert "a DataLoader worker failed: Caught ValueError in DataLoader worker process 0" in msg
    assert "ValueError: transform exploded" in msg


def _broken_transform(image: object) -> torch.Tensor:
    raise ValueError("transform exploded")


# ----------------------------------------------------------------------------- in-memory data
def test_fer_csv_row_with_wrong_pixel_count_is_named_or_skipped(tmp_path: Path) -> None:
    rows = [(i % 7, face(10 * i), u) for i, u in enumerate(["Training"] * 4 + ["PrivateTest"] * 2)]
    path = tmp_path / "fer2013.csv"
    write_fer_csv(path, rows)
    lines = path.read_text().splitlines()
    lines[2] = "1," + " ".join(["7"] * 2303) + ",Training"  # line 3: one pixel short
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(BadFileError) as err:
        build_dataset({"name": "fer2013", "root": str(tmp_path)})
    assert f"{path} line 3" in one_line(err) and "found 2303 values" in str(err.value)
    b = build_dataset({"name": "fer2013", "root": str(tmp_path), "on_bad_file": "skip"})
    assert len(b.splits["train"]) == 3 and b.bad_files.summary()["skipped_files"] == 1


def test_ferplus_skip_drops_the_aligned_label_row(tmp_path: Path) -> None:
    write_fer_csv(tmp_path / "fer2013.csv", [(0, face(10 * i), "Training") for i in range(4)])
    votes = [0, 10, 0, 0, 0, 0, 0, 0, 0, 0]
    rows = [("Training", f"f{i}.png", votes) for i in range(3)] + [("PrivateTest", "t", votes)]
    write_ferplus_csv(tmp_path / "fer2013new.csv", rows)
    lines = (tmp_path / "fer2013.csv").read_text().splitlines()
    lines[1] = "0,1 2 3,Training"
    (tmp_path / "fer2013.csv").write_text("\n".join(lines) + "\n")
    b = build_dataset({"name": "ferplus", "root": str(tmp_path), "on_bad_file": "skip"})
    train = b.splits["train"]
    assert len(train) == 2 and int(train.images[0].float().mean().round()) == 10  # row 2


def test_fer_folder_corrupt_and_odd_mode_images(tmp_path: Path) -> None:
    write_image(tmp_path / "train" / "sad" / "a.png", face(5))
    write_image(tmp_path / "test" / "sad" / "b.png", face(9))
    write_image_in_mode(tmp_path / "train" / "happy" / "rgba.png", "RGBA", side=48)
    write_truncated_image(tmp_path / "train" / "happy" / "cut.jpg", side=48)
    with pytest.raises(BadFileError) as err:
        build_dataset({"name": "fer2013", "root": str(tmp_path)})
    assert str(tmp_path / "train" / "happy" / "cut.jpg") in one_line(err)
    b = build_dataset({"name": "fer2013", "root": str(tmp_path), "on_bad_file": "skip"})
    assert b.splits["train"].images.shape == (2, 1, 48, 48)  # RGBA converted to gray
    assert b.bad_files.summary()["skipped_files"] == 1


@pytest.mark.parametrize("keep", [0.0, 0.01, 0.3, 0.9, 0.999])
def test_truncated_cifar_pickle_is_named(tmp_path: Path, keep: float) -> None:
    write_cifar10(tmp_path, per_batch=2)
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_4"
    data = bad.read_bytes()
    bad.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(BadFileError) as err:
        build_dataset({"name": "cifar10", "root": str(tmp_path)})
    assert f"cifar10: cannot read {bad}: " in one_line(err)
    b = build_dataset({"name": "cifar10", "root": str(tmp_path), "on_bad_file": "skip"})
    assert len(b.splits["train"]) == 8 and b.bad_files.summary()["skipped_files"] == 1


def test_cifar_bad_test_batch_cannot_be_skipped(tmp_path: Path) -> None:
    write_cifar10(tmp_path, per_batch=2)
    test = tmp_path / "cifar-10-batches-py" / "test_batch"
    test.write_bytes(pickle.dumps({"data": np.zeros((2, 5), np.uint8), "labels": [0, 1]}))
    with pytest.raises(BadFileError) as err:
        build_dataset({"name": "cifar10", "root": str(tmp_path), "on_bad_file": "skip"})
    assert "no readable test batch" in one_line(err) and str(test) in str(err.value)


def test_bad_files_policy_error_by_default() -> None:
    bad = BadFiles("demo")
    with pytest.raises(BadFileError, match=r"^demo: cannot read f.png: broken; fix or remove"):
        bad.found("f.png", "broken")


# ----------------------------------------------------------------------------- explain
def test_explain_turns_machine_failures_into_one_line() -> None:
    oom = torch.cuda.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79 GiB"
        " of which 1 GiB is free.\nIncluding non-PyTorch memory, this process has ..."
    )
    msg = str(explain(oom, "train"))
    assert msg == (
        "CUDA out of memory during train (tried to allocate 2.00 GiB); lower train.batch_size "
        "(or train.eval_batch_size)"
    )
    assert "finetune.batch_size" in str(explain(oom, "finetune"))
    assert "metrics.latency.batch_sizes" in str(explain(oom, "evaluate"))
    cpu = RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes")
    assert str(explain(cpu, "setup")).startswith("CPU out of memory during setup")
    assert isinstance(explain(MemoryError(), "train"), ResourceError)
    full = OSError(errno.ENOSPC, "No space left on device", "/run/checkpoints/train_last.pt")
    msg = str(explain(full, "train"))
    assert msg.startswith(
        "disk full during train while writing /run/checkpoints/train_last.pt (No space left "
        "on device); free some space or write elsewhere"
    )
    for code in (errno.EACCES, errno.EPERM, errno.EROFS):
        err = explain(PermissionError(code, "Permission denied", "/ro/metrics.json"), "prune")
        assert isinstance(err, AccessError) and "/ro/metrics.json" in str(err)
    state = RuntimeError('Error(s) in loading state_dict for ResNet:\n\tMissing key(s) "fc"')
    assert isinstance(explain(state), CheckpointError)
    same = ConfigError("x")
    assert explain(same) is same
    for bug in (ZeroDivisionError("boom"), KeyError("k"), RuntimeError("shape mismatch")):
        assert explain(bug) is None


# ----------------------------------------------------------------------------- the pipeline
def tiny_cfg(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", [*TINY, f"cache.dir={tmp_path / 'cache'}", *overrides])


TINY = [*TINY_DATA, *TINY_FINETUNE, "metrics.latency.enabled=false", "export.onnx=false"]


def failed_run(tmp_path: Path, monkeypatch, target: str, exc: BaseException) -> dict:
    def boom(*args: object, **kwargs: object) -> None:
        raise exc

    monkeypatch.setattr(target, boom)
    with pytest.raises(Exception) as err:
        Pipeline(tiny_cfg(tmp_path), tmp_path / "run").run()
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "failed"
    assert metrics["error"] == f"{type(err.value).__name__}: {err.value}"
    return metrics


def test_out_of_memory_in_training_is_recorded_with_a_hint(tmp_path: Path, monkeypatch) -> None:
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB.")
    m = failed_run(tmp_path, monkeypatch, "torch.optim.SGD.step", oom)
    assert m["failed_stage"] == "train"
    assert m["error"] == (
        "ResourceError: CUDA out of memory during train (tried to allocate 20.00 MiB); lower "
        "train.batch_size (or train.eval_batch_size)"
    )


def test_disk_full_while_writing_a_checkpoint_names_it(tmp_path: Path, monkeypatch) -> None:
    full = OSError(errno.ENOSPC, "No space left on device")
    m = failed_run(tmp_path, monkeypatch, "torch.save", full)
    assert m["error"].startswith("ResourceError: disk full during train while writing ")
    # the first file training writes: the weights it starts from (finetune.rewind's init point)
    assert "rewind_init.pt (No space left on device)" in m["error"]


def test_a_bad_value_fails_in_validate_before_any_data(tmp_path: Path, monkeypatch) -> None:
    def no_data(*args: object, **kwargs: object) -> None:
        raise AssertionError("the dataset was built")

    monkeypatch.setattr("prune_cli.pipeline.build_dataset", no_data)
    with pytest.raises(ConfigError):
        Pipeline(tiny_cfg(tmp_path, "train.epochs=-3"), tmp_path / "run").run()
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (m["status"], m["failed_stage"]) == ("failed", "validate")
    assert m["error"] == "ConfigError: train.epochs -3 is out of range; valid: an integer >= 1"


# ----------------------------------------------------------------------------- prune-run
def error_line(proc: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "it/s]" not in ln]
    errors = [ln for ln in lines if ln.startswith("prune-run: error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0].removeprefix("prune-run: error: ")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epochs=-3", "train.epochs -3 is out of range; valid: an integer >= 1"),
        ("train.lr=fast", "train.lr 'fast' is not a number; valid: a number > 0"),
    ],
)
def test_issue_examples_bad_values(tmp_path: Path, override: str, message: str) -> None:
    proc = prune_run(override, "hydra.run.dir=run", cwd=tmp_path)
    assert proc.returncode == 2
    assert error_line(proc) == message
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["status"] == "failed" and m["error"] == f"ConfigError: {message}"
    assert "Traceback" in (tmp_path / "run" / "prune-run.log").read_text()  # kept for debugging


IMAGENET_RUN = [
    "dataset=imagenet",
    "dataset.image_size=8",
    "dataset.resize=8",
    "dataset.num_workers=1",
    "train.epochs=1",
    "train.batch_size=4",
    "train.eval_batch_size=4",
    "finetune.epochs=1",
    "finetune.batch_size=4",
    "metrics.latency.enabled=false",
    "export.onnx=false",
    "cache.enabled=false",
]


def test_issue_example_non_image_file_in_imagenet_folder(tmp_path: Path) -> None:
    write_imagenet(tmp_path / "data", WNIDS, n_train=3, n_val=1, side=12)
    bad = tmp_path / "data" / "train" / "n01" / "n01_broken.JPEG"
    write_not_an_image(bad)
    common = [*IMAGENET_RUN, f"dataset.root={tmp_path / 'data'}"]
    proc = prune_run(*common, "hydra.run.dir=fail", cwd=tmp_path)
    assert proc.returncode == 2
    line = error_line(proc)
    assert line.startswith(f"imagenet: cannot read {bad}: not an image")
    m = json.loads((tmp_path / "fail" / "metrics.json").read_text())
    assert (m["status"], m["failed_stage"]) == ("failed", "train")
    assert m["error"] == f"BadFileError: {line}"

    proc = prune_run(*common, "dataset.on_bad_file=skip", "hydra.run.dir=skip", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((tmp_path / "skip" / "metrics.json").read_text())
    assert m["status"] == "completed"
    assert m["data"]["skipped_files"] == 1 and str(bad) in m["data"]["first_skipped"][0]
    log = (tmp_path / "skip" / "prune-run.log").read_text()
    assert "skipped" in log and "n01_broken.JPEG" in log


def run_patched(tmp_path: Path, patch: str, *args: str) -> subprocess.CompletedProcess:
    """``prune-run ARGS`` in a subprocess with ``patch`` (Python) applied first: a fault
    injected where a user cannot reach (a bug, a full GPU)."""
    script = "\n".join(
        [
            "import sys, torch",
            patch,
            "from prune_cli.cli import main",
            f"sys.argv = ['prune-run', *{list(args)!r}]",
            "main()",
        ]
    )
    return subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )


def test_a_bug_is_one_line_pointing_at_the_traceback_in_the_log(tmp_path: Path) -> None:
    patch = "torch.optim.SGD.step = lambda self, *a, **k: 1 / 0"
    proc = run_patched(tmp_path, patch, *TINY, "cache.enabled=false", "hydra.run.dir=run")
    assert proc.returncode == 1
    log = tmp_path / "run" / "prune-run.log"
    assert error_line(proc) == (
        "internal error (a bug in prune-cli): ZeroDivisionError: division by zero; full "
        f"traceback in {log}"
    )
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "in <lambda>" in text
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["status"] == "failed" and m["error"] == "ZeroDivisionError: division by zero"


def test_unusable_output_directory_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("a file where the run directory should go")
    proc = prune_run(*TINY, "hydra.run.dir=file/run", cwd=tmp_path)
    assert proc.returncode == 2
    line = error_line(proc)
    assert line.startswith("cannot use file/run (Not a directory); choose")


def test_no_permission_on_an_output_file_is_recorded(tmp_path: Path, monkeypatch) -> None:
    denied = PermissionError(errno.EACCES, "Permission denied")
    m = failed_run(tmp_path, monkeypatch, "torch.save", denied)
    assert m["error"].startswith("AccessError: no permission during train to use ")
    assert ".pt (Permission denied)" in m["error"]
