"""Export a (pruned) model so that it reloads without prune-cli or the original class definitions.

- **ONNX** (``.onnx``, the default): ``torch.onnx.export`` with the TorchScript-based exporter
  (needs only the ``onnx`` package), input ``input`` and output ``logits`` with a dynamic batch
  dimension. It is the file whose ONNX Runtime latency ``metrics.json`` reports (the run exports
  the final model once, for both). :func:`check_onnx` runs it in ONNX Runtime against the model
  on a random batch (:class:`ExportError` when they differ); :func:`run_onnx` runs a file with
  ONNX's reference evaluator (no onnxruntime needed).
- **TorchScript** (``.ts``, ``export.torchscript=true``): ``torch.jit.trace`` of an eval-mode CPU
  copy on a zero batch of ``(1, *input_size)``; it reloads with ``torch.jit.load(path)`` alone.
  Not the default: PyTorch deprecates ``torch.jit.trace`` and ``torch.jit.load`` (they warn, and
  point to ``torch.export``), and tracing costs 0.2 s a run (ResNet-20, 2 CPU cores). The traced
  copy is checked against the model on a random batch likewise.

Both hold the narrower structure of a channel-pruned model and the zeros of a weight-pruned one.
Both record the eval-mode graph of one forward (BN uses its running statistics, dropout is off):
export is for inference, and a forward whose control flow depends on the input's values does not
export (the check refuses it).

The pipeline calls :func:`export_model` after the final evaluation (``export.onnx`` /
``export.torchscript`` in the config) and writes ``checkpoints/final.onnx`` / ``final.ts``.
"""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from prune_cli.errors import ConfigError, ExportError, one_line
from prune_cli.io import atomic_write_bytes

FORMATS = ("torchscript", "onnx")


def _eval_cpu_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).to("cpu", memory_format=torch.contiguous_format).eval()


def _check_logits(
    model: nn.Module,
    got: torch.Tensor,
    expected: torch.Tensor,
    fmt: str,
    copy_name: str,
    tolerance: tuple[float, float],
) -> None:
    """:class:`ExportError` unless an exported copy's logits ``got`` match the model's
    ``expected`` within ``tolerance`` (rtol, atol)."""
    rtol, atol = tolerance
    if torch.allclose(got, expected, rtol=rtol, atol=atol):
        return
    diff = (got - expected).abs().max().item()
    raise ExportError(
        f"{fmt} export of {type(model).__name__}: {copy_name} logits differ from the model's "
        f"on a random batch (max abs difference {diff:.3g}): export records one path, so a "
        "forward whose control flow depends on the input's values does not export; set "
        f"export.{fmt.lower()}=false"
    )


