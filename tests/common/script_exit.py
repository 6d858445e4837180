"""How a Python script test ends: fail() prints "FAIL: ..." and exits 1, skip() prints
"SKIPPED: ..." and exits 77, ctest's SKIP_RETURN_CODE for the script tests (tests/CMakeLists.txt)."""
import sys

SKIP = 77


def fail(message):
    print("FAIL:", message)
    sys.exit(1)


def skip(message):
    print("SKIPPED:", message)
    sys.exit(SKIP)
