#!/usr/bin/env bash
# Build mobiletune with warnings as errors and run every test; then build again with
# AddressSanitizer + UndefinedBehaviorSanitizer and run the suite once more (tests labelled
# "slow" are left out of the sanitizer pass: they repeat the same code paths on more data).
#   scripts/test.sh                 both passes
#   MT_SKIP_SANITIZE=1 scripts/test.sh   only the first
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)

echo "== build (warnings are errors) =="
cmake -S . -B build -DMT_WERROR=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build -j "$jobs"
echo "== tests =="
(cd build && ctest --output-on-failure -j "$jobs")

if [ "${MT_SKIP_SANITIZE:-0}" != 1 ]; then
  echo "== build with ASan + UBSan =="
  cmake -S . -B build-sanitize -DMT_WERROR=ON -DMT_SANITIZE=ON -DMT_WITH_CUDA=OFF -DCMAKE_BUILD_TYPE=Debug
  cmake --build build-sanitize -j "$jobs"
  echo "== tests under ASan + UBSan =="
  # oneDNN and OpenMP keep a few allocations alive until exit by design: leak checks off.
  (cd build-sanitize && ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1 \
      ctest --output-on-failure -j "$jobs" -LE slow)
fi
echo "== all tests passed =="
