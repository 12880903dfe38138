#!/usr/bin/env bash
# scripts/retrain_study.sh: what distillation, lottery-ticket rewinding and from-scratch training
# buy after heavy pruning on real data (issue 13 part B). ResNet-20 on cifar10-mini (10,000 train /
# 2,000 test real CIFAR-10 images), magnitude pruning at ratio 0.9, seeds 0 and 1:
#
#   - finetune.kd.alpha=0 (plain fine-tuning) and 0.5 (Hinton et al. 2015, T=4)
#   - finetune.rewind=init: lottery ticket (Frankle & Carbin 2019): the 10% kept weights back to
#     their initial values, retrained with train.* for train.epochs
#   - finetune.from_scratch=same_epochs: Scratch-E (Liu et al. 2019): the mask on a fresh init
#
#   bash scripts/retrain_study.sh                       # resumable: run it again to finish
#   SEEDS=0 EPOCHS=2 FT_EPOCHS=1 bash scripts/retrain_study.sh   # a quick smoke
#   SWEEPS=scratch_e bash scripts/retrain_study.sh      # one arm (kd, rewind_init, scratch_e)
#
# Each job's final top-1 is in $STUDY/<sweep>/<overrides>/metrics.json; the script ends with a
# table (prune-report writes summary.md per sweep).
#
# Where the data is: DATA (default $PRUNE_CLI_DATA, else ../shared/data from the repository root)
# holds cifar10-mini/ (CIFAR-10 batches: cifar10-mini/cifar-10-batches-py/). The other knobs are
# environment variables too (their defaults follow this header). --help prints this header.
set -uo pipefail

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    sed -n '2,/^set -uo pipefail/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    exit 0
fi
cd "$(dirname "$0")/.."
DATA=${DATA:-${PRUNE_CLI_DATA:-../shared/data}}
if [[ ! -d $DATA/cifar10-mini ]]; then
    echo "retrain_study.sh: no folder $DATA/cifar10-mini; set DATA (or PRUNE_CLI_DATA) to the folder that holds cifar10-mini/" >&2
    exit 2
fi
STUDY=${STUDY:-outputs/study/issue13b}
SEEDS=${SEEDS:-0,1}
EPOCHS=${EPOCHS:-6}             # dense training epochs (also the rewound / scratch retraining)
FT_EPOCHS=${FT_EPOCHS:-3}       # fine-tuning epochs after pruning
PRUNE_RUN=${PRUNE_RUN:-prune-run}
failed=0
FIXED_KEYS=model,dataset,dataset.root,train.epochs,finetune.epochs,metrics.latency.enabled
FIXED_KEYS=$FIXED_KEYS,export.onnx,resume,method,ratio

sweep() {
    local name=$1
    shift
    local prune
    read -ra prune <<< "$PRUNE_RUN"  # e.g. PRUNE_RUN="python -m prune_cli.cli"
    local cmd=("${prune[@]}" -m "hydra.sweep.dir=$STUDY/$name"
        "hydra.sweep.subdir=\${hydra.job.override_dirname}"
        "hydra.job.config.override_dirname.exclude_keys=[$FIXED_KEYS]"
        model=resnet20 dataset=cifar10 "dataset.root=$DATA/cifar10-mini" method=magnitude
        ratio=0.9 "train.epochs=$EPOCHS" "finetune.epochs=$FT_EPOCHS"
        metrics.latency.enabled=false export.onnx=false resume=true "seed=$SEEDS" "$@")
    echo "+ ${cmd[*]}"
    "${cmd[@]}" || { failed=1; echo "retrain_study.sh: sweep '$name' had failed jobs"; }
}

SWEEPS=${SWEEPS:-kd rewind_init scratch_e}   # a subset runs only those (e.g. side by side)
for name in $SWEEPS; do
    case $name in
        kd) sweep kd finetune.kd.alpha=0,0.5 ;;
        rewind_init) sweep rewind_init finetune.rewind=init ;;
        scratch_e) sweep scratch_e finetune.from_scratch=same_epochs ;;
        *) echo "retrain_study.sh: unknown sweep $name (kd, rewind_init, scratch_e)"; exit 2 ;;
    esac
done

python - "$STUDY" <<'PY'
import json, statistics, sys
from pathlib import Path

rows = {}
for path in sorted(Path(sys.argv[1]).glob("*/*/metrics.json")):
    m = json.loads(path.read_text())
    if m.get("status") != "completed":
        print(f"{path.parent}: {m.get('status')} {m.get('error') or ''}")
        continue
    arm = f"{path.parent.parent.name}: {path.parent.name.split(',seed=')[0].split('seed=')[0]}"
    arm = arm.rstrip(":, ")
    rows.setdefault(arm, []).append((m["seed"], m["dense_reference"]["top1"], m["pruned"]["top1"],
                                     m["final"]["top1"], m["finetune"]["epochs"]))
print("| arm | seeds | dense top-1 | pruned (no fine-tune) | final top-1 (mean ± sd) | per seed | epochs |")
print("|---|---|---|---|---|---|---|")
for arm, rs in rows.items():
    finals = [r[3] for r in rs]
    sd = statistics.stdev(finals) if len(finals) > 1 else 0.0
    print(f"| {arm} | {len(rs)} | {statistics.mean(r[1] for r in rs):.2f} | "
          f"{statistics.mean(r[2] for r in rs):.2f} | {statistics.mean(finals):.2f} ± {sd:.2f} | "
          f"{', '.join(f'{f:.2f}' for f in finals)} | {rs[0][4]} |")
PY
exit $failed
