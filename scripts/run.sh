#!/usr/bin/env bash
# scripts/run.sh: the sweeps of a study in one file you edit, in the spirit of the run.sh of
# heehehe/pruning-decorrelation (one line per experiment; here one line per *sweep*).
#
#   bash scripts/run.sh                                   # the offline demo (shapes, minutes)
#   SECTIONS="cifar_magnitude" DATA=~/data bash scripts/run.sh
#   SECTIONS="demo" EXTRA="train.epochs=1 finetune.epochs=1" bash scripts/run.sh
#   LAUNCHER="hydra/launcher=parallel hydra.launcher.n_jobs=4" SECTIONS=cifar_magnitude ...
#   DRY_RUN=1 SECTIONS=all bash scripts/run.sh            # print the commands only
#
# Every sweep writes to $OUT/<name>/ (one run directory per job, see docs/metrics.md
# "The run directory"), then prune-report summarises it there (summary.csv, summary.md, PNG plots), and at
# the end all sweeps together in $OUT/. A sweep trains each dense model once (the trained-model
# cache in outputs/cache is shared across sweeps too: the same model, data, training settings
# and seed are never trained twice). A failed job is recorded in its metrics.json and shown by
# the report; the script goes on with the next sweep and exits 1 at the end if any job failed.
#
# Edit freely: add a line to a section, or a section of your own (a function named sec_<name>
# and its name in SECTIONS). Any prune-run override works in a sweep: comma lists are swept.
# Paths are relative to the directory you start it in, as for prune-run itself.
set -uo pipefail

SECTIONS=${SECTIONS:-demo}      # which sections below to run: names, or "all"
DATA=${DATA:-$HOME/data}        # dataset roots: $DATA/cifar10, $DATA/fer2013, ...
OUT=${OUT:-outputs/study/$(date +%Y-%m-%d_%H-%M-%S)}
SEEDS=${SEEDS:-0}               # e.g. SEEDS=0,1,2 for mean ± sd bands in the plots
LAUNCHER=${LAUNCHER:-}          # e.g. "hydra/launcher=parallel" or "hydra/launcher=slurm"
EXTRA=${EXTRA:-}                # overrides added to every sweep, e.g. "device=cuda"
DRY_RUN=${DRY_RUN:-0}

PRUNE_RUN=${PRUNE_RUN:-prune-run}
PRUNE_REPORT=${PRUNE_REPORT:-prune-report}
failed=0

# sweep NAME OVERRIDE... : one Hydra multirun into $OUT/NAME, then its report.
sweep() {
    local name=$1
    shift
    # shellcheck disable=SC2086  # LAUNCHER and EXTRA are lists of words on purpose
    local cmd=("$PRUNE_RUN" -m "hydra.sweep.dir=$OUT/$name" "$@" seed="$SEEDS" $LAUNCHER $EXTRA)
    echo "+ ${cmd[*]}"
    [[ $DRY_RUN == 1 ]] && return 0
    "${cmd[@]}" || { failed=1; echo "run.sh: sweep '$name' had failed jobs (see its report)"; }
    "$PRUNE_REPORT" "$OUT/$name" || failed=1
}

# ---------------------------------------------------------------- sections
# Offline: ResNet-20 on the built-in shapes dataset (no files, no GPU).
sec_demo() {
    sweep demo_ratios method=magnitude,random ratio=0.3,0.5,0.7,0.9
}

# Han et al. magnitude pruning on CIFAR-10 (full recipe), global vs. per-layer thresholds.
sec_cifar_magnitude() {
    sweep cifar_magnitude model=resnet56 dataset=cifar10 "dataset.root=$DATA/cifar10" \
        train=cifar finetune=han method=magnitude method.scope=global,layerwise \
        ratio=0.5,0.6,0.7,0.8,0.9
}

# Source paper 1: double pruning against its two halves, as a NetScore table (docs/methods.md §5).
sec_double_pruning() {
    sweep double_pruning model=resnet56 dataset=cifar10 "dataset.root=$DATA/cifar10" \
        train=cifar method=magnitude,network_slimming,double_pruning ratio=0.1,0.3,0.5,0.7,0.9
}

# Source 3: heehehe/pruning-decorrelation's grid (prune rate x regulariser weight, docs/methods.md §7).
sec_dynamic_filter() {
    sweep dynamic_filter +experiment=dynamic_filter_prune_reg "dataset.root=$DATA/cifar10"
}

# Facial expressions: VGG-16 on FER2013 (grayscale 48x48), structured vs. unstructured.
sec_fer() {
    sweep fer model=vgg16 dataset=fer2013 "dataset.root=$DATA/fer2013" train=cifar \
        method=magnitude,l1_filter,network_slimming ratio=0.3,0.5,0.7
}

# ---------------------------------------------------------------- driver
ALL="demo cifar_magnitude double_pruning dynamic_filter fer"
[[ $SECTIONS == all ]] && SECTIONS=$ALL
for section in $SECTIONS; do
    if ! declare -F "sec_$section" >/dev/null; then
        echo "run.sh: unknown section '$section'; choose from: $ALL (or all)" >&2
        exit 2
    fi
done
for section in $SECTIONS; do
    echo "== $section"
    "sec_$section"
done
if [[ $DRY_RUN != 1 ]] && compgen -G "$OUT/*" >/dev/null; then
    echo "== all sweeps"
    "$PRUNE_REPORT" "$OUT" || failed=1
fi
exit $failed
