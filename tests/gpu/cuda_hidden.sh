#!/usr/bin/env bash
# Issue 10, point 1: a build made with CUDA runs where the CUDA libraries are missing. In a private
# mount namespace, an empty tmpfs covers every folder the cuda module resolves CUDA, cuBLAS, cuDNN
# or NCCL through (whatever the layout: lib64 -> lib, targets/x86_64-linux/lib, the ldconfig cache
# all end in the same real folders); then, with those libraries really absent:
#   - mobiletune and mobiletune-pack resolve every library and name none of CUDA's (readelf, ldd);
#   - `mobiletune summary` and a tiny pack -> train (cpu, 32x32, 1 epoch) -> eval -> predict work;
#   - asking for the cuda backend (train --set train.backend=cuda, eval/predict --backend cuda)
#     exits non-zero with exactly one error line, naming the library that is missing.
#     cuda_hidden.sh BUILD_DIR
# Skips (77) when the build has no cuda module, when not root, when unshare -m is refused, or when
# the programs are not built (a partial build).
set -uo pipefail

build=$(cd "${1:?usage: cuda_hidden.sh BUILD_DIR}" && pwd)
mobiletune=$build/mobiletune
pack=$build/data-prep/mobiletune-pack
module=$build/libmobiletune_cuda.so
cuda_libs='lib(cudart|cublas|cublasLt|cudnn[a-z_]*|nccl)\.so'

skip() { echo "skipped: $*"; exit 77; }
fail() { echo "FAIL: $*"; exit 1; }

# ---- outside the namespace: what can be checked without hiding anything ----
if [[ "${MT_CUDA_HIDDEN_INSIDE:-0}" != 1 ]]; then
    [[ -f "$module" ]] || skip "this build has no cuda module ($module): configured without CUDA"
    [[ $(id -u) == 0 ]] || skip "hiding the CUDA libraries needs root (a mount namespace)"
    command -v unshare > /dev/null || skip "no unshare(1) (util-linux) on this machine"
    unshare -m true 2> /dev/null || skip "unshare -m is not permitted here (a container without CAP_SYS_ADMIN?)"
    # a partial build (tests/gpu/run.sh builds only the GPU tests): nothing to run here
    [[ -x "$mobiletune" && -x "$pack" ]] ||
        skip "$mobiletune or $pack is not built (cmake --build $build --target mobiletune_cli mobiletune-pack)"
    for program in "$mobiletune" "$pack" "$build/libmobiletune.so"; do
        needed=$(readelf -d "$program" | grep NEEDED)
        echo "== readelf -d $program (NEEDED)"
        echo "$needed"
        if grep -Eq "$cuda_libs" <<< "$needed"; then
            fail "$program links a CUDA library directly: the cuda backend must stay in $module"
        fi
    done
    MT_CUDA_HIDDEN_INSIDE=1 exec unshare -m --propagation private "$0" "$@"
fi

# ---- inside: hide every folder the module finds a CUDA library in, until it finds none ----
for round in 1 2 3 4 5; do
    folders=$(ldd "$module" 2> /dev/null | grep -E "$cuda_libs" | grep -F '=> /' |
        sed -E 's/.*=> ([^ ]+) .*/\1/' | xargs -r -n1 realpath | xargs -r -n1 dirname | sort -u)
    [[ -z "$folders" ]] && break
    for folder in $folders; do
        # never cover the system's own library folder: that would hide libc, not only CUDA
        if [[ -e "$folder/libc.so.6" ]]; then
            skip "the CUDA libraries are in a system folder ($folder): cannot hide them alone"
        fi
        mount -t tmpfs -o size=1m,mode=0755 mobiletune-no-cuda "$folder" ||
            fail "cannot mount a tmpfs over $folder"
        echo "hidden: $folder"
    done
done
missing=$(ldd "$module" 2>&1 | grep -E "$cuda_libs" | grep -c 'not found')
((missing > 0)) || fail "the CUDA libraries are still found after hiding: $(ldd "$module")"
echo "ldd $module: $missing CUDA libraries not found, as intended"

for program in "$mobiletune" "$pack"; do
    resolved=$(ldd "$program" 2>&1)
    if grep -q 'not found' <<< "$resolved"; then
        fail "$program misses a library without CUDA: $(grep 'not found' <<< "$resolved")"
    fi
    if grep -Eq "$cuda_libs" <<< "$resolved"; then
        fail "$program loads a CUDA library: $(grep -E "$cuda_libs" <<< "$resolved")"
    fi
