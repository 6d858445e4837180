#!/usr/bin/env bash
# Prepares, HERE (Debian 12 with the project's dependencies, CUDA 13 in /usr/local/cuda and
# ../shared), everything tests/gpu/run.sh needs on the lent GPU machine, which has CUDA 13,
# cuDNN/NCCL wheels and PyTorch but no LMDB, libjpeg-turbo, oneDNN, inih, Open MPI and no
# ../shared (../shared/device/README.md). Writes .gpu-bundle/ (git-ignored), prints its size and
# fails when it is over MT_GPU_BUNDLE_LIMIT_MB (50: the tree and the bundle travel in 64 MiB).
#
#   bash tests/gpu/prepare.sh                       # about 1-3 minutes here (2 cores)
#   then the device call (run.sh's header says more):
#   run(command="bash tests/gpu/run.sh", carry=[".gpu-bundle"], timeout_s=420)
#
# .gpu-bundle/ holds:
#   tools.tar.xz  bin/ (mobiletune, mobiletune-pack, bench_train_step, gpu_golden_step, the GPU
#                 test programs, any shared library the build made, e.g. the cuda module),
#                 lib/ (every library they load that is not glibc, the GCC runtime or CUDA's:
#                 collected with ldd, oneDNN included), mpi/ (Debian's Open MPI 4.1 and PMIx
#                 files in their own layout, relocated there with OPAL_PREFIX; the plugins that
#                 need UCX, libfabric, PSM or verbs are left out), built for sm_90 by
#                 build-gpu-bundle/ (CUDA on, MPI on, RelWithDebInfo, debug info stripped)
#   tests.tsv     the GPU tests as ctest runs them (name, environment, command), from the build
#   data/         a stratified slice of ../shared/data/cats_vs_dogs/train packed as JPEG
#                 (MT_GPU_PHOTOS_FRACTION of the 2,000 photos, 0.4 by default: 640/80/80)
#   weights/      the ImageNet no-top weights (9.4 MB)
#   golden/step.bin  one training step at alpha 1.0, 160x160, batch 32 on the cpu backend
#                 (tests/gpu/golden_step.c), checked on the cuda backend there
#   MANIFEST      the commit, the date and the sizes
# The binaries need glibc >= 2.36 (Debian 12; the GPU machine has 2.39).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bundle=${MT_GPU_BUNDLE:-$root/.gpu-bundle}
build=${MT_GPU_BUNDLE_BUILD:-$root/build-gpu-bundle}
# ../shared beside the main checkout; a worktree one level deeper looks one more up
shared=${MT_SHARED:-$root/../shared}
[[ -n ${MT_SHARED:-} || -d $shared ]] || shared=$root/../../shared
fraction=${MT_GPU_PHOTOS_FRACTION:-0.4}
limit_mb=${MT_GPU_BUNDLE_LIMIT_MB:-50}
jobs=${MT_JOBS:-2}
weights_name=mobilenet_v2_1.0_224_imagenet_no_top.h5
die() { echo "prepare.sh: $*" >&2; exit 1; }
trap 'echo "prepare.sh: failed at line $LINENO" >&2' ERR
# ELF files by their magic (not `head | grep -q`: grep ends early and pipefail reports SIGPIPE)
is_elf() { local m; IFS= read -r -n 4 m < "$1" 2> /dev/null; [[ $m == $'\x7fELF' ]]; }
step() { echo "== $* ($(date -u +%H:%M:%S))"; }

[[ -f $shared/weights/$weights_name ]] ||
    die "$shared/weights/$weights_name not found (set MT_SHARED to the shared folder)"
[[ -d $shared/data/cats_vs_dogs/train ]] ||
    die "$shared/data/cats_vs_dogs/train not found (set MT_SHARED to the shared folder)"
for tool in ldd objcopy xz python3 dpkg; do
    command -v "$tool" > /dev/null || die "needs $tool"
done
# never delete what we did not create: an existing bundle must carry our MANIFEST
if [[ -e $bundle && ! -f $bundle/MANIFEST ]]; then
    die "$bundle exists and was not made by this script (no MANIFEST): move it away"
fi

# ---- 1. the build: everything, so a new GPU test or a runtime-loaded module comes along -------
step "build in $build"
mkdir -p "$build"
if [[ ! -f $build/CMakeCache.txt ]]; then
    cmake -S "$root" -B "$build" -GNinja -DMT_WITH_CUDA=ON -DMT_WITH_MPI=ON \
        -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBUILD_TESTING=ON \
        > "$build/prepare-configure.log" 2>&1 ||
        { tail -30 "$build/prepare-configure.log"; die "configure failed"; }
fi
grep -q '^MT_WITH_CUDA:STRING=ON' "$build/CMakeCache.txt" ||
    die "$build is not configured with MT_WITH_CUDA=ON: remove it and rerun"
cmake --build "$build" -j "$jobs" > "$build/prepare-build.log" 2>&1 ||
    { grep -E 'error|FAILED' "$build/prepare-build.log" | head -20
      die "build failed (log: $build/prepare-build.log)"; }

