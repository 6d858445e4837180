#!/usr/bin/env bash
# Install everything mobiletune's build, tests and benchmarks need on Debian 12, then nothing is
# left to do by hand. Idempotent: safe to run again. Needs root (or sudo).
#   scripts/install-deps.sh            build + test dependencies (what CI installs)
#   scripts/install-deps.sh --bench    also the heavier benchmark peers (PyTorch CPU)
set -euo pipefail
cd "$(dirname "$0")/.."

with_bench=0
for arg in "$@"; do
  case "$arg" in
    --bench) with_bench=1 ;;
    *) echo "install-deps.sh: unknown option '$arg' (use --bench or nothing)" >&2; exit 2 ;;
  esac
done

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

packages=(
  build-essential cmake pkg-config git ca-certificates curl unzip clang
  liblmdb-dev lmdb-utils libturbojpeg0-dev libjpeg62-turbo-dev libpng-dev libexif-dev libisal-dev zlib1g-dev
  libhdf5-dev libdnnl-dev ocl-icd-opencl-dev libinih-dev
  libopenmpi-dev openmpi-bin
  slurmctld slurmd slurm-client munge
  python3 python3-venv python3-pip python3-numpy python3-h5py python3-pil python3-lmdb
  gnuplot-nox
)
if [ "$with_bench" = 1 ]; then packages+=(python3-torch python3-torchvision); fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Keras/TensorFlow (the tutorial's own framework) is the independent reference the tests compare
# the whole network against. It lives in a project-local venv that also sees Debian's numpy/h5py.
if [ ! -x .venv/bin/python ]; then /usr/bin/python3 -m venv --system-site-packages .venv; fi
if ! .venv/bin/python -c 'import tensorflow' 2>/dev/null; then
  echo "install-deps: installing tensorflow-cpu into .venv"
  .venv/bin/pip install -q --disable-pip-version-check tensorflow-cpu
fi
# The independent reader the checkpoint test uses (it falls back to numpy without it).
if ! .venv/bin/python -c 'import safetensors' 2>/dev/null; then
  .venv/bin/pip install -q --disable-pip-version-check safetensors
fi
echo "install-deps: done"
