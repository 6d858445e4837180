#!/usr/bin/env bash
# images/s of one training step (forward + backward, batch 128, 160x160) of mobiletune's cuda
# backend in the three training modes, fp32 and with TF32 allowed, beside PyTorch on the same GPU
# (torch_baseline.py: fp32, AMP eager, AMP + torch.compile), printed as ratios; plus the cpu
# backend once when it is built (the full project), for the GPU-over-CPU figure.
#   bench/gpu/bench_gpu.sh BENCH_TRAIN_STEP [OUT_DIR]      (tests/gpu/run.sh calls it)
# Never run by ctest. Each piece runs under `timeout`; a piece that fails leaves a note and the
# rest still runs.
set -u
bin=${1:?usage: bench_gpu.sh BENCH_TRAIN_STEP [OUT_DIR]}
out=${2:-.}
here=$(cd "$(dirname "$0")" && pwd)
python=${MT_TORCH_PYTHON:-python3}
results=$out/bench_results.txt
: > "$results"
common=(--batch 128 --size 160 --fine-tune-at 100)

ours() { # variant, then environment assignments, then bench_train_step arguments
    local variant=$1; shift
    env "$@" | grep '^RESULT' | sed "s/^RESULT /RESULT framework=mobiletune variant=$variant /" \
        >> "$results"
}
for mode in scratch finetune frozen; do
    ours fp32 timeout 90 "$bin" --backend cuda --mode "$mode" "${common[@]}" --steps 20 --warmup 3
    ours tf32 MT_CUDA_TF32=1 timeout 90 "$bin" --backend cuda --mode "$mode" "${common[@]}" \
        --steps 20 --warmup 3
done
# the cpu backend exists only in the full build; two steps are enough for a first figure
ours fp32 timeout 120 "$bin" --backend cpu --mode scratch "${common[@]}" --steps 2 --warmup 1 \
    2>/dev/null || true

timeout 150 "$python" "$here/torch_baseline.py" run --variants fp32,amp >> "$results" 2>&1 ||
    echo "NOTE torch eager run failed or timed out (rc $?)" >> "$results"
timeout 150 "$python" "$here/torch_baseline.py" run --variants amp_compile --modes scratch \
    >> "$results" 2>&1 || echo "NOTE torch.compile run failed or timed out (rc $?)" >> "$results"
grep -v '^RESULT' "$results" | head -20
"$python" "$here/torch_baseline.py" report "$results"
