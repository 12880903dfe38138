"""``optimized`` (docs/methods.md §8.2): the cardinality-constrained searches and the method.

Search-level tests drive GA / PSO / SA with toy fitness functions; method-level tests use the
small ``TinyNet`` of conftest.py and tiny in-memory datasets; one end-to-end run goes through the
CLI on shrunken ``shapes`` data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TinyNet
from test_cli import FAST, prune_run
from torch import nn

from prune_cli.data import build_dataset
from prune_cli.data.base import DatasetBundle, Split
from prune_cli.engine import load_checkpoint
from prune_cli.errors import ConfigError
from prune_cli.methods import PruneContext, build_method
from prune_cli.pruning import masks_from_scores, prunable_weights
from prune_cli.pruning.retention import build_layout, fitness_batches
from prune_cli.pruning.search import (
    GAConfig,
    Problem,
    PSOConfig,
    SAConfig,
    binary_pso,
    crossover,
    genetic_search,
    mutate,
    project,
    random_individual,
    simulated_annealing,
)


def search_config(search: str, **options: Any) -> GAConfig | PSOConfig | SAConfig:
    """The settings of ``search`` as ``method=optimized`` builds them from its options (the
    keys not given: configs/method/optimized.yaml)."""
    return build_method({"name": "optimized", "search": search, **options}, 0.5).search_config()


CPU = torch.device("cpu")


# ---------------------------------------------------------------------------- toy problems
def linear_problem(
    n: int = 60, k: int = 6, segments: int = 1, seed: int = 0
) -> tuple[Problem, np.ndarray]:
    """Fitness = sum of per-gene values (optimum: the top-k per segment); the seed is poor."""
    rng = np.random.default_rng(seed)
    values = rng.normal(size=n)
    segs = np.arange(n) % segments
    start = np.zeros(n, dtype=bool)
    for s in range(segments):
        idx = np.flatnonzero(segs == s)
        start[idx[np.argsort(values[idx])[:k]]] = True  # the worst k genes of each segment
    return Problem(segs, start, lambda b: (b * values).sum(axis=1)), values


def counts(problem: Problem, x: np.ndarray) -> list[int]:
    return problem.counts(x).tolist()


def test_operators_preserve_the_count_of_every_segment() -> None:
    problem, _ = linear_problem(n=50, k=4, segments=3)
    rng = np.random.default_rng(1)
    want = problem.count.tolist()
    assert want == [4, 4, 4]
    for _ in range(200):
        a, b = random_individual(problem, rng), random_individual(problem, rng)
        assert counts(problem, a) == want
        child = crossover(problem, a, b, rng)
        assert counts(problem, child) == want
        assert not (child & ~(a | b)).any()  # child ⊆ A ∪ B ...
        assert not ((a & b) & ~child).any()  # ... and ⊇ A ∩ B
        swaps = int(rng.integers(1, 15))
        m = mutate(problem, child, swaps, rng)
        assert counts(problem, m) == want
        assert int((m & ~child).sum()) == min(swaps, 12)  # every swap moves one gene
    projected = project(problem, rng.random((7, problem.n)), rng)
    assert all(counts(problem, row) == want for row in projected)


def test_project_keeps_the_largest_keys_per_segment() -> None:
    problem = Problem(np.array([0, 0, 0, 1, 1]), np.array([1, 1, 0, 1, 0], bool), lambda b: b[:, 0])
    keys = np.array([[0.1, 0.9, 0.5, 0.2, 0.3]])
    assert project(problem, keys, np.random.default_rng(0))[0].tolist() == [
        False, True, True, False, True]  # fmt: skip


@pytest.mark.parametrize("search", ["ga", "pso", "sa"])
def test_search_improves_monotonically_from_the_seed(search: str) -> None:
    problem, values = linear_problem(n=40, k=5, segments=2)
    rng = np.random.default_rng(0)
    if search == "ga":
        cfg = search_config("ga", population=12, generations=15, patience=10)
        result = genetic_search(problem, cfg, rng, False)
    elif search == "pso":
        cfg = search_config("pso", population=12, iterations=15, patience=10)
        result = binary_pso(problem, cfg, rng, False)
    else:
        cfg = search_config("sa", iterations=15, patience=10, sa={"moves": 10})
        result = simulated_annealing(problem, cfg, rng, False)
    assert counts(problem, result.best) == problem.count.tolist()
    seed_value = float((values * problem.seed).sum())
    assert result.seed_fitness == (pytest.approx(seed_value),)
    assert result.best_fitness > result.seed_fitness  # the seed is the worst genome here
    assert result.best_fitness[0] == pytest.approx(float((values * result.best).sum()))
    h = [f[0] for f in result.history]
    assert h == sorted(h) and h[0] >= seed_value and h[-1] == result.best_fitness[0]


@pytest.mark.parametrize("search", ["ga", "pso", "sa"])
def test_search_never_returns_worse_than_an_optimal_seed(search: str) -> None:
    values = np.arange(20, dtype=float)
    seed = np.zeros(20, dtype=bool)
    seed[-4:] = True  # already the optimum
    problem = Problem(np.zeros(20, dtype=np.int64), seed, lambda b: (b * values).sum(axis=1))
    rng = np.random.default_rng(3)
    run = {"ga": genetic_search, "pso": binary_pso, "sa": simulated_annealing}[search]
    sizes = {"generations": 5} if search == "ga" else {"iterations": 5}
    cfg = search_config(search, population=6, patience=10, sa={"moves": 5}, **sizes)
    result = run(problem, cfg, rng, False)
    assert result.best_fitness == (16.0 + 17 + 18 + 19,)
    assert np.array_equal(result.best, seed)


def test_ga_is_deterministic_for_a_fixed_seed_and_stops_on_patience() -> None:
    def run(seed: int) -> np.ndarray:
        problem, _ = linear_problem(n=60, k=6)
        cfg = search_config("ga", population=8, generations=6, patience=10)
        return genetic_search(problem, cfg, np.random.default_rng(seed), False).best

    assert np.array_equal(run(5), run(5))
    # The optimum is the seed: no improvement ever, so it stops after `patience` generations.
    values = np.arange(10, dtype=float)
    seed = values >= 7
    problem = Problem(np.zeros(10, dtype=np.int64), seed, lambda b: (b * values).sum(axis=1))
    cfg = search_config("ga", population=4, generations=50, patience=3, ga={"elitism": 2})
    result = genetic_search(problem, cfg, np.random.default_rng(0), False)
    assert result.generations == 3


def test_identical_genomes_are_evaluated_once() -> None:
    calls = []
    problem = Problem(
        np.zeros(4, dtype=np.int64),
        np.array([1, 1, 0, 0], bool),
        lambda b: calls.append(len(b)) or b[:, 0].astype(float),
    )
    x = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [1, 1, 0, 0]], bool)
    assert problem.evaluate(x) == [(1.0,), (0.0,), (1.0,)]
    assert problem.evaluate(x[:1]) == [(1.0,)]
    assert calls == [2] and problem.evaluations == 2


def test_recovery_linear_regression_search() -> None:
    """docs/methods.md §8.2 synthetic recovery, at the search level: y = X w*, fitness = -MSE."""
    g = torch.Generator().manual_seed(0)
    w_star = torch.tensor([3.0, -2.5, 2.0, 0.05, 0.4, -0.35, 0.3, 0.01])
    scale = torch.tensor([1.0, 1, 1, 40, 1, 1, 1, 1])  # feature 3: small weight, large feature
    x = torch.randn(400, 8, generator=g) * scale
    y = x @ w_star
    # N = 8, ratio 0.5: K = 4; small_ratio 0.25: K_s = 1, K_l = 3; pool = the other 5 weights.
    layout = build_layout({"w": w_star}, 0.5, 0.25, pool="all_rest")
    assert (layout.counts["K"], layout.counts["K_l"], layout.counts["K_s"]) == (4, 3, 1)
    assert sorted(layout.pool.tolist()) == [3, 4, 5, 6, 7]

    def fitness(genomes: np.ndarray) -> np.ndarray:
        out = []
        for sel in layout.decode(genomes):
            w = w_star * layout.mask(sel).float()
            out.append(-float(((x @ w - y) ** 2).mean()))
        return np.array(out)

    problem = Problem(layout.gene_segment, layout.seed, fitness)
    cfg = search_config("ga", population=6, generations=5, patience=10)
    result = genetic_search(problem, cfg, np.random.default_rng(0), False)
    magnitude = layout.mask(layout.decode(layout.seed)[0])
    found = layout.mask(layout.decode(result.best)[0])
    assert magnitude.tolist() == [True, True, True, False, True, False, False, False]
    assert found.tolist() == [True, True, True, True, False, False, False, False]
    assert result.best_fitness > result.seed_fitness


# ---------------------------------------------------------------------------- the method
@pytest.fixture(scope="module")
def shapes() -> DatasetBundle:
    return build_dataset({"name": "shapes", "train_size": 96, "test_size": 64, "seed": 0})


def ctx_for(data: DatasetBundle) -> PruneContext:
    return PruneContext(data=data, device=CPU, seed=0, input_size=(3, 32, 32))


def prune_tiny(data: DatasetBundle, ratio: float = 0.6, **cfg: object) -> tuple[nn.Module, object]:
    torch.manual_seed(0)
    model = TinyNet()
    options = {"population": 4, "generations": 2, "iterations": 2, "fitness_size": 64}
    options["include_linear"] = True  # the tests below search the linear layer too
    options.update({"progress": False, **cfg})
    method = build_method({"name": "optimized", **options}, ratio)
    return model, method.prune(model, ctx_for(data))


@pytest.mark.parametrize(
    "cfg",
    [
        {},
        {"scope": "layerwise"},
        {"gene": "row"},
        {"gene": "filter", "pool": "all_rest"},
        {"search": "pso", "small_ratio": 0.3},
        {"search": "sa", "sa": {"moves": 3}},
        {"layers": ["conv2", "fc"]},
    ],
)
def test_mask_keeps_exactly_the_budget_and_the_large_set(shapes: DatasetBundle, cfg: dict) -> None:
    torch.manual_seed(0)
    dense = {k: v.clone() for k, v in TinyNet().state_dict().items()}
    model, result = prune_tiny(shapes, **cfg)
    weights = prunable_weights(model, include_linear=True)
    assert set(result.masks) == set(weights) == {"conv1.weight", "conv2.weight", "fc.weight"}
    small = float(cfg.get("small_ratio", 0.1))
    layerwise = cfg.get("scope") == "layerwise"
    groups = [[n] for n in weights] if layerwise else [list(weights)]
    for names in groups:
        n = sum(dense[k].numel() for k in names)
        keep = n - int(0.6 * n)
        k_large = keep - round(small * keep)
        m = torch.cat([result.masks[k].reshape(-1) for k in names])
        assert int(m.sum()) == keep  # |M| = K exactly
        flat = torch.cat([dense[k].abs().reshape(-1) for k in names])
        large = torch.argsort(flat, descending=True, stable=True)[:k_large]
        assert m[large].all()  # L ⊆ M
    for k, p in weights.items():  # the model holds W ⊙ M
        assert torch.equal(p.detach(), dense[k] * result.masks[k])
    assert result.info["K"] == sum(int(m.sum()) for m in result.masks.values())
    # no held-out split in this bundle: fitness on training images, and the run says so
    assert result.info["fitness_split"] == "train"
    assert "fitness measured on training images" in result.info["warnings"][0]


@pytest.mark.parametrize("scope", ["global", "layerwise"])
@pytest.mark.parametrize("gene", ["weight", "kernel"])
def test_small_ratio_zero_is_magnitude_bit_for_bit(
    shapes: DatasetBundle, scope: str, gene: str
) -> None:
    torch.manual_seed(0)
    dense = TinyNet()
    scores = {k: w.detach().abs() for k, w in prunable_weights(dense, True).items()}
    expected = masks_from_scores(scores, 0.7, scope, "exact")
    _, result = prune_tiny(shapes, ratio=0.7, small_ratio=0.0, scope=scope, gene=gene)
    for k in expected:
        assert torch.equal(result.masks[k], expected[k]), k
    assert result.info["K_s"] == 0 and result.info["weights_changed"] == 0


def test_block_genes_seed_decodes_to_the_magnitude_choice() -> None:
    torch.manual_seed(1)
    w = {"a": torch.randn(6, 4, 3, 3), "b": torch.randn(8, 6, 3, 3)}
    for gene in ("row", "kernel", "filter"):
        layout = build_layout(w, 0.8, 0.3, gene=gene, pool_factor=3)
        k_s = layout.counts["K_s"]
        seed_sel = layout.decode(layout.seed)[0]
        assert seed_sel.sum() == k_s
        # S₀ = the first K_s pool weights by rank (the pool is in rank order)
        assert seed_sel[:k_s].all() and not seed_sel[k_s:].any()
        rng = np.random.default_rng(0)
        problem = Problem(layout.gene_segment, layout.seed, lambda b: b[:, 0])
        for _ in range(20):
            assert layout.decode(random_individual(problem, rng))[0].sum() == k_s
        assert layout.counts["genes"] < layout.counts["pool"]


def test_fixed_seed_gives_an_identical_mask(shapes: DatasetBundle) -> None:
    _, a = prune_tiny(shapes, small_ratio=0.3)
    _, b = prune_tiny(shapes, small_ratio=0.3)
    assert all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)
    assert a.info["history"] == b.info["history"]


def test_reported_fitness_is_the_masked_models_loss(shapes: DatasetBundle) -> None:
    """The in-place fitness (with and without prefix replay) equals a plain evaluation: exactly
    in fp32, within bf16's rounding in bf16 (the default where the CPU does bf16 natively)."""
    batches, _ = fitness_batches(shapes, 64, 64, CPU, seed=0)
    for layers, replay, precision in [
        (None, True, "fp32"),
        (None, False, "fp32"),
        (["conv2", "fc"], True, "fp32"),
        (["conv2", "fc"], False, "fp32"),
        (["conv2", "fc"], True, "bf16"),
    ]:
        model, result = prune_tiny(
            shapes,
            small_ratio=0.3,
            layers=layers,
            reuse_prefix=replay,
            fitness_precision=precision,
        )
        model.eval()
        with torch.no_grad():
            loss = sum(F.cross_entropy(model(x), y, reduction="sum") for x, y in batches) / 64
        info = result.info
        assert info["fitness_precision"]["used"] == precision
        tolerance = 1e-5 if precision == "fp32" else 2e-2
        assert info["optimized"]["fitness_loss"] == pytest.approx(float(loss), rel=tolerance)
        assert info["fitness_loss_gain"] >= 0
        assert info["history"] == sorted(info["history"], reverse=True)
        assert info["history"][-1] == pytest.approx(info["optimized"]["fitness_loss"])
        if layers and replay:
            assert info["prefix_reuse"].startswith("replaying")
        elif replay:
            assert info["prefix_reuse"].startswith("off")


