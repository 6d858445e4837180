#!/usr/bin/env python3
"""bench/protocol/keras_side_by_side.py end to end on a tiny slice: 64 of the Kaggle photos packed
at 32x32 (80/10/10), the three runs of configs/cats_vs_dogs_20pct for 1 epoch in both frameworks,
then the table must have one row per run with every cell filled: accuracies in [0, 1], wall times
> 0. It checks the plumbing (same splits, same classes, both frameworks train, the table's shape),
never a figure that depends on the machine.

Exit 0 pass, 1 fail, 77 skipped (../shared or TensorFlow/lmdb absent)."""

import argparse
import os
import re
import subprocess
import sys
import tempfile


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mobiletune", required=True)
    parser.add_argument("--pack", required=True)
    args = parser.parse_args()
    shared = os.environ.get("MT_SHARED_DIR", "")
    source = os.environ["MT_SOURCE_DIR"]
    photos = os.path.join(shared, "data", "cats_vs_dogs_kaggle200")
    weights = os.path.join(shared, "weights", "mobilenet_v2_1.0_224_imagenet_no_top.h5")
    if not (os.path.isdir(photos) and os.path.isfile(weights)):
        print(f"SKIPPED: {photos} or {weights} is absent (the shared data folder is not here)")
        return 77
    try:
        import lmdb  # noqa: F401
        import tensorflow  # noqa: F401
    except ImportError as e:
        print(f"SKIPPED: {sys.executable} lacks {e.name} (scripts/install-deps.sh installs it into "
              f".venv)")
        return 77
    with tempfile.TemporaryDirectory(prefix="mt_side_by_side_") as tmp:
        data = os.path.join(tmp, "data")
        pack = subprocess.run([args.pack, "--no-progress", "--size", "32", "--fraction",
                               str(64 / 5000), "--split", "train=0.8,val=0.1,test=0.1", "--seed",
                               "1", "--threads", "1", photos, data], capture_output=True, text=True)
        if pack.returncode != 0:
            print(f"FAIL: mobiletune-pack exited {pack.returncode}:\n{pack.stderr}")
            return 1
        script = os.path.join(source, "bench", "protocol", "keras_side_by_side.py")
        run = subprocess.run([sys.executable, script, "run", "--mobiletune", args.mobiletune,
                              "--data", data, "--configs",
                              os.path.join(source, "configs", "cats_vs_dogs_20pct"),
                              "--weights", weights, "--epochs", "1", "--threads", "1",
                              "--work", os.path.join(tmp, "work")],
                             capture_output=True, text=True)
        print(run.stdout)
        if run.returncode != 0:
            print(f"FAIL: keras_side_by_side.py exited {run.returncode}:\n{run.stderr[-4000:]}")
            return 1
    number = r"\s*([0-9]+\.[0-9]+)\s*"
    row = re.compile(rf"^\| (\w+)\s*\|\s*42 \|{number}\|{number}\|{number}\|{number}\|{number}\|"
                     rf"{number}\|\s*[0-9.]+x \|$")
    rows = [m for m in map(row.match, run.stdout.splitlines()) if m]
    failures = []
    if [m.group(1) for m in rows] != ["frozen", "finetune", "scratch"]:
        failures.append(f"table rows {[m.group(1) for m in rows]}, want frozen, finetune, scratch")
    for m in rows:
        accuracies = [float(m.group(i)) for i in range(2, 6)]
        seconds = [float(m.group(i)) for i in (6, 7)]
        if not all(0.0 <= a <= 1.0 for a in accuracies):
            failures.append(f"{m.group(1)}: accuracies {accuracies} outside [0, 1]")
        if not all(s > 0 for s in seconds):
            failures.append(f"{m.group(1)}: wall times {seconds} not positive")
    for f in failures:
        print(f"FAIL: {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