stage=$build/gpu-stage
rm -rf "$stage"
mkdir -p "$stage/bin" "$stage/lib" "$stage/mpi"

# ---- 2. the GPU tests as ctest would run them, and the programs ------------------------------
step "GPU tests and programs"
(cd "$build" && ctest --show-only=json-v1) > "$stage/ctest.json"
python3 - "$stage/ctest.json" "$build" "$stage/tests.tsv" "$stage/programs.txt" << 'EOF'
import json, os, sys
data = json.load(open(sys.argv[1]))
build, tsv, programs = sys.argv[2], sys.argv[3], sys.argv[4]
rows, exes = [], set()
for t in data.get("tests", []):
    props = {p["name"]: p["value"] for p in t.get("properties", [])}
    labels = props.get("LABELS", [])
    cmd = t.get("command") or []
    # the GPU tests (ctest -R 'cuda|gpu' or label gpu); the CPU tests among them (label
    # emulated: the cuda backend on CPU stand-ins; the kernel emulation, the golden tool, the
    # plain-C bookkeeping tests, gpu_model on the cpu backend) are CI's, not worth GPU time
    name = t["name"]
    cpu_tests = ("gpu_kernels_emulated", "gpu_kernels_emulated_reverse", "gpu_golden_tool",
                 "gpu_conv_plan", "gpu_profile", "gpu_model_cpu", "gpu_bench_script")
    if not ("gpu" in labels or "cuda" in name or "gpu" in name) or not cmd or \
            "emulated" in labels or name in cpu_tests:
        continue
    if not os.path.abspath(cmd[0]).startswith(os.path.abspath(build) + "/"):
        continue  # a script test: not carried
    exes.add(cmd[0])
    # the settings of the test itself; not this machine's paths (MT_SOURCE_DIR, MT_PACK, ...)
    env = ";".join(e for e in props.get("ENVIRONMENT", []) if "/" not in e)
    args = " ".join(cmd[1:])
    rows.append("\t".join([t["name"], env or "-", os.path.basename(cmd[0]), args]))
open(tsv, "w").write("\n".join(rows) + "\n")
open(programs, "w").write("\n".join(sorted(exes)) + "\n")
print(f"{len(rows)} GPU tests")
EOF
{
    cat "$stage/programs.txt"
    echo "$build/mobiletune"
    find "$build" -name mobiletune-pack -type f -perm -u+x
    find "$build" -name bench_train_step -type f -perm -u+x
    find "$build" -name gpu_golden_step -type f -perm -u+x
    # shared libraries the build made (the runtime-loaded cuda module once it exists)
    find "$build" -name 'lib*.so*' -type f -not -path '*/CMakeFiles/*' -not -path "$stage/*"
} | sort -u > "$stage/copy.txt"
while read -r f; do
    [[ -n $f ]] || continue
    [[ -f $f ]] || die "$f was not built"
    cp "$f" "$stage/bin/"
    objcopy --strip-debug "$stage/bin/$(basename "$f")"
done < "$stage/copy.txt"
mv "$stage/tests.tsv" "$stage/bin/tests.tsv"

# ---- 3. Open MPI and PMIx, in Debian's layout under mpi/ -------------------------------------
step "Open MPI runtime"
for pkg in openmpi-bin libopenmpi3 openmpi-common libpmix2; do
    dpkg -L "$pkg" > /dev/null 2>&1 ||
        die "Debian package $pkg is not installed (scripts/install-deps.sh)"
    dpkg -L "$pkg" | grep -vE '^/usr/share/(doc|man|lintian)/|\.a$|/include/' |
        while read -r f; do
            if [[ -f $f || -L $f ]] && [[ ! -d $f ]]; then
                mkdir -p "$stage/mpi$(dirname "$f")" && cp -a "$f" "$stage/mpi$f"
            fi
        done
done
# mpirun -> /etc/alternatives -> mpirun.openmpi -> orterun: point straight at orterun
for name in mpirun mpiexec; do
    ln -sfn orterun "$stage/mpi/usr/bin/$name"
done
rm -f "$stage/mpi/usr/bin/mpirun.openmpi" "$stage/mpi/usr/bin/mpiexec.openmpi"
ln -s orterun "$stage/mpi/usr/bin/mpirun.openmpi"
# plugins for fabrics a single node does not use pull in large libraries: leave them out (Open
# MPI skips a component it cannot find; run.sh also selects the shared-memory transport)
heavy='libuc[pstm]|libfabric|libpsm|libibverbs|librdmacm|libcuda\.so|libnl-|liboshmem'
find "$stage/mpi" -type f \( -name '*.so*' -o -perm -u+x \) | while read -r f; do
    if is_elf "$f" && ldd "$f" 2> /dev/null | grep -E "$heavy" > /dev/null; then
        rm -f "$f"
    fi
done
# nor OpenSHMEM, Fortran, Java and the compiler wrappers
rm -f "$stage"/mpi/usr/lib/x86_64-linux-gnu/lib{oshmem,mpi_java,mpi_mpifh,mpi_usempi,mpi_cxx,ompitrace}*
rm -f "$stage"/mpi/usr/bin/{osh,shmem,mpif,mpic,mpiC,mpijava,opalc,ortecc,opal_wrapper}*
find "$stage/mpi" -xtype l -delete # links to what was left out

