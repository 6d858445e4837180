#!/usr/bin/env bash
# mobiletune `cpu` vs PyTorch CPU vs Keras/TensorFlow CPU: forward+backward images/s at batch 32,
# 160x160, for scratch, frozen and finetune@100, printed as ratios (compare_frameworks.py has the
# details). Never run by CI: PyTorch comes from `scripts/install-deps.sh --bench`.
#   bench/model/compare_frameworks.sh [BENCH_TRAIN_STEP|BUILD_DIR] [compare_frameworks.py options]
#   e.g. bench/model/compare_frameworks.sh build --threads 2 --steps 5
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

target="${1:-$root/build}"
if [ $# -gt 0 ]; then shift; fi
if [ -d "$target" ]; then target="$target/bench/model/bench_train_step"; fi
if [ ! -x "$target" ]; then
  echo "compare_frameworks: no bench_train_step at $target; build it first:" >&2
  echo "  cmake --build build --target bench_train_step" >&2
  exit 2
fi

keras_python="$root/.venv/bin/python"
[ -x "$keras_python" ] || keras_python=python3
torch_python=/usr/bin/python3
extra=()
if ! "$torch_python" -c 'import torch, torchvision' 2>/dev/null; then
  echo "compare_frameworks: $torch_python has no torch/torchvision (scripts/install-deps.sh --bench" \
       "installs python3-torch python3-torchvision); PyTorch is left out" >&2
  extra+=(--no-torch)
fi
if ! "$keras_python" -c 'import tensorflow' 2>/dev/null; then
  echo "compare_frameworks: $keras_python has no tensorflow (scripts/install-deps.sh installs it" \
       "into .venv); Keras is left out" >&2
  extra+=(--no-keras)
fi
exec "$keras_python" "$here/compare_frameworks.py" run --ours "$target" \
  --torch-python "$torch_python" --keras-python "$keras_python" "${extra[@]}" "$@"
