"""Channel groups: every tensor slice that must go when one channel goes (docs/methods.md §2.4).

A **channel group** is a set of channels removed together. Channel ``j`` of a group is one
*logical* channel of the network, and each **member** of the group says where that channel sits
in one module: its position in the producer conv's output rows, in every BN and depthwise conv
over it, in every consumer conv's or linear's input columns. A member maps channels to positions
explicitly (``channels[k]`` sits at ``positions[k]``), which covers

- residual additions: one group has several producers (every conv whose output is added into the
  stream, projection shortcuts included);
- concatenations (DenseNet, GoogLeNet, SqueezeNet's fire modules): each input of a concatenation is
  its own group, and the consumers of the concatenated tensor carry that group's channels at an
  offset;
- splits and chunks: a member may see only some channels of a group;
- flattening before a linear layer: one channel maps to ``H*W`` input columns;
- ShuffleNetV2's channel split + concatenation + channel shuffle, where a stream channel moves to a
  new position after every unit (:mod:`.shufflenet`, written by hand: per-position maps).

How a group is ranked is the importance criterion's business (:mod:`.importance`); how it is cut is
:func:`prune_cli.pruning.channels.remove_channels`'s. This module only finds the groups.

Discovery uses Torch-Pruning's ``DependencyGraph`` (v1.6), which traces the autograd graph and
propagates channel indices through additions, concatenations, splits and flattens. Its groups
are translated into :class:`ChannelGroup`; what it gets wrong is handled here:

- channel shuffles (a ``view``/``transpose``/``view``), which it treats as element-wise:
  torchvision's ShuffleNetV2 gets hand-written groups (:mod:`.shufflenet`);
- any other operation it does not model (padding the channel dimension, ``permute``, unknown
  ``grad_fn``\\ s): every group is **verified** on a copy of the model (:func:`verify_groups`) and
  a group whose removal does not reproduce the masked model is dropped with its reason;
- grouped (not depthwise) convolutions: its slicing assumes the same positions are removed in
  every convolution group; here that becomes a constraint (``ties``: channels removed together).

Coupling kinds (``ChannelGroup.coupling``): ``()`` is a *single* group (one producer conv, its BN,
depthwise followers, SE gates and consumers: the slimming paper's setting); ``residual`` (several
producers added together), ``concat``, ``split``, ``shuffle``, ``flatten`` (a flatten over a spatial
map before a linear layer), ``linear`` (a linear layer's output features). ``groups=single`` keeps
only single groups; ``groups=coupled`` keeps all of them.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prune_cli.errors import ConfigError

GROUPINGS = ("coupled", "single")

#: Member kinds: what a member's slice is a slice of.
CONV, DEPTHWISE, LINEAR, BN, NORM, PRELU, PARAM = (
    "conv",
    "depthwise",
    "linear",
    "bn",
    "norm",
    "prelu",
    "param",
)
#: Producers and consumers: weight rows (role "out") and columns (role "in").
WEIGHTED = (CONV, LINEAR)


class ChannelRemovalError(ConfigError):
    """A model whose channels cannot be removed (one line naming the model and the reason)."""


@dataclass(frozen=True)
class Member:
    """Where the channels of a group sit in one module (or unwrapped parameter).

    ``role`` is ``"out"`` for output channels (a producer's filters, a BN, a depthwise conv,
    a norm: channel-wise modules are always ``"out"``) and ``"in"`` for a consumer's input
    channels. ``channels[k]`` (a channel of the group) sits at ``positions[k]`` of the member's
    pruned dimension; a channel may sit at several positions (flatten) or at none (a split).
    ``nonlinear`` (BN only): every path from the BN's output reaches an activation before any
    conv, linear or the model output. ``gate``: a conv/linear whose output *multiplies* the
    channels (squeeze-and-excitation) instead of producing them. ``after_depthwise`` (BN only):
    the BN normalises the output of a depthwise member of the same group. ``groups``: the module's
    convolution groups (or GroupNorm groups), 1 when it has none.
    """

    module: str
    kind: str
    role: str
    channels: tuple[int, ...]
    positions: tuple[int, ...]
    size: int
    nonlinear: bool = False
    gate: bool = False
    after_depthwise: bool = False
    groups: int = 1
    dim: int = 0

    def drop_positions(self, removed: set[int]) -> list[int]:
        """The positions of this member that the removed channels occupy."""
        return sorted({p for c, p in zip(self.channels, self.positions) if c in removed})


@dataclass(frozen=True)
class ChannelGroup:
    """One prunable channel group; ``name`` is its first producer's module name.

    ``ties``: sets of channels that can only be removed together (the same position in every
    group of a grouped convolution); channels in no tie are free. ``exact``: removing channels of
    this group computes exactly what the model with those channels masked computes (false when a
    member normalises *across* channels, such as LayerNorm or GroupNorm, whose statistics change).
    """

    name: str
    size: int
    members: tuple[Member, ...]
    coupling: tuple[str, ...] = ()
    ties: tuple[tuple[int, ...], ...] = ()
    exact: bool = True

    @property
    def single(self) -> bool:
        """One producer, nothing coupled (``op:<name>`` marks an operation the tracer assumed
        channel-wise, which verification checks; it couples nothing)."""
        return not self.kinds

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(k for k in self.coupling if not k.startswith("op:"))

    def _of(self, kind: tuple[str, ...], role: str | None = None) -> list[Member]:
        return [m for m in self.members if m.kind in kind and (role is None or m.role == role)]

    @property
    def producers(self) -> list[Member]:
        """Convs/linears whose output rows are these channels (SE gates excluded)."""
        return [m for m in self._of(WEIGHTED, "out") if not m.gate]

    @property
    def gates(self) -> list[Member]:
        return [m for m in self._of(WEIGHTED, "out") if m.gate]

    @property
    def consumers(self) -> list[Member]:
        """Convs/linears reading these channels as input columns."""
        return self._of(WEIGHTED, "in")

    @property
    def bns(self) -> list[Member]:
        return self._of((BN,))

    @property
    def depthwise(self) -> list[Member]:
        return self._of((DEPTHWISE,))

    def atoms(self) -> list[list[int]]:
        """The units of removal: every tie, and every channel in no tie on its own (sorted by
        their first channel)."""
        tied = {c for tie in self.ties for c in tie}
        units = [list(t) for t in self.ties] + [[c] for c in range(self.size) if c not in tied]
        return sorted(units, key=lambda u: u[0])


# ----------------------------------------------------------------------------- discovery
def check_grouping(value: str) -> str:
    if value not in GROUPINGS:
        raise ConfigError(f"unknown method.groups {value!r}; choose one of: {', '.join(GROUPINGS)}")
    return value


@dataclass
class Discovery:
    """The groups of a model and the groups found but left whole, with their reasons."""

    groups: list[ChannelGroup] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        kinds: dict[str, int] = {}
        for g in self.groups:
            # "op:<name>": an operation the tracer assumed channel-wise (checked by verification)
            for kind in g.kinds or ("single",):
                kinds[kind] = kinds.get(kind, 0) + 1
        return {
            "groups": len(self.groups),
            "channels": sum(g.size for g in self.groups),
            "coupling": kinds,
            "skipped": len(self.skipped),
            "skipped_reasons": _reason_counts(self.skipped),
        }


def _reason_counts(skipped: dict[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for reason in skipped.values():
        counts[reason] = counts.get(reason, 0) + 1
    return counts


def discover(
    model: nn.Module,
    input_size: Sequence[int],
    grouping: str = "coupled",
    verify: bool = True,
) -> Discovery:
    """The channel groups of ``model`` for inputs of one image of ``input_size`` ``(C, H, W)``.

    ``grouping="single"`` keeps only single groups (see the module docstring). With ``verify``
    every group is checked on a randomised copy of the model (:func:`verify_groups`). The model
    is traced in eval mode on a zero batch (its mode and weights are left as they were).
    """
    from prune_cli.models.traits import is_shufflenet_v2, not_structurally_prunable
    from prune_cli.pruning import shufflenet

    check_grouping(grouping)
    reason = not_structurally_prunable(model)
    if reason is not None:
        raise ChannelRemovalError(
            f"{type(model).__name__} cannot be pruned structurally: {reason}; prune its "
            "weights instead (method=magnitude)"
        )
    size = tuple(int(v) for v in input_size)
    found = shufflenet.discover(model) if is_shufflenet_v2(model) else _traced(model, size)
    if grouping == "single":
        kept = []
        for g in found.groups:
            if g.single:
                kept.append(g)
            else:
                found.skipped[g.name] = f"coupled ({', '.join(g.kinds)}); groups=single"
        found.groups = kept
    if verify and found.groups:
        failed = verify_groups(model, found.groups, size)
        found.groups = [g for g in found.groups if g.name not in failed]
        found.skipped.update(failed)
    return found


def channel_groups(
    model: nn.Module, input_size: Sequence[int], grouping: str = "coupled", verify: bool = True
) -> list[ChannelGroup]:
    """The groups of :func:`discover`, in module order of their names."""
    return discover(model, input_size, grouping, verify).groups


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


def _traced(model: nn.Module, input_size: tuple[int, ...]) -> Discovery:
    import torch_pruning as tp
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
            f"({type(exc).__name__}: {_first_line(exc)})"
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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return " ".join(text.splitlines()[0].split()) if text else type(exc).__name__


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


# ----------------------------------------------------------------------------- verification
def verify_groups(
    model: nn.Module, groups: Sequence[ChannelGroup], input_size: tuple[int, ...]
) -> dict[str, str]:
    """Check each group's maps on a randomised copy of ``model``; ``{group: reason}`` of failures.

    For the exact groups, about half of every group's channels is removed at once and the pruned
    copy must reproduce, in eval mode, the copy with those channels' consumer columns zeroed
    (:func:`prune_cli.pruning.channels.mask_channels`); BN statistics and affine parameters are
    randomised first so that no channel hides behind a zero. A failing combined check is retried
    group by group to name the culprits. Non-exact groups (normalising across channels) must at
    least give a pruned model that runs and keeps the output shape.
    """
    from prune_cli.pruning.channels import mask_channels, remove_channels

    gen = torch.Generator().manual_seed(0)
    probe = _randomised_copy(model, gen)
    x = torch.randn((2, *input_size), generator=gen).to(_device(probe))
    with torch.no_grad():
        reference = probe(x)

    def keep_half(g: ChannelGroup) -> torch.Tensor:
        keep = torch.ones(g.size, dtype=torch.bool)
        atoms = g.atoms()
        order = torch.randperm(len(atoms), generator=gen).tolist()
        for i in order[: len(atoms) // 2]:
            keep[atoms[i]] = False
        return keep

    def check(subset: Sequence[ChannelGroup]) -> str | None:
        keep = {g.name: keep_half(g) for g in subset}
        keep = {k: v for k, v in keep.items() if not bool(v.all())}
        if not keep:
            return None
        try:
            pruned = remove_channels(probe, subset, keep).eval()
            with torch.no_grad():
                got = pruned(x)
        except Exception as exc:  # a map that does not fit fails in many ways
            return f"removal fails ({type(exc).__name__}: {_first_line(exc)[:80]})"
        if got.shape != reference.shape:
            return "removal changes the output shape"
        if not all(g.exact for g in subset):
            return None
        modules = dict(probe.named_modules())
        saved = {
            m.module: modules[m.module].weight.detach().clone() for g in subset for m in g.consumers
        }
        mask_channels(probe, subset, keep)
        with torch.no_grad():
            want = probe(x)
            for name, weight in saved.items():
                modules[name].weight.copy_(weight)
        scale = float(want.abs().max()) + 1e-6
        if not torch.isfinite(got).all() or float((got - want).abs().max()) > 1e-3 * scale:
            return "removal does not reproduce the masked model"
        return None

    failed: dict[str, str] = {}
    exact = [g for g in groups if g.exact]
    loose = [g for g in groups if not g.exact]
    for subset in (exact, loose):
        if subset and check(subset) is not None:
            for g in subset:
                reason = check([g])
                if reason is not None:
                    failed[g.name] = reason
    return failed


def _device(model: nn.Module) -> torch.device:
    return next(iter(model.parameters())).device


@torch.no_grad()
def _randomised_copy(model: nn.Module, gen: torch.Generator) -> nn.Module:
    probe = copy.deepcopy(model).eval()
    for m in probe.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None:
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            if m.affine:
                m.weight.copy_(torch.rand(n, generator=gen) * 2 - 1)
                m.bias.copy_(torch.rand(n, generator=gen) - 0.5)
        elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
            m.bias.copy_(torch.rand(m.bias.shape, generator=gen) - 0.5)
    # Keep activations of deep random networks in range: scale every conv/linear to unit gain.
    for m in probe.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            m.weight.copy_(torch.randn(m.weight.shape, generator=gen) / math.sqrt(fan_in))
    return probe
