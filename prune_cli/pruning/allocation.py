"""How many channels each group keeps: ``method.allocation`` (uniform | global | latency).

- ``uniform``: every ranked group removes the same fraction (``scope=layerwise``; Li et al.).
- ``global``: one ranking of all channels together (``scope=global``).
- ``latency``: per-group widths chosen from measured latencies, so that a MAC budget turns into
  the largest real speedup. A channel-pruned model runs slower than its MACs say (speedup
  efficiency, :mod:`prune_cli.metrics.efficiency`, below 1) because its layers do not all cost
  the same per MAC: early layers move large activations through memory-bound BatchNorm, ReLU and
  additions, small layers pay fixed costs, and channel counts off a kernel's vector width (16
  fp32 lanes with AVX-512) are computed as if rounded up. So the channels to remove are chosen
  by what they cost at run time, not only by their MACs.

**Latency-aware allocation** (after HALP, Shen et al. 2022, "Structural pruning via
latency-saliency knapsack": a latency lookup table and a greedy knapsack): keep the most value
for the latency spent. The budget is the MAC budget the user gave (``method.macs_reduction``, or
the MACs of the uniform cut at ``ratio``), so that the same MAC reduction is bought with the
largest latency reduction:

1. **Layers** (:func:`model_layers`): every conv, depthwise conv, linear and BatchNorm that a
   ranked group reaches, with its shape and how its input and output widths follow the kept
   channel counts of the groups (a conv's input may come from several groups: a concatenation).
2. **Candidate widths** per group (:func:`candidate_widths`): multiples of the group's
   ``round_to`` multiple (:func:`~prune_cli.pruning.channels.multiple_of`; coarser for wide
   groups, at most :data:`MAX_CANDIDATES`), at least ``min_channels``.
3. **Latency table** (:mod:`prune_cli.metrics.layer_latency`): each layer timed alone at the
   candidate widths of its input and output, per batch size of ``latency_batch_sizes``, on
   ``latency_backend`` (PyTorch eager or ONNX Runtime), once per machine and setting (cached on
   disk). The predicted latency of an allocation is the sum of its layers' latencies; with
   several batch sizes, the mean over batch sizes of the latency relative to the dense layers'.
4. **Value** (:func:`kept_values`): a group that keeps its ``k`` best channels is worth
   ``W_g * log(share of the group's importance they carry)``, ``W_g`` the MACs of the layers
   the group reaches. The criterion only orders channels within a group (filter norms do not
   compare across layers of different sizes, and a coupled group's score is not its whole
   weight); across groups, the log makes every further cut of a group cost more, so no group is
   emptied, and when latency is proportional to MACs everywhere the optimum is the uniform
   allocation: the latency-aware one departs from uniform exactly where the table says that
   some layers cost more per MAC than others.
5. **Greedy** (:func:`solve`): from the dense widths, repeatedly take the move (one group down
   to one of its next :data:`LOOKAHEAD` lower candidate widths) that loses the least value per
   unit of predicted latency saved, until the MACs are within the budget; then give back the
   channels that still fit in it (the last move may overshoot by a whole step). A move that
   saves no predicted latency is taken only when no other is left.

The chosen widths are cut by :func:`~prune_cli.pruning.channels.channel_prune` with per-group
ratios (the lowest-scored channels of each group go); :func:`latency_cut` checks the exact MACs
of the cut model and aims lower if they miss the budget, and returns what was chosen, the MACs
and predicted latencies, and where the table came from.

Limits: the table prices each layer alone (no fusion across layers, element-wise operations
other than BatchNorm not priced, and a backend's graph-level choices, such as ONNX Runtime's
layout reorders between blocked and plain convolutions, not seen: ``round_to`` keeps widths on
those paths), and a layer's two widths as independent factors
(``t(a, b) = t_in(a) * t_out(b) / t_dense``); grouped (not depthwise) convolutions are not
priced (their MACs count as fixed). The table serves the relative choice between groups; the
real speedup is what the run measures afterwards (``latency.speedup``, ``speedup_efficiency``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prune_cli.errors import ConfigError
from prune_cli.metrics.counting import count_macs
from prune_cli.metrics.deploy import LATENCY_BACKENDS
from prune_cli.metrics.layer_latency import LatencyTable, LayerShape, measure_tables
from prune_cli.pruning.channels import (
    Importance,
    Pruned,
    channel_prune,
    min_keep,
    multiple_of,
)
from prune_cli.pruning.groups import BN, CONV, DEPTHWISE, LINEAR, ChannelGroup, discover

__all__ = ["ALLOCATIONS", "LATENCY_BACKENDS", "latency_cut"]

#: ``method.allocation``.
ALLOCATIONS = ("uniform", "global", "latency")
#: At most this many candidate widths per group (the table's size grows with it).
MAX_CANDIDATES = 16
#: A greedy move takes a group down by up to this many candidate widths at once: latency falls
#: in steps (a kernel's vector width), so the next width alone may save nothing.
LOOKAHEAD = 4


# ----------------------------------------------------------------------------- the layers
@dataclass
class Layer:
    """One layer as the allocation sees it: its shape, its dense MACs (one image), and its
    widths as functions of the groups' kept channels: ``width = fixed + sum(coef[g] * k[g])``
    for the input (``ins``) and the output (``outs``)."""

    name: str
    shape: LayerShape
    macs: float
    ins: dict[str, float] = field(default_factory=dict)
    outs: dict[str, float] = field(default_factory=dict)
    in_fixed: float = 0.0
    out_fixed: float = 0.0

    def widths(self, kept: Mapping[str, int]) -> tuple[float, float]:
        a = self.in_fixed + sum(c * kept[g] for g, c in self.ins.items())
        b = self.out_fixed + sum(c * kept[g] for g, c in self.outs.items())
        return (b, b) if self.shape.channelwise else (a, b)

    def macs_at(self, kept: Mapping[str, int]) -> float:
        a, b = self.widths(kept)
        if self.shape.kind == "bn":
            return 0.0
        if self.shape.channelwise:
            return self.macs * b / self.shape.out_channels
        return self.macs * (a / self.shape.in_channels) * (b / self.shape.out_channels)

    @property
    def groups(self) -> set[str]:
        return set(self.ins) | set(self.outs)


def model_layers(
    model: nn.Module, groups: Sequence[ChannelGroup], input_size: Sequence[int]
) -> list[Layer]:
    """The layers that the ``groups`` reach (module docstring, step 1)."""
    shapes = _input_shapes(model, input_size)
    macs = count_macs(model, tuple(int(v) for v in input_size)).per_layer
    modules = dict(model.named_modules())
    layers: dict[str, Layer] = {}
    for g in groups:
        for m in g.members:
            if m.kind not in (CONV, DEPTHWISE, LINEAR, BN) or m.gate:
                continue
            module = modules[m.module]
            if m.module not in layers:
                shape = _shape_of(module, m.kind, shapes.get(m.module))
                if shape is None:
                    continue
                layers[m.module] = Layer(m.module, shape, float(macs.get(m.module, (0, 0))[0]))
            layer = layers[m.module]
            coef = len(m.positions) / g.size
            if m.kind in (DEPTHWISE, BN) or m.role == "out":
                layer.outs[g.name] = layer.outs.get(g.name, 0.0) + coef
            else:
                layer.ins[g.name] = layer.ins.get(g.name, 0.0) + coef
    for layer in layers.values():
        full = {g.name: g.size for g in groups}
        layer.in_fixed = layer.shape.in_channels - sum(c * full[g] for g, c in layer.ins.items())
        layer.out_fixed = layer.shape.out_channels - sum(c * full[g] for g, c in layer.outs.items())
    return list(layers.values())


def _input_shapes(model: nn.Module, input_size: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """The input shape (batch of one) of every leaf module, from one forward pass."""
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d | nn.Linear | nn.BatchNorm2d):

            def hook(_m: nn.Module, args: tuple, name: str = name) -> None:
                if args and isinstance(args[0], torch.Tensor):
                    shapes.setdefault(name, tuple(args[0].shape))

            handles.append(module.register_forward_pre_hook(hook))
    device = next(iter(model.parameters())).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros((1, *input_size), device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return shapes


def _shape_of(module: nn.Module, kind: str, shape: tuple[int, ...] | None) -> LayerShape | None:
    """The table's description of a layer; None for one the table does not price (a grouped
    conv, a layer that never ran)."""
    if shape is None:
        return None
    if isinstance(module, nn.Conv2d):
        groups = module.groups
        depthwise = groups > 1 and groups == module.in_channels == module.out_channels
        if groups > 1 and not depthwise:
            return None
        return LayerShape(
            kind="depthwise" if depthwise else "conv",
            in_channels=module.in_channels,
            out_channels=module.out_channels,
            kernel=tuple(module.kernel_size),
            stride=tuple(module.stride),
            padding=module.padding if isinstance(module.padding, str) else tuple(module.padding),
            dilation=tuple(module.dilation),
            bias=module.bias is not None,
            hw=tuple(shape[2:]),
        )
    if isinstance(module, nn.Linear) and len(shape) == 2:
        return LayerShape("linear", module.in_features, module.out_features,
                          bias=module.bias is not None)  # fmt: skip
    if isinstance(module, nn.BatchNorm2d):
        c = module.num_features
        return LayerShape("bn", c, c, hw=tuple(shape[2:]))
    return None


# ----------------------------------------------------------------------------- candidates
def candidate_widths(size: int, min_channels: float = 1, round_to: int | str = 1) -> list[int]:
    """The kept counts a group may get: the multiples of a step (the group's ``round_to``
    multiple, :func:`~prune_cli.pruning.channels.multiple_of`, doubled until at most
    :data:`MAX_CANDIDATES` are left) from ``min_channels`` to the group's size, which is always
    a candidate."""
    step = multiple_of(size, round_to)
    while size / step > MAX_CANDIDATES:
        step *= 2
    low = max(min_keep(size, min_channels), 1)
    widths = range(step * math.ceil(low / step), size, step)
    return sorted({w for w in widths if w >= 1} | {size})


# ----------------------------------------------------------------------------- the solver
@dataclass
class Allocation:
    """What :func:`solve` chose: ``kept`` per group, the modelled MACs (one image) and the
    predicted latency relative to the dense layers' (mean over batch sizes)."""

    kept: dict[str, int]
    macs: float
    latency: float
    moves: int
    reached: bool


