#!/usr/bin/env bash
# Data-parallel scaling on this machine: per-step time and the all-reduce's share of it for 1, 2
# and 4 MPI ranks (the global batch grows with the ranks: weak scaling, per-rank batch fixed), and
# the bytes one step all-reduces in each mode. Ratios are against the 1-rank run of the same mode
# in this same script. Each run trains 2 short epochs; the second is timed (the first pays for
# oneDNN primitive creation and the page cache).
#
#   bench/comm/bench_scaling.sh [BUILD_DIR] [DB]
#     BUILD_DIR  default build; DB default data/cats_vs_dogs (mobiletune-pack --split output)
#   env: RANKS="1 2 4", MODES="scratch finetune frozen", STEPS=6 (per run), BATCH=8 (per rank),
#        BUCKET_MB=4 (train.bucket_mb; 0: one all-reduce after backward, to see what overlap gains)
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build}
db=${2:-data/cats_vs_dogs}
ranks_list=${RANKS:-1 2 4}
modes=${MODES:-scratch finetune frozen}
steps=${STEPS:-6}
batch=${BATCH:-8}
if [ ! -x "$build/mobiletune" ]; then echo "bench_scaling: build first ($build/mobiletune)" >&2; exit 2; fi
if [ ! -f "$db/train/data.mdb" ]; then echo "bench_scaling: no packed data at $db (run scripts/run-default.sh)" >&2; exit 2; fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# Ranks may outnumber cores here: OpenMP threads that spin while waiting steal them from the
# other ranks, so wait passively unless told otherwise.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
weights=../shared/weights/mobilenet_v2_1.0_224_imagenet_no_top.h5
[ -f "$weights" ] || weights=none
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cores=$(nproc)

printf '%-9s %5s %12s %14s %12s %14s %10s\n' mode ranks "bytes/step" "ms/step" "all-reduce" "img/s" "vs 1 rank"
for mode in $modes; do
  base_rate=""
  for ranks in $ranks_list; do
    threads=$(( cores / ranks > 0 ? cores / ranks : 1 ))
    run_dir="$tmp/$mode-$ranks"
    args=(train --config configs/cats_vs_dogs/$mode.ini --no-progress
          --set "data.train=$db/train" --set data.val=none --set data.test=none --set "output.run_dir=$run_dir"
          --set "model.weights=$weights" --set model.init_checkpoint=none
          --set train.epochs=2 --set "train.steps_per_epoch=$steps" --set "data.batch_size=$batch"
          --set "train.threads=$threads" --set data.random_flip=false --set train.cache_features=off
          --set output.keep_last=false --set output.keep_best=false --set output.tensorboard=false
          --set "train.bucket_mb=${BUCKET_MB:-4}")
    if [ "$ranks" = 1 ]; then
      out=$("$build/mobiletune" "${args[@]}" 2>&1)
    else
      out=$(mpirun --oversubscribe --bind-to none -np "$ranks" -x OMP_NUM_THREADS="$threads" \
            "$build/mobiletune" "${args[@]}" 2>&1)
    fi
    bytes=$(sed -n 's/.*all-reduce per step: \([0-9]*\) bytes.*/\1/p' <<<"$out")
    line=$(grep '^epoch 2/2' <<<"$out" || { echo "$out" >&2; exit 1; })
    ms=$(sed -n 's/.*(\([0-9.]*\) ms\/step.*/\1/p' <<<"$line")
    share=$(sed -n 's/.*all-reduce \([0-9.]*\)%.*/\1/p' <<<"$line")
    rate=$(sed -n 's/.*  \([0-9.]*\) img\/s.*/\1/p' <<<"$line")
    [ -z "$base_rate" ] && base_rate=$rate
    ratio=$(awk -v a="$rate" -v b="$base_rate" 'BEGIN { printf "%.2fx", a / b }')
    printf '%-9s %5s %12s %14s %11s%% %14s %10s\n' "$mode" "$ranks" "$bytes" "$ms" "$share" "$rate" "$ratio"
  done
done
echo "(machine: $(nproc) cores; $(( cores )) threads shared by the ranks; oversubscribed above $cores ranks)"
