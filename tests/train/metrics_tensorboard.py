"""mobiletune's TensorBoard event files read by TensorFlow's own record reader (which checks both
CRCs of every record) and, when present, TensorBoard's event accumulator: tags, steps and values
must be the ones test_train_metrics --write-sample logged. Skips (77) without TensorFlow.

usage: metrics_tensorboard.py PATH/TO/test_train_metrics
"""
import glob
import json
import os
import subprocess
import sys
import tempfile

try:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf
except Exception as error:
    print(f"SKIPPED: tensorflow not importable: {error}")
    sys.exit(77)


def expected():
    train, validation = {}, {}
    for epoch in (1, 2, 3):
        for s in (1, 2):
            step = (epoch - 1) * 2 + s
            train[("batch_loss", step)] = 1.0 / step
            train[("batch_accuracy", step)] = 0.5
            train[("batch_learning_rate", step)] = 1e-4
        train[("epoch_loss", epoch)] = 1.0 / epoch
        train[("epoch_accuracy", epoch)] = 0.5 + 0.1 * epoch
        train[("epoch_learning_rate", epoch)] = 1e-4
        train[("epoch_images_per_second", epoch)] = 100.0 * epoch
        train[("epoch_seconds", epoch)] = 2.5
        validation[("epoch_loss", epoch)] = 1.5 / epoch
        validation[("epoch_accuracy", epoch)] = 0.45 + 0.1 * epoch
    return {"train": train, "validation": validation}


def read_with_tf(path):
    events = list(tf.compat.v1.train.summary_iterator(path))
    scalars = {}
    for event in events[1:]:
        for value in event.summary.value:
            scalars[(value.tag, event.step)] = value.simple_value
    return events[0].file_version, scalars


def main():
    helper = sys.argv[1]
    want = expected()
    failures = []
    with tempfile.TemporaryDirectory() as run:
        subprocess.run([helper, "--write-sample", run], check=True)
        for name in ("train", "validation"):
            files = glob.glob(os.path.join(run, "tensorboard", name, "events.out.tfevents.*"))
            if len(files) != 1:
                failures.append(f"{name}: {len(files)} event files")
                continue
            version, scalars = read_with_tf(files[0])
            if version != "brain.Event:2":
                failures.append(f"{name}: first record file_version {version!r}")
            expect = {k: np.float32(v) for k, v in want[name].items()}
            if set(scalars) != set(expect):
                failures.append(f"{name}: tags/steps {sorted(set(scalars) ^ set(expect))} differ")
            for key, value in expect.items():
                if key in scalars and np.float32(scalars[key]) != value:
                    failures.append(f"{name}: {key} = {scalars[key]}, want {value}")
        try:
            from tensorboard.backend.event_processing import event_accumulator
        except Exception:
            print("note: tensorboard's event accumulator not importable; TF's reader only")
        else:
            acc = event_accumulator.EventAccumulator(os.path.join(run, "tensorboard", "validation"))
            acc.Reload()
            got = [(e.step, round(e.value, 6)) for e in acc.Scalars("epoch_accuracy")]
            if got != [(1, 0.55), (2, 0.65), (3, 0.75)]:
                failures.append(f"tensorboard accumulator: validation epoch_accuracy {got}")
        with open(os.path.join(run, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f]
        epochs = [r for r in rows if r["kind"] == "epoch"]
        if len(rows) != 9 or [r["val_accuracy"] for r in epochs] != [0.55, 0.65, 0.75]:
            failures.append(f"metrics.jsonl: {rows}")
    for failure in failures:
        print("FAIL:", failure)
    print(f"{4 - min(4, len(failures))} passed, {min(4, len(failures))} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