def solve(
    layers: Sequence[Layer],
    sizes: Mapping[str, int],
    candidates: Mapping[str, Sequence[int]],
    values: Mapping[str, Sequence[float]],
    cost: Callable[[Layer, float, float], float],
    macs_budget: float,
) -> Allocation:
    """Greedy knapsack (module docstring, step 4).

    ``values[g][k]`` is the importance kept when group ``g`` keeps its ``k`` best channels
    (``values[g][0] = 0``, non-decreasing); ``cost(layer, in_width, out_width)`` the layer's
    predicted latency (any unit: only differences are compared); MACs come from each layer's
    dense MACs scaled by its widths. Groups without candidates below their size stay whole.
    """
    kept = {g: int(sizes[g]) for g in candidates}
    by_group: dict[str, list[Layer]] = {g: [] for g in kept}
    for layer in layers:
        for g in layer.groups:
            if g in by_group:
                by_group[g].append(layer)
    total_macs = sum(x.macs_at(kept) for x in layers)
    total_cost = sum(cost(x, *x.widths(kept)) for x in layers)
    moves = 0
    while total_macs > macs_budget:
        best: tuple[tuple[float, float], str, int, float, float] | None = None
        for g, here in kept.items():
            touched = by_group[g]
            now_cost = sum(cost(x, *x.widths(kept)) for x in touched)
            now_macs = sum(x.macs_at(kept) for x in touched)
            lower = [k for k in candidates[g] if k < here][-LOOKAHEAD:]
            for k in lower:
                trial = {**kept, g: k}
                saved_cost = now_cost - sum(cost(x, *x.widths(trial)) for x in touched)
                saved_macs = now_macs - sum(x.macs_at(trial) for x in touched)
                if saved_macs <= 0:
                    continue
                lost = float(values[g][here]) - float(values[g][k])
                # Lowest importance lost per latency saved; moves that save no latency last,
                # then by importance lost per MAC saved.
                key = (lost / saved_cost, 0.0) if saved_cost > 0 else (math.inf, lost / saved_macs)
                if best is None or key < best[0]:
                    best = (key, g, k, saved_cost, saved_macs)
        if best is None:
            break
        _, g, k, saved_cost, saved_macs = best
        kept[g] = k
        total_cost -= saved_cost
        total_macs -= saved_macs
        moves += 1
    total_macs, total_cost, refills = _refill(
        kept, by_group, candidates, values, cost, macs_budget, total_macs, total_cost
    )
    return Allocation(kept, total_macs, total_cost, moves + refills, total_macs <= macs_budget)


