#!/bin/bash
# Submit mobiletune to Slurm with the job script its backend needs: train-gpu.sbatch (one GPU per
# rank) when MT_CONFIG / MT_ARGS select train.backend = cuda, train-cpu.sbatch (no GPU asked for)
# otherwise. #SBATCH lines cannot depend on the config; this choice can.
#
#   launch/slurm/submit.sh [SBATCH OPTIONS...]
#     --dry-run      print the sbatch command and exit
#   MT_CONFIG=configs/cats_vs_dogs/finetune.ini MT_ARGS="--set train.backend=cuda" \
#     launch/slurm/submit.sh --nodes=2                                    # 2 nodes x 8 GPUs
#
# Environment: MT_CONFIG, MT_ARGS, MT_BIN, MT_ROOT as the job scripts read them (sbatch exports
# them into the job). Every other argument goes to sbatch as it is (e.g. --test-only).
# A GPU run on a cluster without GPUs is refused by sbatch; this script then says what to do.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export MT_ROOT=${MT_ROOT:-$(dirname "$(dirname "$here")")}

dry_run=0 options=()
for arg in "$@"; do
  case "$arg" in
    --dry-run) dry_run=1 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) options+=("$arg") ;;
  esac
done
backend=$(bash "$here/train-job.sh" backend)
job="$here/train-cpu.sbatch"
[ "$backend" = cuda ] && job="$here/train-gpu.sbatch"
cmd=(sbatch "${options[@]}" "$job")
if [ "$dry_run" = 1 ]; then
  echo "train.backend = $backend"; printf '%q ' "${cmd[@]}"; echo; exit 0
fi
if ! command -v sbatch >/dev/null; then
  echo "submit.sh: sbatch not found: run this on a Slurm login node" >&2; exit 2
fi

errors=$(mktemp)
trap 'rm -f "$errors"' EXIT
rc=0
"${cmd[@]}" 2>"$errors" || rc=$?
cat "$errors" >&2
if [ "$rc" -ne 0 ] && [ "$backend" = cuda ] && grep -qi 'generic resource\|gres' "$errors"; then
  echo "submit.sh: this cluster (or partition) has no GPUs for Slurm to give (gres 'gpu')," \
       "and train.backend = cuda needs one per rank: submit to a GPU partition (--partition=...)," \
       "or train on CPUs with MT_ARGS=\"--set train.backend=cpu\" (launch/slurm/train-cpu.sbatch)" >&2
fi
exit "$rc"