def export_torchscript(model: nn.Module, path: str | Path, input_size: Sequence[int]) -> Path:
    """Trace ``model`` (eval mode, CPU), check the trace, and save it as TorchScript at ``path``.

    Raises:
        ExportError: the traced copy's logits differ from the model's on a random batch.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = _eval_cpu_copy(model)
    example = torch.zeros((1, *input_size))
    probe = torch.randn((1, *input_size), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python values: the check decides
        # check_trace=False: torch's own check traces the model again and compares the graphs
        # (ResNet-20: 1.0-2.5 s against 0.3 s for the trace alone, every run of a sweep), and
        # reports diverging outputs only as a warning. Comparing the logits on a batch other
        # than the traced one is the check that matters, and it fails loudly.
        traced = torch.jit.trace(net, example, check_trace=False)
        expected, got = net(probe), traced(probe)
    _check_logits(model, got, expected, "TorchScript", "the traced copy's", (1e-4, 1e-5))
    traced.save(str(path))
    return path


def load_torchscript(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Reload a TorchScript export; needs no prune-cli class."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "deprecated, use torch.export"
        return torch.jit.load(str(path), map_location=map_location)


def onnx_bytes(model: nn.Module, input_size: Sequence[int], opset: int = 17) -> bytes:
    """``model`` (eval mode, CPU copy) as a serialised ONNX model: input ``input``, output
    ``logits``, dynamic batch dimension; needs the ``onnx`` package."""
    try:
        import onnx  # noqa: F401  (the exporter needs it; fail with an actionable message)
    except ImportError:
        raise ConfigError(
            "ONNX export needs the 'onnx' package: pip install onnx (or set export.onnx=false)"
        ) from None
    net = _eval_cpu_copy(model)
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(
            net,
            (torch.zeros((1, *input_size)),),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    return buffer.getvalue()


def check_onnx(model: nn.Module, data: bytes, input_size: Sequence[int]) -> None:
    """Run the ONNX model ``data`` in ONNX Runtime (CPU) on a random batch of 2 and compare its
    logits with ``model``'s.

    Raises:
        ExportError: they differ beyond float rounding (ONNX Runtime fuses and reorders ops).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
    probe = torch.randn((2, *input_size), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = _eval_cpu_copy(model)(probe)
    got = torch.from_numpy(session.run(None, {"input": probe.numpy()})[0])
    # ONNX Runtime fuses and reorders ops: a looser tolerance than TorchScript's
    _check_logits(model, got, expected, "ONNX", "the exported graph's", (1e-3, 1e-4))


def export_onnx(
    model: nn.Module,
    path: str | Path,
    input_size: Sequence[int],
    opset: int = 17,
    data: bytes | None = None,
) -> Path:
    """Export ``model`` (eval mode, CPU) to ONNX at ``path``, checked (:func:`check_onnx`);
    ``data``: its :func:`onnx_bytes`, when they were made already. Needs the ``onnx`` package.

    Raises:
        ExportError: the exported graph computes other logits than the model; nothing is
            written.
    """
    data = onnx_bytes(model, input_size, opset) if data is None else data
    check_onnx(model, data, input_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    return path


def run_onnx(path: str | Path, x: torch.Tensor) -> np.ndarray:
    """Logits of the ONNX model at ``path`` for the batch ``x`` (ONNX reference evaluator)."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    return ReferenceEvaluator(proto).run(None, {"input": x.detach().cpu().numpy()})[0]


def export_model(
    model: nn.Module,
    stem: str | Path,
    input_size: Sequence[int],
    formats: Sequence[str] = ("onnx",),
    onnx_data: bytes | None = None,
) -> dict[str, str]:
    """Write ``<stem>.onnx`` (from ``onnx_data`` when given: the model's :func:`onnx_bytes`)
    and/or ``<stem>.ts``; returns ``{format: path}``."""
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ConfigError(f"unknown export format(s) {sorted(unknown)}; choose from: {FORMATS}")
    stem = Path(stem)
    written = {}
    if "torchscript" in formats:
        written["torchscript"] = str(export_torchscript(model, stem.with_suffix(".ts"), input_size))
    if "onnx" in formats:
        path = stem.with_suffix(".onnx")
        written["onnx"] = str(export_onnx(model, path, input_size, data=onnx_data))
    return written


def export_formats(
    model: nn.Module,
    stem: str | Path,
    input_size: Sequence[int],
    formats: Sequence[str],
    onnx_data: bytes | None = None,
) -> tuple[dict[str, str], list[str]]:
    """:func:`export_model` one format at a time: ``({format: path} written, [why each other
    format did not export])``. A format that does not export (:class:`ExportError`: the copy
    computes other logits; or the exporter's own error) writes nothing; an ``OSError`` (a full
    disk, no permission) is raised, as for a run's checkpoints."""
    written: dict[str, str] = {}
    errors: list[str] = []
    for fmt in formats:
        try:
            written.update(export_model(model, stem, input_size, [fmt], onnx_data=onnx_data))
        except OSError:
            raise
        except Exception as exc:  # no wrong copy is written
            message = (
                str(exc)
                if isinstance(exc, ExportError)
                else f"{fmt} export failed: {type(exc).__name__}: {one_line(exc)}"
            )
            errors.append(message)
    return written, errors
