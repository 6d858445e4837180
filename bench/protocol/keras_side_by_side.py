#!/usr/bin/env python3
"""The three runs of a protocol (configs/cats_vs_dogs_20pct by default: frozen, finetune from
frozen's final weights, scratch) trained by mobiletune and by Keras/TensorFlow on exactly the same
packed splits, in the same script on the same machine, with a table per run: final training
accuracy, test accuracy and wall time of each (issue 13, point 2).

Same data: the Keras side reads the records of the packed LMDB splits (docs/formats.md: header,
CRC, raw HWC RGB pixels), so both see the same images with the same class ids (checked: every
split must list the same class names in the same order). Pixels are scaled to [-1, 1] as
x / 127.5 - 1 (MobileNetV2's preprocess_input, what mobiletune does).

Same hyper-parameters: read from each run's INI file (model.mode, dropout, fine_tune_at,
optimizer.*, data.batch_size, data.shuffle, data.random_flip); only RMSprop without momentum and
no flip are supported on the Keras side (what the protocol uses; anything else is refused rather
than compared unfairly). Keras builds keras.applications.MobileNetV2(include_top=False) with the
tutorial's head (global average pool, Dropout, Dense(1) on logits) and loads model.weights by
layer name; finetune starts from the Keras frozen run's final weights, as mobiletune's starts from
its own frozen run's last.safetensors. Training batches drop the remainder (as mobiletune's
loader does); validation runs every epoch in both.

Wall time is each training process from start to end (start-up, weight loading, feature caching
and validation included, test evaluation excluded): `mobiletune train` for mobiletune, the Keras
subprocess up to the end of fit() (TensorFlow's import included) for Keras.

  keras_side_by_side.py run --mobiletune build/mobiletune --data data/cats_vs_dogs_20pct \
      [--configs configs/cats_vs_dogs_20pct] [--runs frozen,finetune,scratch] [--seeds 42,43]
      [--epochs N] [--weights H5] [--work DIR] [--threads N]
  keras_side_by_side.py keras ...   (one Keras run: prints a RESULT line; used by `run`)
"""

import argparse
import configparser
import json
import os
import struct
import subprocess
import sys
import time
import zlib

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import bench_report  # noqa: E402 (bench/bench_report.py)

RUN_ORDER = ("frozen", "finetune", "scratch")


# ---- the packed splits ------------------------------------------------------------------------


def open_split(path):
    """The LMDB environment of one packed split, read-only; SystemExit when it is none."""
    import lmdb

    if not os.path.isfile(os.path.join(path, "data.mdb")):
        raise SystemExit(f"keras_side_by_side: {path} is not a packed split (no data.mdb); pack "
                         f"the photos with mobiletune-pack --split train=0.8,val=0.1,test=0.1")
    return lmdb.open(path, readonly=True, lock=False, subdir=True)


def read_split(path):
    """(images uint8 N x H x W x 3, labels int N, class names) of one packed LMDB split."""
    import numpy as np

    env = open_split(path)
    with env.begin() as txn:
        meta = txn.get(b"meta").decode()
        count, classes = 0, []
        for line in meta.splitlines():
            key, _, value = line.partition(" ")
            if key == "records":
                count = int(value)
            elif key == "class":
                classes.append(value.split(" ", 2)[2])
        images, labels = None, np.zeros(count, np.int64)
        for i in range(count):
            v = txn.get(b"%010d" % i)
            magic, _, enc, ch, h, w, label, n, crc, name_n = struct.unpack_from("<4sHBBHHIIIH", v)
            if magic != b"MTR1" or zlib.crc32(v[:20] + v[24:]) != crc or len(v) != 32 + n + name_n:
                raise SystemExit(f"keras_side_by_side: {path}: record {i} is damaged")
            if enc != 0 or ch != 3:
                raise SystemExit(f"keras_side_by_side: {path}: record {i} is not raw RGB (pack "
                                 f"without --encoded)")
            if images is None:
                images = np.zeros((count, h, w, 3), np.uint8)
            images[i] = np.frombuffer(v, np.uint8, h * w * 3, 32).reshape(h, w, 3)
            labels[i] = label
    env.close()
    return images, labels, classes


# ---- Keras ------------------------------------------------------------------------------------