def _refill(
    kept: dict[str, int],
    by_group: Mapping[str, Sequence[Layer]],
    candidates: Mapping[str, Sequence[int]],
    values: Mapping[str, Sequence[float]],
    cost: Callable[[Layer, float, float], float],
    macs_budget: float,
    total_macs: float,
    total_cost: float,
) -> tuple[float, float, int]:
    """Give back channels while the MACs stay within the budget (the last greedy moves may
    overshoot it by a whole step): each time the move up to a group's next candidate width
    that gains the most importance per unit of latency added, in place."""
    refills = 0
    while True:
        best: tuple[float, str, int, float, float] | None = None
        for g, here in kept.items():
            higher = [k for k in candidates[g] if k > here]
            if not higher:
                continue
            k = higher[0]
            touched = by_group[g]
            trial = {**kept, g: k}
            added_macs = sum(x.macs_at(trial) - x.macs_at(kept) for x in touched)
            if total_macs + added_macs > macs_budget:
                continue
            added_cost = sum(cost(x, *x.widths(trial)) - cost(x, *x.widths(kept)) for x in touched)
            gained = float(values[g][k]) - float(values[g][here])
            score = gained / added_cost if added_cost > 0 else math.inf
            if best is None or score > best[0]:
                best = (score, g, k, added_cost, added_macs)
        if best is None:
            return total_macs, total_cost, refills
        _, g, k, added_cost, added_macs = best
        kept[g] = k
        total_cost += added_cost
        total_macs += added_macs
        refills += 1


