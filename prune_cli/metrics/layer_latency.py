"""Latency lookup tables of single layers at reduced widths (for latency-aware pruning).

A channel-pruned model is the dense model with narrower layers. How long a layer takes at a
width is measured once on the machine and backend that will run it, and cached, so that a
pruning method can predict the latency of any allocation of widths without building and timing
each candidate model (HALP, Shen et al. 2022, uses such a lookup table).

A layer is described by its :class:`LayerShape` (kind, dense channel counts, kernel, stride,
input size); its table, per batch size, holds

- ``dense``: the latency of the layer as it is,
- ``in``:  ``{a: ms}`` with ``a`` input channels and the dense output channels,
- ``out``: ``{b: ms}`` with the dense input channels and ``b`` output channels
  (for channel-wise kinds, depthwise convs and BatchNorm, only ``out``: the channel count).

:meth:`LatencyTable.predict` combines them as ``t(a, b) = t_in(a) * t_out(b) / t_dense``: the
two dimensions are taken as independent factors (exact for the MACs, ``a * b``; a channel count
off a kernel's fast path costs the same factor whatever the other count is), which needs
``|in| + |out|`` measurements per layer instead of ``|in| * |out|``. Between measured widths the
table is interpolated linearly; the allocation (:mod:`prune_cli.pruning.allocation`) only asks
for measured widths of single-group dimensions.

Timing: the layers of one shape and batch size at all their widths are timed in interleaved
rounds (:func:`~prune_cli.metrics.deploy.time_interleaved`: every round runs each width once,
so that a slow phase of a shared machine slows all of them alike; the median), after ``warmup``
untimed runs. Backends: ``torch`` (PyTorch eager, eval mode, ``torch.inference_mode``, the
current intra-op threads) and ``onnxruntime`` (each layer exported alone to ONNX, CPU execution
provider with as many threads as PyTorch). A single layer in ONNX Runtime pays layout reorders
that a whole graph pays once, and BatchNorm is folded into the preceding convolution in a whole
graph: with ``onnxruntime`` BatchNorm layers cost 0 and the conv figures are an upper bound.

Cache: one JSON file per setting (backend, threads, CPU/GPU name, library versions) under
:func:`cache_dir` (``$PRUNE_CLI_LATENCY_CACHE``, else ``$XDG_CACHE_HOME/prune-cli/latency``, else
``~/.cache/prune-cli/latency``); entries are keyed by layer shape, batch size and width, so a
table measured for ResNet-56 serves ResNet-110's identical layers. Files are written atomically;
two runs adding entries at once may lose one's additions (they are measured again later), never
corrupt the file.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prune_cli.io import atomic_write_text
from prune_cli.metrics.deploy import LATENCY_BACKENDS, time_interleaved
from prune_cli.metrics.latency import latency_setting

log = logging.getLogger("prune_cli")

#: Layer kinds: a dense conv, a depthwise conv (channels = groups), a linear layer, a BatchNorm.
KINDS = ("conv", "depthwise", "linear", "bn")
#: Bumped when the meaning of a stored figure changes, so that old files are not used.
TABLE_VERSION = 1


@dataclass(frozen=True)
class LayerShape:
    """What a layer's latency depends on (besides the widths and the batch size)."""

    kind: str
    in_channels: int
    out_channels: int
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] | str = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    bias: bool = False
    #: The input's spatial size (conv, BN); ``()`` for a linear layer.
    hw: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown layer kind {self.kind!r}; choose one of: {KINDS}")

    @property
    def channelwise(self) -> bool:
        """One channel count (depthwise conv, BN): the input and output widths are equal."""
        return self.kind in ("depthwise", "bn")

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    def module(self, in_width: int, out_width: int) -> nn.Module:
        """A layer of this shape at the given widths (random weights, eval mode)."""
        k, s, p, d = self.kernel, self.stride, self.padding, self.dilation
        if self.kind == "conv":
            layer: nn.Module = nn.Conv2d(in_width, out_width, k, s, p, d, bias=self.bias)
        elif self.kind == "depthwise":
            layer = nn.Conv2d(out_width, out_width, k, s, p, d, groups=out_width, bias=self.bias)
        elif self.kind == "linear":
            layer = nn.Linear(in_width, out_width, bias=self.bias)
        else:
            layer = nn.BatchNorm2d(out_width)
        return layer.eval()

    def input_size(self, in_width: int, out_width: int) -> tuple[int, ...]:
        width = out_width if self.channelwise else in_width
        return (width, *self.hw)


