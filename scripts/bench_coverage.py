"""How far structural pruning reaches: every torchvision classification model, and ours.

For each model (random init, BN statistics randomised, eval mode, a small input): ``l1_filter``'s
removal at a uniform channel ratio (default 0.3) with ``groups=coupled``
(:func:`prune_cli.pruning.channels.channel_prune`), then

- **groups**: channel groups found and cut (by coupling kind), and groups left whole;
- **MACs / params**: reduction factors (dense / pruned);
- **(a) forward**: the pruned model runs and gives logits of the right shape;
- **(b) equal**: in eval mode it reproduces the dense model with the removed channels' consumer
  columns zeroed (:func:`~prune_cli.pruning.channels.mask_channels`), max error <= 1e-4 of the
  logits' scale; ``n/a`` where the two are not mathematically equal (a LayerNorm or GroupNorm
  normalises across the channels, so its statistics change when channels go);
- **(c) reload**: the pruned weights and ``info`` saved with ``torch.save``, then, in a fresh
  process, the dense architecture built again, the structure rebuilt from ``info`` and the weights
  loaded (:func:`~prune_cli.pruning.channels.restore_channels`, ``weights_only``): identical logits.

Each model runs in its own process (``--timeout`` seconds), so one failure or a huge model cannot
take the others down. The summary line prints the count beside Torch-Pruning's published
coverage of torchvision (77 of 85 models; ShuffleNetV2 at every width and the Swin models fail).

    OMP_NUM_THREADS=2 python scripts/bench_coverage.py                    # everything (~1 h)
    python scripts/bench_coverage.py --models torchvision-densenet121 resnet56 --ratio 0.5
    python scripts/bench_coverage.py --out docs/coverage.md               # also write the table
    python scripts/bench_coverage.py --rows rows.jsonl --out docs/coverage.md  # resumable
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

TORCH_PRUNING_PUBLISHED = "77/85"  # Torch-Pruning's own torchvision benchmark table
HUGE = ("regnet_y_128gf", "vit_h_14")  # > 600M parameters: --skip-huge leaves them out


def all_models() -> list[str]:
    import torchvision.models as tvm

    from prune_cli.models import MODELS

    return [f"torchvision-{a}" for a in tvm.list_models(module=tvm)] + list(MODELS.names())


def build(name: str) -> tuple[nn.Module, tuple[int, int, int]]:
    """The dense model ``name`` (``torchvision-<arch>`` or a registered short name) at the
    smallest input from 32 px that it fits, randomly initialised, BN statistics randomised."""
    from prune_cli.models import build_model, min_image_size

    size = min_image_size(name, at_least=32)
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=3, image_size=size)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None:
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=gen) * 2 - 1)
                    m.bias.copy_(torch.rand(n, generator=gen) - 0.5)
    return model.eval(), (3, size, size)


def worker(name: str, ratio: float, tmp: Path) -> dict:
    from prune_cli.metrics.counting import count_macs, count_params
    from prune_cli.pruning.channels import channel_prune, mask_channels
    from prune_cli.pruning.groups import channel_groups
    from prune_cli.pruning.importance import FilterNorm

    row: dict = {"model": name}
    tic = time.perf_counter()
    dense, size = build(name)
    row["input"] = size[-1]
    x = torch.randn(2, *size, generator=torch.Generator().manual_seed(1))
    try:
        pruned = channel_prune(dense, FilterNorm(), ratio, input_size=size, scope="layerwise")
    except Exception as exc:  # the one-line refusal, or a bug: either way a failure here
        row.update(error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
        return row
    info = pruned.info
    disc = info["discovery"]
    row.update(
        groups=disc["groups"],
        cut=len(info["keep"]),
        coupling=disc["coupling"],
        whole=disc["skipped"],
        whole_reasons=disc["skipped_reasons"],
    )
    dense_macs, macs = count_macs(dense, size).dense, count_macs(pruned.model, size).dense
    row["mac_x"] = round(dense_macs / macs, 3)
    row["param_x"] = round(count_params(dense)[0] / count_params(pruned.model)[0], 3)
    model = pruned.model.eval()
    with torch.no_grad():
        want_shape = dense(x).shape
        try:
            logits = model(x)
            row["forward"] = "pass" if logits.shape == want_shape else "fail: shape"
        except Exception as exc:
            row["forward"] = f"fail: {type(exc).__name__}"
            return row
    groups = channel_groups(dense, size, "coupled", verify=False)
    by_name = {g.name: g for g in groups}
    cut_groups = [by_name[n] for n in info["keep"]]
    if not all(g.exact for g in cut_groups):
        row["equal"] = "n/a"
    else:
        keep = {}
        for n, kept in info["keep"].items():
            mask = torch.zeros(by_name[n].size, dtype=torch.bool)
            mask[kept] = True
            keep[n] = mask
        masked = copy.deepcopy(dense)
        mask_channels(masked, groups, keep)
        with torch.no_grad():
            want = masked(x)
        err = float((logits - want).abs().max()) / (float(want.abs().max()) + 1e-12)
        row["equal"] = "pass" if err <= 1e-4 else f"fail ({err:.1e})"
        del masked
    path = tmp / "pruned.pt"
    torch.save({"model": model.state_dict(), "info": info, "x": x, "logits": logits}, path)
    reload = subprocess.run(
        [sys.executable, __file__, "--reload", str(path), "--models", name],
        capture_output=True,
        text=True,
        timeout=900,
    )
    lines = (reload.stdout.strip() or reload.stderr.strip() or "?").splitlines()
    row["reload"] = lines[-1] if reload.returncode == 0 else f"fail: {lines[-1][:120]}"
    row["seconds"] = round(time.perf_counter() - tic, 1)
    return row


def reload_check(path: Path, name: str) -> str:
    """In a fresh process: rebuild the pruned structure and compare the logits."""
    from prune_cli.pruning.channels import restore_channels

    saved = torch.load(path, weights_only=True)
    dense, _ = build(name)
    model = restore_channels(dense, saved, str(path)).eval()
    with torch.no_grad():
        logits = model(saved["x"])
    return (
        "pass"
        if torch.equal(logits, saved["logits"])
        else (f"fail ({float((logits - saved['logits']).abs().max()):.1e})")
    )


def passed(row: dict) -> bool:
    return (
        "error" not in row
        and row.get("forward") == "pass"
        and row.get("equal") in ("pass", "n/a")
        and row.get("reload") == "pass"
    )


def table(rows: list[dict]) -> str:
    lines = [
        "| model | input | groups (cut) | coupling | left whole | MACs | params | (a) forward "
        "| (b) equal | (c) reload |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['model']} | {r.get('input', '')} | fails: {r['error']} | | | | | | | |"
            )
            continue
        coupling = ", ".join(f"{k} {v}" for k, v in sorted(r.get("coupling", {}).items()))
        lines.append(
            f"| {r['model']} | {r['input']} | {r['groups']} ({r['cut']}) | {coupling} | "
            f"{r['whole']} | {r['mac_x']:.2f}x | {r['param_x']:.2f}x | {r.get('forward')} | "
            f"{r.get('equal', '')} | {r.get('reload', '')} |"
        )
    return "\n".join(lines)


def _read_rows(path: Path) -> dict[str, dict]:
    """Rows of an earlier (interrupted) run, by model; a torn last line is ignored."""
    rows: dict[str, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            rows[row["model"]] = row
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+")
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--timeout", type=int, default=1800)
    parser.add_argument("--skip-huge", action="store_true")
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--rows",
        type=Path,
        help="append each model's row here (JSON lines); models already "
        "there are not run again, so an interrupted benchmark resumes",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--reload", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    if args.reload is not None:
        print(reload_check(args.reload, args.models[0]))
        return
    if args.worker:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(worker(args.models[0], args.ratio, Path(tmp))))
        return
    names = args.models or all_models()
    if args.skip_huge:
        names = [n for n in names if n.split("-")[-1] not in HUGE]
    done_rows = _read_rows(args.rows) if args.rows is not None else {}
    rows = []
    for name in names:
        if name in done_rows:
            rows.append(done_rows[name])
            print(table([done_rows[name]]).splitlines()[-1], flush=True)
            continue
        cmd = [sys.executable, __file__, "--worker", "--models", name, "--ratio", str(args.ratio)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            out = done.stdout.strip().splitlines()
            if done.returncode == 0 and out:
                row = json.loads(out[-1])
            else:
                tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
                row = {"model": name, "error": f"worker exit {done.returncode}: {tail[0][:160]}"}
        except subprocess.TimeoutExpired:
            row = {"model": name, "error": f"timeout after {args.timeout}s"}
        rows.append(row)
        print(table([row]).splitlines()[-1], flush=True)
        if args.rows is not None:
            with args.rows.open("a") as f:
                f.write(json.dumps(row) + "\n")
    tv = [r for r in rows if r["model"].startswith("torchvision-")]
    ours = [r for r in rows if not r["model"].startswith("torchvision-")]
    summary = (
        f"torchvision: {sum(map(passed, tv))}/{len(tv)} models pass (a), (b), (c) "
        f"(Torch-Pruning's published table: {TORCH_PRUNING_PUBLISHED}); "
        f"registered: {sum(map(passed, ours))}/{len(ours)}"
    )
    print(summary)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        header = f"# Coverage: channel ratio {args.ratio}, groups=coupled\n\n{summary}\n\n"
        args.out.write_text(header + table(rows) + "\n")


if __name__ == "__main__":
    main()
