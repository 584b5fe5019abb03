#!/usr/bin/env bash
# TVE and Grad-CAM cost against the model's own forward pass at 224 px, for real-size torchvision
# encoders (docs/performance.md, "Explaining at 224 px"). Seed-fixed random weights: the cost of a
# pass does not depend on what the weights learned, and nothing is downloaded.
#
#   bash scripts/maintainer/bench_explain_cost.sh [WORK_DIR] [TVE_BINARY]
#
# Per model: make_bundle.py, a 4-step explainer from train_explainer.py on 24 photos made from the
# samples, then `tve bench --method tve` and `--method gradcam` (batch 1, one thread). One JSON
# line per model and method on stdout. About 15 minutes on one loaded thread, 6 GB of disk.
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${1:-${TVE_CACHE:-$HOME/.cache/tve}/bench-explain-cost}
tve=${2:-build/tve}
mkdir -p "$work"
/usr/bin/python3 scripts/maintainer/make_bench_images.py 24 "$work/images" >/dev/null
for arch in resnet50 swin_t vit_b_16; do
  if [[ ! -f $work/$arch/explainer.pt ]]; then
    /usr/bin/python3 - "$arch" "$work" <<'PY'
import sys, torch, torchvision
arch, work = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
net = getattr(torchvision.models, arch)(num_classes=10)
for p in net.parameters():  # torchvision's ViT head starts at zero: every map would be 0
    if p.dim() == 2 and p.abs().sum() == 0:
        torch.nn.init.normal_(p, std=0.02)
torch.save(net.state_dict(), f"{work}/{arch}.pth")
open(f"{work}/labels.txt", "w").write("\n".join(f"class{i}" for i in range(10)) + "\n")
PY
    /usr/bin/python3 scripts/make_bundle.py --torchvision "$arch" --weights "$work/$arch.pth" \
      --labels "$work/labels.txt" --out "$work/$arch" --force >&2
    /usr/bin/python3 scripts/train_explainer.py --model "$work/$arch" --images "$work/images" --steps 4 --batch 4 \
      --bank-images 4 --holdout 1 --threads 1 --run "$work/run-$arch" --restart --no-progress >&2
  fi
  for method in tve gradcam; do
    "$tve" bench --model "$work/$arch" --method "$method" --repeats 10 --threads 1 -q
  done
done