done

work=$(mktemp -d "${TMPDIR:-/tmp}/mt-cuda-hidden.XXXXXX")
trap 'rm -rf "$work"' EXIT
# run NAME CMD...: output to $work/NAME.log; fail unless it exits 0
run() {
    local name=$1
    shift
    if ! "$@" > "$work/$name.log" 2>&1; then
        cat "$work/$name.log"
        fail "$name: '$*' exited non-zero with the CUDA libraries hidden"
    fi
}
# expect_cuda_error NAME CMD...: must fail, with exactly one line of error that names the missing
# library and the fix
expect_cuda_error() {
    local name=$1
    shift
    "$@" > "$work/$name.out" 2> "$work/$name.err"
    local rc=$?
    echo "$name: exit $rc: $(cat "$work/$name.err")"
    ((rc != 0)) || fail "$name: exited 0 although cuda cannot load"
    local lines
    lines=$(grep -c . "$work/$name.err")
    ((lines == 1)) || fail "$name: $lines lines on stderr, expected exactly one: $(cat "$work/$name.err")"
    grep -Eq "backend 'cuda'.*$cuda_libs[.0-9]*: cannot open shared object file.*LD_LIBRARY_PATH" \
        "$work/$name.err" || fail "$name: the error does not name the missing library and the fix"
}

run summary "$mobiletune" summary --alpha 0.35 --size 32
grep -q 'Total params' "$work/summary.log" || grep -qi 'params' "$work/summary.log" ||
    fail "summary printed no parameter count: $(cat "$work/summary.log")"

# eight 32x32 PNGs per class (a bright square left or right on a dark field), written with the
# standard library only (zlib + struct) so the test needs no imaging package
python3 - "$work/photos" << 'EOF' || fail "could not write the test photos"
import os, random, struct, sys, zlib

def png(path, rows):
    raw = b"".join(b"\x00" + bytes(row) for row in rows)
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 32, 32, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))

rng = random.Random(5)
for label, name in enumerate(["left", "right"]):
    os.makedirs(os.path.join(sys.argv[1], name))
    for i in range(8):
        x0, y0 = (2 if label == 0 else 18), rng.randrange(2, 18)
        rows = [[rng.randrange(0, 80) for _ in range(96)] for _ in range(32)]
        for y in range(y0, y0 + 12):
            for x in range(x0, x0 + 12):
                rows[y][3 * x:3 * x + 3] = [220, 200, 180]
        png(os.path.join(sys.argv[1], name, f"{name}_{i}.png"), rows)
EOF
run pack "$pack" --size 32 --split train=0.5,val=0.25,test=0.25 --seed 1 --threads 1 \
    "$work/photos" "$work/data"
cat > "$work/config.ini" << EOF
[data]
train = $work/data/train
val = $work/data/val
batch_size = 4
loader_threads = 1
[model]
alpha = 0.35
input_size = 32
classes = 2
mode = scratch
[train]
epochs = 1
seed = 1
backend = cpu
threads = 1
[output]
run_dir = $work/run
EOF
run train "$mobiletune" train --config "$work/config.ini"
checkpoint=$work/run/last.safetensors
[[ -f "$checkpoint" ]] || fail "train wrote no $checkpoint: $(cat "$work/train.log")"
run eval "$mobiletune" eval --checkpoint "$checkpoint" --db "$work/data/test"
run predict "$mobiletune" predict --checkpoint "$checkpoint" "$work/photos/left/left_0.png"
grep -q 'left_0.png' "$work/predict.log" || fail "predict named no image: $(cat "$work/predict.log")"
echo "summary, pack, train, eval and predict ran on the cpu backend without the CUDA libraries"

expect_cuda_error train_cuda "$mobiletune" train --config "$work/config.ini" \
    --set train.backend=cuda --set "output.run_dir=$work/run_cuda"
expect_cuda_error eval_cuda "$mobiletune" eval --backend cuda --checkpoint "$checkpoint" \
    --db "$work/data/test"
expect_cuda_error predict_cuda "$mobiletune" predict --backend cuda --checkpoint "$checkpoint" \
    "$work/photos/left/left_0.png"
echo "PASS"
