"""scripts/plot_metrics.py draws a PNG from a run folder written by the metrics writer, takes the
last line of a repeated epoch, and fails clearly on a folder without metrics. Skips (77) without
gnuplot.

usage: plot_metrics_test.py PATH/TO/test_train_metrics
"""
import os
import shutil
import subprocess
import sys
import tempfile

SOURCE = os.environ.get("MT_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
SCRIPT = os.path.join(SOURCE, "scripts", "plot_metrics.py")


def main():
    if not shutil.which("gnuplot"):
        print("SKIPPED: gnuplot is not installed (apt-get install gnuplot-nox)")
        return 77
    failures = []
    with tempfile.TemporaryDirectory() as run:
        subprocess.run([sys.argv[1], "--write-sample", run], check=True)
        with open(os.path.join(run, "metrics.jsonl"), "a") as f:  # a resumed epoch 3
            f.write('{"kind":"epoch","epoch":3,"step":6,"loss":0.3,"accuracy":0.8}\n')
        result = subprocess.run([sys.executable, SCRIPT, run], capture_output=True, text=True)
        png = os.path.join(run, "learning_curves.png")
        if result.returncode != 0 or "3 epochs" not in result.stdout:
            failures.append(f"plot failed: {result.stdout} {result.stderr}")
        elif not os.path.isfile(png):
            failures.append("no PNG written")
        else:
            with open(png, "rb") as f:
                head = f.read(8)
            if head != b"\x89PNG\r\n\x1a\n" or os.path.getsize(png) < 5000:
                failures.append(f"{png} is not a plausible PNG ({os.path.getsize(png)} bytes)")
        empty = os.path.join(run, "empty")
        os.mkdir(empty)
        result = subprocess.run([sys.executable, SCRIPT, empty], capture_output=True, text=True)
        if result.returncode == 0 or "metrics.jsonl does not exist" not in result.stderr:
            failures.append(f"a folder without metrics: {result.returncode} {result.stderr}")
    for failure in failures:
        print("FAIL:", failure)
    print(f"{2 - min(2, len(failures))} passed, {min(2, len(failures))} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