def kept_values(scores: torch.Tensor, weight: float) -> list[float]:
    """``values[k]`` = ``weight * log(share of the group's importance its k best channels
    keep)``: 0 for the whole group, falling ever faster as the group narrows (module docstring,
    the utility); ``values[0]`` is very negative (never a candidate)."""
    s = torch.sort(scores.detach().double().cpu().reshape(-1), descending=True).values
    s = torch.nan_to_num(s, posinf=1e30).clamp(min=0)
    kept = torch.cumsum(s, 0)
    total = float(kept[-1]) if kept.numel() else 0.0
    eps = max(total, 1e-30) * 1e-9  # all-zero scores: every channel is worth the same
    share = (kept + eps * torch.arange(1, s.numel() + 1)) / (total + eps * s.numel())
    return [weight * math.log(1e-30), *(weight * torch.log(share)).tolist()]


# ----------------------------------------------------------------------------- the whole step
def latency_allocation(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    scores: Mapping[str, torch.Tensor],
    input_size: Sequence[int],
    macs_budget: float,
    *,
    backend: str = "torch",
    batch_sizes: Sequence[int] = (1, 64),
    min_channels: float = 1,
    round_to: int | str = 1,
    table: LatencyTable | None = None,
) -> tuple[dict[str, int], dict[str, Any]]:
    """Kept channels per ranked group for ``macs_budget`` (the whole model's MACs of one
    image), and the record for ``prune_info.allocation`` (module docstring). ``table``: a
    table to use instead of the stored one of ``backend`` (tests); a stored table gains what
    was measured."""
    tic = time.perf_counter()
    ranked = [g for g in groups if g.name in scores]
    sizes = {g.name: g.size for g in ranked}
    candidates = {g.name: candidate_widths(g.size, min_channels, round_to) for g in ranked}
    layers = model_layers(model, ranked, input_size)
    stored = table is None
    table = LatencyTable.load(backend) if table is None else table
    measure_tables(table, _wanted(layers, candidates, sizes), batch_sizes)
    if stored and table.measured:
        table.save()
    dense_ms = {
        b: sum(table.predict(x.shape, b, x.shape.in_channels, x.shape.out_channels) for x in layers)
        for b in batch_sizes
    }

    def cost(layer: Layer, a: float, b: float) -> float:
        return sum(
            table.predict(layer.shape, n, a, b) / dense_ms[n] for n in batch_sizes if dense_ms[n]
        ) / len(batch_sizes)

    touched = {n: sum(x.macs for x in layers if n in x.groups) for n in sizes}
    values = {n: kept_values(s, touched[n]) for n, s in scores.items() if n in sizes}
    # MACs of the layers no ranked group reaches (and of unpriced ones) stay as they are
    fixed = count_macs(model, tuple(int(v) for v in input_size)).dense - sum(x.macs for x in layers)
    chosen = solve(layers, sizes, candidates, values, cost, macs_budget - fixed)
    predicted = {
        f"b{b}": round(sum(table.predict(x.shape, b, *x.widths(chosen.kept)) for x in layers), 4)
        for b in batch_sizes
    }
    record = {
        "name": "latency",
        "backend": backend,
        "batch_sizes": [int(b) for b in batch_sizes],
        "threads": table.setting.get("threads"),
        "layers_priced": len(layers),
        "table": {
            "file": str(table.path) if stored else None,
            "measured": table.measured,
            "setting": {k: v for k, v in table.setting.items() if k != "version"},
        },
        "predicted_ms": predicted,
        "predicted_dense_ms": {f"b{b}": round(v, 4) for b, v in dense_ms.items()},
        "moves": chosen.moves,
        "seconds": round(time.perf_counter() - tic, 2),
    }
    return chosen.kept, record


