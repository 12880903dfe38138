"""Portable pruned checkpoints: ``prune_cli.load_pruned(path)`` rebuilds a run's final model in a
fresh process, from ``final.safetensors`` + ``final.json`` alone (every ``.pt`` file deleted,
``pickle`` and ``torch.load`` disabled), with logits identical to the model the run ended with.

Covered: every method that changes the architecture (``network_slimming``, ``l1_filter``,
``double_pruning``, ``dynamic_filter`` with filter removal, ``template_reuse``,
``soft_sharing``, and ``random`` at filter granularity) and a masked one (``magnitude``: masks
come back as tensors).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_helpers import TINY_DATA
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file, save_file

from prune_cli.cli import CONFIG_DIR
from prune_cli.errors import CheckpointError
from prune_cli.pipeline import Pipeline
from prune_cli.portable import find_portable, load_pruned, read_portable

TINY = [
    *TINY_DATA,
    "finetune.epochs=0",  # the final model is then the pruned one: enough to compare logits
    "metrics.latency.enabled=false",
    "export.onnx=false",
]

#: name -> overrides; each changes the architecture except ``magnitude`` (masks only).
CASES = {
    "network_slimming": ["method=network_slimming"],
    "l1_filter": ["method=l1_filter"],
    "double_pruning": ["method=double_pruning", "method.slim_finetune_epochs=0"],
    "dynamic_filter": ["method=dynamic_filter"],
    "random": ["method=random", "method.granularity=filter"],  # the control of l1_filter
    "template_reuse": ["model=shufflenet_v2_x0_5", "method=template_reuse"],
    "soft_sharing": ["method=soft_sharing"],
    "magnitude": ["method=magnitude"],
}

LOADER = r"""
import pickle, sys
import torch
from safetensors.torch import load_file, save_file

def refuse(*args, **kwargs):
    raise AssertionError("load_pruned unpickled something")

pickle.load = pickle.loads = torch.load = refuse
torch.set_num_threads(int(sys.argv[3]))  # the test's own: the same kernels, the same sums
import prune_cli
from prune_cli.portable import read_portable

x = load_file(sys.argv[1])["x"]
out = {}
for name, run_dir in zip(sys.argv[4::2], sys.argv[5::2]):
    loaded = read_portable(run_dir)
    with torch.no_grad():
        out[name] = prune_cli.load_pruned(run_dir)(x)
    for key, mask in loaded.masks.items():
        out[f"{name}/mask/{key}"] = mask
save_file(out, sys.argv[2])
"""


def _compose(tmp_path: Path, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", [*TINY, f"cache.dir={tmp_path / 'cache'}", *overrides])


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Pipeline]]:
    tmp = tmp_path_factory.mktemp("portable")
    out = {}
    for name, overrides in CASES.items():
        pipe = Pipeline(_compose(tmp, overrides), tmp / name)
        pipe.run()
        out[name] = (tmp / name, pipe)
    return out


def test_a_fresh_process_rebuilds_every_final_model_without_pickle(runs, tmp_path: Path) -> None:
    torch.manual_seed(1)
    x = torch.randn(4, 3, 8, 8)
    expected = {}
    for name, (run_dir, pipe) in runs.items():
        with torch.no_grad():
            expected[name] = pipe.model.eval()(x)
        description = json.loads((run_dir / "checkpoints" / "final.json").read_text())
        portable = pipe.metrics["portable"]
        assert portable["structure"] == str(run_dir / "checkpoints" / "final.json")
        assert description["method"]["name"] == name
        for pt in run_dir.rglob("*.pt"):  # nothing but the safetensors and the JSON is left
            pt.unlink()
    # the cases really change what they should
    structure = {name: json.loads((d / "checkpoints/final.json").read_text())["structure"]
                 for name, (d, _) in runs.items()}  # fmt: skip
    for name in ("network_slimming", "l1_filter", "double_pruning", "dynamic_filter", "random"):
        channels = structure[name]["channels"]
        assert channels and channels["keep"], name
        assert any(k < t for k, t in channels["channels"].values()), name
    assert runs["dynamic_filter"][1].metrics["prune_info"]["filters_removed"] > 0
    for name in ("template_reuse", "soft_sharing"):
        assert structure[name]["sharing"]["templates"], name
    assert structure["magnitude"]["masks"] and structure["magnitude"]["channels"] is None
    assert structure["double_pruning"]["masks"]  # channels cut, then weights masked

    inputs, outputs = tmp_path / "x.safetensors", tmp_path / "out.safetensors"
    save_file({"x": x}, str(inputs))
    pairs = [str(v) for name, (d, _) in runs.items() for v in (name, d)]
    threads = torch.get_num_threads()
    proc = subprocess.run(
        [sys.executable, "-c", LOADER, str(inputs), str(outputs), str(threads), *pairs],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": str(threads)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = load_file(str(outputs))
    for name, logits in expected.items():
        assert torch.equal(got[name], logits), name
    masks = runs["magnitude"][1].masks
    assert masks
    for key, mask in masks.items():
        assert torch.equal(got[f"magnitude/mask/{key}"], mask.cpu())


def test_paths_it_accepts_and_one_line_errors(runs, tmp_path: Path) -> None:
    run_dir = runs["l1_filter"][0]
    ckpt = run_dir / "checkpoints"
    want = find_portable(run_dir)
    assert want == (ckpt / "final.json", ckpt / "final.safetensors")
    for path in (ckpt, ckpt / "final.pt", ckpt / "final.json", ckpt / "final.safetensors"):
        assert find_portable(path) == want
    assert read_portable(run_dir).description["model"]["name"] == "resnet20"
    with pytest.raises(
        CheckpointError, match=r"no portable checkpoint at .*final\.json is missing"
    ):
        load_pruned(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "final.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="is not readable JSON"):
        load_pruned(bad / "final.pt")
