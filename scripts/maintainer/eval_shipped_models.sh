#!/usr/bin/env bash
# The `tve eval` tables of models/README.md: every method on each shipped model, on fixed held-out
# scenes with object masks (emoji, and the fashion downstream task through its own head).
#   bash scripts/maintainer/eval_shipped_models.sh OUT_DIR [N_SCENES]
# RISE and Kernel SHAP run with 500 samples (their defaults, 4000 and 2000, take minutes per image
# on the ViT and Swin on two cores); everything else at its defaults.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:?usage: eval_shipped_models.sh OUT_DIR [N_SCENES]}
n=${2:-40}
tve=${TVE:-build/tve}
for task in emoji fashion; do
  /usr/bin/python3 scripts/maintainer/export_eval_scenes.py --task "$task" --n "$n" --out "$out/scenes-$task"
done
for model in resnet swin vit; do
  for task in emoji fashion; do
    head=target; [[ $task == emoji ]] || head=$task
    "$tve" eval "$out/scenes-$task" --model "$model" --head "$head" --progress never \
      --methods tve,gradcam,gradcam++,saliency,smoothgrad,ig,occlusion --out "$out/$model-$task"
    "$tve" eval "$out/scenes-$task" --model "$model" --head "$head" --progress never \
      --methods rise,kernelshap --samples 500 --out "$out/$model-$task-sampling"
  done
done
