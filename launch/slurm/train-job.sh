#!/bin/bash
# The body of a mobiletune Slurm job, shared by train-cpu.sbatch and train-gpu.sbatch (which hold
# the #SBATCH requests, the only part that must differ: #SBATCH lines cannot be conditional).
# Run inside the allocation by those files; not a job script of its own.
#
#   train-job.sh cpu|gpu     run the job
#   train-job.sh backend     print the backend MT_CONFIG and MT_ARGS select (for submit.sh)
#
# Environment (exported into the job by sbatch): MT_ROOT (repository), MT_BIN (default
# $MT_ROOT/build/mobiletune), MT_CONFIG (default the tutorial's frozen run), MT_ARGS (more
# arguments for `mobiletune train`, e.g. "--set train.epochs=20").
#
# gpu: the job holds one GPU per task on each node and the run uses train.backend=cuda. The
# trainer picks GPU = local rank modulo the visible devices, which gives each rank its own GPU
# whether Slurm shows a task all the node's GPUs or only its own, so nothing here sets
# CUDA_VISIBLE_DEVICES.
# cpu: no GPU is reserved, so a config (or MT_ARGS) that asks for the cuda backend is refused here,
# before any rank starts: on a GPU node it would use GPUs that other jobs own.
set -euo pipefail

kind=${1:-}
case "$kind" in
  cpu) script=train-cpu.sbatch ;;
  gpu) script=train-gpu.sbatch ;;
  backend) script=submit.sh ;;
  *) echo "train-job.sh: usage: train-job.sh cpu|gpu|backend (run by launch/slurm/train-{cpu,gpu}.sbatch)" >&2
     exit 2 ;;
esac
MT_ROOT=${MT_ROOT:?train-job.sh: MT_ROOT is not set (the .sbatch files set it)}
MT_BIN=${MT_BIN:-$MT_ROOT/build/mobiletune}
MT_CONFIG=${MT_CONFIG:-$MT_ROOT/configs/cats_vs_dogs/frozen.ini}
if [ ! -r "$MT_CONFIG" ]; then
  echo "$script: cannot read the config $MT_CONFIG: set MT_CONFIG to an existing .ini file" >&2
  exit 2
fi

# The backend the run would use: the last `--set train.backend=X` of MT_ARGS, else the config's
# [train] backend, else the program's default (cpu).
backend_of() {
  local from_args from_config
  # shellcheck disable=SC2086
  from_args=$(printf '%s\n' ${MT_ARGS:-} | sed -n 's/^train\.backend=//p' | tail -n 1)
  if [ -n "$from_args" ]; then echo "$from_args"; return; fi
  from_config=$(awk -F= '
    /^[ \t]*\[/ { section = $0; gsub(/[ \t\[\]]/, "", section); next }
    section == "train" && $1 ~ /^[ \t]*backend[ \t]*$/ { value = $2; sub(/[;#].*/, "", value);
                                                         gsub(/[ \t\r]/, "", value); found = value }
    END { print found }' "$MT_CONFIG")
  echo "${from_config:-cpu}"
}

if [ "$kind" = backend ]; then backend_of; exit 0; fi
if [ -z "${SLURM_JOB_ID:-}" ]; then
  echo "$script: not inside a Slurm job: submit it with sbatch launch/slurm/$script" >&2
  exit 2
fi

if [ ! -x "$MT_BIN" ]; then
  echo "$script: no mobiletune binary at $MT_BIN: build it (cmake --build build) or set MT_BIN" >&2
  exit 2
fi

extra=""
if [ "$kind" = gpu ]; then
  # Last, so that it wins over the config and MT_ARGS: this job holds GPUs and uses them.
  extra="--set train.backend=cuda"
  # NCCL's warnings (a bad fabric, a fallback to sockets) belong in the job log.
  export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
  # One GPU per rank needs as many GPUs as ranks on each node (SLURM_GPUS_PER_NODE may read
  # "type:8"); fewer means ranks share GPUs, which works over MPI only, and slowly.
  gpus=${SLURM_GPUS_PER_NODE:-}; gpus=${gpus##*:}
  tasks=${SLURM_NTASKS_PER_NODE:-}
  if [[ "$gpus" =~ ^[0-9]+$ && "$tasks" =~ ^[0-9]+$ ]] && [ "$gpus" -lt "$tasks" ]; then
    echo "$script: warning: $tasks ranks per node share $gpus GPUs: ask --gpus-per-node=$tasks" \
         "(or fewer --ntasks-per-node) for one GPU per rank" >&2
  fi
else
  backend=$(backend_of)
  if [ "$backend" = cuda ]; then
    echo "$script: train.backend = cuda (from $MT_CONFIG or MT_ARGS), but this job reserves no GPUs:" \
         "submit launch/slurm/train-gpu.sbatch instead, or add --set train.backend=cpu to MT_ARGS" >&2
    exit 2
  fi
fi
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}

echo "$script: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}), ${SLURM_NTASKS:-1} ranks on" \
     "${SLURM_JOB_NUM_NODES:-1} node(s)${SLURM_GPUS_PER_NODE:+, GPUs per node: $SLURM_GPUS_PER_NODE}"
# --kill-on-bad-exit: a rank that fails or dies takes the whole step down, never a hang.
# shellcheck disable=SC2086
exec srun --mpi=pmix --kill-on-bad-exit=1 "$MT_BIN" train --config "$MT_CONFIG" --resume auto \
  ${MT_ARGS:-} $extra
