#!/usr/bin/env bash
# The golden-step tool on a small model (alpha 0.35, 64x64, batch 4, random weights): written on
# the reference backend, it must pass on the reference (identical) and on the cpu backend (another
# summation order, within the error model, the betas moved off the ReLU6 kinks by `write`), and
# must fail when one gradient is off by 1% (--break), a low layer's too, on either backend.
set -u
tool=${1:?usage: golden_selftest.sh GPU_GOLDEN_STEP}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
# 64x64 as test_gpu_model.c: at 32x32 the top layers are 1x1, so their batch-statistics BN
# normalizes 4 values, a cancellation beyond the error model's measured C (cpu vs reference
# logits 8.4e-5 there, the limit 8.3e-5; 7e-6 at 64x64)
small=(--alpha 0.35 --size 64 --batch 4 --weights none)
fail() { echo "FAIL: $*"; exit 1; }
"$tool" write "$dir/g" --backend reference "${small[@]}" || fail "write on the reference backend"
"$tool" check "$dir/g" --backend reference "${small[@]}" || fail "reference against itself"
"$tool" check "$dir/g" --backend cpu "${small[@]}" || fail "cpu against reference"
"$tool" check "$dir/g" --backend reference "${small[@]}" --break dense/kernel
[[ $? == 1 ]] || fail "a dense kernel gradient off by 1% passed"
# on the other backend, where the rounding differences are there too
"$tool" check "$dir/g" --backend cpu "${small[@]}" --break Conv1/kernel
[[ $? == 1 ]] || fail "cpu: the lowest conv kernel gradient off by 1% passed"
"$tool" check "$dir/g" --backend cpu "${small[@]}" --break block_1_depthwise/depthwise_kernel
[[ $? == 1 ]] || fail "cpu: block_1's depthwise kernel gradient off by 1% passed"
"$tool" check "$dir/g" --backend reference --alpha 0.5 --size 64 --batch 4 --weights none
[[ $? == 2 ]] || fail "a golden file of another alpha was not refused"
head -c 2000 "$dir/g" > "$dir/short"
"$tool" check "$dir/short" --backend reference "${small[@]}"
[[ $? == 2 ]] || fail "a truncated golden file was not refused"
echo PASSED
