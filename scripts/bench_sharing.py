"""What does template sharing cost at run time? Shared vs materialised vs unshared latency.

For each model and number of templates k: the model is shared with the method's plan
(``template_reuse`` on ShuffleNetV2, ``soft_sharing`` on CIFAR ResNets; docs/methods.md §9),
and then

- ``params``      = stored parameters of the shared model (what a checkpoint holds),
- ``reduction``   = 1 - params / unshared params,
- ``macs``        = MACs of one image (equal to the unshared model's: sharing changes storage),
- ``shared_bN``   = latency (ms) at batch N of the shared model, which regenerates every shared
  weight from its templates at each forward,
- ``plain_bN``    = latency of the materialised model (templates folded into plain convs: the
  same function and the same runtime shapes as the unshared network),
- ``overhead_bN`` = shared_bN / plain_bN (1.0: regenerating the weights costs nothing).

    OMP_NUM_THREADS=2 python scripts/bench_sharing.py
    python scripts/bench_sharing.py --device cuda --batch-sizes 1 256
    python scripts/bench_sharing.py --models shufflenet_v2_x1_0 --ks 1 2 3 --classes 100

Numbers from a shared or busy machine are noisy: compare runs made back to back.
"""

from __future__ import annotations

import argparse

import torch

from prune_cli.methods import build_method
from prune_cli.metrics.counting import count_macs, count_params
from prune_cli.metrics.latency import compare_latency
from prune_cli.models import build_model
from prune_cli.sharing import materialize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["shufflenet_v2_x1_0", "resnet56"])
    parser.add_argument("--ks", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    device = torch.device(args.device)
    size = (3, args.image_size, args.image_size)
    cols = ["model", "k", "params", "reduction", "macs"]
    for b in args.batch_sizes:
        cols += [f"shared_b{b}", f"plain_b{b}", f"overhead_b{b}"]
    print(",".join(cols))
    for name in args.models:
        method_name = "template_reuse" if name.startswith("shufflenet") else "soft_sharing"
        for k in args.ks:
            torch.manual_seed(0)
            model = build_model(
                name, num_classes=args.classes, in_channels=3, image_size=args.image_size
            )
            unshared = count_params(model)[0]
            build_method({"name": method_name, "templates_per_stage": k}, 0.5).prepare(model)
            plain, _ = materialize(model)
            params = count_params(model)[0]
            row = [name, str(k), str(params), f"{1 - params / unshared:.4f}"]
            row.append(str(count_macs(model, size).dense))
            kwargs = {
                "batch_sizes": args.batch_sizes,
                "device": device,
                "warmup": args.warmup,
                "repeats": args.repeats,
            }
            both = compare_latency({"shared": model, "plain": plain}, size, **kwargs)
            shared_lat, plain_lat = both["shared"], both["plain"]
            for b in args.batch_sizes:
                s, p = shared_lat[f"b{b}"]["latency_ms"], plain_lat[f"b{b}"]["latency_ms"]
                row += [f"{s:.3f}", f"{p:.3f}", f"{s / p:.3f}"]
            print(",".join(row), flush=True)


if __name__ == "__main__":
    main()
