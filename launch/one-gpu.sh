#!/usr/bin/env bash
# Run one rank with only its own GPU visible: CUDA_VISIBLE_DEVICES becomes the entry
# (local rank modulo their count) of the GPUs this process was given (CUDA_VISIBLE_DEVICES), or
# of every GPU nvidia-smi lists on this host. launch/mpirun.sh --gpu-per-rank puts it in front of
# each rank; the local rank comes from Open MPI (OMPI_COMM_WORLD_LOCAL_RANK) or Slurm
# (SLURM_LOCALID).
#
#   launch/one-gpu.sh PROGRAM ARGS...
#
# Optional: without it each rank sees every GPU and the trainer picks the same one itself
# (GPU = local rank modulo the visible devices). With it, a rank's CUDA context, its memory and
# its error messages concern only its own GPU.
set -euo pipefail
if [ $# -eq 0 ]; then echo "one-gpu.sh: no program given (usage: one-gpu.sh PROGRAM ARGS...)" >&2; exit 2; fi
local_rank=${OMPI_COMM_WORLD_LOCAL_RANK:-${SLURM_LOCALID:-0}}
devices=${CUDA_VISIBLE_DEVICES:-}
if [ -z "$devices" ]; then
  count=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  [ "${count:-0}" -gt 0 ] && devices=$(seq -s, 0 $((count - 1)))
fi
IFS=, read -ra gpus <<< "$devices"
if [ ${#gpus[@]} -eq 0 ]; then
  echo "one-gpu.sh: no GPU on $(hostname): CUDA_VISIBLE_DEVICES is unset and nvidia-smi -L lists" \
       "none (drop --gpu-per-rank for a CPU run)" >&2
  exit 2
fi
export CUDA_VISIBLE_DEVICES=${gpus[$(( local_rank % ${#gpus[@]} ))]}
exec "$@"
