#!/usr/bin/env bash
# One shard of a folder of images per task of a SLURM job array (docs/cluster.md).
#   TVE_INPUTS=/data/images TVE_OUT=/data/tve-out sbatch --array=0-9 slurm-array.sh
# Every task runs the same command; `--shard auto` reads SLURM_ARRAY_TASK_ID and the array's size
# and explains its 1/N of the inputs, split by path, so that the tasks never overlap and together
# cover every image. `--resume` makes a re-submitted task (after a pre-emption or a failure) skip
# what it finished. Each task writes tve-summary.shard-K-of-N.json under the output folder;
# merge-summaries.sh adds them up.
#SBATCH --job-name=tve-explain
#SBATCH --cpus-per-task=2
#SBATCH --mem=4G
#SBATCH --time=04:00:00
#SBATCH --output=tve-%A_%a.jsonl
#SBATCH --error=tve-%A_%a.log
set -euo pipefail

tve=${TVE:-tve}                                   # the tve binary (installed: cmake --install)
model=${TVE_MODEL:-resnet}                        # a bundle name or folder
inputs=${TVE_INPUTS:?set TVE_INPUTS to the images: a folder, or a file listing paths}
out=${TVE_OUT:?set TVE_OUT to the output folder, on a file system every node sees}

source_args=("$inputs")
if [[ -f $inputs ]]; then source_args=(-); exec <"$inputs"; fi   # a list of paths, one per line

# stdout (the --output file) gets one JSON record per image; the exit code tells SLURM whether
# every image of the shard succeeded (0), some failed (1), or the task could not run (2-7).
exec "$tve" explain "${source_args[@]}" --model "$model" --out "$out" \
  --shard auto --resume --progress never --threads "${SLURM_CPUS_PER_TASK:-2}"
