"""Input checks of `mobiletune` (issue 14): a FIFO given where a file is expected is refused at
once, naming it (it used to hang in open()), `eval --batch-size` below 1 is refused, and `eval` compares the checkpoint's class names with
the database's by name and order (cats/dogs against dogs/zcats used to print accuracy 0, exit 0).
Every command runs with a time limit, so a hang fails the test instead of stalling it."""
import os
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

BUILD = os.environ.get("MT_BUILD_DIR", ".")
MOBILETUNE = os.path.join(BUILD, "mobiletune")
PACK = os.environ.get("MT_PACK", os.path.join(BUILD, "data-prep", "mobiletune-pack"))
failures = 0


def check(condition, message):
    global failures
    if not condition:
        failures += 1
        print("CHECK failed:", message, file=sys.stderr)


def run(*args, seconds=60):
    try:
        return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=seconds)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(args, "timeout", "", "timed out: it hung")


def images(root, classes, seed):
    rng = np.random.default_rng(seed)
    for name in classes:
        os.makedirs(os.path.join(root, name))
        for i in range(8):
            pixels = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(os.path.join(root, name, f"{i}.png"))


def main():
    for program in (MOBILETUNE, PACK):
        if not os.path.exists(program):
            print(f"{program} is not built", file=sys.stderr)
            return 1
    with tempfile.TemporaryDirectory(prefix="mt-cli-inputs-") as tmp:
        fifo = os.path.join(tmp, "fifo")
        os.mkfifo(fifo)
        images(os.path.join(tmp, "a"), ("left", "right"), 1)
        images(os.path.join(tmp, "b"), ("right", "zleft"), 2)
        packed = run(PACK, "--no-progress", "--size", 32, "--split", "train=0.5,val=0.5",
                     os.path.join(tmp, "a"), os.path.join(tmp, "pa"))
        check(packed.returncode == 0, f"pack a: {packed.stderr}")
        packed = run(PACK, "--no-progress", "--size", 32, os.path.join(tmp, "b"), os.path.join(tmp, "pb"))
        check(packed.returncode == 0, f"pack b: {packed.stderr}")
        config = os.path.join(tmp, "c.ini")
        with open(config, "w") as f:
            f.write(f"[data]\ntrain = {tmp}/pa/train\nval = {tmp}/pa/val\nbatch_size = 4\n"
                    "loader_threads = 1\n[model]\nalpha = 0.35\ninput_size = 32\nclasses = 2\n"
                    "mode = scratch\n[optimizer]\nname = rmsprop\nlearning_rate = 1e-3\n"
                    f"[train]\nepochs = 1\nbackend = cpu\nthreads = 1\n[output]\nrun_dir = {tmp}/run\n")
        trained = run(MOBILETUNE, "train", "--config", config, "--no-progress", seconds=240)
        check(trained.returncode == 0, f"train: {trained.returncode} {trained.stdout} {trained.stderr}")
        checkpoint = os.path.join(tmp, "run", "last.safetensors")
        image = os.path.join(tmp, "a", "left", "0.png")

        for what, args, fragment in (
                ("--config FIFO", ["train", "--config", fifo], "--config file"),
                ("--resume FIFO", ["train", "--config", config, "--resume", fifo], "--resume checkpoint"),
                ("eval --checkpoint FIFO", ["eval", "--checkpoint", fifo, "--db", f"{tmp}/pa/val"], "checkpoint"),
                ("predict --checkpoint FIFO", ["predict", "--checkpoint", fifo, image], "checkpoint"),
                ("predict image FIFO", ["predict", "--checkpoint", checkpoint, fifo], "image")):
            proc = run(MOBILETUNE, *args, seconds=20)
            check(proc.returncode not in (0, "timeout") and "FIFO" in proc.stderr and fifo in proc.stderr
                  and fragment in proc.stderr, f"{what}: exit {proc.returncode} {proc.stderr!r}")

        same = run(MOBILETUNE, "eval", "--checkpoint", checkpoint, "--db", f"{tmp}/pa/val")
        check(same.returncode == 0 and "accuracy" in same.stdout, f"eval on its own classes: {same.stderr!r}")
        other = run(MOBILETUNE, "eval", "--checkpoint", checkpoint, "--db", f"{tmp}/pb")
        check(other.returncode != 0 and "different classes" in other.stderr and
              "class 0 is 'left' against 'right'" in other.stderr and "accuracy" not in other.stdout,
              f"eval on other classes: exit {other.returncode} {other.stdout!r} {other.stderr!r}")
        for size in ("0", "-3"):  # used to fall back silently to the checkpoint's batch size
            empty = run(MOBILETUNE, "eval", "--checkpoint", checkpoint, "--db", f"{tmp}/pa/val",
                        "--batch-size", size)
            check(empty.returncode != 0 and f"--batch-size {size}" in empty.stderr and
                  "accuracy" not in empty.stdout,
                  f"eval --batch-size {size}: exit {empty.returncode} {empty.stderr!r}")
    if failures:
        print(f"FAILED: {failures} check(s)", file=sys.stderr)
        return 1
    print("PASSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
