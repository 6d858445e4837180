#!/usr/bin/env bash
# images/s of one training step (forward + backward, 160x160) of mobiletune's cuda backend beside
# PyTorch on the same GPU (torch_baseline.py: torchvision mobilenet_v2, channels_last, eager with
# autocast, and torch.compile), as a table of ratios (issue 12 point 5).
#   bench/gpu/bench_gpu.sh BENCH_TRAIN_STEP [OUT_DIR]      (tests/gpu/run.sh calls it)
# MT_BENCH_DEADLINE_S (default 300): no case starts after it; the cases are ranked, so a short run
# still yields the important ones, for both frameworks: they run in rounds (the round's
# mobiletune cases, one process each, then one PyTorch process for the same cases), then
# torch.compile for the top case and for finetune bf16 at batch 256 (issue 12's target there is
# torch.compile's figure) when a minute is left.
# MT_BENCH_CASES overrides the ranking ("mode:precision:batch,..."). The mode frozen_cache is
# frozen mode with the feature cache (cache_features): two results each, building the cache
# (frozen_features) and a head step on it (frozen_cached).
# Each case: 3 warm-up steps (every shape's cuDNN algorithm search happens there, before timing:
# mobiletune picks per shape on first use, torch runs with cudnn.benchmark), then 10 timed steps;
# mobiletune's step is a CUDA graph replay from the second step on, as in training
# (train.cuda_graphs; bench_train_step --graphs). Precisions: fp32 (TF32 off), tf32, bf16, fp16
# (`bench_train_step --precision`). A precision mobiletune's binary refuses is skipped with a
# note, once.
# Writes OUT_DIR/bench_results.txt (RESULT lines) and OUT_DIR/bench_table.txt. Never run by ctest.
set -u
bin=${1:?usage: bench_gpu.sh BENCH_TRAIN_STEP [OUT_DIR]}
out=${2:-.}
here=$(cd "$(dirname "$0")" && pwd)
python=${MT_TORCH_PYTHON:-python3}
deadline=$((SECONDS + ${MT_BENCH_DEADLINE_S:-300}))
mkdir -p "$out"
results=$out/bench_results.txt
: > "$results"

# the ranking: finetune and scratch in bf16 at batch 32 and 128 first, then fp32, then fp16,
# frozen (the whole network, then with the feature cache), batch 256, TF32
ranked=${MT_BENCH_CASES:-finetune:bf16:32,scratch:bf16:32,finetune:bf16:128,scratch:bf16:128,\
finetune:fp32:32,scratch:fp32:32,finetune:fp32:128,scratch:fp32:128,\
finetune:fp16:32,scratch:fp16:32,finetune:fp16:128,scratch:fp16:128,\
frozen:bf16:128,frozen:fp32:128,frozen_cache:bf16:128,frozen_cache:fp32:128,\
finetune:bf16:256,scratch:bf16:256,finetune:fp32:256,\
scratch:fp32:256,frozen:bf16:256,finetune:tf32:128,scratch:tf32:128}
IFS=, read -r -a cases <<< "$ranked"
rounds=(4 4 100) # cases per round
declare -A refused=()

ours() { # MODE PRECISION BATCH
    local case_mode=$1 mode=$1 precision=$2 batch=$3 envs=() flags=() log rc
    if [[ $mode == frozen_cache ]]; then mode=frozen flags=(--feature-cache 1); fi
    case $precision in
    fp32) ;;
    tf32) envs=(MT_CUDA_TF32=1) ;;
    *) flags+=(--precision "$precision") ;;
    esac
    if [[ -n ${refused[$precision]:-} ]]; then return; fi
    log=$(mktemp)
    env "${envs[@]}" timeout 60 "$bin" --backend cuda --mode "$mode" --batch "$batch" --size 160 \
        --fine-tune-at 100 --steps 10 --warmup 3 "${flags[@]}" > "$log" 2>&1
    rc=$?
    # every measurement it printed counts, also when a later one of the case failed (frozen_cache
    # prints building the cache before the head steps run)
    grep '^RESULT' "$log" | sed "s/^RESULT /RESULT framework=mobiletune variant=$precision /" \
        >> "$results"
    # a refusal of the precision: the binary's usage line (an older one without --precision) or
    # the backend's "not supported" (never a RESULT line, which names the precision too)
    local refusal
    refusal=$(grep -v '^RESULT' "$log" | grep -m1 -iE '^usage:|unknown option|not supported')
    if ((rc != 0)) && [[ $precision != fp32 && -n $refusal ]]; then
        refused[$precision]=1
        echo "NOTE mobiletune refuses $precision: $(cut -c1-160 <<< "$refusal")" >> "$results"
    elif ((rc != 0)) || ! grep -q '^RESULT' "$log"; then
        echo "NOTE mobiletune $case_mode $precision batch $batch failed (rc $rc): $(tail -1 "$log" | cut -c1-200)" >> "$results"
    fi
    cat "$log" >> "$out/bench_mobiletune.log"
    rm -f "$log"
}

i=0
for n in "${rounds[@]}"; do
    chunk=("${cases[@]:i:n}")
    i=$((i + n))
    ((${#chunk[@]})) || break
    for c in "${chunk[@]}"; do
        ((SECONDS < deadline - 5)) || break 2
        IFS=: read -r mode precision batch <<< "$c"
        ours "$mode" "$precision" "$batch"
    done
    left=$((deadline - SECONDS))
    ((left > 15)) || break
    # PyTorch: one process for the round, eager
    timeout $((left + 5)) "$python" "$here/torch_baseline.py" run \
        --cases "$(IFS=,; echo "${chunk[*]}")" --deadline-s "$((left - 5))" \
        >> "$results" 2>> "$out/bench_torch.log" ||
        echo "NOTE torch run ended with rc $? (bench_torch.log)" >> "$results"
done
# torch.compile takes a minute to build: last, for the top case and finetune bf16 at batch 256
# (when ranked), while a minute is left
compiled=${cases[0]}
for c in "${cases[@]:1}"; do [[ $c == finetune:bf16:256 ]] && compiled+=,$c; done
left=$((deadline - SECONDS))
if ((left > 60)); then
    timeout $((left + 5)) "$python" "$here/torch_baseline.py" run --cases "$compiled" \
        --compiled-only --deadline-s "$((left - 5))" >> "$results" 2>> "$out/bench_torch.log" ||
        echo "NOTE torch.compile run ended with rc $? (bench_torch.log)" >> "$results"
fi
grep -v '^RESULT' "$results" | head -20
"$python" "$here/torch_baseline.py" report "$results" | tee "$out/bench_table.txt"
