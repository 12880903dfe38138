"""``optimized``: magnitude + search-selected small weights (source 4, NTNU thesis 2021; §8).

The thesis keeps "the larger weights plus a set of smaller weights chosen by an optimisation
strategy"; its algorithm is not public, so everything below is **our design** (methods.md §8.2).
The recipe, on the toolbox's :mod:`prune_cli.pruning.retention` (the search space and its
fitness) and :mod:`prune_cli.pruning.search` (the searches):

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
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from torch import nn

from prune_cli.errors import ConfigError
from prune_cli.methods.base import Method, PruneContext, PruneResult
from prune_cli.methods.registry import METHODS
from prune_cli.pruning import prunable_weights
from prune_cli.pruning.masks import SCOPES
from prune_cli.pruning.retention import (
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

#: Above this many genes a warning suggests block genes (methods.md §8.2 "Scaling").
GENOME_WARN = 100_000


@METHODS.register("optimized")
class OptimizedRetention(Method):
    """Keep the large weights plus the small weights a GA / PSO / SA finds useful (§8.2)."""

    name = "optimized"

    def _float(
        self, key: str, default: float, lo: float, hi: float, closed_hi: bool = True
    ) -> float:
        value = self.cfg.get(key, default)
        try:
            v = float(value)
        except (TypeError, ValueError):
            v = float("nan")
        ok = lo <= v <= hi if closed_hi else lo <= v < hi
        if not ok:
            bracket = "]" if closed_hi else ")"
            raise ConfigError(
                f"method.{key} {value!r} is out of range; valid: [{lo}, {hi}{bracket}"
            )
        return v

    def _int(
        self, key: str, default: int, lo: int, section: Mapping[str, Any] | None = None
    ) -> int:
        src = self.cfg if section is None else section
        value = src.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            where = f"method.{key}" if section is None else f"method.<search>.{key}"
            raise ConfigError(f"{where} {value!r} is invalid; valid: an integer >= {lo}")
        return int(value)

    def _section(self, key: str) -> dict[str, Any]:
        value = self.cfg.get(key) or {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"method.{key} must be a mapping, got {value!r}")
        return dict(value)

    def search_config(self, search: str) -> GAConfig | PSOConfig | SAConfig:
        """The dataclass of the chosen search, from ``population``/``generations``/
        ``iterations``/``patience`` and the ``ga``/``pso``/``sa`` sections of the config."""
        patience = self._int("patience", 10, 1)
        if search == "ga":
            sec = self._section("ga")
            cfg = GAConfig(
                population=self._int("population", 20, 2),
                generations=self._int("generations", 30, 0),
                patience=patience,
                elitism=self._int("elitism", 2, 1, sec),
                tournament=self._int("tournament", 3, 1, sec),
                crossover_prob=float(sec.get("crossover_prob", 0.9)),
                mutation_prob=float(sec.get("mutation_prob", 0.2)),
                mutation_rate=float(sec.get("mutation_rate", 0.01)),
            )
            if cfg.elitism >= cfg.population:
                raise ConfigError(
                    f"method.ga.elitism {cfg.elitism} must be below method.population "
                    f"{cfg.population}"
                )
            return cfg
        if search == "pso":
            sec = self._section("pso")
            return PSOConfig(
                particles=self._int("population", 20, 1),
                iterations=self._int("iterations", 30, 0),
                patience=patience,
                inertia=float(sec.get("inertia", 0.7)),
                c1=float(sec.get("c1", 1.5)),
                c2=float(sec.get("c2", 1.5)),
                vmax=float(sec.get("vmax", 4.0)),
            )
        sec = self._section("sa")
        cfg = SAConfig(
            iterations=self._int("iterations", 30, 0),
            patience=patience,
            moves=self._int("moves", 20, 1, sec),
            swaps=self._int("swaps", 1, 1, sec),
            t0=float(sec.get("t0", 1.0)),
            alpha=float(sec.get("alpha", 0.95)),
        )
        if cfg.t0 <= 0 or not 0 < cfg.alpha <= 1:
            raise ConfigError(
                f"method.sa.t0 {cfg.t0} / method.sa.alpha {cfg.alpha} invalid; "
                "valid: t0 > 0, 0 < alpha <= 1"
            )
        return cfg

    def prune(self, model: nn.Module, ctx: PruneContext) -> PruneResult:
        scope = self.option("scope", SCOPES, "global")
        pool = self.option("pool", POOLS, "next")
        gene = self.option("gene", GENES, "weight")
        search = self.option("search", SEARCHES, "ga")
        small_ratio = self._float("small_ratio", 0.1, 0.0, 1.0)
        pool_factor = self._float("pool_factor", 4.0, 1.0, float("inf"))
        fitness_size = self._int("fitness_size", 2048, 1)
        fitness_bs = self._int("fitness_batch_size", 512, 1)
        layers = self.cfg.get("layers") or None
        if layers is not None and (isinstance(layers, str) or not isinstance(layers, Sequence)):
            raise ConfigError(f"method.layers must be a list of name prefixes, got {layers!r}")
        search_cfg = self.search_config(search)
        tic = time.perf_counter()

        weights = prunable_weights(model, bool(self.cfg.get("include_linear", True)))
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
            reuse_prefix=bool(self.cfg.get("reuse_prefix", True)),
            prefix_limit_mb=float(self.cfg.get("prefix_limit_mb", 2048)),
        )
        problem = Problem(layout.gene_segment, layout.seed, fitness)
        rng = np.random.default_rng(self.seed)
        progress = bool(self.cfg.get("progress", True))
        try:
            result = run_search(search, problem, search_cfg, rng, progress)
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
        magnitude_model = (
            copy.deepcopy(model) if bool(self.cfg.get("finetune_baseline", False)) else None
        )
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
