#!/usr/bin/env bash
# bench_train_step's step graphs on the emulated cuda backend (MT_CUDA_MODULE, ctest
# bench_train_step_emulated): not a timing, the path the GPU bench measures. --graphs 1 captures
# the step once and replays every later one (MT_EMU_REPORT: 1 capture, warm-up + steps - 1
# replays) doing exactly the device work of --graphs 0, and its RESULT line says graphs=1 and
# gives the device memory peak; --feature-cache 1 (frozen) gives its two lines, the head step on
# the cached features replayed too. Seconds.
#   bench_train_step_emulated.sh BENCH_TRAIN_STEP
set -u
bin=${1:?usage: bench_train_step_emulated.sh BENCH_TRAIN_STEP}
[[ -n ${MT_CUDA_MODULE:-} ]] || { echo "skipped: needs MT_CUDA_MODULE (the emulated module)"; exit 77; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
warmup=2 steps=3
common=(--backend cuda --batch 2 --size 32 --warmup $warmup --steps $steps)
flat() { # FILE (MT_EMU_REPORT's lines "captures C", "broken B", ...) on one line
    tr '\n' ' ' < "$1"
}
for g in 1 0; do
    MT_EMU_REPORT=$dir/report$g "$bin" "${common[@]}" --mode finetune --precision bf16 \
        --graphs $g > "$dir/out$g" 2>&1 || fail "--graphs $g: rc $?: $(cat "$dir/out$g")"
done
grep -qE '^RESULT mode=finetune .* graphs=1 ' "$dir/out1" ||
    fail "--graphs 1: no RESULT with graphs=1: $(cat "$dir/out1")"
# the device memory peak: more than cuBLAS' fixed 32 MiB workspace (the model's tensors)
peak=$(grep -oE 'gpu_peak_mb=[0-9]+' "$dir/out1" | cut -d= -f2)
((${peak:-0} > 32)) || fail "--graphs 1: device memory peak '${peak:-none}' MB, expected over 32"
grep -qE '^RESULT mode=finetune .* graphs=0 ' "$dir/out0" ||
    fail "--graphs 0: no RESULT with graphs=0: $(cat "$dir/out0")"
read -r _ captures _ broken _ replays _ work1 <<< "$(flat "$dir/report1")"
((captures == 1 && broken == 0 && replays == warmup + steps - 1)) ||
    fail "--graphs 1: expected 1 capture and $((warmup + steps - 1)) replays: $(flat "$dir/report1")"
read -r _ captures _ _ _ replays _ work0 <<< "$(flat "$dir/report0")"
((captures == 0 && replays == 0)) || fail "--graphs 0 captured: $(flat "$dir/report0")"
((work1 == work0)) || fail "the replayed steps did $work1 pieces of device work, eager $work0"

MT_EMU_REPORT=$dir/report_cache "$bin" "${common[@]}" --mode frozen --feature-cache 1 \
    > "$dir/out_cache" 2>&1 || fail "--feature-cache 1: rc $?: $(cat "$dir/out_cache")"
grep -qE '^RESULT mode=frozen_features .* graphs=0 trainable=0 ' "$dir/out_cache" &&
    grep -qE '^RESULT mode=frozen_cached .* graphs=1 trainable=1281 ' "$dir/out_cache" ||
    fail "--feature-cache 1: expected frozen_features and a replayed frozen_cached: $(cat "$dir/out_cache")"
read -r _ captures _ _ _ replays _ <<< "$(flat "$dir/report_cache")"
((captures == 1 && replays == warmup + steps - 1)) ||
    fail "--feature-cache 1: the head step was not captured once and replayed: $(flat "$dir/report_cache")"
echo "bench_train_step: graphs replay the eager step's $work0 pieces of work; feature cache pair runs"
