"""Cardinality-constrained subset search: GA, binary PSO and simulated annealing
(docs/methods.md §8.2).

These algorithms know nothing about networks: they search bool *genomes* ``x`` of length ``n``
(``True`` = gene selected) under a per-segment cardinality constraint, maximising a batched
fitness function. The ``optimized`` method maps genes to small weights (or blocks of them);
tests drive the same code with toy fitness functions.

Conventions:

- ``segments``: int array ``(n,)``, the segment of each gene (one segment for ``scope=global``,
  one per layer for ``scope=layerwise``). Every individual selects exactly ``count[s]`` genes of
  segment ``s``, where ``count`` is taken from the *seed* individual (the pure-magnitude choice
  S₀). Every operator below preserves these counts.
- ``fitness(batch)``: ``batch`` is a bool array ``(B, n)``; it returns ``(B,)`` or ``(B, m)``
  floats, **larger is better**, compared lexicographically (the ``optimized`` method returns
  ``(-cross_entropy, top1)``: accuracy breaks ties of the loss). Searches call it with whole
  populations so that the caller can batch the work; identical genomes are evaluated once.
- Randomness comes only from the ``numpy.random.Generator`` passed in, so a fixed seed (and a
  deterministic fitness) gives an identical result.
- Every search starts from the seed, keeps the best genome ever evaluated, and returns it, so its
  result is never worse than the seed; ``history[g]`` is the best fitness after generation ``g``
  (``history[0]``: the initial population), hence non-decreasing.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

log = logging.getLogger("prune_cli")

Fitness = Callable[[np.ndarray], np.ndarray]
Key = tuple[float, ...]


@dataclass
class GAConfig:
    """Genetic algorithm (docs/methods.md §8.2): ``population`` P, ``generations`` G, ``elitism``
    best individuals copied unchanged, tournament selection of size ``tournament``, cardinality-
    preserving uniform crossover with probability ``crossover_prob``, swap mutation with probability
    ``mutation_prob`` of ``max(1, round(mutation_rate * K))`` swaps (K = selected genes), and a stop
    after ``patience`` generations without improvement. The values come from ``method.*`` of
    ``optimized`` (``configs/method/optimized.yaml`` has the defaults)."""

    population: int
    generations: int
    elitism: int
    tournament: int
    crossover_prob: float
    mutation_prob: float
    mutation_rate: float
    patience: int


@dataclass
class PSOConfig:
    """Binary PSO (docs/methods.md §8.2): ``v <- w v + c1 r1 (pbest - x) + c2 r2 (gbest - x)``,
    clipped to ``[-vmax, vmax]``; bits are sampled with probability ``sigmoid(v)`` and projected
    onto the cardinality constraint. ``particles`` swarm size, ``iterations`` swarm updates."""

    particles: int
    iterations: int
    inertia: float
    c1: float
    c2: float
    vmax: float
    patience: int


@dataclass
class SAConfig:
    """Simulated annealing (docs/methods.md §8.2): swap neighbourhood, temperature ``t0`` cooled
    geometrically by ``alpha`` after every ``moves`` proposals, for ``iterations`` temperatures.

    Temperatures are in units of the mean ``|ΔF|`` of ``moves`` random moves from the seed
    (measured first, in one batch), so that ``t0 = 1`` accepts an average worsening move with
    probability ``1/e`` whatever the scale of the fitness.
    """

    iterations: int
    moves: int
    t0: float
    alpha: float
    swaps: int
    patience: int


@dataclass
class SearchResult:
    """The best genome found and how the search got there."""

    best: np.ndarray
    best_fitness: Key
    seed_fitness: Key
    history: list[Key] = field(default_factory=list)
    evaluations: int = 0
    generations: int = 0
    seconds_per_generation: list[float] = field(default_factory=list)

    @property
    def improved(self) -> bool:
        return self.best_fitness > self.seed_fitness


class Problem:
    """A genome space with per-segment cardinalities, a batched fitness and its memo.

    ``seed``: the pure-magnitude genome; its per-segment counts are the constraint.
    """

    def __init__(self, segments: np.ndarray, seed: np.ndarray, fitness: Fitness) -> None:
        self.segments = np.asarray(segments, dtype=np.int64)
        self.seed = np.asarray(seed, dtype=bool)
        if self.segments.shape != self.seed.shape or self.seed.ndim != 1:
            raise ValueError("segments and seed must be 1-D arrays of the same length")
        self.fitness = fitness
        n_seg = int(self.segments.max()) + 1 if self.segments.size else 0
        self.index = [np.flatnonzero(self.segments == s) for s in range(n_seg)]
        self.count = np.array([int(self.seed[i].sum()) for i in self.index], dtype=np.int64)
        self.total = int(self.count.sum())
        self.evaluations = 0
        self._memo: dict[bytes, Key] = {}

    @property
    def n(self) -> int:
        return int(self.seed.size)

    def trivial(self) -> bool:
        """No alternative exists: every segment selects none or all of its genes."""
        return all(k == 0 or k == len(i) for k, i in zip(self.count, self.index))

    def evaluate(self, batch: np.ndarray) -> list[Key]:
        """Fitness keys of the rows of ``batch``; each distinct genome is evaluated once."""
        batch = np.atleast_2d(batch)
        keys = [np.packbits(row).tobytes() for row in batch]
        todo: dict[bytes, int] = {}
        for k, row in zip(keys, range(len(batch))):
            if k not in self._memo and k not in todo:
                todo[k] = row
        if todo:
            rows = list(todo.values())
            values = np.asarray(self.fitness(batch[rows]), dtype=np.float64)
            values = values.reshape(len(rows), -1)
            self.evaluations += len(rows)
            for k, v in zip(todo, values):
                self._memo[k] = tuple(float(a) for a in v)
        return [self._memo[k] for k in keys]

    def counts(self, x: np.ndarray) -> np.ndarray:
        """Selected genes per segment of one genome."""
        return np.array([int(x[i].sum()) for i in self.index], dtype=np.int64)


# ---------------------------------------------------------------------------- operators
def random_individual(problem: Problem, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random genome with ``count[s]`` genes selected in every segment ``s``."""
    x = np.zeros(problem.n, dtype=bool)
    for idx, k in zip(problem.index, problem.count):
        x[rng.choice(idx, size=int(k), replace=False)] = True
    return x


