#!/usr/bin/env python3
"""Draw a run's learning curves (training and validation accuracy and loss per epoch, as the
TensorFlow transfer-learning tutorial plots them) from RUN_DIR/metrics.jsonl to a PNG, with
gnuplot (Debian's gnuplot-nox; scripts/install-deps.sh installs it). Standard library only.

usage: scripts/plot_metrics.py RUN_DIR [-o OUT.png] [--title TEXT]
       (default output: RUN_DIR/learning_curves.png)

Several runs can share one file (a resumed run appends): for each epoch the last line wins.
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile

COLUMNS = ("loss", "val_loss", "accuracy", "val_accuracy")


def load_epochs(path):
    epochs = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                sys.exit(f"plot_metrics: {path}:{number}: not JSON ({error})")
            if row.get("kind") == "epoch" and isinstance(row.get("epoch"), int):
                epochs[row["epoch"]] = row
    return [epochs[e] for e in sorted(epochs)]


def number(row, key):
    value = row.get(key)
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def gnuplot_script(data, out, title, epochs):
    quoted = lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"""
set terminal pngcairo size 900,900 font "sans,10"
set output {quoted(out)}
set datafile missing "NaN"
set key outside right top
set grid
set xlabel "epoch"
{"set xtics 1" if epochs <= 20 else ""}
set multiplot layout 2,1 title {quoted(title)}
set title "Training and Validation Accuracy"
set ylabel "accuracy"
plot {quoted(data)} using 1:4 with linespoints title "Training Accuracy", \\
     "" using 1:5 with linespoints title "Validation Accuracy"
set title "Training and Validation Loss"
set ylabel "cross-entropy"
plot {quoted(data)} using 1:2 with linespoints title "Training Loss", \\
     "" using 1:3 with linespoints title "Validation Loss"
unset multiplot
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("-o", "--output", help="PNG to write (default RUN_DIR/learning_curves.png)")
    parser.add_argument("--title", help="title (default: the run folder's name)")
    args = parser.parse_args()
    metrics = os.path.join(args.run_dir, "metrics.jsonl")
    if not os.path.isfile(metrics):
        sys.exit(f"plot_metrics: {metrics} does not exist: is {args.run_dir} a run folder?")
    rows = load_epochs(metrics)
    if not rows:
        sys.exit(f"plot_metrics: {metrics} has no epoch lines yet")
    gnuplot = shutil.which("gnuplot")
    if not gnuplot:
        sys.exit("plot_metrics: gnuplot not found: apt-get install gnuplot-nox "
                 "(scripts/install-deps.sh does)")
    out = args.output or os.path.join(args.run_dir, "learning_curves.png")
    title = args.title or os.path.basename(os.path.normpath(args.run_dir))
    with tempfile.TemporaryDirectory() as folder:
        data = os.path.join(folder, "epochs.dat")
        with open(data, "w") as f:
            f.write("# epoch " + " ".join(COLUMNS) + "\n")
            for row in rows:
                values = [number(row, key) for key in COLUMNS]
                f.write(f"{row['epoch']} " +
                        " ".join("NaN" if v is None else repr(float(v)) for v in values) + "\n")
        script = os.path.join(folder, "plot.gp")
        with open(script, "w") as f:
            f.write(gnuplot_script(data, out, title, len(rows)))
        result = subprocess.run([gnuplot, script], capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"plot_metrics: gnuplot failed:\n{result.stderr}")
    print(f"plot_metrics: wrote {out} ({len(rows)} epochs)")


if __name__ == "__main__":
    main()