def test_fitness_images_come_from_val_when_present(shapes: DatasetBundle) -> None:
    import dataclasses

    train = shapes.splits["train"]
    with_val = dataclasses.replace(
        shapes,
        splits={
            **shapes.splits,
            "val": train.subset(torch.arange(10)),
            "test": shapes.splits["test"],
        },
    )
    batches, source = fitness_batches(with_val, 2048, 4, CPU, seed=0)
    assert source == "val" and sum(len(y) for _, y in batches) == 10
    batches, source = fitness_batches(shapes, 50, 64, CPU, seed=0)
    assert source == "train" and sum(len(y) for _, y in batches) == 50
    again, _ = fitness_batches(shapes, 50, 64, CPU, seed=0)
    assert torch.equal(batches[0][0], again[0][0])


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"search": "de"}, "unknown method.search 'de' for method 'optimized'; choose one of: ga"),
        ({"gene": "tile"}, "choose one of: weight, row, kernel, filter"),
        ({"pool": "near"}, "choose one of: next, all_rest"),
        ({"small_ratio": 1.5}, "method.small_ratio 1.5 is out of range"),
        ({"population": 4, "ga": {"elitism": 4}}, "method.ga.elitism 4 must be below"),
        ({"layers": ["nothing"]}, "matches no prunable weight"),
    ],
)
def test_bad_options_are_one_line_errors(shapes: DatasetBundle, cfg: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        prune_tiny(shapes, **cfg)
    assert message in str(err.value) and "\n" not in str(err.value)


def recovery_data() -> DatasetBundle:
    """8 features as 1x1x8 images; feature 3 varies over 0..255, the others over 115..140."""
    g = torch.Generator().manual_seed(0)

    def split(n: int) -> Split:
        pix = torch.randint(115, 141, (n, 1, 1, 8), generator=g)
        pix[..., 3] = torch.randint(0, 256, (n, 1, 1), generator=g)
        x = (pix.float() / 255 - 0.5) / 0.1
        labels = ((x.reshape(n, 8) @ RECOVERY_W) <= 0).long()  # class 0 when w*·x > 0
        return Split(labels=labels, images=pix.to(torch.uint8))

    return DatasetBundle(
        name="recovery", num_classes=2, in_channels=1, image_size=8, mean=(0.5,), std=(0.1,),
        splits={"train": split(256), "test": split(128)}, class_names=["pos", "neg"],
    )  # fmt: skip


# w*: three large weights; feature 3's small weight matters (its feature is ~10x larger) more
# than the three distractors just above it in magnitude.
RECOVERY_W = torch.tensor([2.0, -1.8, 1.5, 0.06, 0.1, -0.09, 0.08, 0.02])


def test_recovery_finds_the_small_weight_that_matters() -> None:
    """docs/methods.md §8.2 synthetic recovery, through the method: K_s = 1, pool = all_rest."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 2, bias=False))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].weight[0] = 3 * RECOVERY_W  # logits (3 w*·x, 0)
    data = recovery_data()
    # N = 16 (the second row is zero), ratio 0.75: K = 4; small_ratio 0.25: K_s = 1.
    method = build_method(
        {"name": "optimized", "small_ratio": 0.25, "pool": "all_rest", "population": 8,
         "generations": 6, "fitness_size": 256, "progress": False, "include_linear": True},
        0.75,
    )  # fmt: skip
    result = method.prune(model, PruneContext(data=data, device=CPU, seed=0, input_size=(1, 1, 8)))
    info = result.info
    assert (info["K"], info["K_l"], info["K_s"], info["pool"]) == (4, 3, 1, 13)
    assert result.masks["1.weight"][0].tolist() == [True, True, True, True] + [False] * 4
    assert info["weights_changed"] == 1
    assert info["optimized"]["fitness_loss"] < info["magnitude"]["fitness_loss"]
    assert info["optimized"]["test_loss"] < info["magnitude"]["test_loss"]


def test_held_out_fitness_images_are_not_training_images() -> None:
    """What the pipeline does for fitness_split=holdout (dataset.val_size = fitness_size on a
    dataset without a val split): the fitness images are the val split, disjoint from train."""
    data = build_dataset(
        {"name": "shapes", "train_size": 96, "test_size": 64, "seed": 0, "val_size": 32}
    )
    batches, source = fitness_batches(data, 2048, 16, CPU, seed=0)
    assert source == "val" and sum(len(y) for _, y in batches) == 32
    train = {bytes(img.numpy()) for img in data.splits["train"].images}
    val = [bytes(img.numpy()) for img in data.splits["val"].images]
    assert len(train) == 64 and not any(v in train for v in val)
    # in-sample on purpose: the training images
    _, source = fitness_batches(data, 2048, 16, CPU, seed=0, in_sample=True)
    assert source == "train"


def test_optimized_and_magnitude_prune_the_same_pool_by_default() -> None:
    opt = build_method({"name": "optimized"}, 0.5)
    mag = build_method({"name": "magnitude"}, 0.5)
    assert opt.opts.include_linear is mag.opts.include_linear is False
    assert opt.holdout_size() == opt.opts.fitness_size == 512
    assert build_method({"name": "optimized", "fitness_split": "train"}, 0.5).holdout_size() == 0


# slow: a full CLI run with the search; fitness split and comparison are tested in-process
@pytest.mark.slow
def test_end_to_end_run_reports_the_magnitude_comparison(tmp_path: Path) -> None:
    # FAST, shrunk further: this run fine-tunes twice (the magnitude baseline too).
    proc = prune_run(
        *FAST,
        "dataset.train_size=128",
        "dataset.test_size=64",
        "method=optimized",
        "method.population=3",
        "method.generations=1",
        "method.fitness_size=32",
        "method.finetune_baseline=true",
        "hydra.run.dir=run",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["status"] == "completed" and m["method"] == "optimized"
    info = m["prune_info"]
    # fitness on 32 images held out of training (carved from train before training: shapes
    # has no val split), never on the images the model was trained on
    assert m["data_holdout"]["val_size"] == 32
    assert info["fitness_split"] == "val" and info["fitness_images"] == 32
    assert m["train"]["selected_on"] == "val"
    assert not info["warnings"] and "warnings" not in m
    assert info["search"] == "ga" and "not public" in info["design"]
    for key in ("fitness_loss", "fitness_top1", "test_loss", "test_top1"):
        assert key in info["magnitude"] and key in info["optimized"]
    assert "finetuned_test_top1" in info["magnitude"]
    assert m["finetune_magnitude"]["epochs"] == 1
    assert info["optimized"]["fitness_loss"] <= info["magnitude"]["fitness_loss"]
    assert info["optimized"]["test_top1"] == pytest.approx(m["pruned"]["top1"], abs=1e-3)
    # the mask keeps exactly K weights, and fine-tuning keeps it
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "final.pt")
    kept = sum(int(v.sum()) for v in ckpt["masks"].values())
    assert kept == info["K"]
    for k, mask in ckpt["masks"].items():
        assert not ckpt["model"][k][~mask].any(), k