def keras_run(args):
    started = time.perf_counter()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras

    splits = {}
    for name in ("train", "val", "test"):
        splits[name] = read_split(os.path.join(args.data, name))
    classes = splits["train"][2]
    for name in ("val", "test"):
        if splits[name][2] != classes:
            raise SystemExit(f"keras_side_by_side: {args.data}/{name} lists classes "
                             f"{splits[name][2]}, train lists {classes}")
    size = splits["train"][0].shape[1]

    keras.utils.set_random_seed(args.seed)

    def dataset(name, training):
        x, y, _ = splits[name]
        ds = tf.data.Dataset.from_tensor_slices((x, y.astype(np.float32)[:, None]))
        if training and args.shuffle:
            ds = ds.shuffle(len(x), seed=args.seed, reshuffle_each_iteration=True)
        ds = ds.batch(args.batch, drop_remainder=training)
        return ds.map(lambda a, b: (tf.cast(a, tf.float32) / 127.5 - 1.0, b)).prefetch(2)

    base = keras.applications.MobileNetV2(input_shape=(size, size, 3), include_top=False,
                                          weights=None, alpha=1.0)
    if args.weights:
        base.load_weights(args.weights, by_name=True)
    inputs = keras.Input((size, size, 3))
    if args.mode == "scratch":
        base.trainable = True
        features = base(inputs)  # BN on batch statistics in fit(), moving ones in evaluate()
    else:
        base.trainable = args.mode == "finetune"
        if args.mode == "finetune":
            for layer in base.layers[:args.fine_tune_at]:
                layer.trainable = False
        features = base(inputs, training=False)  # the tutorial: BN stays in inference mode
    x = keras.layers.GlobalAveragePooling2D()(features)
    x = keras.layers.Dropout(args.dropout)(x)
    model = keras.Model(inputs, keras.layers.Dense(1)(x))
    if args.init_weights:
        model.load_weights(args.init_weights)
    model.compile(optimizer=keras.optimizers.RMSprop(learning_rate=args.lr, rho=args.rho,
                                                     epsilon=args.epsilon),
                  loss=keras.losses.BinaryCrossentropy(from_logits=True),
                  metrics=[keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy")])
    trainable = int(sum(np.prod(v.shape) for v in model.trainable_weights))
    history = model.fit(dataset("train", True), epochs=args.epochs,
                        validation_data=dataset("val", False), verbose=2)
    train_seconds = time.perf_counter() - started
    if args.save_weights:
        model.save_weights(args.save_weights)
    _, test_accuracy = model.evaluate(dataset("test", False), verbose=0)
    result = {"train_accuracy": history.history["accuracy"][-1],
              "val_accuracy": history.history["val_accuracy"][-1],
              "test_accuracy": float(test_accuracy), "seconds": train_seconds,
              "trainable": trainable, "framework": f"keras-{keras.__version__}-tf-{tf.__version__}"}
    print("RESULT " + json.dumps(result), flush=True)
    return 0


# ---- mobiletune -------------------------------------------------------------------------------


def mobiletune_run(args, run, seed, config, run_dir, init_checkpoint, size, log):
    sets = {"data.train": f"{args.data}/train", "data.val": f"{args.data}/val",
            "data.test": f"{args.data}/test", "train.seed": str(seed),
            "model.input_size": str(size), "output.run_dir": run_dir,
            "output.tensorboard": "false"}
    if args.epochs:
        sets["train.epochs"] = str(args.epochs)
    if args.weights and config["weights"]:
        sets["model.weights"] = args.weights
    if run == "finetune":
        sets["model.init_checkpoint"] = init_checkpoint
    if args.threads:
        sets["train.threads"] = str(args.threads)
    cmd = [args.mobiletune, "train", "--config", config["path"]]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    started = time.perf_counter()
    proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"keras_side_by_side: mobiletune {run} (seed {seed}) failed with status "
                         f"{proc.returncode}; its output is in {log.name}")
    last = None
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            record = json.loads(line)
            if record.get("kind") == "epoch":
                last = record
    proc = subprocess.run([args.mobiletune, "eval", "--checkpoint",
                           os.path.join(run_dir, "last.safetensors"), "--db", f"{args.data}/test"],
                          capture_output=True, text=True)
    log.write(proc.stdout + proc.stderr)
    test_accuracy = None
    for line in proc.stdout.splitlines():
        if ", accuracy " in line:
            test_accuracy = float(line.rsplit("accuracy ", 1)[1].split()[0])
    if proc.returncode != 0 or test_accuracy is None:
        raise SystemExit(f"keras_side_by_side: mobiletune eval of {run_dir} failed; see {log.name}")
    return {"train_accuracy": last["accuracy"], "val_accuracy": last.get("val_accuracy"),
            "test_accuracy": test_accuracy, "seconds": seconds}


# ---- the comparison ---------------------------------------------------------------------------


def read_config(path):
    """The options of one run's INI that both frameworks must share."""
    parser = configparser.ConfigParser(inline_comment_prefixes=(" ;",), comment_prefixes=(";", "#"))
    if not parser.read(path):
        raise SystemExit(f"keras_side_by_side: cannot read {path}")

    def get(section, key, default):
        return parser.get(section, key, fallback=default).strip()

    weights = get("model", "weights", "none")
    folder = os.path.dirname(os.path.abspath(path))
    config = {
        "path": path, "mode": get("model", "mode", "frozen"),
        "dropout": float(get("model", "dropout", "0.2")),
        "fine_tune_at": int(get("model", "fine_tune_at", "100")),
        "batch": int(get("data", "batch_size", "32")),
        "shuffle": get("data", "shuffle", "true").lower() in ("true", "yes", "on", "1"),
        "lr": float(get("optimizer", "learning_rate", "0.001")),
        "rho": float(get("optimizer", "rho", "0.9")),
        "epsilon": float(get("optimizer", "epsilon", "1e-7")),
        "weights": "" if weights in ("", "none") else os.path.normpath(os.path.join(folder, weights)),
    }
    unsupported = []
    if get("optimizer", "name", "rmsprop").lower() != "rmsprop":
        unsupported.append("optimizer.name (only rmsprop)")
    if float(get("optimizer", "momentum", "0")) != 0 or float(get("optimizer", "weight_decay", "0")):
        unsupported.append("optimizer.momentum / weight_decay (only 0)")
    if get("optimizer", "schedule", "constant").lower() != "constant" or \
            float(get("optimizer", "warmup_epochs", "0")) or int(get("optimizer", "warmup_steps", "0")):
        unsupported.append("optimizer.schedule / warmup (only constant, none)")
    if get("data", "random_flip", "false").lower() in ("true", "yes", "on", "1"):
        unsupported.append("data.random_flip (only false)")
    # Keras' BN: batch statistics in scratch's fit(), moving ones under base(training=False)
    if get("model", "bn_mode", "auto").lower() not in \
            ("auto", "trainable" if config["mode"] == "scratch" else "inference"):
        unsupported.append("model.bn_mode (only the mode's default)")
    if unsupported:
        raise SystemExit(f"keras_side_by_side: {path}: the Keras side does not reproduce "
                         f"{', '.join(unsupported)}; compare a config without them")
    return config


def fmt(value, digits=3):
    return "-" if value is None else f"{value:.{digits}f}"


def cmd_run(args):
    runs = [r for r in args.runs.split(",") if r]
    for r in runs:
        if r not in RUN_ORDER:
            raise SystemExit(f"keras_side_by_side: --runs: unknown run '{r}' (frozen, finetune, scratch)")
    if "finetune" in runs and "frozen" not in runs:
        raise SystemExit("keras_side_by_side: --runs: finetune starts from the frozen run's final "
                         "weights; run frozen too (--runs frozen,finetune)")
    runs = [r for r in RUN_ORDER if r in runs]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    configs = {r: read_config(os.path.join(args.configs, f"{r}.ini")) for r in runs}
    for r in runs:
        if configs[r]["mode"] != r:
            raise SystemExit(f"keras_side_by_side: {configs[r]['path']}: model.mode is "
                             f"{configs[r]['mode']}, expected {r}")
    args.data = os.path.abspath(args.data)
    size = read_meta_size(os.path.join(args.data, "train"))
    work = os.path.abspath(args.work)
    if os.path.exists(work):
        raise SystemExit(f"keras_side_by_side: --work {work} exists; give a new folder (nothing "
                         f"is overwritten)")
    os.makedirs(work)
    print(f"keras_side_by_side: {args.data} ({size}x{size}), runs {','.join(runs)}, seeds "
          f"{','.join(map(str, seeds))}, epochs {args.epochs or 'as configured'}; "
          f"{bench_report.host_description()}; logs in {work}", flush=True)
    rows = []
    for seed in seeds:
        for run in runs:
            config = configs[run]
            run_dir = os.path.join(work, f"mobiletune-{run}-seed{seed}")
            log_path = os.path.join(work, f"mobiletune-{run}-seed{seed}.log")
            with open(log_path, "w") as log:
                ours = mobiletune_run(args, run, seed, config, run_dir,
                                      os.path.join(work, f"mobiletune-frozen-seed{seed}",
                                                   "last.safetensors"), size, log)
            keras_cmd = [args.python, os.path.abspath(__file__), "keras", "--data", args.data,
                         "--mode", run, "--seed", str(seed),
                         "--epochs", str(args.epochs or read_epochs(config["path"])),
                         "--batch", str(config["batch"]), "--dropout", str(config["dropout"]),
                         "--fine-tune-at", str(config["fine_tune_at"]), "--lr", str(config["lr"]),
                         "--rho", str(config["rho"]), "--epsilon", str(config["epsilon"]),
                         "--threads", str(args.threads),
                         "--save-weights", os.path.join(work, f"keras-{run}-seed{seed}.weights.h5")]
            if not config["shuffle"]:
                keras_cmd.append("--no-shuffle")
            weights = (args.weights or config["weights"]) if config["weights"] else ""
            if weights:
                keras_cmd += ["--weights", weights]
            if run == "finetune":
                keras_cmd += ["--init-weights", os.path.join(work, f"keras-frozen-seed{seed}.weights.h5")]
            log_path = os.path.join(work, f"keras-{run}-seed{seed}.log")
            # into the log as it comes (one line per epoch), so a long run can be followed
            with open(log_path, "w") as log:
                proc = subprocess.run(keras_cmd, stdout=log, stderr=subprocess.STDOUT,
                                      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
                                               PYTHONUNBUFFERED="1"))
            theirs = None
            with open(log_path) as log:
                for line in log:
                    if line.startswith("RESULT "):
                        theirs = json.loads(line[len("RESULT "):])
            if proc.returncode != 0 or theirs is None:
                raise SystemExit(f"keras_side_by_side: Keras {run} (seed {seed}) failed with "
                                 f"status {proc.returncode}; its output is in {log_path}")
            rows.append((run, seed, ours, theirs))
            print(f"  {run} seed {seed}: mobiletune train acc {fmt(ours['train_accuracy'])} test "
                  f"{fmt(ours['test_accuracy'])} {ours['seconds']:.1f} s; Keras train acc "
                  f"{fmt(theirs['train_accuracy'])} test {fmt(theirs['test_accuracy'])} "
                  f"{theirs['seconds']:.1f} s", flush=True)
    print(f"\nfinal training accuracy (last epoch, training mode), test accuracy (last weights), "
          f"training wall time; load average after: {bench_report.load_average()}")
    header = ["run", "seed", "train acc mobiletune", "train acc Keras", "test acc mobiletune",
              "test acc Keras", "wall s mobiletune", "wall s Keras", "speed-up"]
    bench_report.print_table(header, [
        [run, str(seed), fmt(ours["train_accuracy"]), fmt(theirs["train_accuracy"]),
         fmt(ours["test_accuracy"]), fmt(theirs["test_accuracy"]), f"{ours['seconds']:.1f}",
         f"{theirs['seconds']:.1f}", f"{theirs['seconds'] / ours['seconds']:.1f}x"]
        for run, seed, ours, theirs in rows])
    return 0


