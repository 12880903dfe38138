"""scripts/gpu_check.sh's CPU fallback runs (so that the GPU check cannot rot between GPU days)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_cpu_fallback_runs_every_section() -> None:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--cpu"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = proc.stdout
    for section in ("== train", "== compile", "== latency", "== ddp"):
        assert section in out
    assert "CPU fallback" in out
    assert "resnet20  runner" in out and "ratio" in out
    assert "compile on : first 2 steps" in out and "compile off: first 2 steps" in out
    assert "speedup" in out  # pruned vs dense latency
    assert "DDP gloo, world size 1: all_reduce ok" in out
    assert "gpu_check: done in" in out
