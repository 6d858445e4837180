#!/usr/bin/env bash
# Tries tests/gpu/run.sh on this CPU machine as the GPU machine will see it: in a private mount
# namespace (root) where the system's copies of every library the bundle carries, and the
# system's Open MPI and PMIx, are hidden, so a library or an Open MPI file the bundle lacks fails
# here and not there. Without a GPU (MT_GPU_EXPECTED=0): CUDA steps are skipped, training and the
# MPI runs go to the cpu backend for a few steps. Run tests/gpu/prepare.sh first.
#   tests/gpu/try_here.sh [OUT_DIR]     (the environment passes: MT_GPU_SIMULATE_SLOW, MT_GPU_BUNDLE...)
set -u
root=$(cd "$(dirname "$0")/../.." && pwd)
bundle=${MT_GPU_BUNDLE:-$root/.gpu-bundle}
out=${1:-$root/gpu-out}
[[ -f $bundle/tools.tar.xz ]] || { echo "try_here.sh: run tests/gpu/prepare.sh first"; exit 2; }
[[ $(id -u) == 0 ]] || { echo "try_here.sh: needs root (a mount namespace)"; exit 2; }
# MT_TRY_HIDE: more library names to hide (to see a bundle that lacks one fail)
libs="$(tar -tJf "$bundle/tools.tar.xz" | sed -n 's#^lib/\(.\+\)$#\1#p') ${MT_TRY_HIDE:-}"
export root out libs MT_GPU_BUNDLE=$bundle
export MT_GPU_EXPECTED=${MT_GPU_EXPECTED:-0} MT_GPU_BUDGET_SCALE=${MT_GPU_BUDGET_SCALE:-4}
exec unshare -m bash -c '
    set -u
    hidden=0
    for name in $libs; do
        for dir in /usr/lib/x86_64-linux-gnu /lib/x86_64-linux-gnu /usr/lib /usr/local/lib; do
            f=$dir/$name
            [[ -e $f ]] || continue
            real=$(readlink -f "$f")
            mount --bind /dev/null "$real" && hidden=$((hidden + 1))
        done
    done
    for d in /usr/lib/x86_64-linux-gnu/openmpi /usr/lib/x86_64-linux-gnu/pmix2 /usr/share/openmpi \
        /etc/openmpi /usr/lib/x86_64-linux-gnu/hwloc; do
        [[ -d $d ]] && mount -t tmpfs none "$d"
    done
    for f in /usr/bin/orterun /usr/bin/orted /usr/bin/prterun /usr/bin/prted; do
        [[ -e $f ]] && mount --bind /dev/null "$(readlink -f "$f")"
    done
    echo "try_here.sh: hid $hidden system copies of bundled libraries, and Open MPI"
    # the hiding works: the system copy of oneDNN reads as empty now
    [[ ! -s $(readlink -f /usr/lib/x86_64-linux-gnu/libdnnl.so.2) ]] || { echo "hiding failed"; exit 2; }
    OUT=$out bash "$root/tests/gpu/run.sh"
'
