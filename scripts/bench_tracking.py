"""Tracking overhead: training throughput with ``logger=[tensorboard,mlflow]`` vs ``logger=csv``.

Both variants run prune-cli's own training stage (:func:`prune_cli.engine.fit`: train epochs,
evaluation, per-epoch checkpoints and ``history.csv``) on the same model, data and seed; the
tracked one hands every epoch's row to real TensorBoard and MLflow trackers (MLflow's local
SQLite store in a temporary directory), exactly as a run does (``StageFiles.on_epoch``). Short
epochs make the per-epoch logging as frequent as it gets. Rounds alternate the order of the two
variants and the best round of each is kept, to damp machine noise. The trackers' start (opening
the store, logging the config) and finish (uploading the run directory) happen once per run,
whatever its length, and are reported apart. So is the time spent inside the trackers' per-epoch
calls, measured directly: on a busy machine it resolves a small overhead better than the ratio.

    python scripts/bench_tracking.py                     # ResNet-20, batch 128, CPU
    python scripts/bench_tracking.py --epochs 4 --steps 10 --rounds 5

Target (issue 14): tracked / csv images/s >= 0.98.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch

from prune_cli.data import build_dataset
from prune_cli.engine import fit, resolve_device
from prune_cli.engine.loop import StageFiles
from prune_cli.models import build_model
from prune_cli.tracking import RunInfo, Trackers, build_trackers

#: Seconds spent inside the trackers' per-epoch calls, and how many calls.
IN_TRACKERS = {"seconds": 0.0, "calls": 0}


def train_once(model, data, settings, device, folder: Path, trackers: Trackers | None) -> float:
    """Seconds of one training stage (``settings.epochs`` epochs) in ``folder``."""
    folder.mkdir(parents=True)

    def on_epoch(row: dict) -> None:
        if trackers is not None:
            tic = time.perf_counter()
            trackers.log_epoch(str(row["stage"]), row)
            IN_TRACKERS["seconds"] += time.perf_counter() - tic
            IN_TRACKERS["calls"] += 1

    files = StageFiles("train", folder, folder / "history.csv", False, on_epoch=on_epoch)
    tic = time.perf_counter()
    fit(model, data, settings, device=device, files=files, seed=0)
    return time.perf_counter() - tic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8, help="training steps per epoch")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = resolve_device(args.device)
    n = args.batch_size * args.steps
    data = build_dataset({"name": "shapes", "train_size": n, "test_size": 256, "seed": 0})
    torch.manual_seed(0)
    model0 = build_model(
        args.model, num_classes=data.num_classes, in_channels=data.in_channels, image_size=32
    ).to(device)
    settings = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": 0.05}
    images = n * args.epochs

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run_dir = root / "tracked_run"
        run_dir.mkdir()
        tic = time.perf_counter()
        trackers = build_trackers({"tensorboard": {}, "mlflow": {}})
        config = {"model": {"name": args.model}, "train": settings}
        trackers.start(RunInfo(run_dir, root, config, {"model": args.model}))
        start_s = time.perf_counter() - tic
        # warm-up: one short stage each (allocator, kernels, the trackers' first writes)
        warm = {**settings, "epochs": 1}
        train_once(copy.deepcopy(model0), data, warm, device, root / "warm_csv", None)
        train_once(copy.deepcopy(model0), data, warm, device, run_dir / "warm", trackers)

        best = {"csv": 0.0, "tracked": 0.0}
        for r in range(args.rounds):
            for name in ("csv", "tracked") if r % 2 == 0 else ("tracked", "csv"):
                folder = (run_dir if name == "tracked" else root) / f"{name}_{r}"
                used = trackers if name == "tracked" else None
                secs = train_once(copy.deepcopy(model0), data, settings, device, folder, used)
                best[name] = max(best[name], images / secs)
                print(f"round {r + 1} {name:8s}: {images / secs:8.1f} images/s ({secs:.2f} s)")
        tic = time.perf_counter()
        records = trackers.finish({"status": "completed"}, run_dir)
        finish_s = time.perf_counter() - tic
    failed = {
        k: v for k, v in records.items() if isinstance(v, dict) and v.get("status") != "finished"
    }
    if failed:
        raise SystemExit(f"a tracker failed: {failed}")
    ratio = best["tracked"] / best["csv"]
    print(
        f"\n{args.model} batch {args.batch_size}, {args.steps} steps x {args.epochs} epochs on "
        f"{device} ({torch.get_num_threads()} threads): csv {best['csv']:.1f} images/s, "
        f"tensorboard+mlflow {best['tracked']:.1f} images/s, ratio {ratio:.3f} (target >= 0.98)"
        f"\nonce per run: trackers' start {start_s:.2f} s, finish (artifacts) {finish_s:.2f} s"
    )
    calls = max(IN_TRACKERS["calls"], 1)
    per_epoch = IN_TRACKERS["seconds"] / calls
    epoch_s = images / args.epochs / best["csv"]
    print(
        f"inside the trackers per epoch: {per_epoch * 1e3:.1f} ms over {IN_TRACKERS['calls']} "
        f"epochs = {100 * per_epoch / epoch_s:.3f}% of an untracked epoch ({epoch_s:.2f} s)"
    )


if __name__ == "__main__":
    main()
