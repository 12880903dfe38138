"""``optimized``: magnitude + search-selected small weights (source 4, NTNU thesis 2021; §8).

The thesis keeps "the larger weights plus a set of smaller weights chosen by an optimisation
strategy"; its algorithm is not public, so everything below is **our design** (methods.md §8.2):

1. ``N`` prunable weights (conv, and Linear when ``include_linear``), ``K = N - floor(r N)`` kept
   (the count of ``magnitude``'s exact mode), ``K_s = round(ρ K)`` of them "small", ``K_l = K -
   K_s`` "large". Ranking is by ``|w|`` over all layers (``scope=global``) or per layer
   (``layerwise``, where ``r`` and ``ρ`` apply to every layer), ties broken as
   :func:`prune_cli.pruning.keep_mask` breaks them.
2. The large set ``L`` (top ``K_l``) is always kept. The candidate pool ``C`` is the next
   ``pool_factor · K_s`` weights by rank (``pool=next``) or every weight not in ``L``
   (``pool=all_rest``); ``layers`` can restrict the search to some layers, whose magnitude
   choices elsewhere are then kept as they are.
3. A search (``ga`` default, ``pso``, ``sa``: :mod:`prune_cli.pruning.search`) picks
   ``S ⊂ C``, ``|S| = K_s``, maximising ``F(S) = -CE`` of the masked model on a fixed subset of
   training images (the ``val`` split when there is one, else a seeded subset of ``train``;
   never ``test``), BN in eval mode, accuracy as the tie-break. The population is seeded with
   the magnitude choice ``S₀`` (the next ``K_s`` by rank), so ``F(S*) >= F(S₀)``.
4. Genes are single weights (``gene=weight``) or blocks (``row``: the last axis, a conv kernel
   row; ``kernel``: a ``kh × kw`` kernel; ``filter``: one output channel), to keep the genome
   small on large networks. A block genome selects as many blocks as ``S₀`` touches; it decodes to
   exactly ``K_s`` weights by taking the pool weights of the selected blocks first, then by
   magnitude (largest first) - so ``S₀``'s blocks decode to ``S₀`` itself and every mask keeps
   exactly ``K`` weights.
5. The final mask ``M = L ∪ S*`` is returned and held through fine-tuning by the pipeline.

``PruneResult.info`` (``prune_info`` in metrics.json) compares the search with the magnitude
mask ``L ∪ S₀`` evaluated the same way: fitness loss/accuracy and test loss/accuracy before
fine-tuning, and after fine-tuning with the run's fine-tune settings when
``finetune_baseline: true``.

Speed: fitness images are loaded once and kept on the device as normalized tensors; candidates
are evaluated by writing the masked weights into the model's parameters in place (only the
layers that hold pool weights change between candidates); identical genomes are evaluated once;
and when the pool lies in late layers only, the outputs of the modules that run entirely before
the first searched layer are computed once and replayed (``reuse_prefix``).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import model_validator
from torch import nn

from prune_cli.engine.loop import evaluate
from prune_cli.errors import ConfigError
from prune_cli.methods.base import Method, MethodOptions, PruneContext, PruneResult
from prune_cli.methods.registry import METHODS
from prune_cli.options import Bool, Float, Int, OneOf, Options, Text
from prune_cli.pruning import prunable_weights
from prune_cli.pruning.masks import SCOPES
from prune_cli.pruning.search import (
    SEARCHES,
    GAConfig,
    Problem,
    PSOConfig,
    SAConfig,
    SearchResult,
    binary_pso,
    genetic_search,
    simulated_annealing,
)
from prune_cli.pruning.threshold import n_to_remove

log = logging.getLogger("prune_cli")

POOLS = ("next", "all_rest")
GENES = ("weight", "row", "kernel", "filter")
#: Above this many genes a warning suggests block genes (methods.md §8.2 "Scaling").
GENOME_WARN = 100_000


# ---------------------------------------------------------------------------- the layout
@dataclass
class Layout:
    """Which weights are fixed, which are candidates, and how candidates group into genes.

    All indices are positions in the concatenation of the flattened prunable weights (in
    ``prunable_weights`` order). ``pool`` is ordered by segment, then by magnitude rank (largest
    first); ``pool_gene[i]`` is the gene of ``pool[i]``; ``gene_segment[g]`` the segment of gene
    ``g``; ``budget[s]`` the number of pool weights segment ``s`` keeps (``K_s`` per segment);
    ``seed`` the genome of the magnitude choice ``S₀``.
    """

    fixed: torch.Tensor  # bool (N,): L, plus magnitude picks outside the searched layers
    pool: np.ndarray  # int64 (|C|,)
    pool_segment: np.ndarray  # int64 (|C|,)
    pool_gene: np.ndarray  # int64 (|C|,)
    gene_segment: np.ndarray  # int64 (n_genes,)
    budget: np.ndarray  # int64 (n_segments,)
    seed: np.ndarray  # bool (n_genes,)
    counts: dict[str, int]

    def decode(self, genomes: np.ndarray) -> np.ndarray:
        """Genomes ``(B, n_genes)`` -> selected pool weights ``(B, |C|)``, exactly ``budget[s]``
        per segment: pool weights of selected genes first, then by rank (the pool order)."""
        genomes = np.atleast_2d(genomes)
        flags = genomes[:, self.pool_gene]
        out = np.zeros(flags.shape, dtype=bool)
        rows = np.arange(len(flags))[:, None]
        for s, k in enumerate(self.budget):
            idx = np.flatnonzero(self.pool_segment == s)
            if k == 0 or idx.size == 0:
                continue
            # Stable sort on "not selected": selected genes' weights first, each group by rank.
            order = np.argsort(~flags[:, idx], axis=1, kind="stable")[:, : int(k)]
            out[rows, idx[order]] = True
        return out

    def mask(self, selected: np.ndarray) -> torch.Tensor:
        """Flat kept-weight mask ``fixed ∪ pool[selected]`` for one decoded selection."""
        m = self.fixed.clone()
        m[torch.from_numpy(self.pool[np.asarray(selected, dtype=bool)])] = True
        return m


def _gene_len(shape: Sequence[int], gene: str) -> int:
    """Weights per gene: 1, the last axis, the trailing ``kh·kw``, or a whole output channel."""
    if gene == "weight":
        return 1
    if gene == "row":
        return int(shape[-1])
    if gene == "kernel":
        return int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return int(np.prod(shape[1:]))


def build_layout(
    weights: Mapping[str, torch.Tensor],
    ratio: float,
    small_ratio: float,
    *,
    scope: str = "global",
    pool: str = "next",
    pool_factor: float = 4.0,
    gene: str = "weight",
    layers: Sequence[str] | None = None,
) -> Layout:
    """The large set, the candidate pool, the genes and the magnitude seed (methods.md §8.2)."""
    names = list(weights)
    sizes = [weights[n].numel() for n in names]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    flat = torch.cat([weights[n].detach().abs().reshape(-1).float().cpu() for n in names])
    n_total = flat.numel()
    layer_of = np.repeat(np.arange(len(names)), sizes)
    searched = np.ones(len(names), dtype=bool)
    if layers:
        searched = np.array([any(n.startswith(p) for p in layers) for n in names])
        if not searched.any():
            raise ConfigError(
                f"method.layers {list(layers)!r} matches no prunable weight; "
                f"choose prefixes of: {', '.join(names)}"
            )
    groups = [np.arange(n_total)] if scope == "global" else [
        np.arange(offsets[i], offsets[i + 1]) for i in range(len(names))
    ]  # fmt: skip
    fixed = torch.zeros(n_total, dtype=torch.bool)
    pool_parts, seg_parts, budget, seed_parts = [], [], [], []
    totals = {"N": n_total, "K": 0, "K_l": 0, "K_s": 0}
    for s, members in enumerate(groups):
        scores = flat[torch.from_numpy(members)]
        n = members.size
        keep = n - n_to_remove(n, ratio)
        k_small = round(small_ratio * keep)
        k_large = keep - k_small
        # Descending rank = the reverse of keep_mask's stable ascending order, so the top-K set
        # is exactly magnitude's exact-mode mask (ties included).
        desc = members[torch.sort(scores, stable=True).indices.flip(0).numpy()]
        end = n if pool == "all_rest" else min(n, k_large + int(np.ceil(pool_factor * k_small)))
        cand = desc[k_large:end]
        mag = desc[k_large:keep]  # S₀ in this segment
        fixed[torch.from_numpy(desc[:k_large])] = True
        # Outside the searched layers the magnitude choice stays as it is.
        out_mag = mag[~searched[layer_of[mag]]]
        fixed[torch.from_numpy(out_mag)] = True
        cand = cand[searched[layer_of[cand]]]
        pool_parts.append(cand)
        seg_parts.append(np.full(cand.size, s, dtype=np.int64))
        budget.append(k_small - out_mag.size)
        seed_parts.append(np.isin(cand, mag))
        totals["K"] += keep
        totals["K_l"] += k_large
        totals["K_s"] += k_small
    pool_idx = np.concatenate(pool_parts)
    pool_seg = np.concatenate(seg_parts)
    pool_seed = np.concatenate(seed_parts)
    # Genes: global block ids (blocks are contiguous runs of the C-order flattened weight).
    gene_len = np.array([_gene_len(weights[n].shape, gene) for n in names], dtype=np.int64)
    block_offsets = np.concatenate([[0], np.cumsum(np.array(sizes) // gene_len)])
    lay = layer_of[pool_idx]
    block = block_offsets[lay] + (pool_idx - offsets[lay]) // gene_len[lay]
    uniq, pool_gene = np.unique(block, return_inverse=True)
    gene_segment = np.zeros(uniq.size, dtype=np.int64)
    gene_segment[pool_gene] = pool_seg
    seed = np.zeros(uniq.size, dtype=bool)
    seed[pool_gene[pool_seed]] = True
    totals.update(pool=int(pool_idx.size), genes=int(uniq.size), genes_selected=int(seed.sum()))
    return Layout(
        fixed=fixed,
        pool=pool_idx,
        pool_segment=pool_seg,
        pool_gene=pool_gene.astype(np.int64),
        gene_segment=gene_segment,
        budget=np.array(budget, dtype=np.int64),
        seed=seed,
        counts=totals,
    )


# ---------------------------------------------------------------------------- fitness data
def fitness_batches(
    data: Any, size: int, batch_size: int, device: torch.device, seed: int
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], str]:
    """The fitness images as normalized tensors on ``device``, and the split they came from.

    ``val`` when the dataset has one, else ``train`` (images the model was trained on, but
    never the test split). At most ``size`` images, a subset drawn with ``seed`` when the split
    is larger, in split order; no augmentation.
    """
    split = "val" if data.has_split("val") else "train"
    part = data.splits[split]
    n = min(int(size), len(part))
    if n < 1:
        raise ConfigError(f"method.fitness_size must be a positive integer, got {size!r}")
    if n < len(part):
        gen = torch.Generator().manual_seed(int(seed))
        part = part.subset(torch.randperm(len(part), generator=gen)[:n].sort().values)
    bundle = dataclasses.replace(data, splits={"fitness": part})
    loader = bundle.loader("fitness", int(batch_size), train=False, device=device)
    return [(x.contiguous(), y) for x, y in loader], split


# ---------------------------------------------------------------------------- evaluation
class _PrefixReplay:
    """Replays the outputs of modules that run entirely before the first searched layer.

    One traced forward records, for every module, how often it is called and when it starts
    and ends. Modules called once that finish before the first module owning a searched weight
    starts cannot depend on the search; the outermost of them get their outputs stored per
    fitness batch and their ``forward`` replaced by a lookup while the search runs. A check on
    the first batch compares replayed and full logits; any mismatch (or an untraceable model)
    turns the replay off.
    """

    def __init__(
        self,
        model: nn.Module,
        varying: Sequence[str],
        batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
        limit_bytes: int,
    ) -> None:
        self.model = model
        self.batch = 0
        self.cached: dict[str, list[Any]] = {}
        self.modules: dict[str, nn.Module] = {}
        self.active = False
        self.reason = ""
        names = self._prefix_modules(varying, batches[0][0])
        if not names:
            return
        mods = dict(model.named_modules())
        outputs: dict[str, list[Any]] = {n: [] for n in names}
        handles = [
            mods[n].register_forward_hook(lambda _m, _i, out, n=n: outputs[n].append(out))
            for n in names
        ]
        try:
            with torch.no_grad():
                reference = model(batches[0][0])
                # Checked on the first batch, before storing the rest: the outputs of all
                # batches may not fit.
                size = sum(_nbytes(o[0]) for o in outputs.values()) * len(batches)
                if size > limit_bytes:
                    self.reason = f"off: prefix outputs need {size / 2**20:.0f} MiB > limit"
                    return
                for x, _ in batches[1:]:
                    model(x)
        finally:
            for h in handles:
                h.remove()
        self.cached, self.modules = outputs, {n: mods[n] for n in names}
        self.active = True
        with self, torch.no_grad():
            self.batch = 0
            # Twice: the second pass would see any in-place change a later op made to a replay.
            same = all(
                torch.allclose(model(batches[0][0]), reference, rtol=1e-4, atol=1e-5)
                for _ in range(2)
            )
        if not same:
            self.active, self.cached, self.modules = False, {}, {}
            self.reason = "off: the replay check failed"
        else:
            shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            self.reason = f"replaying {len(names)} module(s): {shown}"

    def _prefix_modules(self, varying: Sequence[str], x: torch.Tensor) -> list[str]:
        owners = {n.rsplit(".", 1)[0] if "." in n else "" for n in varying}
        ticks: dict[str, list[int]] = {}
        clock = [0]
        handles = []
        for name, m in self.model.named_modules():
            if not name:
                continue

            def pre(_m: nn.Module, _i: Any, name: str = name) -> None:
                clock[0] += 1
                ticks.setdefault(name, []).append(clock[0])

            def post(_m: nn.Module, _i: Any, _o: Any, name: str = name) -> None:
                clock[0] += 1
                ticks[name].append(clock[0])

            handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
        try:
            with torch.no_grad():
                self.model(x[:2])
        finally:
            for h in handles:
                h.remove()
        if any(len(ticks.get(o, [])) != 2 for o in owners):
            self.reason = "off: a searched layer is not called exactly once per forward"
            return []
        first = min(ticks[o][0] for o in owners)
        early = {n for n, t in ticks.items() if len(t) == 2 and t[1] < first}
        # Outermost only: a module whose parent is replayed is never called.
        names = [n for n in early if not any(n.startswith(p + ".") for p in early)]
        if not names:
            self.reason = "off: the first searched layer runs first"
        return sorted(names, key=lambda n: ticks[n][0])

    def __enter__(self) -> _PrefixReplay:
        if self.active:
            for n, m in self.modules.items():
                m.forward = types.MethodType(  # type: ignore[method-assign]
                    lambda _self, *a, n=n, **k: _clone(self.cached[n][self.batch]), m
                )
        return self

    def __exit__(self, *exc: object) -> None:
        for m in self.modules.values():
            m.__dict__.pop("forward", None)


def _clone(obj: Any) -> Any:
    """A copy of a replayed output, so that an in-place op downstream cannot alter the cache."""
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if isinstance(obj, (tuple, list)):
        return type(obj)(_clone(o) for o in obj)
    return obj


def _nbytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (tuple, list)):
        return sum(_nbytes(o) for o in obj)
    return 0


class MaskedFitness:
    """Batched fitness ``(-CE, top1)`` of genomes, by writing masked weights in place.

    Layers without pool weights are set once to ``W ⊙ fixed``; for each candidate only the
    layers holding pool weights are rewritten (``W ⊙ fixed`` plus the selected pool weights).
    The model is not rebuilt or copied; the dense weights are restored by :meth:`close`.
    """

    def __init__(
        self,
        model: nn.Module,
        weights: Mapping[str, nn.Parameter],
        layout: Layout,
        batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
        *,
        reuse_prefix: bool = True,
        prefix_limit_mb: float = 2048,
    ) -> None:
        self.model, self.layout, self.batches = model, layout, list(batches)
        self.params = dict(weights)
        self.dense = {n: p.detach().clone() for n, p in weights.items()}
        sizes = [p.numel() for p in weights.values()]
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        layer_of = np.searchsorted(offsets, layout.pool, side="right") - 1
        fixed = layout.fixed
        self.base: dict[str, torch.Tensor] = {}
        self.varying: list[tuple[str, torch.Tensor, torch.Tensor]] = []
        for i, (name, p) in enumerate(weights.items()):
            m = fixed[offsets[i] : offsets[i + 1]].to(p.device).reshape(p.shape)
            self.base[name] = (self.dense[name] * m).reshape(-1)
            at = np.flatnonzero(layer_of == i)
            if at.size:
                local = torch.from_numpy(layout.pool[at] - offsets[i]).to(p.device)
                self.varying.append((name, torch.from_numpy(at), local))
        self.was_training = model.training
        model.eval()
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(self.base[name].reshape(p.shape))
        self.replay: _PrefixReplay | None = None
        if reuse_prefix and self.varying:
            self.replay = _PrefixReplay(
                model, [n for n, _, _ in self.varying], self.batches, int(prefix_limit_mb * 2**20)
            )
            log.info("optimized: prefix reuse: %s", self.replay.reason)
        self.n_images = sum(len(y) for _, y in self.batches)

    @torch.no_grad()
    def write(self, selected: np.ndarray) -> None:
        """Put ``W ⊙ (fixed ∪ pool[selected])`` into the searched layers."""
        sel = torch.from_numpy(np.asarray(selected, dtype=bool))
        for name, at, local in self.varying:
            p = self.params[name]
            flat = self.base[name].clone()
            idx = local[sel[at].to(local.device)]
            flat[idx] = self.dense[name].reshape(-1)[idx]
            p.copy_(flat.reshape(p.shape))

    @torch.no_grad()
    def loss_top1(self) -> tuple[float, float]:
        """Mean CE and top-1 (percent) of the model as it stands on the fitness images."""
        loss = torch.zeros((), dtype=torch.float64, device=self.batches[0][0].device)
        correct = torch.zeros((), dtype=torch.int64, device=loss.device)
        replay = self.replay if self.replay is not None else _NoReplay()
        with replay:
            for i, (x, y) in enumerate(self.batches):
                replay.batch = i
                logits = self.model(x).float()
                loss += F.cross_entropy(logits, y, reduction="sum").double()
                correct += (logits.argmax(1) == y).sum()
        return float(loss) / self.n_images, 100.0 * float(correct) / self.n_images

    def __call__(self, genomes: np.ndarray) -> np.ndarray:
        out = np.empty((len(genomes), 2))
        for i, selected in enumerate(self.layout.decode(genomes)):
            self.write(selected)
            loss, top1 = self.loss_top1()
            out[i] = (-loss, top1)
        return out

    @torch.no_grad()
    def close(self) -> None:
        """Restore the dense weights and the training flag."""
        for name, p in self.params.items():
            p.copy_(self.dense[name])
        self.model.train(self.was_training)


class _NoReplay:
    batch = 0

    def __enter__(self) -> _NoReplay:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _split_masks(
    flat: torch.Tensor, weights: Mapping[str, nn.Parameter]
) -> dict[str, torch.Tensor]:
    masks, offset = {}, 0
    for name, p in weights.items():
        masks[name] = flat[offset : offset + p.numel()].reshape(p.shape).to(p.device)
        offset += p.numel()
    return masks


@torch.no_grad()
def _apply_dense_masked(
    weights: Mapping[str, nn.Parameter],
    dense: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
) -> None:
    for name, p in weights.items():
        p.copy_(dense[name] * masks[name].to(p.dtype))


# ---------------------------------------------------------------------------- the method
class GAOptions(Options):
    """``method.ga``: the genetic algorithm's operators (:class:`GAConfig`)."""

    elitism: Int(ge=1) = 2
    tournament: Int(ge=1) = 3
    crossover_prob: Float(ge=0, le=1) = 0.9
    mutation_prob: Float(ge=0, le=1) = 0.2
    mutation_rate: Float(ge=0, le=1) = 0.01


