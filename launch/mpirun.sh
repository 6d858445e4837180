#!/usr/bin/env bash
# Start mobiletune data-parallel ranks with Open MPI's mpirun, on this node or on the hosts of a
# hostfile, with the environment Open MPI, OpenMP and NCCL need.
#
#   launch/mpirun.sh [options] [--] PROGRAM ARGS...
#     -n, --ranks N            total ranks (default: ranks-per-node x hosts, or 1)
#     -N, --ranks-per-node K   ranks on each host (GPU nodes: one per GPU)
#     -H, --hostfile FILE      Open MPI hostfile ("node1 slots=8" per line); default: this node
#     -t, --threads T          OpenMP/oneDNN threads per rank (default: cores / ranks-per-node)
#     -g, --gpu-per-rank       show each rank only its own GPU (CUDA_VISIBLE_DEVICES = entry
#                              local-rank modulo count of the node's GPUs); optional: without it
#                              every rank sees all GPUs and the trainer takes the same one itself
#         --dry-run            print the final command and exit
#
#   launch/mpirun.sh -N 2 -- build/mobiletune train --config configs/cats_vs_dogs/frozen.ini
#   launch/mpirun.sh -N 8 -- build/mobiletune train --config configs/cats_vs_dogs/finetune.ini --set train.backend=cuda
#   launch/mpirun.sh -H hosts -N 8 -- build/mobiletune train ...   (hosts: "node1 slots=8", "node2 slots=8")
#
# Variables passed to every rank (also on other hosts): OMP_NUM_THREADS, OMP_WAIT_POLICY,
# CUDA_VISIBLE_DEVICES, LD_LIBRARY_PATH and every NCCL_* and MT_* variable that is set.
# A rank that fails calls MPI_Abort and mpirun takes every rank down; a rank that dies is noticed
# by mpirun, which does the same. Either way this script exits non-zero.
set -euo pipefail

ranks="" per_node="" hostfile="" threads="" dry_run=0 gpu_per_rank=0
usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    -n|--ranks) ranks=$2; shift 2 ;;
    -N|--ranks-per-node) per_node=$2; shift 2 ;;
    -H|--hostfile) hostfile=$2; shift 2 ;;
    -t|--threads) threads=$2; shift 2 ;;
    -g|--gpu-per-rank) gpu_per_rank=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    -*) echo "mpirun.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    *) break ;;
  esac
done
if [ $# -eq 0 ]; then echo "mpirun.sh: no program given (see --help)" >&2; exit 2; fi
if ! command -v mpirun >/dev/null; then
  echo "mpirun.sh: mpirun not found: apt-get install openmpi-bin libopenmpi-dev" >&2; exit 2
fi
if [ -n "$hostfile" ] && [ ! -r "$hostfile" ]; then
  echo "mpirun.sh: cannot read hostfile '$hostfile'" >&2; exit 2
fi

hosts=1
if [ -n "$hostfile" ]; then hosts=$(grep -cvE '^\s*(#|$)' "$hostfile"); fi
per_node=${per_node:-1}
ranks=${ranks:-$(( per_node * hosts ))}
cores=$(nproc)
threads=${threads:-$(( cores / per_node > 0 ? cores / per_node : 1 ))}

cmd=(mpirun -np "$ranks" --map-by "ppr:${per_node}:node" --bind-to none)
[ -n "$hostfile" ] && cmd+=(--hostfile "$hostfile")
# More ranks than cores is fine for testing on a small machine; OpenMP threads must then wait
# passively, or each rank's spinning threads steal the cores the other ranks need.
if [ "$per_node" -gt "$cores" ]; then
  cmd+=(--oversubscribe)
  export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
fi
# Environment every rank needs: threads per rank, NCCL warnings in the job log, and what the
# user set for NCCL (fabric), CUDA and mobiletune; Open MPI does not pass it on to other hosts
# by itself.
export OMP_NUM_THREADS=$threads
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
for var in OMP_NUM_THREADS OMP_WAIT_POLICY CUDA_VISIBLE_DEVICES LD_LIBRARY_PATH \
           $(compgen -e | grep -E '^(NCCL|MT)_' | sort); do
  [ -n "${!var:-}" ] && cmd+=(-x "$var")
done
if [ "$(id -u)" -eq 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
# --gpu-per-rank: launch/one-gpu.sh in front of each rank narrows its CUDA_VISIBLE_DEVICES (the
# hosts need this repository at the same path, as they need the program).
[ "$gpu_per_rank" = 1 ] && cmd+=("$(cd "$(dirname "$0")" && pwd)/one-gpu.sh")
cmd+=("$@")

if [ "$dry_run" = 1 ]; then
  printf 'OMP_NUM_THREADS=%s ' "$threads"; printf '%q ' "${cmd[@]}"; echo; exit 0
fi
exec "${cmd[@]}"
