"""What the mechanics need to know about a model's architecture, answered next to the models.

Methods, the pruning toolbox and the sharing plans ask these questions instead of testing
classes themselves:

- :func:`is_plain`: a network without skip connections (VGG, AlexNet, SqueezeNet...), for the
  network-slimming λ (1e-4 for plain CNNs, 1e-5 for residual and dense ones, docs/methods.md §3);
- :func:`is_shufflenet_v2`: torchvision's ShuffleNetV2, whose channel split, concatenation and
  shuffle need hand-written channel groups and carry the template-reuse banks;
- :func:`is_cifar_resnet`: a (wide) CIFAR ResNet with three stages ``layer1..3`` of blocks with
  ``conv1``/``conv2`` (the soft-sharing plan);
- :func:`stem_and_classifier`: the layers that change with the input channels / small-input
  stem and with the number of classes (which a foreign weights file may not fit).
"""

from __future__ import annotations

import operator
import sys
from types import ModuleType

import torch
from torch import fx, nn

from prune_cli.models.cifar_resnet import CifarResNet
from prune_cli.models.vgg import CifarVGG
from prune_cli.models.wide_resnet import WideResNet


def _loaded_torchvision_models() -> ModuleType | None:
    """``torchvision.models`` if torchvision is imported, else None. A model can only be an
    instance of torchvision's classes once torchvision is imported, and importing it just to ask
    would add ~0.5 s to the start of every run."""
    if "torchvision" not in sys.modules:
        return None
    import torchvision.models as tvm

    return tvm


def _known_families() -> tuple[tuple[type[nn.Module], ...], tuple[type[nn.Module], ...]]:
    """Known families, answered without tracing: ``(plain, not plain)``."""
    plain: tuple[type[nn.Module], ...] = (CifarVGG,)
    not_plain: tuple[type[nn.Module], ...] = (CifarResNet, WideResNet)
    tvm = _loaded_torchvision_models()
    if tvm is not None:
        plain += (tvm.VGG, tvm.AlexNet, tvm.SqueezeNet, tvm.GoogLeNet)
        not_plain += (
            tvm.ResNet,
            tvm.DenseNet,
            tvm.ShuffleNetV2,
            tvm.MobileNetV2,
            tvm.MobileNetV3,
            tvm.EfficientNet,
            tvm.MNASNet,
            tvm.RegNet,
            tvm.ConvNeXt,
            tvm.VisionTransformer,
            tvm.SwinTransformer,
            tvm.MaxVit,
        )
    return plain, not_plain


#: Operations that combine tensors: where a skip connection rejoins the main path.
_COMBINE_FUNCTIONS = {
    operator.add,
    operator.iadd,
    operator.sub,
    operator.mul,
    operator.imul,
    torch.add,
    torch.sub,
    torch.mul,
    torch.cat,
    torch.concat,
    torch.stack,
}
_COMBINE_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_"}
#: Operations whose result is a size, not a tensor.
_SIZE_METHODS = {"size", "dim", "numel", "ndimension"}
_SIZE_ATTRIBUTES = {"shape", "ndim", "dtype", "device"}


def is_shufflenet_v2(model: nn.Module) -> bool:
    """torchvision's ShuffleNetV2 (any width)."""
    tvm = _loaded_torchvision_models()
    return tvm is not None and isinstance(model, tvm.ShuffleNetV2)


def is_cifar_resnet(model: nn.Module) -> bool:
    """A CIFAR ResNet or a Wide ResNet: three stages ``layer1..3`` of ``conv1``/``conv2`` blocks."""
    return isinstance(model, (CifarResNet, WideResNet))


def is_plain(model: nn.Module) -> bool:
    """Does ``model`` have no skip connection (a tensor that rejoins the main path, added,
    multiplied or concatenated, without passing through the convs/linears of the other side)?

    True for VGG (CIFAR and torchvision), AlexNet and SqueezeNet (its fire modules concatenate two
    parallel convs of one input, which is no skip), and GoogLeNet (every inception branch ends in
    a conv); false for ResNets, DenseNets (the input is concatenated to the new features),
    ShuffleNetV2 (half the channels bypass each unit), Inception-v3 (its reduction blocks
    concatenate a bare max-pool branch), squeeze-and-excitation nets, ConvNeXt and transformers.
    Known families are answered by class; other models (timm, a user's) by tracing the forward
    with ``torch.fx``. A model that cannot be traced is reported as not plain, the safe answer
    for slimming (its λ for residual nets is the smaller one).
    """
    plain, not_plain = _known_families()
    if isinstance(model, plain):
        return True
    if isinstance(model, not_plain):
        return False
    return has_skip_connections(model) is False


def has_skip_connections(model: nn.Module) -> bool | None:
    """The structural test behind :func:`is_plain`, for any model: trace the forward with
    ``torch.fx`` (modules without children stay opaque) and look for an addition, product or
    concatenation where one operand reaches a tensor the other operand is computed from without
    passing through a conv or linear layer. ``None`` if the model cannot be traced."""
    graph = _trace(model)
    if graph is None:
        return None
    return _has_skip(graph, dict(model.named_modules()))


