#!/usr/bin/env bash
# The one script a session with a lent GPU runs (issue 6; docs/gpu.md), from the repository root:
#     run(command="bash tests/gpu/run.sh", timeout_s=540)
# It finds cuDNN and NCCL (the CUDA toolkit's, else the Python wheels'), builds for sm_90 into
# build-gpu with MPI off (the full project when its dependencies are on the machine, else the
# reduced tests/gpu/standalone build, which needs only CUDA, cuDNN, NCCL and OpenMP), runs
# nvidia-smi, the GPU tests (ops vs reference, both depthwise implementations forced, backend
# checks, a whole training step vs reference), a compute-sanitizer pass when time is left, and
# bench/gpu (mobiletune cuda vs PyTorch on the same GPU). Logs and summary.txt go to $OUT (or
# ./gpu-out). Every piece runs under `timeout`, inside a total budget of 470 s
# (MT_GPU_BUDGET_S). A quick rerun after a fix: MT_GPU_SKIP_BENCH=1 bash tests/gpu/run.sh
set -u
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${OUT:-$root/gpu-out}
mkdir -p "$out"
summary=$out/summary.txt
: > "$summary"
budget=${MT_GPU_BUDGET_S:-470}
start=$SECONDS
jobs=$(nproc 2>/dev/null || echo 8)

note() { echo "$*" | tee -a "$summary"; }
left() { echo $((budget - (SECONDS - start))); }
# piece NAME SECONDS COMMAND...: run with a timeout capped by what is left, log to $out/NAME.log
piece() {
    local name=$1 want=$2
    shift 2
    local t0=$SECONDS cap
    cap=$(left)
    ((cap > want)) && cap=$want
    if ((cap < 5)); then
        note "$(printf '%-34s SKIPPED (out of time)' "$name")"
        return 124
    fi
    timeout --kill-after=5 "$cap" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    note "$(printf '%-34s rc=%-4d %4ds%s' "$name" "$rc" $((SECONDS - t0)) \
        "$( ((rc == 124)) && echo ' (timed out)')")"
    return $rc
}

note "mobiletune GPU run, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')"

# ---- what the machine has (recorded for the issue note) ----
probe() {
    nvidia-smi
    echo "== nvcc: $(nvcc --version 2>&1 | tail -1)"
    echo "== os: $(. /etc/os-release 2>/dev/null; echo "$PRETTY_NAME"), $(ldd --version 2>&1 | head -1)"
    echo "== cmake: $(cmake --version 2>&1 | head -1); ninja: $(ninja --version 2>&1)"
    echo "== gcc: $(gcc --version 2>&1 | head -1)"
    python3 -c 'import torch, torchvision; print("== torch", torch.__version__, "torchvision",
torchvision.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())' 2>&1
    for h in lmdb.h turbojpeg.h hdf5.h dnnl.h ini.h mpi.h; do
        printf '== %s: ' "$h"
        ls /usr/include/"$h" /usr/include/*/"$h" /usr/include/*/*/"$h" /usr/local/include/"$h" \
            2>/dev/null | head -1
        echo
    done
}
export PATH=/usr/local/cuda/bin:$PATH
export -f probe
piece probe 30 bash -c probe
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -1 |
    sed 's/^/GPU: /' | tee -a "$summary"
grep '^== ' "$out/probe.log" >> "$summary"

# ---- cuDNN and NCCL: the toolkit's, or the wheels' (nvidia-cudnn-cu13, nvidia-nccl-cu13) ----
wheel_dir() { python3 -c "import $1 as m; print(list(m.__path__)[0])" 2>/dev/null; }
cudnn_inc="" cudnn_lib="" nccl_inc="" nccl_lib=""
if [[ -f /usr/local/cuda/include/cudnn.h ]]; then
    cudnn_inc=/usr/local/cuda/include
    cudnn_lib=$(ls /usr/local/cuda/lib64/libcudnn.so* /usr/local/cuda/lib/libcudnn.so* 2>/dev/null | head -1)
fi
if [[ -z "$cudnn_lib" ]] && d=$(wheel_dir nvidia.cudnn) && [[ -n "$d" ]]; then
    cudnn_inc=$d/include
    cudnn_lib=$(ls "$d"/lib 2>/dev/null | grep -E '^libcudnn\.so' | head -1)
    [[ -n "$cudnn_lib" ]] && cudnn_lib=$d/lib/$cudnn_lib
fi
if [[ -f /usr/local/cuda/include/nccl.h ]]; then
    nccl_inc=/usr/local/cuda/include
    nccl_lib=$(ls /usr/local/cuda/lib64/libnccl.so* /usr/local/cuda/lib/libnccl.so* 2>/dev/null | head -1)
