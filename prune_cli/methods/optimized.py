"""``optimized``: magnitude + search-selected small weights (source 4, NTNU thesis 2021;
docs/methods.md §8).

The thesis keeps "the larger weights plus a set of smaller weights chosen by an optimisation
strategy"; its algorithm is not public, so everything below is **our design**
(docs/methods.md §8.2). The recipe, on the toolbox's :mod:`prune_cli.pruning.retention` (the search
space and its fitness) and :mod:`prune_cli.pruning.search` (the searches):

1. The large weights ``L`` are always kept; ``K_s`` small ones are chosen from a candidate pool
   (:func:`~prune_cli.pruning.retention.build_layout`, where the option semantics are spelled
   out: ``small_ratio``, ``pool``, ``pool_factor``, ``scope``, ``gene``, ``layers``).
2. A search (``ga`` default, ``pso``, ``sa``) picks ``S ⊂ C``, ``|S| = K_s``, maximising
   ``F(S) = -CE`` of the masked model on a fixed subset of training images (the ``val`` split
   when there is one, else a seeded subset of ``train``; never ``test``), BN in eval mode,
   accuracy as the tie-break. The population is seeded with the magnitude choice ``S₀`` (the next
   ``K_s`` by rank), so ``F(S*) >= F(S₀)``.
3. The final mask ``M = L ∪ S*`` is returned and held through fine-tuning by the pipeline.

``PruneResult.info`` (``prune_info`` in metrics.json) compares the search with the magnitude
mask ``L ∪ S₀`` evaluated the same way: fitness loss/accuracy and test loss/accuracy before
fine-tuning, and after fine-tuning with the run's fine-tune settings when
``finetune_baseline: true``.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

import numpy as np
from pydantic import model_validator
from torch import nn

from prune_cli.errors import ConfigError
from prune_cli.methods.base import Method, OwnRatio, PruneContext, PruneResult
from prune_cli.methods.registry import METHODS
from prune_cli.options import Bool, Float, Int, OneOf, Options, Text
from prune_cli.pruning import prunable_weights, rate_check
from prune_cli.pruning.masks import SCOPES
from prune_cli.pruning.retention import (
    FITNESS_PRECISIONS,
    GENES,
    POOLS,
    MaskedFitness,
    apply_dense_masked,
    build_layout,
    fitness_batches,
    split_masks,
)
from prune_cli.pruning.search import (
    SEARCHES,
    GAConfig,
    Problem,
    PSOConfig,
    SAConfig,
    run_search,
)

log = logging.getLogger("prune_cli")

#: Above this many genes a warning suggests block genes (docs/methods.md §8.2 "Scaling").
GENOME_WARN = 100_000


class GAOptions(Options):
    """``method.ga``: the genetic algorithm's operators (:class:`GAConfig`)."""

    elitism: Int(ge=1)
    tournament: Int(ge=1)
    crossover_prob: Float(ge=0, le=1)
    mutation_prob: Float(ge=0, le=1)
    mutation_rate: Float(ge=0, le=1)


class PSOOptions(Options):
    """``method.pso``: binary PSO's coefficients (:class:`PSOConfig`)."""

    inertia: Float(ge=0)
    c1: Float(ge=0)
    c2: Float(ge=0)
    vmax: Float(gt=0)


class SAOptions(Options):
    """``method.sa``: simulated annealing's schedule (:class:`SAConfig`)."""

    t0: Float(gt=0)
    alpha: Float(gt=0, le=1)
    moves: Int(ge=1)
    swaps: Int(ge=1)


