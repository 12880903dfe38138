"""Template sharing (docs/methods.md §9.2, §9.3): SConv2d algebra and gradients, orthogonal init,
zero weight decay on coefficients, parameter counts against the docs/methods.md §9.3 table,
materialisation, unchanged MACs, the ``template_reuse`` / ``soft_sharing`` methods and one CLI
run."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from cli_helpers import prune_run
from torch import nn

from prune_cli.engine import load_state_into
from prune_cli.engine.optim import param_groups
from prune_cli.errors import ConfigError
from prune_cli.methods import PruneContext, build_method
from prune_cli.metrics.counting import count_macs, count_params
from prune_cli.metrics.report import relative_to_dense, stage_metrics
from prune_cli.models import build_model
from prune_cli.models.wide_resnet import WideResNet
from prune_cli.sharing import (
    BANKS_ATTR,
    SConv2d,
    TemplateBank,
    choose_templates,
    materialize,
    predicted_params,
    resnet_plans,
    share,
    shufflenet_plans,
    templates_per_bank,
)

CIFAR = (3, 32, 32)


def bank_with(templates: torch.Tensor) -> TemplateBank:
    bank = TemplateBank(templates.shape[0], tuple(templates.shape[1:]))
    with torch.no_grad():
        bank.templates.copy_(templates)
    return bank


def sconv(bank: TemplateBank, alpha: list | torch.Tensor, **kw) -> SConv2d:
    layer = SConv2d(bank, **kw)
    with torch.no_grad():
        layer.coefficients.copy_(torch.as_tensor(alpha, dtype=torch.float32))
    return layer


def shufflenet(name: str = "shufflenet_v2_x0_5", classes: int = 100, size: int = 32) -> nn.Module:
    """A fresh copy of one seeded build (building and checking a model once keeps tests fast)."""
    return copy.deepcopy(_built(name, classes, size))


@functools.cache
def _built(name: str, classes: int, size: int) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, num_classes=classes, in_channels=3, image_size=size)


def tr(**cfg) -> object:
    ratio = cfg.pop("ratio", 0.5)
    return build_method({"name": "template_reuse", **cfg}, ratio)


def soft(**cfg) -> object:
    ratio = cfg.pop("ratio", 0.5)
    return build_method({"name": "soft_sharing", **cfg}, ratio)


# ---------------------------------------------------------------------------- SConv2d algebra
def test_one_template_with_unit_coefficient_is_a_plain_conv() -> None:
    torch.manual_seed(0)
    t = torch.randn(1, 6, 4, 3, 3)
    layer = sconv(bank_with(t), [1.0], stride=2, padding=1)
    plain = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False)
    with torch.no_grad():
        plain.weight.copy_(t[0])
    x = torch.randn(2, 4, 9, 9)
    torch.testing.assert_close(layer(x), plain(x), rtol=0, atol=0)
    assert layer(x).shape == (2, 6, 5, 5)


def test_two_templates_generate_their_linear_combination() -> None:
    t = torch.stack([torch.full((2, 2, 1, 1), 1.0), torch.eye(2).reshape(2, 2, 1, 1)])
    layer = sconv(bank_with(t), [2.0, -3.0])
    # hand-computed: 2*ones - 3*I = [[-1, 2], [2, -1]]
    expected = torch.tensor([[-1.0, 2.0], [2.0, -1.0]]).reshape(2, 2, 1, 1)
    assert torch.equal(layer.weight, expected)
    x = torch.tensor([1.0, 10.0]).reshape(1, 2, 1, 1)
    assert layer(x).flatten().tolist() == [19.0, -8.0]


def test_per_channel_coefficients_weight_each_output_channel() -> None:
    t = torch.stack([torch.full((2, 1, 1, 1), 1.0), torch.full((2, 1, 1, 1), 10.0)])
    layer = sconv(bank_with(t), [[1.0, 2.0], [3.0, 4.0]], coefficients="per_channel")
    # W[o] = a[0, o] * T_0[o] + a[1, o] * T_1[o]: o=0 -> 1 + 30, o=1 -> 2 + 40
    assert layer.weight.flatten().tolist() == [31.0, 42.0]


def test_shared_template_accumulates_both_layers_gradients_hand_computed() -> None:
    # 1x1 single-channel convs are scalar products: y_i = W_i * x with W_i = a_i T_0 + b_i T_1.
    bank = bank_with(torch.tensor([2.0, 3.0]).reshape(2, 1, 1, 1, 1))
    first, second = sconv(bank, [1.0, 2.0]), sconv(bank, [-1.0, 0.5])
    x = torch.tensor([1.0, 4.0]).reshape(1, 1, 1, 2)  # sum(x) = 5
    loss = first(x).sum() + 3 * second(x).sum()  # dL/dW_1 = 5, dL/dW_2 = 15
    loss.backward()
    # dL/dT_j = sum_i alpha_ij dL/dW_i: T_0: 1*5 + (-1)*15 = -10; T_1: 2*5 + 0.5*15 = 17.5
    assert bank.templates.grad.flatten().tolist() == [-10.0, 17.5]
    # dL/dalpha_ij = <dL/dW_i, T_j>: layer 1: (5*2, 5*3); layer 2: (15*2, 15*3)
    assert first.coefficients.grad.tolist() == [10.0, 15.0]
    assert second.coefficients.grad.tolist() == [30.0, 45.0]


def test_gradients_follow_the_chain_rule_on_random_layers() -> None:
    torch.manual_seed(1)
    bank = bank_with(torch.randn(3, 5, 4, 3, 3))
    layers = [sconv(bank, torch.randn(3), padding=1) for _ in range(2)]
    x = torch.randn(2, 4, 6, 6)
    weights = [layer.weight for layer in layers]
    for w in weights:
        w.retain_grad()
    loss = sum((F.conv2d(x, w, padding=1) ** 2).mean() * (i + 1) for i, w in enumerate(weights))
    loss.backward()
    grads_w = [w.grad for w in weights]
    expected_t = sum(
        layer.coefficients.detach()[:, None, None, None, None] * g
        for layer, g in zip(layers, grads_w, strict=True)
    )
    torch.testing.assert_close(bank.templates.grad, expected_t)
    for layer, g in zip(layers, grads_w, strict=True):
        expected_a = (g[None] * bank.templates.detach()).flatten(1).sum(1)
        torch.testing.assert_close(layer.coefficients.grad, expected_a)


# ---------------------------------------------------------------------------- applying banks
def test_coefficients_are_in_the_zero_weight_decay_group() -> None:
    model = shufflenet()
    tr(templates_per_stage=2).prepare(model)
    groups = param_groups(model, 5e-4)
    assert [g["weight_decay"] for g in groups] == [5e-4, 0.0]
    zero = {id(p) for p in groups[1]["params"]}
    coefficients = [m.coefficients for m in model.modules() if isinstance(m, SConv2d)]
    assert len(coefficients) == 26 and zero == {id(c) for c in coefficients}
    templates = [b.templates for b in getattr(model, BANKS_ATTR).values()]
    assert all(id(t) in {id(p) for p in groups[0]["params"]} for t in templates)


@pytest.mark.parametrize("coefficients", ["scalar", "per_channel"])
def test_orthogonal_coefficient_init_per_bank(coefficients: str) -> None:
    model = shufflenet()
    # stage2: L = 6 <= k = 8 (orthonormal rows); stage3: L = 14 > k = 2 (orthonormal columns)
    tr(templates_per_stage=[8, 2, 3], coefficients=coefficients).prepare(model)
    for stage, (n_layers, k) in {"stage2": (6, 8), "stage3": (14, 2), "stage4": (6, 3)}.items():
        layers = [m for n, m in model.named_modules() if n.startswith(stage + ".")]
        rows = [m.coefficients.detach() for m in layers if isinstance(m, SConv2d)]
        if coefficients == "per_channel":  # every output channel starts from the layer's row
            assert all(torch.equal(r, r[:, :1].expand_as(r)) for r in rows)
            rows = [r[:, 0] for r in rows]
        a = torch.stack(rows)
        assert a.shape == (n_layers, k)
        gram = a @ a.T if n_layers <= k else a.T @ a
        torch.testing.assert_close(gram, torch.eye(min(n_layers, k)), atol=1e-5, rtol=0)


# docs/methods.md §9.3 table: shufflenet_v2_x1_0 with the ImageNet (1000) and CIFAR-100 heads.
TABLE = {
    1000: {0: 2_278_604, 1: 1_817_762, 2: 1_888_432, 3: 1_959_102, 4: 2_029_772},
    100: {0: 1_356_104, 1: 895_262, 2: 965_932, 3: 1_036_602, 4: 1_107_272},
}


@pytest.mark.parametrize("classes,size", [(1000, 224), (100, 32)])
def test_parameter_counts_match_the_methods_table(classes: int, size: int) -> None:
    base = shufflenet("shufflenet_v2_x1_0", classes, size)
    assert count_params(base)[0] == TABLE[classes][0]
    plans = shufflenet_plans(base)
    assert [len(p.layers) for p in plans] == [6, 14, 6]
    assert [p.weight_shape for p in plans] == [(58, 58, 1, 1), (116, 116, 1, 1), (232, 232, 1, 1)]
    for k in (1, 2, 3, 4):
        ks = templates_per_bank(k, plans)
        assert predicted_params(TABLE[classes][0], plans, ks) == TABLE[classes][k]
        model = copy.deepcopy(base)
        share(model, shufflenet_plans(model), ks)
        assert count_params(model)[0] == TABLE[classes][k], k


def test_variant_parameter_counts_follow_the_formula() -> None:
    # x0.5: bf = 24, 48, 96; L = 6, 14, 6 (1x1) and 3, 7, 3 (depthwise, 9 weights per channel).
    base_params = count_params(shufflenet())[0]
    pointwise = 6 * 24**2 + 14 * 48**2 + 6 * 96**2  # 91,008 shared 1x1 weights
    model = shufflenet()
    tr(templates_per_stage=2, coefficients="per_channel").prepare(model)
    templates = 2 * (24**2 + 48**2 + 96**2)
    per_channel = 2 * (6 * 24 + 14 * 48 + 6 * 96)
    assert count_params(model)[0] == base_params - pointwise + templates + per_channel
    model = shufflenet()
    tr(templates_per_stage=1, share_depthwise=True).prepare(model)
    depthwise = 9 * (3 * 24 + 7 * 48 + 3 * 96)
    kept = 24**2 + 48**2 + 96**2 + 9 * (24 + 48 + 96) + 26 + 13  # k=1 templates + alphas
    assert count_params(model)[0] == base_params - pointwise - depthwise + kept


def test_soft_sharing_counts_on_cifar_resnet() -> None:
    torch.manual_seed(0)
    base = build_model("resnet20", num_classes=10, in_channels=3, image_size=32)
    p0 = count_params(base)[0]
    for k, saved in {1: 145_140, 2: 96_744}.items():
        # stages of 3 blocks: L = 4 convs of 16^2*9, 32^2*9, 64^2*9 = 2304, 9216, 36864 weights;
        # saved = sum (L - k) |W| - L k per stage (k=1: 3*48384 - 12; k=2: 2*48384 - 24)
        model = copy.deepcopy(base)
        method = soft(templates_per_stage=k)
        method.prepare(model)
        assert count_params(model)[0] == p0 - saved
        assert method.summary.layers == {"layer1": 4, "layer2": 4, "layer3": 4}


@pytest.mark.parametrize(
    ("depth", "width", "k", "expected"),
    [  # docs/methods.md §9.2, derived from the authors' SWRN-d-w-k (10 classes)
        (28, 10, 1, 12_287_212),
        (28, 10, 2, 17_125_630),
        (28, 10, 4, 26_802_466),
        (28, 10, 6, 36_479_302),  # k = L = 6: no saving, the WRN plus 108 coefficients
        (28, 14, 2, 33_537_790),
    ],
)
def test_soft_sharing_reproduces_swrn_parameter_counts(
    depth: int, width: int, k: int, expected: int
) -> None:
    model = WideResNet(depth, width, num_classes=10)
    plans = resnet_plans(model)
    # The first block of each stage is unshared: 3 banks of 2 (n - 1) = 6 convs of C x C x 3 x 3.
    assert [(p.name, len(p.layers), p.weight_shape[0]) for p in plans] == [
        ("layer1", 6, 16 * width),
        ("layer2", 6, 32 * width),
        ("layer3", 6, 64 * width),
    ]
    ks = {p.name: k for p in plans}
    assert predicted_params(count_params(model)[0], plans, ks) == expected


def test_soft_sharing_on_a_wide_resnet_shares_the_convs_it_counts() -> None:
    torch.manual_seed(0)
    model = build_model("wrn16_4", num_classes=10, in_channels=3, image_size=32)
    p0 = count_params(model)[0]
    assert p0 == 2_748_890  # WRN-16-4 (Zagoruyko & Komodakis 2016: 2.7M)
    method = soft(templates_per_stage=1)
    method.prepare(model)
    # n = 2 blocks per stage: L = 2 convs of 64^2*9, 128^2*9, 256^2*9 weights share k = 1 template.
    saved = sum(c * c * 9 for c in (64, 128, 256)) - 3 * 2
    assert count_params(model)[0] == p0 - saved
    assert method.summary.layers == {"layer1": 2, "layer2": 2, "layer3": 2}
    shared = [n for n, m in model.named_modules() if isinstance(m, SConv2d)]
    assert shared == [f"layer{s}.1.conv{c}" for s in (1, 2, 3) for c in (1, 2)]
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_auto_picks_the_k_closest_to_ratio() -> None:
    base = shufflenet("shufflenet_v2_x1_0", 100, 32)
    plans = shufflenet_plans(base)
    # reductions: k=1 33.98%, k=2 28.77%, k=3 23.56%, k=4 18.35%, k=5 13.14%
    assert choose_templates(TABLE[100][0], plans, 0.29)[0] == 2
    assert choose_templates(TABLE[100][0], plans, 0.5)[0] == 1
    assert choose_templates(TABLE[100][0], plans, 0.2)[0] == 4
    method = tr(templates_per_stage="auto", ratio=0.24)
    method.prepare(base)
    assert method.summary.templates == {"stage2": 3, "stage3": 3, "stage4": 3}
    assert count_params(base)[0] == TABLE[100][3]


def perturb(model: nn.Module) -> None:
    """Move coefficients and BN statistics away from their init, so checks are not trivial."""
    torch.manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, SConv2d):
                m.coefficients.add_(torch.randn_like(m.coefficients))
            elif isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)


@pytest.mark.parametrize(
    "model_name,cfg",
    [
        ("shufflenet_v2_x0_5", {"name": "template_reuse"}),
        ("shufflenet_v2_x0_5", {"name": "template_reuse", "coefficients": "per_channel"}),
        ("shufflenet_v2_x0_5", {"name": "soft_sharing"}),
        ("resnet20", {"name": "soft_sharing", "templates_per_stage": 1}),
        ("wrn16_4", {"name": "soft_sharing", "templates_per_stage": 1}),
    ],
)
def test_materialized_model_gives_identical_logits_and_macs(model_name: str, cfg: dict) -> None:
    torch.manual_seed(0)
    model = build_model(model_name, num_classes=100, in_channels=3, image_size=32)
    unshared = copy.deepcopy(model)
    build_method(cfg, 0.5).prepare(model)
    perturb(model)
    plain, report = materialize(model)
    assert not any(isinstance(m, SConv2d) for m in plain.modules())
    assert not hasattr(plain, BANKS_ATTR)
    assert report["runtime_params"] == count_params(unshared)[0]
    assert report["stored_params"] == count_params(model)[0] < report["runtime_params"]
    model.eval()
    plain.eval()
    x = torch.randn(3, *CIFAR)
    with torch.no_grad():
        out = model(x)
        assert torch.equal(out, plain(x))
        assert out.shape == unshared.eval()(x).shape == (3, 100)
    # sharing changes storage, not compute: the same MACs per layer as the unshared network
    macs = count_macs(model, CIFAR)
    assert macs.dense == count_macs(unshared, CIFAR).dense == count_macs(plain, CIFAR).dense
    assert macs.per_layer == count_macs(unshared, CIFAR).per_layer


def test_deepcopy_keeps_the_sharing() -> None:
    model = shufflenet()
    tr().prepare(model)
    clone = copy.deepcopy(model)
    bank = getattr(clone, BANKS_ATTR)["stage3"]
    assert clone.stage3[1].branch2[0].bank is bank is clone.stage3[7].branch2[5].bank
    assert bank is not getattr(model, BANKS_ATTR)["stage3"]


# ---------------------------------------------------------------------------- methods
def test_prepare_is_deterministic_and_a_trained_state_reloads() -> None:
    first, second = shufflenet(), shufflenet()
    tr(templates_per_stage=2).prepare(first)
    torch.manual_seed(123)  # the global RNG must not matter: banks use their own generator
    tr(templates_per_stage=2).prepare(second)
    a, b = first.state_dict(), second.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    perturb(first)  # "training"
    fresh = shufflenet()
    tr(templates_per_stage=2).prepare(fresh)
    load_state_into(fresh, {"model": first.state_dict()}, "trained.pt")
    x = torch.randn(2, *CIFAR)
    with torch.no_grad():
        assert torch.equal(first.eval()(x), fresh.eval()(x))


def test_training_signature_keys_every_variant() -> None:
    signatures = []
    for cfg in (
        {"templates_per_stage": 1},
        {"templates_per_stage": 2},
        {"templates_per_stage": 2, "coefficients": "per_channel"},
        {"templates_per_stage": 2, "share_depthwise": True},
    ):
        method = tr(**cfg)
        method.prepare(shufflenet())
        signatures.append(json.dumps(method.training_signature(), sort_keys=True))
    assert len(set(signatures)) == 4
    assert '"stage2": 1' in signatures[0] and '"per_channel"' in signatures[2]


def test_prune_reports_without_pruning() -> None:
    model = shufflenet()
    method = tr(templates_per_stage=2)
    assert method.prunes is False  # the pipeline skips fine-tuning
    method.prepare(model)
    ctx = PruneContext(data=None, device=torch.device("cpu"), seed=0, input_size=CIFAR)
    result = method.prune(model, ctx)
    assert result.model is model and result.masks == {}
    info = result.info
    assert info["templates_per_bank"] == {"stage2": 2, "stage3": 2, "stage4": 2}
    assert info["params_shared"] == info["params_predicted"] == count_params(model)[0]
    assert info["params_unshared"] == count_params(shufflenet())[0]
    assert info["param_reduction"] == pytest.approx(
        1 - info["params_shared"] / info["params_unshared"], abs=1e-6
    )
    assert info["macs_shared"] == info["macs_unshared"] > 0
    assert info["materialize"]["logits_equal"] is True
    assert info["materialize"]["runtime_params"] == info["params_unshared"]
    assert set(info["latency_b1_ms"]) == {"shared", "materialized"}


@pytest.mark.parametrize(
    "cfg,model_name,message",
    [
        ({"name": "template_reuse"}, "resnet20", "needs a ShuffleNetV2"),
        ({"name": "soft_sharing"}, "vgg11", "does not support"),
        ({"name": "template_reuse", "templates_per_stage": 0}, None, "templates_per_stage 0"),
        ({"name": "template_reuse", "templates_per_stage": "two"}, None, "auto"),
        ({"name": "template_reuse", "templates_per_stage": [1, 2]}, "x", "one value per stage"),
        ({"name": "template_reuse", "coefficients": "full"}, None, "scalar, per_channel"),
        ({"name": "soft_sharing", "coefficients": "scalar"}, None, "unknown key method.coeff"),
        ({"name": "template_reuse", "share_depthwise": "yes"}, None, "valid: true, false"),
    ],
)
def test_bad_config_values_give_one_line_errors(cfg: dict, model_name: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        method = build_method(cfg, 0.5)
        if model_name == "x":
            method.prepare(shufflenet())
        elif model_name is not None:
            model = build_model(model_name, num_classes=10, in_channels=3, image_size=32)
            method.prepare(model)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------- CLI
FAST = [
    "dataset.train_size=256",
    "dataset.test_size=128",
    "train.epochs=1",
    "train.batch_size=64",
    "finetune.epochs=1",
    "metrics.latency.batch_sizes=[1,4]",
    "metrics.latency.warmup=1",
    "metrics.latency.repeats=2",
]


# slow: sharing is tested in-process above; this is the CLI and the cache reload
@pytest.mark.slow
def test_cli_template_reuse_trains_shared_model_and_reloads_from_cache(tmp_path: Path) -> None:
    args = [*FAST, "model=shufflenet_v2_x0_5", "method=template_reuse"]
    first = prune_run(*args, "hydra.run.dir=first", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    m = json.loads((tmp_path / "first" / "metrics.json").read_text())
    assert m["status"] == "completed" and m["stages"] == [
        "baseline",
        "dense_reference",
        "pruned",
        "final",
    ]
    info = m["prune_info"]
    # x0.5, 10 classes: 352,042 params; k=2 replaces 91,008 1x1 weights by 2 * 12,096 templates
    # (24^2 + 48^2 + 96^2 = 12,096) and 26 layers * 2 coefficients
    assert info["params_unshared"] == 352_042
    assert m["final"]["params"] == info["params_shared"] == 352_042 - 91_008 + 24_192 + 52
    assert m["final"]["macs"] == info["macs_unshared"] == m["baseline"]["macs"]
    assert info["materialize"]["logits_equal"] is True
    assert "finetune" not in m  # prunes = False: nothing to fine-tune
    history = (tmp_path / "first" / "history.csv").read_text().splitlines()[1:]
    # the shared model trains from scratch; the plain dense model it is compared with, too
    assert {row.split(",")[0] for row in history} == {"train", "dense_reference"}
    assert m["dense_reference"]["source"] != "baseline"
    # a second run with the same settings loads the cached trained (shared) checkpoint
    second = prune_run(*args, "metrics.latency.enabled=false", "hydra.run.dir=second", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    m2 = json.loads((tmp_path / "second" / "metrics.json").read_text())
    assert m2["train"]["from_cache"] is True
    assert m2["final"]["top1"] == m["final"]["top1"]


# ---------------------------------------------------------------------------- experiment config
ARM = "experiment/template_reuse_cifar100_arm"


def compose_all(*override_lists: list[str]) -> list:
    """Compose ``config`` once per override list (one Hydra initialisation for all)."""
    from hydra import compose, initialize_config_dir

    root = Path(__file__).resolve().parents[1] / "configs"
    with initialize_config_dir(config_dir=str(root), version_base=None):
        return [compose("config", overrides=o, return_hydra_config=True) for o in override_lists]


def test_experiment_arms_compose_and_match_parameter_counts() -> None:
    experiment = "+experiment=template_reuse_cifar100"
    (base,) = compose_all([experiment])
    assert (base.model.name, base.dataset.name, base.method.name) == (
        "shufflenet_v2_x1_0", "cifar100", "template_reuse")  # fmt: skip
    assert (base.train.epochs, base.train.nesterov, base.train.weight_decay) == (200, True, 5e-4)
    arms = [a.strip() for a in base.hydra.sweeper.params[ARM].split(",")]
    assert len(arms) == 11 and "baseline" in arms
    conv_weights = sum(
        m.weight.numel()
        for m in shufflenet("shufflenet_v2_x1_0", 100, 32).modules()
        if isinstance(m, nn.Conv2d)
    )
    assert conv_weights == 1_237_424
    for arm, cfg in zip(
        arms, compose_all(*[[experiment, f"{ARM}={a}"] for a in arms]), strict=True
    ):
        assert cfg.experiment_arm == arm
        kind, _, k = arm.rpartition("_k")
        if arm == "baseline":
            assert cfg.method.name == "none"
        elif kind in ("template_reuse", "soft_sharing"):
            assert (cfg.method.name, cfg.method.templates_per_stage) == (kind, int(k))
        elif kind == "magnitude":
            # exact mode removes floor(N * ratio) conv weights: the template-reuse count exactly
            removed = int(conv_weights * cfg.ratio)
            assert TABLE[100][0] - removed == TABLE[100][int(k)], arm
            assert (cfg.method.name, cfg.method.mode, cfg.method.include_linear) == (
                "magnitude", "exact", False)  # fmt: skip
        else:
            assert (kind, cfg.method.name) == ("slimming", "network_slimming")


def test_swrn_experiment_pins_the_papers_recipe_and_counts() -> None:
    experiment = "+experiment=soft_sharing_swrn"
    base, baseline = compose_all([experiment], [experiment, "method=none"])
    assert (base.model.name, base.dataset.name, base.method.name) == (
        "wrn28_10", "cifar10", "soft_sharing")  # fmt: skip
    assert (base.train.epochs, base.train.lr, base.train.nesterov) == (200, 0.1, True)
    assert (list(base.train.milestones), base.train.gamma) == ([60, 120, 160], 0.2)
    assert (base.train.weight_decay, base.dataset.val_size) == (5e-4, 0.1)
    assert base.hydra.sweeper.params["method.templates_per_stage"] == "1,2,4,6"
    assert (baseline.model.name, baseline.method.name) == ("wrn28_10", "none")
    # The swept k give the paper's SWRN-28-10-k counts (docs/methods.md §9.2) on the pinned model.
    model = WideResNet(28, 10, num_classes=10)
    plans = resnet_plans(model)
    counts = {
        k: predicted_params(count_params(model)[0], plans, {p.name: k for p in plans})
        for k in (1, 2, 4, 6)
    }
    assert counts == {1: 12_287_212, 2: 17_125_630, 4: 26_802_466, 6: 36_479_302}


EVAL = {"top1": 50.0, "top5": 90.0, "loss": 1.0}
UNITS = {"p_unit": 1e6, "m_unit": 1e9, "count": "nonzero"}


def test_weight_figures_count_the_template_banks() -> None:
    """A shared model's generated convs hold no weights of their own: the weights it keeps are
    its unshared convs, the classifier and the template banks, so weights removed follows the
    templates (k=1 removes more than k=2) and is not that of a model without those convs."""
    torch.manual_seed(0)
    dense = build_model("resnet20", num_classes=10, in_channels=3, image_size=32)
    dense_stage = stage_metrics(dense, EVAL, (3, 32, 32), UNITS)
    removed = {}
    for k in (1, 2):
        model = build_model("resnet20", num_classes=10, in_channels=3, image_size=32)
        build_method({"name": "soft_sharing", "templates_per_stage": k}, 0.5).prepare(model)
        templates = sum(b.templates.numel() for b in model.template_banks.values())
        plain = sum(
            m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)
        )
        figures = stage_metrics(model, EVAL, (3, 32, 32), UNITS)
        assert figures["weights"] == plain + templates and figures["sparsity"] < 0.01
        removed[k] = relative_to_dense(figures, dense_stage)["weights_removed"]
        assert removed[k] == pytest.approx(
            1 - (plain + templates) / dense_stage["weights"], abs=1e-6
        )
    assert removed[1] == pytest.approx(0.5358, abs=1e-3) and removed[2] == pytest.approx(
        0.3572, abs=1e-3
    )