fi
if [[ -z "$nccl_lib" ]] && d=$(wheel_dir nvidia.nccl) && [[ -n "$d" ]]; then
    nccl_inc=$d/include
    nccl_lib=$(ls "$d"/lib 2>/dev/null | grep -E '^libnccl\.so' | head -1)
    [[ -n "$nccl_lib" ]] && nccl_lib=$d/lib/$nccl_lib
fi
note "cuDNN: ${cudnn_lib:-not found} (headers ${cudnn_inc:-not found}); NCCL: ${nccl_lib:-not found}"
for lib in "$cudnn_lib" "$nccl_lib"; do
    [[ -n "$lib" ]] && export LD_LIBRARY_PATH=$(dirname "$lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
done
cuda_flags=(-DMT_WITH_MPI=OFF -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_BUILD_TYPE=RelWithDebInfo
    "-DMT_CUDNN_INCLUDE=$cudnn_inc" "-DMT_CUDNN_LIBRARY=$cudnn_lib"
    "-DMT_NCCL_INCLUDE=$nccl_inc" "-DMT_NCCL_LIBRARY=$nccl_lib")
# Ninja when there is one, unless the folder was configured before with another generator
generator() { [[ ! -f "$1/CMakeCache.txt" ]] && command -v ninja > /dev/null && echo "-GNinja"; }

# ---- build: the full project if it configures and builds, else the standalone GPU build ----
# (MT_GPU_BUILD_DIR and MT_GPU_STANDALONE=1 exist to try this script on a machine without GPU)
build=${MT_GPU_BUILD_DIR:-$root/build-gpu}
targets=(test_ops_backend_vs_reference test_gpu_backend test_gpu_model test_gpu_nccl
    test_gpu_grad_sync bench_train_step)
kind=full
if [[ "${MT_GPU_STANDALONE:-0}" == 1 ]] ||
    ! piece configure_full 60 cmake -S "$root" -B "$build" $(generator "$build") \
        -DMT_WITH_CUDA=ON "${cuda_flags[@]}" ||
    ! piece build_full 180 cmake --build "$build" -j "$jobs" --target "${targets[@]}"; then
    kind=standalone
    build=$build-standalone
    piece configure_standalone 60 cmake -S "$root/tests/gpu/standalone" -B "$build" \
        $(generator "$build") "${cuda_flags[@]}" || { note "RESULT: configure failed"; exit 1; }
    piece build_standalone 180 cmake --build "$build" -j "$jobs" --target "${targets[@]}" ||
        { note "RESULT: build failed"; exit 1; }
fi
note "build: $kind ($build)"
bench_bin=$(find "$build" -name bench_train_step -type f -perm -u+x | head -1)
harness=$(find "$build" -name test_ops_backend_vs_reference -type f -perm -u+x | head -1)

# ---- tests: NVIDIA_TF32_OVERRIDE=0 keeps cuDNN/cuBLAS at the fp32 tolerances ----
export NVIDIA_TF32_OVERRIDE=0
(cd "$build" && piece ctest_gpu 150 ctest -V -R 'cuda|gpu' -E emulated --timeout 120)
grep -E '^ *[0-9]+/[0-9]+ Test|tests passed|FAIL' "$out/ctest_gpu.log" | head -40 >> "$summary"
# the choices made (algorithms, depthwise own vs cuDNN, pool use) at the model's shapes
MT_CUDA_DEBUG=1 piece model_choices 60 "$bench_bin" --backend cuda --mode scratch --batch 128 \
    --size 160 --steps 1 --warmup 0
grep -c 'depthwise.*->' "$out/model_choices.log" | sed 's/^/depthwise choices logged: /' >> "$summary"

# ---- benchmark (MT_GPU_SKIP_BENCH=1: a quick rerun of the tests after a fix) ----
if [[ "${MT_GPU_SKIP_BENCH:-0}" != 1 ]]; then
    piece bench_gpu 200 bash "$root/bench/gpu/bench_gpu.sh" "$bench_bin" "$out"
    sed -n '/^mobiletune /,$p' "$out/bench_gpu.log" >> "$summary"
fi

# ---- memory checker over the ops harness, when time is left ----
if command -v compute-sanitizer > /dev/null && (($(left) > 60)); then
    piece sanitizer 90 compute-sanitizer --tool memcheck --error-exitcode 9 "$harness" cuda
    grep -E 'ERROR SUMMARY|Invalid' "$out/sanitizer.log" | head -5 >> "$summary"
fi
grep -h 'cuDNN failed' "$out"/*.log 2>/dev/null | sort -u | head -5 | sed 's/^/WARNING: /' >> "$summary"
note "total $((SECONDS - start)) s"
