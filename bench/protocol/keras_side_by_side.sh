#!/usr/bin/env bash
# The 20% protocol (configs/cats_vs_dogs_20pct: frozen, finetune from frozen's final weights,
# scratch) trained by mobiletune and by Keras/TensorFlow on the same packed splits, with a table
# of final training accuracy, test accuracy and wall time per run (keras_side_by_side.py has the
# details). Packs ../shared/data/cats_vs_dogs_kaggle200 into data/cats_vs_dogs_20pct first when
# that folder is not there yet. Never run by CI (the full protocol takes hours on 2 cores).
#   bench/protocol/keras_side_by_side.sh [BUILD_DIR] [keras_side_by_side.py run options]
#   e.g. bench/protocol/keras_side_by_side.sh build --runs frozen,finetune --seeds 42,43
#        bench/protocol/keras_side_by_side.sh build --epochs 1 --runs frozen   (a smoke run)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

build="${1:-$root/build}"
if [ $# -gt 0 ]; then shift; fi
for program in "$build/mobiletune" "$build/data-prep/mobiletune-pack"; do
  if [ ! -x "$program" ]; then
    echo "keras_side_by_side: no $program; build it first:" >&2
    echo "  cmake --build $build --target mobiletune_cli mobiletune-pack" >&2
    exit 2
  fi
done
python="$root/.venv/bin/python"
[ -x "$python" ] || python=python3
if ! "$python" -c 'import tensorflow, lmdb' 2>/dev/null; then
  echo "keras_side_by_side: $python lacks tensorflow or lmdb (scripts/install-deps.sh installs" \
       "them into .venv)" >&2
  exit 2
fi
photos="${MT_SHARED_DIR:-$root/../shared}/data/cats_vs_dogs_kaggle200"
data="$root/data/cats_vs_dogs_20pct"
if [ ! -d "$data" ]; then
  "$build/data-prep/mobiletune-pack" --split train=0.8,val=0.1,test=0.1 --seed 1 "$photos" "$data"
fi
work="$root/runs/keras_side_by_side-$(date -u +%Y%m%d-%H%M%S)"
weights="${MT_SHARED_DIR:-$root/../shared}/weights/mobilenet_v2_1.0_224_imagenet_no_top.h5"
exec "$python" "$here/keras_side_by_side.py" run --mobiletune "$build/mobiletune" --data "$data" \
  --configs "$root/configs/cats_vs_dogs_20pct" --weights "$weights" --work "$work" "$@"