def _wanted(
    layers: Sequence[Layer], candidates: Mapping[str, Sequence[int]], sizes: Mapping[str, int]
) -> dict[LayerShape, tuple[list[int], list[int]]]:
    """For every layer shape, the input and output widths the allocation can give it: each
    group's candidates with the layer's other groups whole."""
    wanted: dict[LayerShape, tuple[set[int], set[int]]] = {}
    for x in layers:
        ins, outs = wanted.setdefault(x.shape, (set(), set()))
        for g in x.groups:
            for k in candidates.get(g, ()):
                a, b = x.widths({**sizes, g: k})
                ins.add(max(1, round(a)))
                outs.add(max(1, round(b)))
    return {s: (sorted(i), sorted(o)) for s, (i, o) in wanted.items()}


#: Tries of :func:`latency_cut` to meet the budget when the modelled MACs were optimistic.
BUDGET_TRIES = 3


def latency_cut(
    model: nn.Module,
    importance: Importance,
    input_size: Sequence[int],
    *,
    ratio: float,
    macs_reduction: float | None = None,
    backend: str = "torch",
    batch_sizes: Sequence[int] = (1, 64),
    grouping: str = "coupled",
    mode: str = "exact",
    min_channels: float = 1,
    round_to: int | str = 1,
    scope: str = "layerwise",
    table: LatencyTable | None = None,
) -> tuple[Pruned, dict[str, Any]]:
    """``model`` cut with latency-aware widths (module docstring) for the MAC budget
    ``dense MACs / macs_reduction`` or, without it, the MACs of the uniform cut at ``ratio``;
    and the record for ``prune_info.allocation``. ``importance`` must give scores that compare
    across groups. ``scope`` is accepted for the callers' settings and must be ``layerwise``
    (the cut applies one ratio per group). The channel rate recorded is the one achieved (the
    allocation, not a ratio, decides it)."""
    if scope != "layerwise":
        raise ConfigError(f"allocation=latency cuts each group by its own ratio, not {scope!r}")
    size = tuple(int(v) for v in input_size)
    settings = {"grouping": grouping, "mode": mode, "min_channels": min_channels,
                "round_to": round_to}  # fmt: skip
    dense = count_macs(model, size).dense
    if macs_reduction is None:
        uniform = channel_prune(model, importance, ratio, input_size=size, **settings)
        budget = float(count_macs(uniform.model, size).dense)
        source = f"the uniform cut at ratio {ratio:g}"
    else:
        if macs_reduction < 1:
            raise ConfigError(f"macs_reduction {macs_reduction} is below 1; valid: a number >= 1")
        budget = dense / float(macs_reduction)
        source = f"method.macs_reduction={float(macs_reduction):g}"
    groups = discover(model, size, grouping).groups
    scores = importance(model, groups)
    sizes = {g.name: g.size for g in groups}
    # The allocation models each layer's MACs from the groups' widths; when the exact count of
    # the cut model is above the budget (a member that sees only part of a group), aim lower.
    goal = budget
    for _ in range(BUDGET_TRIES):
        kept, record = latency_allocation(
            model, groups, scores, size, goal, backend=backend, batch_sizes=batch_sizes,
            min_channels=min_channels, round_to=round_to, table=table,
        )  # fmt: skip
        ratios = {n: (sizes[n] - k) / sizes[n] for n, k in kept.items()}
        pruned = channel_prune(
            model, importance, ratio, input_size=size, group_ratios=ratios, **settings
        )
        macs = float(count_macs(pruned.model, size).dense)
        if macs <= budget * (1 + 1e-9):
            break
        goal *= budget / macs
    rate = pruned.info.get("rates", {}).get("channels")
    if rate is not None:
        rate["target"] = rate["achieved"]
    record.update(
        macs_budget=round(budget),
        budget_from=source,
        macs=round(macs),
        macs_reduction_target=round(dense / budget, 4),
        macs_reduction=round(dense / macs, 4),
        reached=macs <= budget * (1 + 1e-9),
    )
    return pruned, record
