#!/usr/bin/env bash
# expect_fault.sh SECONDS COMMAND...: COMMAND must exit non-zero within SECONDS and say which rank
# failed and why. A hang (timeout) or a zero exit fails the test.
set -u
limit=$1; shift
log=$(mktemp)
start=$(date +%s)
timeout --kill-after=5 "$limit" "$@" >"$log" 2>&1
code=$?
elapsed=$(( $(date +%s) - start ))
cat "$log"
if [ "$code" -eq 124 ] || [ "$code" -eq 137 ]; then echo "FAIL: job hung (killed after ${limit}s)"; exit 1; fi
if [ "$code" -eq 0 ]; then echo "FAIL: job exited 0 although a rank failed"; exit 1; fi
if ! grep -q "rank 1: injected failure" "$log"; then echo "FAIL: no message naming rank 1 and its error"; exit 1; fi
echo "PASS: job exited $code after ${elapsed}s with the failing rank named"
rm -f "$log"
