r"""Channel groups from Torch-Pruning's dependency graph: the trace of a model translated into
:class:`~.group_model.ChannelGroup`\ s (see :mod:`.groups` for what the tracer gets wrong and
how that is handled)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from prune_cli.pruning.group_model import (
    BN,
    CONV,
    DEPTHWISE,
    LINEAR,
    NORM,
    PARAM,
    PRELU,
    WEIGHTED,
    ChannelGroup,
    ChannelRemovalError,
    Discovery,
    Member,
    first_line,
)

# ----------------------------------------------------------------------------- tracing
#: grad_fn names (lower case, prefix match) of operations that act on each channel separately
#: or add/multiply aligned channels: a channel keeps its position through them.
_CHANNELWISE = (
    "relu",
    "hardtanh",
    "hardswish",
    "hardsigmoid",
    "silu",
    "gelu",
    "sigmoid",
    "elu",
    "leakyrelu",
    "mish",
    "softplus",
    "tanh",
    "clamp",
    "add",
    "sub",
    "mul",
    "div",
    "mean",
    "adaptiveavgpool2d",
    "avgpool2d",
    "maxpool2d",
    "adaptivemaxpool2d",
    "maxpool2dwithindices",
    "clone",
    "tobackward",
    "tocopy",
    "nativedropout",
    "dropout",
    "alias",
    "t",  # a linear layer's transposed weight (exact name, see _is_channelwise)
    "mm",
    "addmm",
)
#: Activations: a BN followed by one of these is a ranking signal for slimming.
_ACTIVATIONS = (
    "relu",
    "hardtanh",
    "hardswish",
    "silu",
    "gelu",
    "elu",
    "leakyrelu",
    "mish",
    "softplus",
    "tanh",
    "clamp",
    "prelu",
    "sigmoid",
    "hardsigmoid",
)
_SIGMOIDS = ("sigmoid", "hardsigmoid")


def _fn_name(node: Any) -> str:
    fn = getattr(node.module, "_grad_fn", None)
    if fn is None:
        fn = node.grad_fn
    name = fn if isinstance(fn, str) else (fn.name() if fn is not None else "")
    return name.lower().removesuffix("backward0").removesuffix("backward1").removesuffix("backward")


def _is_channelwise(name: str) -> bool:
    if name in ("t", "mm", "addmm"):
        return True
    return any(name.startswith(p) for p in _CHANNELWISE if p not in ("t", "mm", "addmm"))


def _is_activation(name: str) -> bool:
    return any(name.startswith(p) for p in _ACTIVATIONS)


def traced_groups(model: nn.Module, input_size: tuple[int, ...]) -> Discovery:
    """The groups of ``model`` from Torch-Pruning's dependency graph, traced on a zero batch of
    ``input_size`` in eval mode (its mode and weights are left as they were)."""
    import torch_pruning as tp  # imported when a model is traced: a heavy package
    from torch_pruning import ops

    names = {m: n for n, m in model.named_modules()}
    params = {p: n for n, p in model.named_parameters()}
    device = next(iter(model.parameters())).device
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(
                model, example_inputs=torch.zeros((1, *input_size), device=device), verbose=False
            )
    except Exception as exc:  # Torch-Pruning raises many types on untraceable models
        raise ChannelRemovalError(
            f"cannot trace {type(model).__name__} for channel removal "
            f"({type(exc).__name__}: {first_line(exc)})"
        ) from exc
    finally:
        model.train(was_training)

    out = Discovery()
    at_output = _modules_at_output(graph, ops)
    order = {n: i for i, n in enumerate(names.values())}
    for tp_group in _all_groups(graph):
        group, reason = _translate(tp_group, graph, names, params, at_output, ops)
        if group is not None:
            out.groups.append(group)
        elif reason is not None:
            root = tp_group[0].dep.target.module
            out.skipped[names.get(root, str(root))] = reason
    out.groups.sort(key=lambda g: order.get(g.name, len(order)))
    return out


def _all_groups(graph: Any) -> list[Any]:
    """Torch-Pruning's groups rooted at every conv and linear layer.

    ``get_pruning_group`` re-derives every concatenation/split index map before each group
    (``update_index_mapping``), which is quadratic in the number of concatenations (DenseNet-121:
    9 of 16 s of discovery). Nothing is pruned while groups are enumerated, so the maps that
    ``build_dependency`` computed stay valid and the repeats are skipped here.
    """
    from torch_pruning.dependency import graph as tp_graph

    update = tp_graph.index_mapping.update_index_mapping
    tp_graph.index_mapping.update_index_mapping = lambda _graph: None
    try:
        return list(graph.get_all_groups(root_module_types=(nn.Conv2d, nn.Linear)))
    finally:
        tp_graph.index_mapping.update_index_mapping = update


def _modules_at_output(graph: Any, ops: Any) -> set[Any]:
    """Modules whose output channels reach the model output (the classifier): never pruned."""
    passthrough = (
        ops.OPTYPE.ELEMENTWISE,
        ops.OPTYPE.RESHAPE,
        ops.OPTYPE.CONCAT,
        ops.OPTYPE.SPLIT,
        ops.OPTYPE.SLICE,
        ops.OPTYPE.EXPAND,
        ops.OPTYPE.UNBIND,
        ops.OPTYPE.BN,
        ops.OPTYPE.LN,
        ops.OPTYPE.GN,
        ops.OPTYPE.IN,
        ops.OPTYPE.PRELU,
        ops.OPTYPE.DEPTHWISE_CONV,
    )
    # The output is an _OutputOp node, or (when the last operation is a module's, e.g. the
    # classifier's) that module's node, which then has no outputs.
    sinks = [n for n in graph.module2node.values() if n.type == ops.OPTYPE.OUTPUT or not n.outputs]
    found: set[Any] = {n.module for n in sinks}
    stack = [n for n in sinks if n.type == ops.OPTYPE.OUTPUT or n.type in passthrough]
    seen = set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for parent in node.inputs:
            found.add(parent.module)
            if parent.type in passthrough:
                stack.append(parent)
    return found


def _translate(
    tp_group: Any, graph: Any, names: dict, params: dict, at_output: set, ops: Any
) -> tuple[ChannelGroup | None, str | None]:
    """A Torch-Pruning group as a :class:`ChannelGroup`, or ``(None, reason)``."""
    OP = ops.OPTYPE
    members: list[Member] = []
    coupling: set[str] = set()
    size = len(tp_group[0].idxs)
    for item in tp_group:
        dep = item.dep
        node = dep.target
        module = node.module
        kind = node.type
        root_idxs = item.root_idxs
        out = graph.is_out_channel_pruning_fn(dep.handler)
        if kind in (OP.CONV, OP.LINEAR) and out and module in at_output:
            return None, None  # the classifier (model output): not a prunable group
        if kind == OP.CONCAT:
            coupling.add("concat")
            continue
        if kind in (OP.SPLIT, OP.SLICE, OP.UNBIND):
            coupling.add("split")
            continue
        if kind == OP.RESHAPE:
            continue  # the flatten before a linear layer; its mapping reaches the linear member
        if kind == OP.ELEMENTWISE:
            name = _fn_name(node)
            if not _is_channelwise(name):
                coupling.add(f"op:{name}")
            continue
        if kind in (OP.OUTPUT,):
            return None, None
        if kind in (OP.MHA, OP.LSTM, OP.EMBED, OP.CUSTOMIZED, OP.EXPAND):
            return None, f"reaches a {kind.name.lower()} layer"
        if root_idxs is None or any(r is None for r in root_idxs):
            return None, "index mapping lost"
        channels = tuple(int(r) for r in root_idxs)
        positions = tuple(int(i) for i in item.idxs)
        member = _member(node, module, kind, out, channels, positions, graph, names, params, OP)
        if member is None:
            return None, f"unsupported layer {type(module).__name__}"
        members.append(member)
    if not members:
        return None, None
    members = _mark_after_depthwise(members, graph, names)
    producers = [m for m in members if m.kind in WEIGHTED and m.role == "out" and not m.gate]
    if not producers:
        return None, "no producer conv or linear"
    if len({m.module for m in producers}) > 1:
        coupling.add("residual")
    if any(m.kind == LINEAR for m in producers):
        coupling.add("linear")
    if any(
        m.kind == LINEAR and m.role == "in" and len(m.positions) > len(set(m.channels))
        for m in members
    ):
        coupling.add("flatten")
    ties, reason = _ties(members, size)
    if reason is not None:
        return None, reason
    exact = not any(m.kind == NORM for m in members)
    order = {n: i for i, n in enumerate(names.values())}
    name = min((m.module for m in producers), key=lambda n: order.get(n, len(order)))
    return (
        ChannelGroup(
            name=name,
            size=size,
            members=_merged(members),
            coupling=tuple(sorted(coupling)),
            ties=ties,
            exact=exact,
        ),
        None,
    )


def _merged(members: list[Member]) -> tuple[Member, ...]:
    """One member per (module, role): a module reached twice (a depthwise conv as input and
    output, or a tensor concatenated with itself) gets the union of its channel maps."""
    merged: dict[tuple[str, str], Member] = {}
    for m in members:
        key = (m.module, m.role)
        if key not in merged:
            merged[key] = m
            continue
        pairs = dict.fromkeys(zip(merged[key].channels, merged[key].positions))
        pairs.update(dict.fromkeys(zip(m.channels, m.positions)))
        merged[key] = Member(
            **{
                **merged[key].__dict__,
                "channels": tuple(c for c, _ in pairs),
                "positions": tuple(p for _, p in pairs),
            }
        )
    return tuple(merged.values())


def _member(
    node: Any,
    module: Any,
    kind: Any,
    out: bool,
    channels: tuple[int, ...],
    positions: tuple[int, ...],
    graph: Any,
    names: dict,
    params: dict,
    OP: Any,
) -> Member | None:
    if kind == OP.CONV:
        return Member(
            names[module],
            CONV,
            "out" if out else "in",
            channels,
            positions,
            module.out_channels if out else module.in_channels,
            gate=out and _is_gate(node, OP),
            groups=module.groups,
        )
    if kind == OP.DEPTHWISE_CONV:
        return Member(
            names[module],
            DEPTHWISE,
            "out",
            channels,
            positions,
            module.out_channels,
            groups=module.groups,
        )
    if kind == OP.LINEAR:
        return Member(
            names[module],
            LINEAR,
            "out" if out else "in",
            channels,
            positions,
            module.out_features if out else module.in_features,
            gate=out and _is_gate(node, OP),
        )
    if kind == OP.BN:
        return Member(
            names[module],
            BN,
            "out",
            channels,
            positions,
            module.num_features,
            nonlinear=_reaches_activation(node, OP),
        )
    if kind in (OP.LN, OP.IN):
        width = module.normalized_shape[-1] if kind == OP.LN else module.num_features
        return Member(names[module], NORM, "out", channels, positions, width)
    if kind == OP.GN:
        return Member(
            names[module],
            NORM,
            "out",
            channels,
            positions,
            module.num_channels,
            groups=module.num_groups,
        )
    if kind == OP.PRELU:
        return Member(names[module], PRELU, "out", channels, positions, module.num_parameters)
    if kind == OP.PARAMETER:
        name = params.get(module)
        if name is None:
            return None
        dim = int(node.pruning_dim)
        return Member(name, PARAM, "out", channels, positions, module.shape[dim], dim=dim)
    return None


def _reaches_activation(node: Any, OP: Any) -> bool:
    """Does every path from ``node``'s output meet an activation before a conv, linear, norm
    or the model output? Channel-wise linear operations (additions, pooling, scaling, reshapes,
    concatenations) are passed through."""
    stack = list(node.outputs)
    seen = set()
    if not stack:
        return False
    while stack:
        nxt = stack.pop()
        if nxt in seen:
            continue
        seen.add(nxt)
        if nxt.type == OP.ELEMENTWISE:
            if _is_activation(_fn_name(nxt)):
                continue  # this path is nonlinear
            stack.extend(nxt.outputs)
            continue
        if nxt.type in (OP.RESHAPE, OP.CONCAT, OP.SPLIT, OP.SLICE):
            stack.extend(nxt.outputs)
            continue
        if nxt.type == OP.PRELU:
            continue
        return False
    return True


def _is_gate(node: Any, OP: Any) -> bool:
    """A conv/linear whose output goes through a sigmoid into a multiplication (SE gate)."""
    current, sigmoid = node, False
    for _ in range(8):
        nxt = [n for n in current.outputs if n.type == OP.ELEMENTWISE]
        if len(nxt) != 1 or len(current.outputs) != 1:
            return False
        current = nxt[0]
        name = _fn_name(current)
        if name.startswith("mul"):
            return sigmoid
        if any(name.startswith(s) for s in _SIGMOIDS):
            sigmoid = True
        elif not _is_activation(name):
            return False
    return False


def _mark_after_depthwise(members: list[Member], graph: Any, names: dict) -> list[Member]:
    """Flag BNs that normalise a depthwise member of the same group (docs/methods.md §3: a
    depthwise BN follows its producer's mask and is never ranked)."""
    depthwise = {m.module for m in members if m.kind == DEPTHWISE}
    if not depthwise:
        return members
    modules = {n: m for m, n in names.items()}
    out = []
    for m in members:
        if m.kind == BN:
            node = graph.module2node.get(modules.get(m.module))
            inputs = node.inputs if node is not None else []
            if any(names.get(i.module) in depthwise for i in inputs):
                m = Member(**{**m.__dict__, "after_depthwise": True})
        out.append(m)
    return out


def _ties(members: Iterable[Member], size: int) -> tuple[tuple[tuple[int, ...], ...], str | None]:
    """Channels that must be removed together: the same position in every group of a grouped
    conv or GroupNorm (the slicing keeps the groups equal; Torch-Pruning's grouped-conv slicing
    also assumes the same positions in every group)."""
    parent = list(range(size))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for m in members:
        grouped = m.groups > 1 and m.kind in (CONV, NORM)
        if not grouped:
            continue
        if m.size % m.groups:
            return (), f"{m.module}: {m.size} channels in {m.groups} groups"
        block = m.size // m.groups
        if block == 1 and m.kind == CONV:
            continue  # one channel per group: a depthwise-like grouping, no constraint
        if sorted(m.positions) != list(range(m.size)):
            return (), f"{m.module}: grouped layer shared with another group"
        by_local: dict[int, list[int]] = {}
        for c, p in zip(m.channels, m.positions):
            by_local.setdefault(p % block, []).append(c)
        for chans in by_local.values():
            for c in chans[1:]:
                parent[find(c)] = find(chans[0])
    components: dict[int, list[int]] = {}
    for c in range(size):
        components.setdefault(find(c), []).append(c)
    ties = tuple(tuple(v) for v in components.values() if len(v) > 1)
    return ties, None
