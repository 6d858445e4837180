#!/usr/bin/env bash
# Install everything mobiletune's build, tests and benchmarks need on Debian 12, then nothing is
# left to do by hand. Idempotent: safe to run again.
#   scripts/install-deps.sh            build + test dependencies (what CI installs)
#   scripts/install-deps.sh --bench    also the heavier benchmark peers (PyTorch CPU)
# Not root: apt-get runs through sudo (it asks for your password); without sudo it stops, listing
# the packages for an administrator to install (run it again afterwards). No apt-get (not Debian
# or a derivative): it stops, listing the Debian 12 package names to find in your system's package
# manager; once they are installed, MT_SKIP_APT=1 scripts/install-deps.sh sets up only the .venv.
# Another apt-based system (Ubuntu, another Debian release): it tries, warning that the names are
# Debian 12's.
# CUDA is not installed here (see README.md: it is optional).
set -euo pipefail
cd "$(dirname "$0")/.."

with_bench=0
for arg in "$@"; do
  case "$arg" in
    --bench) with_bench=1 ;;
    *) echo "install-deps.sh: unknown option '$arg' (use --bench or nothing)" >&2; exit 2 ;;
  esac
done

packages=(
  build-essential cmake pkg-config git ca-certificates curl unzip clang
  liblmdb-dev lmdb-utils libturbojpeg0-dev libjpeg62-turbo-dev libpng-dev libexif-dev libisal-dev zlib1g-dev
  libhdf5-dev libdnnl-dev ocl-icd-opencl-dev libinih-dev libjansson-dev
  libopenmpi-dev openmpi-bin
  slurmctld slurmd slurm-client munge
  python3 python3-venv python3-pip python3-numpy python3-h5py python3-pil python3-lmdb
  gnuplot-nox
  libprotobuf-c-dev protobuf-c-compiler libonnx-dev  # mobiletune export --format onnx (onnx.proto -> C)
)
if [ "$with_bench" = 1 ]; then packages+=(python3-torch python3-torchvision); fi

# stop_with_list REASON: what to install by hand, and stop
stop_with_list() {
  {
    echo "install-deps: $1"
    echo "install-deps: install these Debian 12 packages (or your system's equivalents):"
    printf '  %s\n' "${packages[*]}"
    echo "  then run this again; where there is no apt-get, MT_SKIP_APT=1 $0 sets up only .venv"
  } >&2
  exit 1
}
if [ "${MT_SKIP_APT:-0}" = 1 ]; then
  echo "install-deps: MT_SKIP_APT=1: not checking the system packages"
elif ! command -v apt-get > /dev/null || ! command -v dpkg-query > /dev/null; then
  stop_with_list "no apt-get/dpkg here: this script installs with Debian's package manager only"
elif ! grep -qs '^ID=debian$' /etc/os-release || ! grep -qs '^VERSION_ID="12"$' /etc/os-release; then
  echo "install-deps: warning: not Debian 12 ($(. /etc/os-release 2>/dev/null; echo "${PRETTY_NAME:-unknown}")); the package names are Debian 12's" >&2
fi

missing=()
for p in "${packages[@]}"; do
  [ "${MT_SKIP_APT:-0}" = 1 ] && break
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo > /dev/null ||
      stop_with_list "not root and no sudo: cannot install ${missing[*]}"
    SUDO="sudo"
  fi
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
# ONNX's checker and ONNX Runtime: what tests/export checks `mobiletune export --format onnx` with.
if ! .venv/bin/python -c 'import onnx, onnxruntime' 2>/dev/null; then
  .venv/bin/pip install -q --disable-pip-version-check onnx onnxruntime
fi
echo "install-deps: done"