def read_meta_size(path):
    env = open_split(path)
    with env.begin() as txn:
        meta = txn.get(b"meta").decode()
    env.close()
    for line in meta.splitlines():
        if line.startswith("height "):
            return int(line.split()[1])
    raise SystemExit(f"keras_side_by_side: {path}: no height in the metadata")


def read_epochs(path):
    parser = configparser.ConfigParser(inline_comment_prefixes=(" ;",), comment_prefixes=(";", "#"))
    parser.read(path)
    return int(parser.get("train", "epochs", fallback="10"))


def main():
    root = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="both frameworks, every run and seed, then the table")
    p.add_argument("--mobiletune", required=True, help="the mobiletune program")
    p.add_argument("--data", required=True, help="packed folder with train/, val/, test/")
    p.add_argument("--configs", default=os.path.join(root, "configs", "cats_vs_dogs_20pct"),
                   help="folder with frozen.ini, finetune.ini, scratch.ini")
    p.add_argument("--runs", default="frozen,finetune,scratch")
    p.add_argument("--seeds", default="42", help="comma-separated train.seed values")
    p.add_argument("--epochs", type=int, default=0, help="epochs per run (0: the configs')")
    p.add_argument("--weights", default="",
                   help="Keras HDF5 backbone weights instead of the configs' model.weights")
    p.add_argument("--work", required=True, help="a new folder for run folders and logs")
    p.add_argument("--threads", type=int, default=0, help="CPU threads of each (0: all cores)")
    p.add_argument("--python", default=sys.executable, help="a Python with tensorflow-cpu")
    k = sub.add_parser("keras", help="one Keras run (prints a RESULT line)")
    k.add_argument("--data", required=True)
    k.add_argument("--mode", choices=RUN_ORDER, required=True)
    k.add_argument("--seed", type=int, default=42)
    k.add_argument("--epochs", type=int, default=10)
    k.add_argument("--batch", type=int, default=32)
    k.add_argument("--no-shuffle", dest="shuffle", action="store_false")
    k.add_argument("--dropout", type=float, default=0.2)
    k.add_argument("--fine-tune-at", type=int, default=100)
    k.add_argument("--lr", type=float, default=1e-4)
    k.add_argument("--rho", type=float, default=0.9)
    k.add_argument("--epsilon", type=float, default=1e-7)
    k.add_argument("--weights", default="")
    k.add_argument("--init-weights", default="")
    k.add_argument("--save-weights", default="")
    k.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    return {"run": cmd_run, "keras": keras_run}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
