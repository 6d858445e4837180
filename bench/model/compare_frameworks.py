#!/usr/bin/env python3
"""One training step's forward + backward, images/s, at batch 32 and 160x160: mobiletune's `cpu`
backend (bench_train_step) against PyTorch CPU (torchvision's mobilenet_v2, channels_last) and
Keras/TensorFlow CPU (keras.applications.MobileNetV2, the tutorial's framework), in the same
script, the same batch, the same thread count, for each training mode:

  scratch   everything trainable, BN with batch statistics
  frozen    backbone frozen and in inference mode, head trainable (the tutorial's first phase)
  finetune  Keras layers >= 100 (block_11_depthwise on) and the head trainable, BN in inference
            mode (the tutorial's second phase: base_model(x, training=False))

The head is the tutorial's: global average pool, Dropout(0.2), Dense(1), sigmoid cross-entropy.
No optimizer update is timed (gradients only), in every framework. Each framework runs in its own
process; modes are interleaved (ours, PyTorch, Keras per mode) so load drift on a shared machine
hits all three alike. Times are medians over --steps after --warmup steps.

On a machine other jobs share, OpenMP's default active waiting collapses the two OpenMP users
(mobiletune and PyTorch) 5-15x while TensorFlow's own thread pool degrades gently; measured on a
busy 2-core box, mobiletune finetune went 7.8 -> 35 img/s with OMP_WAIT_POLICY=PASSIVE (and 39 on
one thread). Compare on an idle machine; the header prints the load average and the policy.

  compare_frameworks.py run --ours build/bench/model/bench_train_step [--threads 2] ...
  compare_frameworks.py torch|keras --mode M ...   (one framework, one mode: prints RESULT)
"""

import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import bench_report  # noqa: E402 (bench/bench_report.py)

KERAS_FINE_TUNE_AT = 100
# Trainable parameters as Keras counts them (issue 3) for alpha 1.0 with a Dense(1) head; every
# framework's model is checked against them so the three time the same amount of work.
EXPECTED_TRAINABLE = {"scratch": 2225153, "frozen": 1281, "finetune": 1862721}


