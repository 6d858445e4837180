#!/usr/bin/env bash
# Start mobiletune data-parallel ranks with Open MPI's mpirun, on this node or on the hosts of a
# hostfile, with the environment Open MPI, OpenMP and NCCL need.
#
#   launch/mpirun.sh [options] [--] PROGRAM ARGS...
#     -n, --ranks N            total ranks (default: ranks-per-node x hosts, or 1)
#     -N, --ranks-per-node K   ranks on each host (GPU nodes: one per GPU)
#     -H, --hostfile FILE      Open MPI hostfile ("node1 slots=8" per line); default: this node
#     -t, --threads T          OpenMP/oneDNN threads per rank (default: cores / ranks-per-node)
#         --dry-run            print the final command and exit
#
#   launch/mpirun.sh -N 2 -- build/mobiletune train --config configs/cats_vs_dogs/frozen.ini
#
# A rank that fails calls MPI_Abort and mpirun takes every rank down; a rank that dies is noticed
# by mpirun, which does the same. Either way this script exits non-zero.
set -euo pipefail

ranks="" per_node="" hostfile="" threads="" dry_run=0
usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    -n|--ranks) ranks=$2; shift 2 ;;
    -N|--ranks-per-node) per_node=$2; shift 2 ;;
    -H|--hostfile) hostfile=$2; shift 2 ;;
    -t|--threads) threads=$2; shift 2 ;;
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
# Environment every rank needs: threads per rank, and NCCL warnings in the job log.
export OMP_NUM_THREADS=$threads
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
for var in OMP_NUM_THREADS OMP_WAIT_POLICY NCCL_DEBUG NCCL_SOCKET_IFNAME \
           NCCL_IB_HCA MT_FAULT_RANK MT_FAULT_STEP MT_ERROR_LOCATION; do
  [ -n "${!var:-}" ] && cmd+=(-x "$var")
done
if [ "$(id -u)" -eq 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
cmd+=("$@")

if [ "$dry_run" = 1 ]; then
  printf 'OMP_NUM_THREADS=%s ' "$threads"; printf '%q ' "${cmd[@]}"; echo; exit 0
fi
exec "${cmd[@]}"
