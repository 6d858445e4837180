#!/usr/bin/env bash
# The golden-step tool on a small model (alpha 0.35, 32x32, batch 4, random weights): written on
# the reference backend, it must pass on the reference (identical) and on the cpu backend (another
# summation order, within the error model), and must fail when one gradient is off by 5%.
set -u
tool=${1:?usage: golden_selftest.sh GPU_GOLDEN_STEP}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
small=(--alpha 0.35 --size 32 --batch 4 --weights none)
fail() { echo "FAIL: $*"; exit 1; }
"$tool" write "$dir/g" --backend reference "${small[@]}" || fail "write on the reference backend"
"$tool" check "$dir/g" --backend reference "${small[@]}" || fail "reference against itself"
"$tool" check "$dir/g" --backend cpu "${small[@]}" || fail "cpu against reference"
"$tool" check "$dir/g" --backend reference "${small[@]}" --break dense/kernel
[[ $? == 1 ]] || fail "a dense kernel gradient off by 5% passed"
"$tool" check "$dir/g" --backend reference "${small[@]}" --break Conv1/kernel
[[ $? == 1 ]] || fail "the lowest conv kernel gradient off by 5% passed"
"$tool" check "$dir/g" --backend reference --alpha 0.5 --size 32 --batch 4 --weights none
[[ $? == 2 ]] || fail "a golden file of another alpha was not refused"
head -c 2000 "$dir/g" > "$dir/short"
"$tool" check "$dir/short" --backend reference "${small[@]}"
[[ $? == 2 ]] || fail "a truncated golden file was not refused"
echo PASSED