class PSOOptions(Options):
    """``method.pso``: binary PSO's coefficients (:class:`PSOConfig`)."""

    inertia: Float(ge=0) = 0.7
    c1: Float(ge=0) = 1.5
    c2: Float(ge=0) = 1.5
    vmax: Float(gt=0) = 4.0


class SAOptions(Options):
    """``method.sa``: simulated annealing's schedule (:class:`SAConfig`)."""

    t0: Float(gt=0) = 1.0
    alpha: Float(gt=0, le=1) = 0.95
    moves: Int(ge=1) = 20
    swaps: Int(ge=1) = 1


@METHODS.register("optimized")
class OptimizedRetention(Method):
    """Keep the large weights plus the small weights a GA / PSO / SA finds useful (§8.2)."""

    name = "optimized"

    class Options(MethodOptions):
        """``configs/method/optimized.yaml`` (methods.md §8.2)."""

        small_ratio: Float(ge=0, le=1) = 0.1
        pool: OneOf(*POOLS) = "next"
        pool_factor: Float(ge=1) = 4.0
        scope: OneOf(*SCOPES) = "global"
        include_linear: Bool = True
        layers: list[Text("a parameter-name prefix")] | None = None
        gene: OneOf(*GENES) = "weight"
        search: OneOf(*SEARCHES) = "ga"
        population: Int(ge=1) = 20
        generations: Int(ge=0) = 30
        iterations: Int(ge=0) = 30
        patience: Int(ge=1) = 10
        ga: GAOptions = GAOptions()
        pso: PSOOptions = PSOOptions()
        sa: SAOptions = SAOptions()
        fitness_size: Int(ge=1) = 2048
        fitness_batch_size: Int(ge=1) = 512
        reuse_prefix: Bool = True
        prefix_limit_mb: Float(ge=0) = 2048.0
        finetune_baseline: Bool = False
        progress: Bool = True

        @model_validator(mode="after")
        def _population_fits_the_search(self) -> OptimizedRetention.Options:
            if self.search == "ga" and self.population < 2:
                raise ConfigError(
                    f"method.population {self.population} is out of range for search 'ga'; "
                    "valid: an integer >= 2"
                )
            if self.search == "ga" and self.ga.elitism >= self.population:
                raise ConfigError(
                    f"method.ga.elitism {self.ga.elitism} must be below method.population "
                    f"{self.population}"
                )
            return self

    opts: Options

    def search_config(self) -> GAConfig | PSOConfig | SAConfig:
        """The dataclass of the chosen search, from ``population``/``generations``/
        ``iterations``/``patience`` and the ``ga``/``pso``/``sa`` sections of the options."""
        o = self.opts
        if o.search == "ga":
            return GAConfig(
                population=o.population,
                generations=o.generations,
                patience=o.patience,
                **o.ga.model_dump(),
            )
        if o.search == "pso":
            return PSOConfig(
                particles=o.population,
                iterations=o.iterations,
                patience=o.patience,
                **o.pso.model_dump(),
            )
        return SAConfig(iterations=o.iterations, patience=o.patience, **o.sa.model_dump())

    def prune(self, model: nn.Module, ctx: PruneContext) -> PruneResult:
        o = self.opts
        scope, pool, gene, search = o.scope, o.pool, o.gene, o.search
        small_ratio, pool_factor = o.small_ratio, o.pool_factor
        fitness_size, fitness_bs = o.fitness_size, o.fitness_batch_size
        layers = o.layers or None
        search_cfg = self.search_config()
        tic = time.perf_counter()

        weights = prunable_weights(model, o.include_linear)
        layout = build_layout(
            weights,
            self.ratio,
            small_ratio,
            scope=scope,
            pool=pool,
            pool_factor=pool_factor,
            gene=gene,
            layers=layers,
        )
        if layout.counts["genes"] > GENOME_WARN:
            log.warning(
                "optimized: %d genes (> %d); consider method.gene=row|kernel|filter, "
                "method.layers or a smaller pool",
                layout.counts["genes"],
                GENOME_WARN,
            )
        batches, source = fitness_batches(ctx.data, fitness_size, fitness_bs, ctx.device, self.seed)
        fitness = MaskedFitness(
            model,
            weights,
            layout,
            batches,
            reuse_prefix=o.reuse_prefix,
            prefix_limit_mb=o.prefix_limit_mb,
        )
        problem = Problem(layout.gene_segment, layout.seed, fitness)
        rng = np.random.default_rng(self.seed)
        try:
            result = run_search(search, problem, search_cfg, rng, o.progress)
        finally:
            replay_reason = fitness.replay.reason if fitness.replay is not None else "off"
            fitness.close()
        search_seconds = time.perf_counter() - tic

        dense = fitness.dense
        mag_sel, best_sel = layout.decode(np.stack([layout.seed, result.best]))
        mag_masks = _split_masks(layout.mask(mag_sel), weights)
        masks = _split_masks(layout.mask(best_sel), weights)
        test = (
            ctx.data.loader("test", fitness_bs, train=False, device=ctx.device)
            if ctx.data.has_split("test")
            else None
        )

        def test_eval() -> dict[str, float]:
            if test is None:
                return {}
            r = evaluate(model, test, ctx.device)
            return {"test_loss": round(r.loss, 6), "test_top1": round(r.top1, 4)}

        _apply_dense_masked(weights, dense, mag_masks)
        magnitude = {
            "fitness_loss": -result.seed_fitness[0],
            "fitness_top1": result.seed_fitness[1],
            **test_eval(),
        }
        magnitude_model = copy.deepcopy(model) if o.finetune_baseline else None
        _apply_dense_masked(weights, dense, masks)
        found = {
            "fitness_loss": -result.best_fitness[0],
            "fitness_top1": result.best_fitness[1],
            **test_eval(),
        }
        if magnitude_model is not None:
            if ctx.finetune is None:
                raise ConfigError("method.finetune_baseline needs a pipeline to fine-tune with")
            ctx.finetune(magnitude_model, mag_masks, "finetune_magnitude")
            if test is not None:
                r = evaluate(magnitude_model, test, ctx.device)
                magnitude["finetuned_test_loss"] = round(r.loss, 6)
                magnitude["finetuned_test_top1"] = round(r.top1, 4)
            del magnitude_model
        seconds = result.seconds_per_generation
        info: dict[str, Any] = {
            "design": "our design (methods.md §8.2): the thesis' algorithm is not public",
            "search": search,
            "scope": scope,
            "gene": gene,
            "pool": pool,
            "pool_factor": pool_factor,
            "small_ratio": small_ratio,
            "layers": list(layers) if layers else None,
            **layout.counts,
            "fitness_images": fitness.n_images,
            "fitness_split": source,
            "evaluations": result.evaluations,
            "generations": result.generations,
            "seconds_per_generation": round(float(np.mean(seconds)), 4) if seconds else 0.0,
            "search_seconds": round(search_seconds, 3),
            "prefix_reuse": replay_reason,
            "history": [-h[0] for h in result.history],
            "weights_changed": int((best_sel & ~mag_sel).sum()),
            "magnitude": magnitude,
            "optimized": found,
            "fitness_loss_gain": magnitude["fitness_loss"] - found["fitness_loss"],
        }
        if "test_top1" in found:
            info["test_top1_gain"] = round(found["test_top1"] - magnitude["test_top1"], 4)
        log.info(
            "optimized (%s): fitness loss %.5f -> %.5f vs magnitude, %d small weights changed, "
            "%.3f s per generation",
            search,
            magnitude["fitness_loss"],
            found["fitness_loss"],
            info["weights_changed"],
            info["seconds_per_generation"],
        )
        return PruneResult(model=model, masks=masks, info=info)


def run_search(
    search: str,
    problem: Problem,
    cfg: GAConfig | PSOConfig | SAConfig,
    rng: np.random.Generator,
    progress: bool = True,
) -> SearchResult:
    """Dispatch to the search named ``search`` (``ga`` | ``pso`` | ``sa``)."""
    if search == "ga":
        assert isinstance(cfg, GAConfig)
        return genetic_search(problem, cfg, rng, progress)
    if search == "pso":
        assert isinstance(cfg, PSOConfig)
        return binary_pso(problem, cfg, rng, progress)
    assert isinstance(cfg, SAConfig)
    return simulated_annealing(problem, cfg, rng, progress)
