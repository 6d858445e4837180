#!/usr/bin/env bash
# bench/gpu/bench_gpu.sh's flow without a GPU: a stand-in bench_train_step (fp32 works, every
# --precision is refused as an older binary does; --feature-cache 1 gives its two lines) and a
# stand-in PyTorch (RESULT lines for the cases it is given). Checks the ranking (finetune bf16 32
# first), that a refused precision is noted once and not tried again, that PyTorch runs the same
# cases, the feature-cache case's two results on both sides, torch.compile for the top case and
# finetune bf16 256, and the ratio table with both memory peaks and the graphs flag.
set -u
here=$(cd "$(dirname "$0")" && pwd)
bench=$here/../../bench/gpu/bench_gpu.sh
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*"; cat "$dir/out/bench_results.txt" 2> /dev/null; exit 1; }
cat > "$dir/bench_train_step" << 'EOS'
#!/usr/bin/env bash
echo "$*" >> "${0%/*}/calls.txt"
mode=? batch=? cache=0
while (($#)); do
    case $1 in
    --precision) echo "bench_train_step: unknown option --precision"; echo "usage: ..."; exit 2 ;;
    --mode) mode=$2 ;; --batch) batch=$2 ;; --feature-cache) cache=$2 ;;
    esac
    shift
done
modes=$mode
((cache)) && modes="frozen_features frozen_cached"
for m in $modes; do
    if [[ $m == frozen_cached && -n ${STANDIN_HEAD_FAILS:-} ]]; then
        echo "bench_train_step: time_steps(...) failed: MT_ERR_BACKEND: stand-in failure"; exit 1
    fi
    echo "RESULT mode=$m backend=cuda precision=fp32 batch=$batch size=160 threads=0 graphs=1 median_s=0.01 images_per_s=$((batch * 100)) peak_rss_mb=1 gpu_peak_mb=7"
done
EOS
cat > "$dir/python" << 'EOS'
#!/usr/bin/env bash
if [[ $2 == run ]]; then
    cases=$4
    echo "torch run $*" >> "${0%/*}/calls.txt"
    IFS=, read -r -a list <<< "$cases"
    [[ $* == *--compiled-only* ]] && suffix=_compile || suffix=
    for c in "${list[@]}"; do
        IFS=: read -r m p b <<< "$c"
        modes=$m
        [[ $m == frozen_cache ]] && modes="frozen_features frozen_cached"
        for mm in $modes; do
            echo "RESULT framework=torch variant=$p$suffix mode=$mm batch=$b size=160 trainable=1 median_s=0.01 images_per_s=$((b * 200)) gpu_peak_mb=1 device=NVIDIA_H200"
        done
    done
    exit 0
fi
exec python3 "$@"
EOS
chmod +x "$dir/bench_train_step" "$dir/python"
MT_TORCH_PYTHON=$dir/python MT_BENCH_DEADLINE_S=120 bash "$bench" "$dir/bench_train_step" "$dir/out" \
    > "$dir/log" 2>&1 || fail "bench_gpu.sh rc $?: $(tail -3 "$dir/log")"
r=$dir/out/bench_results.txt
head -1 "$dir/calls.txt" | grep -q -- '--mode finetune --batch 32' || fail "the first case is not finetune batch 32"
[[ $(grep -c 'refuses bf16' "$r") == 1 ]] || fail "bf16 refusal not noted exactly once"
[[ $(grep -c -- '--precision bf16' "$dir/calls.txt") == 1 ]] || fail "a refused precision was tried again"
grep -q '^RESULT framework=mobiletune variant=fp32 mode=scratch .*batch=128' "$r" || fail "no fp32 scratch 128"
grep -q '^RESULT framework=torch variant=bf16 mode=finetune batch=32' "$r" || fail "torch did not run the top case"
t=$dir/out/bench_table.txt
grep -qE '^finetune +fp32 +32 +3200 +6400 +0.50 +- +- +1 +7 +1 ' "$t" || fail "ratio table: $(cat "$t")"
grep -q -- '--mode frozen .*--feature-cache 1' "$dir/calls.txt" || fail "frozen_cache did not ask for the feature cache"
for m in frozen_features frozen_cached; do
    grep -qE "^$m +fp32 +128 +12800 +25600 +0.50" "$t" || fail "no $m fp32 128 row: $(cat "$t")"
done
grep -q -- 'run --cases finetune:bf16:32,finetune:bf16:256 --compiled-only' "$dir/calls.txt" ||
    fail "torch.compile did not get the top case and finetune bf16 256: $(grep compiled "$dir/calls.txt")"
grep -qE '^finetune +bf16 +256 +- +51200 +- +51200 ' "$t" || fail "compiled figure missing at 256: $(cat "$t")"

# a case that fails after printing a result (frozen_cache: the head steps fail after the cache was
# measured) keeps that result, is noted as failed, and does not count as refusing its precision
rm -rf "$dir/out" "$dir/calls.txt"
STANDIN_HEAD_FAILS=1 MT_BENCH_CASES=frozen_cache:tf32:64,finetune:tf32:64 MT_TORCH_PYTHON=$dir/python \
    MT_BENCH_DEADLINE_S=30 bash "$bench" "$dir/bench_train_step" "$dir/out" > "$dir/log" 2>&1 ||
    fail "bench_gpu.sh with a failing head step: rc $?: $(tail -3 "$dir/log")"
grep -q '^RESULT framework=mobiletune variant=tf32 mode=frozen_features ' "$r" ||
    fail "the cache's result was dropped when the head steps failed"
grep -q '^NOTE mobiletune frozen_cache tf32 batch 64 failed (rc 1)' "$r" || fail "the failure was not noted"
! grep -q 'refuses' "$r" || fail "a failed case counted as refusing its precision"
grep -q '^RESULT framework=mobiletune variant=tf32 mode=finetune .*batch=64' "$r" ||
    fail "the next tf32 case did not run"
echo PASSED