@METHODS.register("optimized")
class OptimizedRetention(Method):
    """Keep the large weights plus the small weights a GA / PSO / SA finds useful
    (docs/methods.md §8.2)."""

    class Options(OwnRatio):
        """``configs/method/optimized.yaml`` (docs/methods.md §8.2)."""

        small_ratio: Float(ge=0, le=1)
        pool: OneOf(*POOLS)
        pool_factor: Float(ge=1)
        scope: OneOf(*SCOPES)
        include_linear: Bool
        layers: list[Text("a parameter-name prefix")] | None
        gene: OneOf(*GENES)
        search: OneOf(*SEARCHES)
        population: Int(ge=1)
        generations: Int(ge=0)
        iterations: Int(ge=0)
        patience: Int(ge=1)
        ga: GAOptions
        pso: PSOOptions
        sa: SAOptions
        fitness_size: Int(ge=1)
        fitness_split: OneOf("holdout", "train")
        fitness_batch_size: Int(ge=1)
        #: The fitness forward passes' precision: auto = bf16 where the hardware does bf16
        #: natively (engine/precision.py), else fp32.
        fitness_precision: OneOf(*FITNESS_PRECISIONS)
        reuse_prefix: Bool
        prefix_limit_mb: Float(ge=0)
        finetune_baseline: Bool
        progress: Bool

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

    def holdout_size(self) -> int:
        """``fitness_split: holdout``: ``fitness_size`` training images held out of training
        (when the dataset has no validation split), so that fitness is measured out of sample."""
        return self.opts.fitness_size if self.opts.fitness_split == "holdout" else 0

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
        batches, source = fitness_batches(
            ctx.data, fitness_size, fitness_bs, ctx.device, self.seed, o.fitness_split == "train"
        )
        warnings = []
        if o.fitness_split == "holdout" and source != "val":
            warnings.append(
                "optimized: no held-out split to measure fitness on (the dataset has no val "
                "split): fitness measured on training images"
            )
        fitness = MaskedFitness(
            model,
            weights,
            layout,
            batches,
            reuse_prefix=o.reuse_prefix,
            prefix_limit_mb=o.prefix_limit_mb,
            precision=o.fitness_precision,
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
        mag_masks = split_masks(layout.mask(mag_sel), weights)
        masks = split_masks(layout.mask(best_sel), weights)
        has_test = ctx.data.has_split("test")

        def test_eval() -> dict[str, float]:
            if not has_test:
                return {}
            r = ctx.evaluate(model, "test", fitness_bs)
            return {"test_loss": round(r.loss, 6), "test_top1": round(r.top1, 4)}

        apply_dense_masked(weights, dense, mag_masks)
        magnitude = {
            "fitness_loss": -result.seed_fitness[0],
            "fitness_top1": result.seed_fitness[1],
            **test_eval(),
        }
        magnitude_model = copy.deepcopy(model) if o.finetune_baseline else None
        apply_dense_masked(weights, dense, masks)
        found = {
            "fitness_loss": -result.best_fitness[0],
            "fitness_top1": result.best_fitness[1],
            **test_eval(),
        }
        if magnitude_model is not None:
            if ctx.finetune is None:
                raise ConfigError("method.finetune_baseline needs a pipeline to fine-tune with")
            ctx.finetune(magnitude_model, mag_masks, "finetune_magnitude")
            if has_test:
                r = ctx.evaluate(magnitude_model, "test", fitness_bs)
                magnitude["finetuned_test_loss"] = round(r.loss, 6)
                magnitude["finetuned_test_top1"] = round(r.top1, 4)
            del magnitude_model
        seconds = result.seconds_per_generation
        info: dict[str, Any] = {
            "design": "our design (docs/methods.md §8.2): the thesis' algorithm is not public",
            "search": search,
            "scope": scope,
            "gene": gene,
            "pool": pool,
            "pool_factor": pool_factor,
            "small_ratio": small_ratio,
            "layers": list(layers) if layers else None,
            **layout.counts,
            "pool_rule": pool,
            "fitness_images": fitness.n_images,
            "fitness_split": source,
            "fitness_precision": fitness.precision.record(),
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
            "rates": {"weights": rate_check(masks, self.ratio)},
            "warnings": warnings,
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