_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)


class _LeafTracer(fx.Tracer):
    """Trace containers only: a module without children, and any conv or linear (also one with
    a parametrisation), is one call, whatever it does inside."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (
            isinstance(m, _LAYERS)
            or not any(True for _ in m.children())
            or super().is_leaf_module(m, module_qualified_name)
        )


def _trace(model: nn.Module) -> fx.Graph | None:
    try:
        return _LeafTracer().trace(model)
    except Exception:  # data-dependent control flow and the like: not traceable
        return None


def _is_layer(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """A node that transforms features with weights: a conv or linear, or any other leaf module
    with parameters of its own that is no normalisation (e.g. a template-bank conv)."""
    if node.op != "call_module":
        return False
    module = modules[str(node.target)]
    if isinstance(module, _LAYERS):
        return True
    own = any(True for _ in module.parameters(recurse=False))
    return own and not isinstance(module, _NORMS)


def _tensor_nodes(graph: fx.Graph) -> set[fx.Node]:
    """Nodes that hold tensors, not sizes (``x.size(0) * 2`` is no tensor)."""
    tensors: set[fx.Node] = set()
    for node in graph.nodes:
        inputs = [n for n in node.all_input_nodes]
        if node.op in ("placeholder", "call_module", "get_attr"):
            tensors.add(node)
        elif node.op == "call_method" and node.target in _SIZE_METHODS:
            continue
        elif node.op == "call_function" and node.target is getattr:
            if node.args[1] not in _SIZE_ATTRIBUTES:
                tensors.add(node)
        elif node.op in ("call_function", "call_method") and any(n in tensors for n in inputs):
            tensors.add(node)
    return tensors


def _combined_inputs(node: fx.Node) -> list[fx.Node]:
    if node.op == "call_function" and node.target in _COMBINE_FUNCTIONS:
        return list(node.all_input_nodes)
    if node.op == "call_method" and node.target in _COMBINE_METHODS:
        return list(node.all_input_nodes)
    return []


def _has_skip(graph: fx.Graph, modules: dict[str, nn.Module]) -> bool:
    tensors = _tensor_nodes(graph)
    ancestors: dict[fx.Node, set[fx.Node]] = {}
    bare: dict[fx.Node, set[fx.Node]] = {}  # reached backwards without crossing a layer
    for node in graph.nodes:  # topological order
        ancestors[node] = set()
        bare[node] = {node}
        for parent in node.all_input_nodes:
            ancestors[node] |= ancestors[parent] | {parent}
            if not _is_layer(node, modules):
                bare[node] |= bare[parent]
    for node in graph.nodes:
        inputs = [n for n in _combined_inputs(node) if n in tensors]
        for a in inputs:
            for b in inputs:
                if a is not b and bare[a] & (ancestors[b] | {b}):
                    return True
    return False


def stem_and_classifier(model: nn.Module, num_classes: int) -> dict[str, str]:
    """``{module name: "stem" | "classifier"}``: the stem conv (the first ``nn.Conv2d``, which
    the input adaptation replaces or restrides) and the layer producing the logits (timm's
    ``get_classifier()``; otherwise the last conv or linear with ``num_classes`` outputs).
    A model without such a layer has no entry for it."""
    roles: dict[str, str] = {}
    modules = list(model.named_modules())
    stem = next((n for n, m in modules if isinstance(m, nn.Conv2d)), None)
    if stem is not None:
        roles[stem] = "stem"
    head = None
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        try:
            found = get_classifier()
            head = next((n for n, m in modules if m is found and n), None)
        except Exception:  # a custom model's unrelated get_classifier
            head = None
    if head is None:
        head = next(
            (
                n
                for n, m in reversed(modules)
                if isinstance(m, (nn.Linear, nn.Conv2d))
                and getattr(m, "weight", None) is not None
                and m.weight.shape[0] == num_classes
            ),
            None,
        )
    if head is not None and head != stem:
        roles[head] = "classifier"
    return roles


#: Architectures whose channels are not removed, and why: the dependency tracer does not finish
#: on their attention in reasonable time (torchvision ``swin_t`` and ``maxvit_t`` ran over 40
#: minutes, ``maxvit_t`` at 15 GB, in scripts/bench_coverage.py), so they are refused at once.
NOT_STRUCTURALLY_PRUNABLE = {
    "SwinTransformer": "Swin's shifted-window attention is not traced",
    "MaxVit": "MaxViT's block and grid attention is not traced",
}


def not_structurally_prunable(model: nn.Module) -> str | None:
    """Why ``model``'s channels cannot be removed, or None when they may be."""
    return NOT_STRUCTURALLY_PRUNABLE.get(type(model).__name__)
