"""Does physical channel removal buy real speed? MAC reduction vs measured latency speedup.

For each model and channel ratio: network slimming's channel removal (global |γ| threshold over
the channel groups, :func:`prune_cli.pruning.channels.channel_prune` with the BN-γ criterion,
``--groups coupled`` (default) or ``single``) on a randomly initialised
model whose BN γ are drawn uniformly from [0, 1) (latency does not depend on the weights, only on
the kept widths), then

- ``mac_x``     = dense MACs / pruned MACs (one 32x32 image, conv + linear; docs/methods.md §2.2),
- ``speedup_bN`` = dense latency / pruned latency at batch N (median of ``--repeats`` forwards
  in eval mode under inference_mode, the dense and pruned forwards interleaved so that a slow
  phase of the machine slows both; :func:`prune_cli.metrics.latency.compare_latency`),
- ``eff_bN``    = speedup_bN / mac_x (1.0: latency falls exactly as fast as MACs).

Target (issue 3): eff_b256 >= 0.8 for ResNet-56 and VGG-16 at ratio 0.5 on CPU.

    OMP_NUM_THREADS=2 python scripts/bench_latency.py                   # CPU, all defaults
    python scripts/bench_latency.py --device cuda --batch-sizes 1 256   # GPU
    python scripts/bench_latency.py --models resnet56 --ratios 0.5 --round-to 8 --groups single

Numbers from a shared or busy machine are noisy: compare runs made back to back.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from prune_cli.metrics.counting import count_macs
from prune_cli.metrics.latency import compare_latency, measure_latency
from prune_cli.models import build_model
from prune_cli.pruning.channels import channel_prune
from prune_cli.pruning.importance import BNScale

MODELS = ("resnet56", "vgg16", "mobilenet_v2", "shufflenet_v2_x1_0")
RATIOS = (0.3, 0.5, 0.7)


def _model(name: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(name, num_classes=10, in_channels=3, image_size=32).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0, 1)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--ratios", nargs="+", type=float, default=list(RATIOS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 256])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--round-to", type=int, default=1)
    parser.add_argument("--groups", choices=("coupled", "single"), default="coupled")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = torch.device(args.device)
    input_size = (3, 32, 32)
    kwargs = {
        "batch_sizes": args.batch_sizes,
        "device": device,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "channels_last": args.channels_last,
    }
    print(
        f"device {device} ({torch.get_num_threads()} threads), torch {torch.__version__}, "
        f"round_to {args.round_to}, groups {args.groups}, channels_last {args.channels_last}"
    )
    cols = "".join(f"  {'ms_b' + str(b):>10} {'speedup_b' + str(b):>12}" for b in args.batch_sizes)
    effs = "".join(f" {'eff_b' + str(b):>9}" for b in args.batch_sizes)
    print(f"{'model':<20}{'ratio':>6}{'MMACs':>10}{'mac_x':>7}{cols}{effs}")
    for name in args.models:
        dense = _model(name, args.seed)
        dense_macs = count_macs(dense, input_size).dense
        base = measure_latency(dense, input_size, **kwargs)
        row = "".join(
            f"  {base[f'b{b}']['latency_ms']:>10.2f} {1.0:>12.2f}" for b in args.batch_sizes
        )
        print(f"{name:<20}{0.0:>6.2f}{dense_macs / 1e6:>10.2f}{1.0:>7.2f}{row}", flush=True)
        for ratio in args.ratios:
            tic = time.perf_counter()
            pruned = channel_prune(
                dense,
                BNScale(),
                ratio,
                input_size=input_size,
                scope="global",
                grouping=args.groups,
                round_to=args.round_to,
            ).model
            macs = count_macs(pruned, input_size).dense
            mac_x = dense_macs / macs
            both = compare_latency({"dense": dense, "pruned": pruned}, input_size, **kwargs)
            lat = both["pruned"]
            speed = {
                b: both["dense"][f"b{b}"]["latency_ms"] / lat[f"b{b}"]["latency_ms"]
                for b in args.batch_sizes
            }
            row = "".join(
                f"  {lat[f'b{b}']['latency_ms']:>10.2f} {speed[b]:>12.2f}" for b in args.batch_sizes
            )
            eff = "".join(f" {speed[b] / mac_x:>9.2f}" for b in args.batch_sizes)
            print(
                f"{'':<20}{ratio:>6.2f}{macs / 1e6:>10.2f}{mac_x:>7.2f}{row}{eff}"
                f"   ({time.perf_counter() - tic:.0f}s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
