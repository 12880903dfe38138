"""``sensitivity``: per-layer sensitivity analysis (Li et al. 2017, Section 3.2; Han et al. 2015).

Not a pruning method: the dense model (trained through the trained-model cache like every
method, or ``pretrained=``) is pruned one layer at a time at each of ``method.ratios`` --
``granularity: weight`` zeroes the layer's lowest-|w| weights, ``filter`` its lowest-L1 filters
(masked, not removed) -- and evaluated on the test split *without fine-tuning*; the layer is
restored before the next point. The evaluations are on the **validation** split, never the test
split (``layer_ratios.json`` steers the ratios of later runs, whose test figures must not have
chosen them): the pipeline holds ``method.val_size`` training images out of training as that
split when the dataset has none (seeded and stratified, ``metrics.json`` ``data_holdout``).
Written to the run directory:

- ``sensitivity.csv``: ``layer, ratio, top1, loss, drop, params, pruned`` (one row per layer and
  ratio; ``drop`` = dense top-1 minus top-1, in points; ``params`` = the layer's weights);
- ``sensitivity.png``: top-1 against the ratio, one line per layer;
- ``layer_ratios.json``: for each layer the largest ratio (below 1) whose drop is at most
  ``method.max_drop`` points, the file ``method.layer_ratios`` of ``magnitude`` (weight) and
  ``l1_filter`` (filter) reads.

No pruned model comes out (``produces_model = False``): the pipeline skips fine-tuning and the
final evaluation, records why, and ``metrics.json`` has no ``final`` stage; ``analysis`` says
what the run was and ``sensitivity`` holds the summary.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import Field
from torch import nn

from prune_cli.errors import ConfigError
from prune_cli.methods.base import Method, MethodOptions, PruneContext, PruneResult
from prune_cli.methods.registry import METHODS
from prune_cli.options import Bool, Float, Int, OneOf
from prune_cli.pruning.sensitivity import (
    GRANULARITIES,
    choose_layer_ratios,
    layer_sensitivity,
    write_csv,
    write_layer_ratios,
    write_plot,
)


@METHODS.register("sensitivity")
class Sensitivity(Method):
    prunes: ClassVar[bool] = False
    produces_model: ClassVar[bool] = False

    class Options(MethodOptions):
        """``configs/method/sensitivity.yaml``."""

        ratios: Annotated[list[Float(gt=0, le=1, valid="0 < ratio <= 1")], Field(min_length=1)]
        granularity: OneOf(*GRANULARITIES)
        include_linear: Bool
        max_drop: Float(ge=0)
        #: Training images held out as the validation split when the dataset has none.
        val_size: Int(ge=1) | Float(gt=0, lt=1)

    opts: Options

    def holdout_size(self) -> int | float:
        """``method.val_size``: the validation split the layers are evaluated on."""
        return self.opts.val_size

    def prune(self, model: nn.Module, ctx: PruneContext) -> PruneResult:
        opts = self.opts
        if not ctx.data.has_split("val"):
            raise ConfigError(
                "method=sensitivity evaluates on a validation split, and the data has none "
                "(a run holds method.val_size training images out; or set dataset.val_size)"
            )
        ratios = sorted(set(float(r) for r in opts.ratios))
        dense, rows = layer_sensitivity(
            model,
            lambda m: ctx.evaluate(m, "val"),
            ratios,
            opts.granularity,
            opts.include_linear,
        )
        chosen = choose_layer_ratios(rows, opts.max_drop)
        files: dict[str, Any] = {}
        if ctx.run_dir is not None:
            what = "weights" if opts.granularity == "weight" else "filters"
            write_csv(ctx.run_dir / "sensitivity.csv", rows)
            write_plot(ctx.run_dir / "sensitivity.png", rows, dense["top1"], what)
            write_layer_ratios(ctx.run_dir / "layer_ratios.json", chosen)
            files = {
                "table": "sensitivity.csv",
                "plot": "sensitivity.png",
                "layer_ratios": "layer_ratios.json",
            }
        worst = {}
        for row in rows:  # the most sensitive point of every layer: its largest drop
            if row["layer"] not in worst or row["drop"] > worst[row["layer"]]["drop"]:
                worst[row["layer"]] = {"ratio": row["ratio"], "drop": row["drop"]}
        info = {
            "analysis": "sensitivity",
            "granularity": opts.granularity,
            "ratios": ratios,
            "split": "val",
            "val_images": len(ctx.data.splits["val"]),
            "finetuned": False,
            "dense": dense,
            "layers": len(chosen),
            "max_drop": opts.max_drop,
            "layer_ratios": chosen,
            "largest_drop": worst,
            "files": files,
        }
        return PruneResult(model=model, masks={}, info=info)
