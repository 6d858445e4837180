#!/usr/bin/env bash
# bench/gpu/bench_gpu.sh's flow without a GPU: a stand-in bench_train_step (fp32 works, every
# --precision is refused as an older binary does) and a stand-in PyTorch (RESULT lines for the
# cases it is given). Checks the ranking (finetune bf16 32 first), that a refused precision is
# noted once and not tried again, that PyTorch runs the same cases, and the ratio table.
set -u
here=$(cd "$(dirname "$0")" && pwd)
bench=$here/../../bench/gpu/bench_gpu.sh
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*"; cat "$dir/out/bench_results.txt" 2> /dev/null; exit 1; }
cat > "$dir/bench_train_step" << 'EOS'
#!/usr/bin/env bash
echo "$*" >> "${0%/*}/calls.txt"
mode=? batch=?
while (($#)); do
    case $1 in
    --precision) echo "bench_train_step: unknown option --precision"; echo "usage: ..."; exit 2 ;;
    --mode) mode=$2 ;; --batch) batch=$2 ;;
    esac
    shift
done
echo "RESULT mode=$mode backend=cuda batch=$batch size=160 threads=0 median_s=0.01 images_per_s=$((batch * 100)) peak_rss_mb=1"
EOS
cat > "$dir/python" << 'EOS'
#!/usr/bin/env bash
if [[ $2 == run ]]; then
    cases=$4
    echo "torch run $*" >> "${0%/*}/calls.txt"
    IFS=, read -r -a list <<< "$cases"
    for c in "${list[@]}"; do
        IFS=: read -r m p b <<< "$c"
        echo "RESULT framework=torch variant=$p mode=$m batch=$b size=160 trainable=1 median_s=0.01 images_per_s=$((b * 200)) gpu_peak_mb=1 device=NVIDIA_H200"
    done
    exit 0
fi
exec python3 "$@"
EOS
chmod +x "$dir/bench_train_step" "$dir/python"
MT_TORCH_PYTHON=$dir/python MT_BENCH_DEADLINE_S=60 bash "$bench" "$dir/bench_train_step" "$dir/out" \
    > "$dir/log" 2>&1 || fail "bench_gpu.sh rc $?: $(tail -3 "$dir/log")"
r=$dir/out/bench_results.txt
head -1 "$dir/calls.txt" | grep -q -- '--mode finetune --batch 32' || fail "the first case is not finetune batch 32"
[[ $(grep -c 'refuses bf16' "$r") == 1 ]] || fail "bf16 refusal not noted exactly once"
[[ $(grep -c -- '--precision bf16' "$dir/calls.txt") == 1 ]] || fail "a refused precision was tried again"
grep -q '^RESULT framework=mobiletune variant=fp32 mode=scratch .*batch=128' "$r" || fail "no fp32 scratch 128"
grep -q '^RESULT framework=torch variant=bf16 mode=finetune batch=32' "$r" || fail "torch did not run the top case"
grep -qE '^finetune fp32 +32 +3200 +6400 +0.50' "$dir/out/bench_table.txt" || fail "ratio table: $(cat "$dir/out/bench_table.txt")"
echo PASSED