def cache_dir() -> Path:
    """Where latency tables are stored (module docstring)."""
    if os.environ.get("PRUNE_CLI_LATENCY_CACHE"):
        return Path(os.environ["PRUNE_CLI_LATENCY_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "prune-cli" / "latency"


def table_setting(backend: str, device: torch.device | str = "cpu") -> dict[str, Any]:
    """What a stored figure depends on besides the layer: the backend and the machine."""
    if backend not in LATENCY_BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of: {LATENCY_BACKENDS}")
    setting = {"version": TABLE_VERSION, "backend": backend, **latency_setting(device)}
    setting.pop("host", None)  # the same CPU model on another host times the same
    if backend == "onnxruntime":
        import onnxruntime as ort

        setting["onnxruntime"] = ort.__version__
    return setting


class LatencyTable:
    """Measured latencies (ms) of layers at reduced widths, per batch size (module docstring).

    ``entries[shape key][f"b{batch}"]`` = ``{"dense": ms, "in": {a: ms}, "out": {b: ms}}``.
    """

    def __init__(self, setting: Mapping[str, Any], entries: dict | None = None) -> None:
        self.setting = dict(setting)
        self.entries: dict[str, dict[str, dict[str, Any]]] = entries or {}
        #: Figures measured by this object (not read from the cache), for the record.
        self.measured = 0
        self._curves: dict[tuple[str, str, str], tuple[list[int], list[float]]] = {}

    # ------------------------------------------------------------------ storage
    @property
    def path(self) -> Path:
        digest = hashlib.sha256(json.dumps(self.setting, sort_keys=True).encode()).hexdigest()
        return cache_dir() / f"{self.setting['backend']}-{digest[:16]}.json"

    @classmethod
    def load(cls, backend: str, device: torch.device | str = "cpu") -> LatencyTable:
        """The stored table of this setting (empty when there is none or it is unreadable)."""
        table = cls(table_setting(backend, device))
        try:
            data = json.loads(table.path.read_text())
            if data.get("setting") == json.loads(json.dumps(table.setting)):
                table.entries = data.get("entries", {})
        except (OSError, ValueError):
            pass
        return table

    def save(self) -> None:
        """Merge this table's entries into the stored file (atomically)."""
        stored: dict = {}
        try:
            data = json.loads(self.path.read_text())
            if data.get("setting") == json.loads(json.dumps(self.setting)):
                stored = data.get("entries", {})
        except (OSError, ValueError):
            pass
        for key, per_batch in self.entries.items():
            for batch, entry in per_batch.items():
                old = stored.setdefault(key, {}).setdefault(batch, {"in": {}, "out": {}})
                old.update({k: v for k, v in entry.items() if k not in ("in", "out")})
                old.setdefault("in", {}).update(entry.get("in", {}))
                old.setdefault("out", {}).update(entry.get("out", {}))
        self.entries = stored
        self._curves.clear()
        text = json.dumps({"setting": self.setting, "entries": stored}, sort_keys=True)
        atomic_write_text(self.path, text + "\n")

    # ------------------------------------------------------------------ measuring
    def missing(
        self, shape: LayerShape, batch: int, in_widths: Iterable[int], out_widths: Iterable[int]
    ) -> tuple[list[int], list[int], bool]:
        entry = self.entries.get(shape.key(), {}).get(f"b{batch}", {})
        ins = [] if shape.channelwise else sorted(set(in_widths))
        need_in = [a for a in ins if str(a) not in entry.get("in", {})]
        need_out = [b for b in sorted(set(out_widths)) if str(b) not in entry.get("out", {})]
        return need_in, need_out, "dense" not in entry

    def measure(
        self,
        shape: LayerShape,
        batch: int,
        in_widths: Iterable[int],
        out_widths: Iterable[int],
        warmup: int = 2,
        repeats: int = 7,
    ) -> None:
        """Measure the widths of ``shape`` at ``batch`` that the table lacks (interleaved)."""
        need_in, need_out, need_dense = self.missing(shape, batch, in_widths, out_widths)
        if not (need_in or need_out or need_dense):
            return
        backend = self.setting["backend"]
        dense_in, dense_out = shape.in_channels, shape.out_channels
        configs = {("dense", 0): (dense_in, dense_out)}
        configs.update({("in", a): (a, dense_out) for a in need_in})
        configs.update({("out", b): (b if shape.channelwise else dense_in, b) for b in need_out})
        if backend == "onnxruntime" and shape.kind == "bn":
            seconds = {name: 0.0 for name in configs}  # folded into the conv before it
        else:
            runners = {
                name: _runner(shape, a, b, batch, backend) for name, (a, b) in configs.items()
            }
            with torch.inference_mode():
                seconds = time_interleaved(runners, warmup, repeats)
        entry = self.entries.setdefault(shape.key(), {}).setdefault(
            f"b{batch}", {"in": {}, "out": {}}
        )
        self._curves.clear()
        for (what, width), s in seconds.items():
            if what == "dense":
                if need_dense:
                    entry["dense"] = s * 1e3
            else:
                entry[what][str(width)] = s * 1e3
            self.measured += 1

    # ------------------------------------------------------------------ predicting
    def predict(self, shape: LayerShape, batch: int, in_width: float, out_width: float) -> float:
        """Predicted ms of ``shape`` at the given widths (module docstring)."""
        key = shape.key()
        dense = float(self.entries[key][f"b{batch}"]["dense"])
        t_out = _interpolate(*self._curve(key, batch, "out", shape.out_channels), out_width)
        if shape.channelwise:
            return t_out
        t_in = _interpolate(*self._curve(key, batch, "in", shape.in_channels), in_width)
        return t_in * t_out / dense if dense > 0 else 0.0

    def _curve(self, key: str, batch: int, which: str, dense_width: int) -> tuple[list, list]:
        """The measured points of one dimension, sorted, with the dense point (memoised)."""
        memo = (key, f"b{batch}", which)
        if memo not in self._curves:
            entry = self.entries[key][f"b{batch}"]
            points = {int(w): float(v) for w, v in entry.get(which, {}).items()}
            points[int(dense_width)] = float(entry["dense"])
            xs = sorted(points)
            self._curves[memo] = (xs, [points[x] for x in xs])
        return self._curves[memo]


def _interpolate(xs: Sequence[int], ys: Sequence[float], width: float) -> float:
    """Piecewise-linear interpolation through ``(xs, ys)``, proportional to the width beyond
    the measured range."""
    if width <= xs[0]:
        return ys[0] * width / xs[0] if xs[0] else 0.0
    if width >= xs[-1]:
        return ys[-1] * width / xs[-1]
    i = bisect.bisect_left(xs, width)
    if xs[i] == width:
        return ys[i]
    x0, x1 = xs[i - 1], xs[i]
    return ys[i - 1] + (ys[i] - ys[i - 1]) * (width - x0) / (x1 - x0)


def _runner(shape: LayerShape, in_width: int, out_width: int, batch: int, backend: str) -> Any:
    torch.manual_seed(0)
    layer = shape.module(in_width, out_width)
    size = shape.input_size(in_width, out_width)
    x = torch.randn((batch, *size))
    if backend == "torch":
        return lambda: layer(x)
    import onnxruntime as ort

    from prune_cli.export import onnx_bytes

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(
        onnx_bytes(layer, size), sess_options=options, providers=["CPUExecutionProvider"]
    )
    data = x.numpy()
    return lambda: session.run(None, {"input": data})


def measure_tables(
    table: LatencyTable,
    wanted: Mapping[LayerShape, tuple[Sequence[int], Sequence[int]]],
    batch_sizes: Sequence[int],
    warmup: int = 2,
    repeats: int = 7,
) -> None:
    """Measure every (shape, widths) of ``wanted`` that ``table`` lacks, at every batch size
    (logged: the first measurement of a large model takes minutes)."""
    todo = sum(
        bool(sum(map(bool, table.missing(shape, int(b), ins, outs))))
        for b in batch_sizes
        for shape, (ins, outs) in wanted.items()
    )
    if todo:
        log.info(
            "latency table: measuring %d of %d layer shapes x batch sizes %s (%s, once per "
            "machine; cached in %s)", todo, len(wanted) * len(batch_sizes), list(batch_sizes),
            table.setting["backend"], cache_dir(),
        )  # fmt: skip
    for batch in batch_sizes:
        for shape, (ins, outs) in wanted.items():
            table.measure(shape, int(batch), ins, outs, warmup, repeats)