def median(values):
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else 0.5 * (values[n // 2 - 1] + values[n // 2])


def peak_rss_mb():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def result_line(framework, args, trainable, seconds):
    return (f"RESULT mode={args.mode} framework={framework} batch={args.batch} size={args.size} "
            f"threads={args.threads} trainable={trainable} median_s={seconds:.4f} "
            f"images_per_s={args.batch / seconds:.2f} peak_rss_mb={peak_rss_mb():.1f}")


# ---- PyTorch ----------------------------------------------------------------------------------


def bench_torch(args):
    import torch
    import torchvision

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(width_mult=1.0)
    model.classifier = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(1280, 1))
    model.train()
    if args.mode in ("frozen", "finetune"):
        for p in model.features.parameters():
            p.requires_grad_(False)
        model.features.eval()  # BN with moving statistics, as base_model(training=False)
    if args.mode == "finetune":
        # Keras layer 100 is block_11_expand_relu: from block_11_depthwise on. torchvision's
        # features[k + 1] is Keras' block_k; conv[0] its expand, conv[1] its depthwise.
        block11 = model.features[12]
        for module in [block11.conv[1], block11.conv[2], block11.conv[3]] + list(model.features[13:]):
            for p in module.parameters():
                p.requires_grad_(True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    model = model.to(memory_format=torch.channels_last)
    x = (torch.rand(args.batch, 3, args.size, args.size) * 2 - 1).to(memory_format=torch.channels_last)
    y = torch.tensor([i % 2 for i in range(args.batch)], dtype=torch.float32)[:, None]
    loss_fn = torch.nn.BCEWithLogitsLoss()
    params = [p for p in model.parameters() if p.requires_grad]
    times = []
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        for p in params:
            p.grad = None
        loss = loss_fn(model(x), y)
        loss.backward()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    print(result_line(f"pytorch-{torch.__version__}", args, trainable, median(times)), flush=True)


# ---- Keras / TensorFlow -----------------------------------------------------------------------


def bench_keras(args):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras

    keras.utils.set_random_seed(0)
    base = keras.applications.MobileNetV2(include_top=False, weights=None,
                                          input_shape=(args.size, args.size, 3), alpha=1.0)
    inputs = keras.Input((args.size, args.size, 3))
    if args.mode == "scratch":
        base.trainable = True
        features = base(inputs, training=True)
    else:
        base.trainable = args.mode == "finetune"
        if args.mode == "finetune":
            for layer in base.layers[:KERAS_FINE_TUNE_AT]:
                layer.trainable = False
        features = base(inputs, training=False)  # the tutorial: BN stays in inference mode
    x = keras.layers.GlobalAveragePooling2D()(features)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(1)(x)
    model = keras.Model(inputs, outputs)
    trainable = sum(int(tf.size(v)) for v in model.trainable_variables)
    loss_fn = keras.losses.BinaryCrossentropy(from_logits=True)
    images = tf.random.uniform((args.batch, args.size, args.size, 3), -1.0, 1.0)
    labels = tf.constant([[float(i % 2)] for i in range(args.batch)])

    @tf.function(jit_compile=args.xla)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        return tape.gradient(loss, model.trainable_variables)

    times = []
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        grads = step(images, labels)
        _ = [g.numpy() for g in grads[:1]]  # wait for the step
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    name = f"keras-{keras.__version__}-tf-{tf.__version__}" + ("-xla" if args.xla else "")
    print(result_line(name, args, trainable, median(times)), flush=True)


# ---- the comparison ---------------------------------------------------------------------------


def parse_result(text, what):
    for line in text.splitlines():
        if line.startswith("RESULT "):
            return dict(kv.split("=", 1) for kv in line.split()[1:])
    raise SystemExit(f"compare_frameworks: no RESULT line from {what}:\n{text[-2000:]}")


def run_one(cmd, what):
    started = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    if proc.returncode != 0:
        print(f"compare_frameworks: {what} failed ({proc.returncode}):\n{proc.stderr[-3000:]}",
              file=sys.stderr)
        return None
    result = parse_result(proc.stdout, what)
    result["wall"] = f"{time.time() - started:.0f}"
    return result


def cmd_run(args):
    here = os.path.abspath(__file__)
    common = ["--batch", str(args.batch), "--size", str(args.size), "--threads", str(args.threads),
              "--steps", str(args.steps), "--warmup", str(args.warmup)]
    print(f"compare_frameworks: batch {args.batch}, {args.size}x{args.size}, {args.threads} "
          f"threads, median of {args.steps} steps after {args.warmup}; "
          f"{bench_report.host_description()}, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', '(default)')}", flush=True)
    rows = []
    for mode in args.modes.split(","):
        entries = {}
        runs = [("mobiletune", [args.ours, "--backend", "cpu", "--mode", mode, "--fine-tune-at",
                                str(KERAS_FINE_TUNE_AT)] + common)]
        if not args.no_torch:
            runs.append(("pytorch", [args.torch_python, here, "torch", "--mode", mode] + common))
        if not args.no_keras:
            runs.append(("keras", [args.keras_python, here, "keras", "--mode", mode] + common))
            if args.xla:
                runs.append(("keras-xla", [args.keras_python, here, "keras", "--xla", "--mode",
                                           mode] + common))
        for name, cmd in runs:
            result = run_one(cmd, f"{name} {mode}")
            if result is None:
                continue
            entries[name] = result
            trainable = int(result.get("trainable", -1))
            note = "" if trainable == EXPECTED_TRAINABLE[mode] else \
                f"  (!) trainable {trainable}, Keras says {EXPECTED_TRAINABLE[mode]}"
            print(f"  {mode:8s} {name:10s} {float(result['images_per_s']):8.2f} img/s  "
                  f"{float(result['median_s']):7.3f} s/step  peak RSS {result['peak_rss_mb']} MB"
                  f"{note}", flush=True)
        rows.append((mode, entries))
    print(f"\nimages/s (forward+backward), ratio = mobiletune / peer; load average after: "
          f"{bench_report.load_average()}")
    peers = [p for p in ("pytorch", "keras", "keras-xla") if any(p in e for _, e in rows)]
    table = []
    for mode, entries in rows:
        ours = float(entries["mobiletune"]["images_per_s"]) if "mobiletune" in entries else None
        cells = [mode, f"{ours:.2f}" if ours else "-"]
        for p in peers:
            theirs = float(entries[p]["images_per_s"]) if p in entries else None
            cells += [f"{theirs:.2f}", f"{ours / theirs:.2f}x"] if theirs and ours else ["-", "-"]
        table.append(cells)
    bench_report.print_table(["mode", "mobiletune"] + [c for p in peers for c in (p, "ratio")],
                             table)
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("torch", "keras", "run"):
        p = sub.add_parser(name)
        p.add_argument("--batch", type=int, default=32)
        p.add_argument("--size", type=int, default=160)
        p.add_argument("--threads", type=int, default=os.cpu_count())
        p.add_argument("--steps", type=int, default=5)
        p.add_argument("--warmup", type=int, default=2)
        p.add_argument("--xla", action="store_true", help="keras: also/only jit_compile=True")
        if name == "run":
            p.add_argument("--ours", required=True, help="the bench_train_step program")
            p.add_argument("--modes", default="scratch,frozen,finetune")
            p.add_argument("--torch-python", default="/usr/bin/python3",
                           help="a Python with torch + torchvision (Debian's python3-torch)")
            p.add_argument("--keras-python", default=sys.executable,
                           help="a Python with tensorflow-cpu (the project's .venv)")
            p.add_argument("--no-torch", action="store_true")
            p.add_argument("--no-keras", action="store_true")
        else:
            p.add_argument("--mode", choices=sorted(EXPECTED_TRAINABLE), required=True)
    args = parser.parse_args()
    return {"torch": bench_torch, "keras": bench_keras, "run": cmd_run}[args.command](args) or 0


if __name__ == "__main__":
    sys.exit(main())
