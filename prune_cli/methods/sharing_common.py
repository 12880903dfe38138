"""What ``template_reuse`` and ``soft_sharing`` have in common (methods.md §9).

Both re-parameterise the model *before training* and then train it from scratch through the
normal pipeline:

- ``prepare(model)`` replaces the planned convs by template-generated convs
  (:func:`prune_cli.sharing.share`, deterministic given the run seed, so that a trained
  checkpoint reloads into a freshly prepared model).
- ``training_signature()`` holds the resolved templates per bank, the coefficient kind and the
  plan, so the trained-model cache keys every variant separately.
- ``prune()`` prunes nothing: it returns the model unchanged with no masks and reports in
  ``prune_info`` the parameter reduction against the unshared model, the templates per bank, the
  MACs (unchanged by sharing), and the materialisation check (stored vs runtime parameters,
  logits of the materialised model equal to the shared model's).
- ``prunes = False``: the pipeline skips fine-tuning. Sharing is decided before training and
  training *is* the training of the shared model, so another round at the fine-tuning settings
  would only give the shared model more epochs than the ``method=none`` baseline it is compared
  with (which also skips fine-tuning).

``ratio`` is the *target fraction of parameters removed*; it is used only when
``templates_per_stage`` is ``auto``: the ``k`` (same for every bank) whose predicted reduction
(§9.3 formula, :func:`prune_cli.sharing.predicted_params`) is closest to ``ratio``.
``templates_per_stage`` may also be an integer ``k >= 1`` for every bank, or a list of one ``k`` per
shared stage.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from prune_cli.errors import ConfigError
from prune_cli.methods.base import Method, PruneContext, PruneResult
from prune_cli.metrics.counting import count_macs, count_params
from prune_cli.metrics.latency import compare_latency
from prune_cli.sharing import (
    BankPlan,
    SharingSummary,
    choose_templates,
    materialize,
    predicted_params,
    share,
    templates_per_bank,
)

AUTO = "auto"


class SharingMethod(Method):
    """Base of the parameter-sharing methods; subclasses define :meth:`plans`."""

    prunes: ClassVar[bool] = False
    #: The coefficient kinds a subclass accepts in ``method.coefficients``.
    coefficient_kinds: ClassVar[tuple[str, ...]] = ("scalar",)

    def __init__(self, cfg: Mapping[str, Any], ratio: float, seed: int = 0) -> None:
        super().__init__(cfg, ratio, seed)
        self.summary: SharingSummary | None = None
        self.bank_plans: list[BankPlan] = []
        self.auto = False
        self.coefficients = self.option("coefficients", self.coefficient_kinds, "scalar")
        self.k_setting = _parse_templates(self.cfg.get("templates_per_stage", 2))

    # ------------------------------------------------------------------ subclass interface
    def plans(self, model: nn.Module) -> list[BankPlan]:
        """The banks to create on ``model`` (raise ConfigError for an unsupported model)."""
        raise NotImplementedError

    def plan_description(self) -> str:
        """One line naming which convs share, for ``prune_info`` and the cache key."""
        raise NotImplementedError

    # ------------------------------------------------------------------ Method interface
    def prepare(self, model: nn.Module) -> nn.Module:
        plans = self.plans(model)
        params_unshared = count_params(model)[0]
        if self.k_setting == AUTO:
            self.auto = True
            k, _ = choose_templates(params_unshared, plans, self.ratio, self.coefficients)
            ks = templates_per_bank(k, plans)
        else:
            ks = templates_per_bank(self.k_setting, plans)  # type: ignore[arg-type]
        self.bank_plans = plans
        self.summary = share(model, plans, ks, self.coefficients, seed=self.seed)
        return model

    def training_signature(self) -> dict[str, Any]:
        templates: Any = self.summary.templates if self.summary else self.k_setting
        return {
            "sharing": self.name,
            "plan": self.plan_description(),
            "templates": templates,
            "coefficients": self.coefficients,
            "init": "kaiming_templates+orthogonal_coefficients",
        }

    def prune(self, model: nn.Module, ctx: PruneContext) -> PruneResult:
        if self.summary is None:
            raise RuntimeError(f"method {self.name!r}: prune() called before prepare()")
        summary = self.summary
        params_shared = count_params(model)[0]
        predicted = predicted_params(
            summary.params_unshared, self.bank_plans, summary.templates, self.coefficients
        )
        plain, report = materialize(model)
        macs_shared = count_macs(model, ctx.input_size).dense
        macs_plain = count_macs(plain, ctx.input_size).dense
        info: dict[str, Any] = {
            "sharing": self.plan_description(),
            "templates_per_bank": summary.templates,
            "layers_per_bank": summary.layers,
            "coefficients": self.coefficients,
            "templates_per_stage": AUTO if self.auto else self.k_setting,
            "target_ratio": self.ratio if self.auto else None,
            "params_unshared": summary.params_unshared,
            "params_shared": params_shared,
            "params_predicted": predicted,
            "param_reduction": round(1.0 - params_shared / summary.params_unshared, 6),
            "macs_shared": macs_shared,
            "macs_unshared": macs_plain,
            "macs_note": "sharing changes storage, not compute: every layer still convolves "
            "with a full-size (generated) weight, so MACs equal the unshared model's",
            "materialize": {**report, **_logits_check(model, plain, ctx)},
            "latency_b1_ms": _latency_b1(model, plain, ctx),
            "finetune": "skipped: sharing is trained from scratch; nothing is pruned",
        }
        if report["runtime_params"] != summary.params_unshared:
            raise RuntimeError(
                f"materialised model has {report['runtime_params']} parameters, the unshared "
                f"model {summary.params_unshared}: the sharing changed the architecture"
            )
        return PruneResult(model=model, masks={}, info=info)


def _parse_templates(value: Any) -> int | list[int] | str:
    """``templates_per_stage``: ``auto``, an integer >= 1, or a list of integers >= 1."""
    if isinstance(value, str) and value == AUTO:
        return AUTO
    if _is_k(value):
        return int(value)
    if isinstance(value, list | tuple) and value and all(_is_k(v) for v in value):
        return [int(v) for v in value]
    raise ConfigError(
        f"bad method.templates_per_stage {value!r}; valid: an integer >= 1, a list of one "
        "integer >= 1 per shared stage, or auto (the k whose reduction is closest to ratio)"
    )


def _is_k(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _logits_check(shared: nn.Module, plain: nn.Module, ctx: PruneContext) -> dict[str, Any]:
    """Compare the logits of the shared and materialised models on a fixed random batch."""
    generator = torch.Generator().manual_seed(ctx.seed)
    x = torch.randn((4, *ctx.input_size), generator=generator).to(ctx.device)
    modes = shared.training, plain.training
    shared.eval()
    plain.eval()
    try:
        with torch.no_grad():
            a, b = shared(x), plain(x)
    finally:
        shared.train(modes[0])
        plain.train(modes[1])
    diff = float((a - b).abs().max())
    scale = float(a.abs().max())
    if diff > 1e-5 * max(scale, 1.0):
        raise RuntimeError(f"materialised logits differ from the shared model's by {diff:.3g}")
    return {"logits_equal": bool(torch.equal(a, b)), "logits_max_abs_diff": diff}


def _latency_b1(shared: nn.Module, plain: nn.Module, ctx: PruneContext) -> dict[str, float]:
    """Batch-1 latency (median ms) of the shared model (weights regenerated at every forward) and
    of its materialised copy (plain convs): the runtime cost of regenerating the weights."""
    kwargs = {"batch_sizes": [1], "device": ctx.device, "warmup": 2, "repeats": 10}
    both = compare_latency({"shared": shared, "materialized": plain}, ctx.input_size, **kwargs)
    return {name: round(lat["b1"]["latency_ms"], 4) for name, lat in both.items()}