# ---- 4. the libraries everything loads, except what the GPU machine has ----------------------
# glibc, the GCC runtime (gcc 13 is there, newer than ours) and CUDA's (the toolkit's cudart and
# cuBLAS, the wheels' cuDNN and NCCL: run.sh finds them there)
step "libraries"
system='^(linux-vdso|ld-linux-x86-64|libc|libm|libdl|librt|libpthread|libresolv|libutil|libgcc_s|libstdc\+\+|libgomp|libcuda|libcudart|libcublas|libcublasLt|libcudnn[a-z_]*|libnccl|libnvrtc[a-z-]*|libnvJitLink|libcufft|libcurand|libcusparse|libcusolver)\.so'
find "$stage/bin" "$stage/mpi" -type f \( -name '*.so*' -o -perm -u+x \) |
    while read -r f; do if is_elf "$f"; then echo "$f"; fi; done > "$stage/elves.txt"
export LD_LIBRARY_PATH="$stage/bin:$stage/mpi/usr/lib/x86_64-linux-gnu:$stage/mpi/usr/lib/x86_64-linux-gnu/openmpi/lib:$stage/mpi/usr/lib/x86_64-linux-gnu/pmix2/lib"
missing=""
while read -r f; do
    while read -r name arrow path _; do
        [[ $arrow == "=>" ]] || continue
        [[ $name =~ $system ]] && continue
        if [[ $path == "not" ]]; then missing+=" $name (for $(basename "$f"))"; continue; fi
        case $path in "$stage"/*) continue ;; esac
        [[ -f $stage/lib/$name ]] || cp -L "$path" "$stage/lib/$name"
    done < <(ldd "$f" 2> /dev/null)
done < "$stage/elves.txt"
[[ -z $missing ]] || die "libraries not found here:$missing"
# the check run.sh repeats there: with the bundle's folders, nothing outside them but the system
export LD_LIBRARY_PATH="$stage/lib:$LD_LIBRARY_PATH"
while read -r f; do
    ldd "$f" 2> /dev/null | while read -r name arrow path _; do
        [[ $arrow == "=>" && ! $name =~ $system ]] || continue
        case $path in "$stage"/*) ;; *) echo "outside the bundle: $name => $path (for $f)" ;; esac
    done
done < "$stage/elves.txt" > "$stage/outside.txt"
[[ ! -s $stage/outside.txt ]] || { head "$stage/outside.txt"; die "the bundle is not closed"; }
echo "$(ls "$stage/lib" | wc -l) libraries, $(ls "$stage/bin" | wc -l) programs"

# ---- 5. photos, weights, golden step -----------------------------------------------------------
step "photos (fraction $fraction), weights"
mkdir -p "$bundle"
[[ -f $bundle/MANIFEST ]] || echo "tests/gpu/prepare.sh (in progress)" > "$bundle/MANIFEST"
rm -rf "$bundle/data" "$bundle/weights" "$bundle/golden" "$bundle/tools.tar.xz"
"$build/data-prep/mobiletune-pack" "$shared/data/cats_vs_dogs/train" "$bundle/data" --encoded \
    --quality 90 --split train=0.8,val=0.1,test=0.1 --fraction "$fraction" --seed 1 \
    --threads "$jobs" --no-progress
rm -f "$bundle/data"/*/lock.mdb
mkdir -p "$bundle/weights" "$bundle/golden"
cp "$shared/weights/$weights_name" "$bundle/weights/"
# on the cpu backend (itself checked against the reference by every ops test): the kink shifts
# re-run the forward once per shifted layer, minutes on the reference backend at this size
step "golden step on the cpu backend"
"$stage/bin/gpu_golden_step" write "$bundle/golden/step.bin" --backend cpu \
    --weights "$bundle/weights/$weights_name"

step "tools.tar.xz"
cp "$stage/bin/tests.tsv" "$bundle/tests.tsv"
tar -C "$stage" -cf - bin lib mpi | xz -T"$jobs" -6 > "$bundle/tools.tar.xz"
{
    echo "tests/gpu/prepare.sh"
    echo "commit $(git -C "$root" rev-parse HEAD 2> /dev/null || echo unknown)$(
        git -C "$root" diff --quiet HEAD 2> /dev/null || echo ' (with local changes)')"
    echo "date $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "build $build"
    echo "photos fraction $fraction"
    (cd "$bundle" && du -b tools.tar.xz data weights golden tests.tsv)
} > "$bundle/MANIFEST"
total=$(du -sb "$bundle" | cut -f1)
echo "== $bundle: $((total / 1024 / 1024)) MiB ($total bytes)"
du -sh "$bundle"/*
((total <= limit_mb * 1024 * 1024)) ||
    die "the bundle is $((total / 1024 / 1024)) MiB, over ${limit_mb} MiB: lower MT_GPU_PHOTOS_FRACTION"
echo "ready: run(command=\"bash tests/gpu/run.sh\", carry=[\".gpu-bundle\"], timeout_s=420)"
