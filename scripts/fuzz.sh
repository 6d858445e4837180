#!/bin/bash
# Fuzz the record and metadata parsers, the Keras h5 reader and the checkpoint reader with libFuzzer for a bounded time
# each.
#   scripts/fuzz.sh [seconds-per-target]     (default 60)
# Configures a clang build with -DMT_FUZZ=ON in ${MT_FUZZ_BUILD:-build-fuzz}, builds fuzz_record,
# fuzz_meta, fuzz_h5 and fuzz_checkpoint (ASan + UBSan), and runs each from a working corpus seeded with the
# committed seeds in tests/fuzz/corpus/<target>/ (the working corpus grows between runs; the seeds are not touched).
# Crashes are written to <build>/fuzz-artifacts/ and make the script exit non-zero.
set -euo pipefail
seconds="${1:-60}"
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${MT_FUZZ_BUILD:-$root/build-fuzz}"
jobs="${MT_FUZZ_JOBS:-2}"

if ! command -v clang >/dev/null; then
    echo "fuzz.sh: clang is not installed (apt-get install clang)" >&2
    exit 1
fi
cmake -S "$root" -B "$build" -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
    -DMT_FUZZ=ON -DMT_WITH_CUDA=OFF -DMT_WITH_MPI=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j"$jobs" --target fuzz_record fuzz_meta fuzz_h5 fuzz_checkpoint

status=0
mkdir -p "$build/fuzz-artifacts"
# libhdf5's own leaks on malformed files (fuzz_h5) are not ours to fix: suppressed by library.
export LSAN_OPTIONS="suppressions=$root/tests/fuzz/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
# fuzz_h5 writes each input to a file in $TMPDIR (libhdf5 takes a path); a crashed run cannot
# remove it, so the files go to a folder of the build that is emptied after the run.
export TMPDIR="$build/fuzz-tmp"
mkdir -p "$TMPDIR"
# A huge malloc returns NULL, as it does outside ASan (libhdf5 asks for what a header claims).
export ASAN_OPTIONS="allocator_may_return_null=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
# The first frame of a crash report that is not libc's or the sanitizer's own.
first_frame() {
    local skip='sysdeps|libc\.so|__interceptor_|compiler-rt|libclang_rt'
    skip+='| in (malloc|calloc|realloc|free|memalign|aligned_alloc|posix_memalign) '
    grep -E '^ +#[0-9]+ ' "$1" | grep -vE "$skip" | head -1
}

for target in record meta h5 checkpoint; do
    corpus="$build/fuzz-corpus/$target"
    mkdir -p "$corpus"
    cp -n "$root/tests/fuzz/corpus/$target/"* "$corpus/" 2>/dev/null || true
    echo "== fuzz_$target for ${seconds}s (corpus $corpus)"
    # libhdf5 1.10 itself crashes on some malformed files (in H5Lvisit, H5Dread ...): fuzz_h5 runs
    # in fork mode, going on after a crash, and each crash is then sorted by its first frame:
    # inside libhdf5 it is the library's (listed, not a failure of ours), anywhere else ours.
    extra=()
    if [ "$target" = h5 ]; then extra=(-fork=1 -ignore_crashes=1 -ignore_ooms=1 -ignore_timeouts=1); fi
    rm -f "$build/fuzz-artifacts/$target-"*
    if ! "$build/tests/fuzz/fuzz_$target" -max_total_time="$seconds" -max_len=65536 \
        -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 "${extra[@]}" \
        -artifact_prefix="$build/fuzz-artifacts/$target-" "$corpus" 2>"$build/fuzz-$target.log"; then
        echo "fuzz_$target FOUND A FAILURE: see $build/fuzz-$target.log and $build/fuzz-artifacts/" >&2
        tail -40 "$build/fuzz-$target.log" >&2
        status=1
    fi
    if [ "$target" = h5 ]; then
        for artifact in "$build/fuzz-artifacts/$target-"*; do
            [ -e "$artifact" ] || continue
            report="$artifact.txt"
            "$build/tests/fuzz/fuzz_$target" "$artifact" >"$report" 2>&1 || true
            frame="$(first_frame "$report")"
            if [[ "$frame" == *libhdf5* ]]; then
                echo "libhdf5 crash (not in our code): $artifact: ${frame## }"
            else
                echo "fuzz_$target FOUND A FAILURE in our code: $artifact (report $report)" >&2
                grep -E 'ERROR|runtime error|^ +#[0-9]+ ' "$report" | head -20 >&2
                status=1
            fi
        done
    fi
    grep -E "^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::new_units_added)" \
        "$build/fuzz-$target.log" || grep -E "^#[0-9]+: cov" "$build/fuzz-$target.log" | tail -1 || true
    echo "corpus size: $(ls "$corpus" | wc -l) inputs"
    rm -f "$TMPDIR"/fuzz_h5-* "$TMPDIR"/fuzz_ckpt-*
done
exit $status