def crossover(
    problem: Problem, a: np.ndarray, b: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Cardinality-preserving uniform crossover (docs/methods.md §8.2).

    Per segment the child keeps every gene both parents select (the intersection) and fills the
    remaining ``count - |A ∩ B|`` slots with a uniformly random subset of the genes exactly one
    parent selects (``|A △ B| = 2 (count - |A ∩ B|)``, so there are always enough).
    """
    child = a & b
    diff = a ^ b
    for idx, k in zip(problem.index, problem.count):
        need = int(k) - int(child[idx].sum())
        if need > 0:
            child[rng.choice(idx[diff[idx]], size=need, replace=False)] = True
    return child


def mutate(problem: Problem, x: np.ndarray, swaps: int, rng: np.random.Generator) -> np.ndarray:
    """Swap mutation: ``swaps`` selected genes trade places with unselected genes of their segment.

    The selected genes are drawn uniformly among those whose segment has an unselected gene; a
    segment receives at most as many swaps as it has unselected genes. Counts are preserved.
    """
    y = x.copy()
    movable = np.zeros(problem.n, dtype=bool)
    for idx, k in zip(problem.index, problem.count):
        if 0 < k < len(idx):
            movable[idx] = True
    out_pool = np.flatnonzero(y & movable)
    if out_pool.size == 0 or swaps <= 0:
        return y
    out = rng.choice(out_pool, size=min(int(swaps), out_pool.size), replace=False)
    per_segment = np.bincount(problem.segments[out], minlength=len(problem.index))
    for s in np.flatnonzero(per_segment):
        idx = problem.index[s]
        free = idx[~y[idx]]
        m = min(int(per_segment[s]), free.size)
        leaving = out[problem.segments[out] == s][:m]
        entering = rng.choice(free, size=m, replace=False)
        y[leaving] = False
        y[entering] = True
    return y


def project(problem: Problem, keys: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rows of ``keys`` ``(B, n)`` -> genomes selecting the ``count[s]`` largest keys per segment.

    Exact ties are broken at random (a jitter far below any meaningful key difference), so that
    equal keys do not favour low gene indices.
    """
    keys = np.atleast_2d(keys) + rng.random(np.atleast_2d(keys).shape) * 1e-9
    out = np.zeros(keys.shape, dtype=bool)
    rows = np.arange(keys.shape[0])[:, None]
    for idx, k in zip(problem.index, problem.count):
        if k == 0:
            continue
        top = np.argpartition(-keys[:, idx], int(k) - 1, axis=1)[:, : int(k)]
        out[rows, idx[top]] = True
    return out


# ---------------------------------------------------------------------------- searches
class _Progress:
    """tqdm bar over generations showing the best fitness, plus a log line per generation."""

    def __init__(self, name: str, total: int, enabled: bool) -> None:
        self.name = name
        self.bar = tqdm(total=total, desc=f"{name} search", disable=not enabled, leave=False)
        self.tic = time.perf_counter()
        self.seconds: list[float] = []

    def step(self, generation: int, best: Key, evaluations: int) -> None:
        now = time.perf_counter()
        self.seconds.append(now - self.tic)
        self.tic = now
        self.bar.update(1)
        self.bar.set_postfix(best=f"{best[0]:.5g}", evals=evaluations)
        log.info(
            "%s generation %d: best fitness %.6g, %d evaluations, %.3f s",
            self.name,
            generation,
            best[0],
            evaluations,
            self.seconds[-1],
        )

    def close(self) -> None:
        self.bar.close()


class _Best:
    """The best genome seen so far, the best fitness after every generation (``history``) and
    the generations since the last improvement, shared by the three searches.

    Ties keep the genome seen first (the lower index within one offer, the earlier offer across
    offers), so the seed wins over equally fit genomes.
    """

    def __init__(self, genomes: np.ndarray, keys: Sequence[Key]) -> None:
        i = max(range(len(keys)), key=lambda j: (keys[j], -j))
        self.genome, self.key = genomes[i].copy(), keys[i]
        self.history = [self.key]
        self.stale = 0
        self._improved = False

    def offer(self, genomes: np.ndarray, keys: Sequence[Key]) -> None:
        i = max(range(len(keys)), key=lambda j: (keys[j], -j))
        if keys[i] > self.key:
            self.genome, self.key, self._improved = genomes[i].copy(), keys[i], True

    def end_generation(
        self, generation: int, p: _Progress, evaluations: int, patience: int
    ) -> bool:
        """Record the generation; ``True`` when ``patience`` generations passed without gain."""
        self.stale = 0 if self._improved else self.stale + 1
        self._improved = False
        self.history.append(self.key)
        p.step(generation, self.key, evaluations)
        return self.stale >= patience


def _finish(problem: Problem, best: _Best, seed_key: Key, p: _Progress) -> SearchResult:
    p.close()
    return SearchResult(
        best=best.genome.copy(),
        best_fitness=best.key,
        seed_fitness=seed_key,
        history=best.history,
        evaluations=problem.evaluations,
        generations=len(best.history) - 1,
        seconds_per_generation=p.seconds,
    )


def _trivial_result(problem: Problem) -> SearchResult:
    """Nothing to search: the seed is the only feasible genome (it is evaluated, for reporting)."""
    key = problem.evaluate(problem.seed[None])[0]
    return SearchResult(problem.seed.copy(), key, key, [key], problem.evaluations, 0, [])


def _tournament(fit: list[Key], size: int, rng: np.random.Generator) -> int:
    """Index of the fittest of ``size`` distinct random entrants (ties: the lower index)."""
    entrants = rng.choice(len(fit), size=min(size, len(fit)), replace=False)
    return int(max(entrants, key=lambda i: (fit[i], -i)))


def genetic_search(
    problem: Problem, cfg: GAConfig, rng: np.random.Generator, progress: bool = True
) -> SearchResult:
    """The genetic algorithm of docs/methods.md §8.2.

    The initial population is the seed plus ``P - 1`` random genomes. Each generation keeps the
    ``elitism`` best unchanged (so the best fitness never decreases), then fills the population
    with children: two tournament winners, crossover with probability ``crossover_prob`` (else
    a copy of the first), then swap mutation with probability ``mutation_prob`` (always when the
    child equals its first parent).
    """
    if cfg.population < 2 or cfg.elitism < 1 or cfg.elitism >= cfg.population:
        raise ValueError("the GA needs population >= 2 and 1 <= elitism < population")
    if problem.trivial():
        return _trivial_result(problem)
    swaps = max(1, round(cfg.mutation_rate * problem.total))
    pop = np.stack(
        [problem.seed] + [random_individual(problem, rng) for _ in range(cfg.population - 1)]
    )
    fit = problem.evaluate(pop)
    seed_key = fit[0]
    p = _Progress("ga", cfg.generations, progress)
    best = _Best(pop, fit)
    for g in range(1, cfg.generations + 1):
        # Stable ranking: on equal fitness the earlier individual (the seed first) wins.
        order = sorted(range(len(fit)), key=lambda i: fit[i], reverse=True)
        children = [pop[i].copy() for i in order[: cfg.elitism]]
        child_fit = [fit[i] for i in order[: cfg.elitism]]

        fresh = []
        while len(children) + len(fresh) < cfg.population:
            a, b = (
                pop[_tournament(fit, cfg.tournament, rng)],
                pop[_tournament(fit, cfg.tournament, rng)],
            )
            child = crossover(problem, a, b, rng) if rng.random() < cfg.crossover_prob else a.copy()
            # A child identical to its first parent (no crossover, or identical parents) is
            # always mutated: evaluating a known genome again would waste the slot.
            if rng.random() < cfg.mutation_prob or np.array_equal(child, a):
                child = mutate(problem, child, swaps, rng)
            fresh.append(child)
        pop = np.stack(children + fresh)
        fit = child_fit + problem.evaluate(np.stack(fresh))
        best.offer(pop, fit)
        if best.end_generation(g, p, problem.evaluations, cfg.patience):
            break
    return _finish(problem, best, seed_key, p)


def binary_pso(
    problem: Problem, cfg: PSOConfig, rng: np.random.Generator, progress: bool = True
) -> SearchResult:
    """Binary particle swarm optimisation (docs/methods.md §8.2).

    Particle 0 starts at the seed, the others at random genomes; velocities start at 0. After
    each velocity update a particle samples ``b ~ Bernoulli(sigmoid(v))`` and is projected onto
    the constraint by keeping the ``count`` genes with the largest ``b + sigmoid(v)`` per segment:
    sampled genes first, the most probable among them when too many were sampled, the most
    probable unsampled ones when too few.
    """
    if cfg.particles < 1:
        raise ValueError("binary PSO needs at least one particle")
    if problem.trivial():
        return _trivial_result(problem)
    x = np.stack(
        [problem.seed] + [random_individual(problem, rng) for _ in range(cfg.particles - 1)]
    )
    v = np.zeros(x.shape, dtype=np.float64)
    fit = problem.evaluate(x)
    seed_key = fit[0]
    pbest, pbest_fit = x.copy(), list(fit)
    best = _Best(x, fit)
    p = _Progress("pso", cfg.iterations, progress)
    for it in range(1, cfg.iterations + 1):
        xf = x.astype(np.float64)
        r1, r2 = rng.random(x.shape), rng.random(x.shape)
        v = cfg.inertia * v + cfg.c1 * r1 * (pbest - xf) + cfg.c2 * r2 * (best.genome[None] - xf)
        np.clip(v, -cfg.vmax, cfg.vmax, out=v)
        prob = 1.0 / (1.0 + np.exp(-v))
        sampled = rng.random(x.shape) < prob
        x = project(problem, sampled + prob, rng)
        fit = problem.evaluate(x)
        for i, f in enumerate(fit):
            if f > pbest_fit[i]:
                pbest[i], pbest_fit[i] = x[i].copy(), f
        best.offer(x, fit)
        if best.end_generation(it, p, problem.evaluations, cfg.patience):
            break
    return _finish(problem, best, seed_key, p)


def simulated_annealing(
    problem: Problem, cfg: SAConfig, rng: np.random.Generator, progress: bool = True
) -> SearchResult:
    """Simulated annealing over swap moves (docs/methods.md §8.2), starting at the seed.

    A move swaps ``swaps`` selected genes with unselected ones of the same segment; it is accepted
    when ``ΔF >= 0`` or with probability ``exp(ΔF / (T · scale))`` (``ΔF`` on the first fitness
    component, ``scale`` as in :class:`SAConfig`). A "generation" is one temperature level.
    """
    if cfg.moves < 1 or not 0.0 < cfg.alpha <= 1.0 or cfg.t0 <= 0.0:
        raise ValueError("SA needs moves >= 1, 0 < alpha <= 1 and t0 > 0")
    if problem.trivial():
        return _trivial_result(problem)
    cur = problem.seed.copy()
    cur_key = seed_key = problem.evaluate(cur[None])[0]
    # Calibrate the temperature scale on one batch of neighbours of the seed.
    probes = np.stack([mutate(problem, cur, cfg.swaps, rng) for _ in range(cfg.moves)])
    probe_fit = problem.evaluate(probes)
    deltas = np.array([abs(f[0] - seed_key[0]) for f in probe_fit])
    scale = float(deltas[deltas > 0].mean()) if (deltas > 0).any() else 1.0
    # The seed first, so a probe must be strictly fitter to become the best.
    best = _Best(np.concatenate([cur[None], probes]), [seed_key, *probe_fit])
    temp = cfg.t0
    p = _Progress("sa", cfg.iterations, progress)
    for level in range(1, cfg.iterations + 1):
        for _ in range(cfg.moves):
            cand = mutate(problem, cur, cfg.swaps, rng)
            key = problem.evaluate(cand[None])[0]
            delta = key[0] - cur_key[0]
            if key >= cur_key or rng.random() < math.exp(delta / (temp * scale)):
                cur, cur_key = cand, key
            best.offer(cand[None], [key])
        temp *= cfg.alpha
        if best.end_generation(level, p, problem.evaluations, cfg.patience):
            break
    return _finish(problem, best, seed_key, p)


SEARCHES = ("ga", "pso", "sa")


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
