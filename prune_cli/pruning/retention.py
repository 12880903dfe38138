"""Which small weights to keep beside the large ones: the search space and its fitness
(docs/methods.md §8.2, **our design**; used by the ``optimized`` method).

- :func:`build_layout`: ``N`` prunable weights, ``K = N - floor(r N)`` kept (the count of
  magnitude's exact mode), ``K_s = round(ρ K)`` of them "small", ``K_l = K - K_s`` "large".
  Ranking is by ``|w|`` over all layers (``scope=global``) or per layer (``layerwise``), ties
  broken as :func:`prune_cli.pruning.keep_mask` breaks them. The large set ``L`` (top ``K_l``) is
  always kept; the candidate pool ``C`` is the next ``pool_factor · K_s`` weights by rank
  (``pool=next``) or every weight not in ``L`` (``pool=all_rest``); ``layers`` can restrict the
  search to some layers, whose magnitude choices elsewhere are then kept as they are. Genes are
  single weights (``gene=weight``) or blocks (``row``: the last axis, a conv kernel row;
  ``kernel``: a ``kh × kw`` kernel; ``filter``: one output channel). A block genome selects as
  many blocks as the magnitude choice ``S₀`` touches; it decodes to exactly ``K_s`` weights by
  taking the pool weights of the selected blocks first, then by magnitude (largest first) - so
  ``S₀``'s blocks decode to ``S₀`` itself and every mask keeps exactly ``K`` weights.
- :func:`fitness_batches`: the fitness images (the ``val`` split when there is one, else a
  seeded subset of ``train``; never ``test``).
- :class:`MaskedFitness`: ``F(S) = (-CE, top1)`` of the masked model on those images, BN in eval
  mode, for whole populations of genomes (:mod:`prune_cli.pruning.search` maximises it).

Speed: fitness images are loaded once and kept on the device as normalized tensors; candidates
are evaluated by writing the masked weights into the model's parameters in place (only the
layers that hold pool weights change between candidates); and when the pool lies in late layers
only, the outputs of the modules that run entirely before the first searched layer are computed
once and replayed (``reuse_prefix``).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prune_cli.engine.precision import PRECISIONS, Precision, resolve_precision
from prune_cli.errors import ConfigError
from prune_cli.pruning.threshold import n_to_remove

#: ``method.fitness_precision`` choices (:mod:`prune_cli.engine.precision`).
FITNESS_PRECISIONS = PRECISIONS

log = logging.getLogger("prune_cli")

POOLS = ("next", "all_rest")
GENES = ("weight", "row", "kernel", "filter")


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
    """The large set, the candidate pool, the genes and the magnitude seed
    (docs/methods.md §8.2)."""
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
    data: Any,
    size: int,
    batch_size: int,
    device: torch.device,
    seed: int,
    in_sample: bool = False,
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], str]:
    """The fitness images as normalized tensors on ``device``, and the split they came from.

    ``val`` (images held out of training) when the dataset has one, else ``train`` (images the
    model was trained on); ``in_sample=True`` takes ``train`` on purpose. Never the test split.
    At most ``size`` images, a subset drawn with ``seed`` when the split is larger, in split
    order; no augmentation.
    """
    split = "val" if data.has_split("val") and not in_sample else "train"
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


def folded_eval_copy(
    model: nn.Module,
    weights: Mapping[str, nn.Parameter],
    batch: torch.Tensor,
    channels_last: bool,
) -> tuple[nn.Module, dict[str, nn.Parameter], str] | None:
    """An eval-mode copy of ``model`` that computes the same logits faster, for the fitness.

    Every convolution followed by a BatchNorm is folded into it (``torch.fx``'s
    ``fuse``: ``W' = W · γ/√(σ²+ε)`` per output channel, ``b' = β - μ·γ/√(σ²+ε)``), which in
    eval mode is exact up to rounding. Because the fold scales whole output channels, masking
    commutes with it: ``fold(W ⊙ M) = fold(W) ⊙ M``, so candidates are written into the copy's
    folded weights with the same masks. ``channels_last`` (NHWC) is measured faster on CPU.

    Returns the copy, the parameter of the copy holding each prunable weight, and a
    description; None when the model cannot be traced or the copy's logits differ from the
    model's on ``batch`` (then the fitness runs on the model itself).
    """
    from torch.fx.experimental.optimization import fuse

    try:
        folded = fuse(copy.deepcopy(model).eval())
        params = {}
        for name, p in weights.items():
            owner, _, attr = name.rpartition(".")
            q = getattr(folded.get_submodule(owner), attr)
            if not isinstance(q, nn.Parameter) or q.shape != p.shape:
                return None
            params[name] = q
    except Exception as exc:  # untraceable models (data-dependent control flow, ...)
        log.info("optimized: fitness on the model itself (not foldable: %s)", one_line_reason(exc))
        return None
    fmt = torch.channels_last if channels_last and batch.dim() == 4 else torch.contiguous_format
    folded = folded.to(memory_format=fmt)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        x = batch[: min(len(batch), 64)]
        want = model(x).float()
        got = folded(x.contiguous(memory_format=fmt)).float()
    model.train(was_training)
    if not torch.allclose(got, want, rtol=1e-3, atol=1e-3 * float(want.abs().max()) + 1e-5):
        log.info("optimized: fitness on the model itself (the folded copy's check failed)")
        return None
    folds = sum(1 for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)) - sum(
        1 for m in folded.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    )
    what = f"{folds} BatchNorm(s) folded into their convs"
    return folded, params, what + (", channels_last" if fmt is torch.channels_last else "")


def one_line_reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class MaskedFitness:
    """Batched fitness ``(-CE, top1)`` of genomes, by writing masked weights in place.

    The fitness runs on a folded copy of the model (:func:`folded_eval_copy`, with ``fold``;
    the model itself when it cannot be folded), so the model is never changed. Layers without
    pool weights are set once to ``W ⊙ fixed``; for each candidate only the layers holding pool
    weights are rewritten (``W ⊙ fixed`` plus the selected pool weights). ``dense`` holds the
    model's dense prunable weights (for the caller to apply the final masks to).
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
        fold: bool = True,
        precision: str | Precision = "fp32",
    ) -> None:
        self.layout, self.batches = layout, list(batches)
        # bf16 autocast on hardware that has it: the forward passes are the whole cost of the
        # search (ResNet-20, 512 images, 1 thread: 3.6x faster than fp32, logits within 1%);
        # every candidate is measured alike, so the ranking the search needs is kept.
        on = self.batches[0][0].device
        self.precision = (
            precision if isinstance(precision, Precision) else resolve_precision(precision, on)
        )
        self.dense = {n: p.detach().clone() for n, p in weights.items()}
        self.model, self.params, self.engine = model, dict(weights), "the model itself"
        self._owner = model
        on_cpu = self.batches[0][0].device.type == "cpu"
        folded = folded_eval_copy(model, weights, self.batches[0][0], on_cpu) if fold else None
        if folded is not None:
            self.model, self.params, self.engine = folded
            if on_cpu and self.batches[0][0].dim() == 4:
                fmt = torch.channels_last
                self.batches = [(x.contiguous(memory_format=fmt), y) for x, y in self.batches]
        evaluated = {n: p.detach().clone() for n, p in self.params.items()}
        sizes = [p.numel() for p in weights.values()]
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        layer_of = np.searchsorted(offsets, layout.pool, side="right") - 1
        fixed = layout.fixed
        self.base: dict[str, torch.Tensor] = {}
        self.full: dict[str, torch.Tensor] = {}
        self.varying: list[tuple[str, torch.Tensor, torch.Tensor]] = []
        for i, (name, p) in enumerate(weights.items()):
            m = fixed[offsets[i] : offsets[i + 1]].to(p.device).reshape(p.shape)
            self.full[name] = evaluated[name].reshape(-1)
            self.base[name] = (evaluated[name] * m).reshape(-1)
            at = np.flatnonzero(layer_of == i)
            if at.size:
                local = torch.from_numpy(layout.pool[at] - offsets[i]).to(p.device)
                self.varying.append((name, torch.from_numpy(at), local))
        self.was_training = model.training
        model.eval()
        self.model.eval()
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(self.base[name].reshape(p.shape))
        self.replay: _PrefixReplay | None = None
        if reuse_prefix and self.varying:
            self.replay = _PrefixReplay(
                self.model,
                [n for n, _, _ in self.varying],
                self.batches,
                int(prefix_limit_mb * 2**20),
            )
            log.info("optimized: prefix reuse: %s", self.replay.reason)
        log.info("optimized: fitness on %s", self.engine)
        self.n_images = sum(len(y) for _, y in self.batches)

    @torch.no_grad()
    def write(self, selected: np.ndarray) -> None:
        """Put ``W ⊙ (fixed ∪ pool[selected])`` into the searched layers."""
        sel = torch.from_numpy(np.asarray(selected, dtype=bool))
        for name, at, local in self.varying:
            p = self.params[name]
            flat = self.base[name].clone()
            idx = local[sel[at].to(local.device)]
            flat[idx] = self.full[name][idx]
            p.copy_(flat.reshape(p.shape))

    @torch.no_grad()
    def loss_top1(self) -> tuple[float, float]:
        """Mean CE and top-1 (percent) of the model as it stands on the fitness images."""
        loss = torch.zeros((), dtype=torch.float64, device=self.batches[0][0].device)
        correct = torch.zeros((), dtype=torch.int64, device=loss.device)
        replay = self.replay if self.replay is not None else _NoReplay()
        with replay, self.precision.autocast():
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
        """Restore the model's dense weights (when the fitness wrote into them) and its
        training flag."""
        if self.model is self._owner:
            for name, p in self.params.items():
                p.copy_(self.dense[name])
        self._owner.train(self.was_training)


class _NoReplay:
    batch = 0

    def __enter__(self) -> _NoReplay:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def split_masks(flat: torch.Tensor, weights: Mapping[str, nn.Parameter]) -> dict[str, torch.Tensor]:
    masks, offset = {}, 0
    for name, p in weights.items():
        masks[name] = flat[offset : offset + p.numel()].reshape(p.shape).to(p.device)
        offset += p.numel()
    return masks


@torch.no_grad()
def apply_dense_masked(
    weights: Mapping[str, nn.Parameter],
    dense: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
) -> None:
    for name, p in weights.items():
        p.copy_(dense[name] * masks[name].to(p.dtype))
