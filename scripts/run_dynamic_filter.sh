#!/bin/bash
# heehehe/pruning-decorrelation's run.sh, through Hydra: the repository's grid of runs on CIFAR-10
# ResNet-56 (recipe: configs/experiment/dynamic_filter_recipe.yaml; docs/methods.md §7, §13).
#
#   bash scripts/run_dynamic_filter.sh                       # every group below
#   DF_GROUPS="prune prune_reg" bash scripts/run_dynamic_filter.sh device=cuda
#   DATA=/data/cifar10 bash scripts/run_dynamic_filter.sh hydra/launcher=joblib
#
# Arguments are extra prune-run overrides for every run. Each group is one Hydra sweep under
# outputs/multirun/<date>/<time>/; `prune-report <dir>` tabulates it. 300 epochs each: a GPU job.
# The repository ran each setting once with seed 777; scripts/compare_reg.py repeats a setting
# over seeds to tell an effect from run-to-run noise.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${DATA:-${PRUNE_CLI_DATA:-data}/cifar10}
DF_GROUPS=${DF_GROUPS:-"baseline reg prune prune_reg"}

for group in $DF_GROUPS; do
    case $group in
        baseline)  mode=() ;;    # python modeling.py                      (88.57)
        reg)       mode=(-m) ;;  # --reg reg_cov --odecay 0.5..0.9          (87.96-88.51)
        prune)     mode=(-m) ;;  # --prune_type structured --prune_rate 0.5..0.9
        prune_reg) mode=(-m) ;;  # --prune_rate 0.5..0.9 --reg reg_cov --odecay 0.5..0.9
        *) echo "unknown group '$group'; choose from: baseline reg prune prune_reg" >&2; exit 2 ;;
    esac
    echo "== dynamic_filter_$group"
    prune-run "${mode[@]}" "+experiment=dynamic_filter_$group" "dataset.root=$DATA" "$@"
done
