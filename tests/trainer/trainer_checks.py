#!/usr/bin/env python3
# One file over 600 lines on purpose: one function per ctest case (CASES at the bottom), all on
# the one synthetic dataset and the independent checkpoint reader defined here.
"""End-to-end checks of `mobiletune train/eval/predict` on a tiny synthetic dataset.

    trainer_checks.py CASE    (CASE: see CASES at the bottom; env from ctest: MT_PACK, MT_BUILD_DIR)

The dataset is drawn here, so the checks need nothing from ../shared: two classes of 32x32
images (a bright square in the left or the right half on noise), packed with mobiletune-pack.
The model is MobileNetV2 alpha 0.35 at 32x32, which trains in seconds on the cpu backend.
Checkpoints are compared with an independent safetensors reader (struct + json + numpy).
"""
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "common"))
import local_slurm  # noqa: E402  (tests/common)
from script_exit import fail, skip  # noqa: E402  (tests/common)

BUILD = os.environ.get("MT_BUILD_DIR", ".")
PACK = os.environ["MT_PACK"]
MOBILETUNE = os.path.join(BUILD, "mobiletune")
MPIRUN = os.environ.get("MT_MPIEXEC", "")
SOURCE = os.environ.get("MT_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
FIXTURE = os.path.join(BUILD, "tests", "trainer", "fixture")
# The backend every run trains on: cpu, or (the guarded variants of ctest) reference with
# MT_REFERENCE_GUARDED=1, whose memory the host cannot touch outside the backend's own ops.
BACKEND = os.environ.get("MT_TRAINER_BACKEND", "cpu")


def make_dataset():
    """48 training + 16 validation images per split rule 0.75/0.25, packed once per build."""
    done = os.path.join(FIXTURE, "packed")
    if os.path.exists(os.path.join(done, "train", "data.mdb")):
        return done
    shutil.rmtree(FIXTURE, ignore_errors=True)
    rng = np.random.default_rng(3)
    for label, name in enumerate(["left", "right"]):
        folder = os.path.join(FIXTURE, "images", name)
        os.makedirs(folder)
        for i in range(32):
            pixels = rng.integers(0, 90, size=(40, 40, 3), dtype=np.uint8)
            x0 = 4 if label == 0 else 22
            y0 = int(rng.integers(4, 22))
            pixels[y0:y0 + 14, x0:x0 + 14] = rng.integers(170, 255, size=3, dtype=np.uint8)
            Image.fromarray(pixels).save(os.path.join(folder, f"{name}_{i:02d}.png"))
    run([PACK, "--size", "32", "--split", "train=0.75,val=0.25", "--seed", "1", "--threads", "2",
         os.path.join(FIXTURE, "images"), done])
    return done


def run(command, env=None, expect=0, timeout=600):
    full_env = dict(os.environ)
    full_env.update(env or {})
    start = time.time()
    result = subprocess.run(command, env=full_env, capture_output=True, text=True, timeout=timeout)
    output = result.stdout + result.stderr
    if expect is not None and (result.returncode != 0) != (expect != 0):
        print(output)
        fail(f"{' '.join(command)} exited {result.returncode}, expected "
             f"{'0' if expect == 0 else 'non-zero'}")
    result.output = output
    result.seconds = time.time() - start
    return result


def write_config(folder, data, **overrides):
    values = {
        "data": {"train": f"{data}/train", "val": f"{data}/val", "batch_size": "8",
                 "shuffle": "true", "random_flip": "false", "loader_threads": "1"},
        "model": {"alpha": "0.35", "input_size": "32", "classes": "2", "dropout": "0.2",
                  "mode": "scratch", "bn_mode": "auto"},
        "optimizer": {"name": "rmsprop", "learning_rate": "1e-3"},
        "train": {"epochs": "4", "seed": "7", "backend": BACKEND, "threads": "1"},
        "output": {"run_dir": os.path.join(folder, "run")},
    }
    for key, value in overrides.items():
        section, name = key.split("__")
        values[section][name] = str(value)
    path = os.path.join(folder, "config.ini")
    with open(path, "w") as f:
        for section, entries in values.items():
            f.write(f"[{section}]\n")
            for name, value in entries.items():
                f.write(f"{name} = {value}\n")
    return path


def read_safetensors(path):
    with open(path, "rb") as f:
        blob = f.read()
    (length,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + length])
    meta = header.pop("__metadata__", {})
    data = blob[8 + length:]
    dtypes = {"F32": np.float32, "I64": np.int64, "U64": np.uint64, "U8": np.uint8}
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        tensors[name] = np.frombuffer(data[begin:end], dtype=dtypes[info["dtype"]]).reshape(
            info["shape"])
    return tensors, meta


def write_safetensors(path, tensors):
    header, offset, blobs = {}, 0, []
    for name, array in tensors.items():
        data = np.ascontiguousarray(array, dtype=np.float32).tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def compare(a_path, b_path, atol=0.0, names=None, report=False):
    a, _ = read_safetensors(a_path)
    b, _ = read_safetensors(b_path)
    if set(a) != set(b):
        fail(f"{a_path} and {b_path} hold different tensors")
    worst = 0.0
    for name in names or sorted(a):
        if a[name].shape != b[name].shape:
            fail(f"{name}: shapes {a[name].shape} vs {b[name].shape}")
        diff = float(np.max(np.abs(a[name].astype(np.float64) - b[name]))) if a[name].size else 0.0
        worst = max(worst, diff)
        if report:
            print(f"  {name}: {diff:.3g}")
        if not diff <= atol:
            fail(f"{name}: max |difference| {diff:.3g} > {atol:.3g} between {a_path} and {b_path}")
    return worst


# ---- the cases ---------------------------------------------------------------------------------

def case_resume_bit_exact(data, tmp):
    """4 epochs straight == 2 epochs + --resume auto + 2 more, bit for bit (weights, BN
    statistics, optimizer state); and a run stopped by SIGUSR1 mid-epoch resumes bit-exactly."""
    straight = os.path.join(tmp, "straight")
    os.makedirs(straight)
    run([MOBILETUNE, "train", "--config", write_config(straight, data), "--no-progress"])
    halves = os.path.join(tmp, "halves")
    os.makedirs(halves)
    config = write_config(halves, data)
    run([MOBILETUNE, "train", "--config", config, "--set", "train.epochs=2"])
    second = run([MOBILETUNE, "train", "--config", config, "--resume", "auto"])
    if "resuming from" not in second.output:
        fail("the second half did not say it resumed:\n" + second.output)
    compare(f"{straight}/run/last.safetensors", f"{halves}/run/last.safetensors", atol=0.0)

    # step 9 is in the middle of epoch 2 (6 steps per epoch): stop there on a real SIGUSR1
    stopped = os.path.join(tmp, "stopped")
    os.makedirs(stopped)
    config = write_config(stopped, data)
    first = run([MOBILETUNE, "train", "--config", config],
                env={"MT_FAULT_RANK": "0", "MT_FAULT_STEP": "9", "MT_FAULT_KIND": "signal"})
    if "stop requested" not in first.output:
        fail("SIGUSR1 did not stop the run with a checkpoint:\n" + first.output)
    _, meta = read_safetensors(f"{stopped}/run/last.safetensors")
    if (meta["epoch"], meta["next_batch"], meta["global_step"]) != ("1", "4", "10"):
        fail(f"checkpoint position after the stop: {meta}")
    run([MOBILETUNE, "train", "--config", config, "--resume", "auto"])
    compare(f"{straight}/run/last.safetensors", f"{stopped}/run/last.safetensors", atol=0.0)
    # starting again without --resume must not overwrite a run by accident
    again = run([MOBILETUNE, "train", "--config", config], expect=1)
    if "--resume auto" not in again.output:
        fail("a second fresh start into a used run folder was not refused:\n" + again.output)
    print("resume: bit-exact after a resume at an epoch boundary and after SIGUSR1 mid-epoch")


def case_input_paths(data, tmp):
    """With random_flip on, training on uint8 batches that the backend scales and flips (the
    cuda path: ops.h's input pipeline, two staging slots, batch k uploaded while batch k-1
    computes) is bit for bit training on the loader's float batches: the reference backend
    plain (float batches) and guarded (device memory, so uint8 batches), 2 epochs each, the
    same checkpoint. Also with a one-batch loader ring (each batch released after its own copy)
    stopped by SIGUSR1 mid-epoch and resumed. The same run without flips ends elsewhere (the
    comparison can fail)."""
    flips = {"data__random_flip": "true", "train__backend": "reference", "train__epochs": "2"}
    runs = {}
    for name, guarded, extra in (("float", "0", {}), ("staged", "1", {}),
                                 ("staged-ring1", "1", {"data__prefetch": "1"}),
                                 ("noflip", "0", {"data__random_flip": "false"})):
        folder = os.path.join(tmp, name)
        os.makedirs(folder)
        config = write_config(folder, data, **{**flips, **extra})
        env = {"MT_REFERENCE_GUARDED": guarded}
        if name == "staged-ring1":
            stop = {"MT_FAULT_RANK": "0", "MT_FAULT_STEP": "8", "MT_FAULT_KIND": "signal"}
            first = run([MOBILETUNE, "train", "--config", config], env={**env, **stop})
            if "stop requested" not in first.output:
                fail("SIGUSR1 did not stop the staged run:\n" + first.output)
            run([MOBILETUNE, "train", "--config", config, "--resume", "auto"], env=env)
        else:
            run([MOBILETUNE, "train", "--config", config], env=env)
        runs[name] = f"{folder}/run/last.safetensors"
    compare(runs["float"], runs["staged"], atol=0.0)
    compare(runs["float"], runs["staged-ring1"], atol=0.0)
    a, _ = read_safetensors(runs["float"])
    b, _ = read_safetensors(runs["noflip"])
    if all(np.array_equal(a[name], b[name]) for name in a):
        fail("training without flips ended at the same weights: the flips changed nothing")
    print("input paths: float batches == uint8 batches flipped by the backend, bit for bit "
          "(also with a one-batch ring, stopped and resumed)")


def case_nan_guard(data, tmp):
    """A non-finite loss stops the run naming the step; with nan_policy = skip the step's update
    is dropped and training goes on to a finite model."""
    stop = os.path.join(tmp, "stop")
    os.makedirs(stop)
    result = run([MOBILETUNE, "train", "--config", write_config(stop, data)], expect=1,
                 env={"MT_FAULT_RANK": "0", "MT_FAULT_STEP": "3", "MT_FAULT_KIND": "nan"})
    if "NaN or Inf at step 3" not in result.output:
        fail("the NaN stop did not name step 3:\n" + result.output)
    skip_dir = os.path.join(tmp, "skip")
    os.makedirs(skip_dir)
    result = run([MOBILETUNE, "train", "--config",
                  write_config(skip_dir, data, train__nan_policy="skip")],
                 env={"MT_FAULT_RANK": "0", "MT_FAULT_STEP": "3", "MT_FAULT_KIND": "nan"})
    if "step 3: non-finite loss, update skipped" not in result.output:
        fail("the skip policy did not report the skipped step:\n" + result.output)
    tensors, meta = read_safetensors(f"{skip_dir}/run/last.safetensors")
    if not all(np.all(np.isfinite(t)) for t in tensors.values()):
        fail("non-finite values in the model after a skipped step")
    if meta["optimizer_iterations"] != str(int(meta["global_step"]) - 1):
        fail(f"the skipped step was applied: {meta['optimizer_iterations']} optimizer steps in "
             f"{meta['global_step']}")
    # an Inf in a checkpoint's weights is refused where it is loaded, naming tensor and index
    tensors, meta = read_safetensors(f"{skip_dir}/run/last.safetensors")
    tensors["dense/bias"] = np.array([np.inf], dtype=np.float32)
    bad = os.path.join(tmp, "inf.safetensors")
    write_safetensors(bad, {k: v for k, v in tensors.items() if "/" in k and
                            not k.startswith("optimizer/")})
    real = os.path.join(tmp, "real")
    os.makedirs(real)
    result = run([MOBILETUNE, "train", "--config",
                  write_config(real, data, model__init_checkpoint=bad)], expect=1)
    if "'dense/bias' holds inf at index 0" not in result.output:
        fail("an Inf in the init_checkpoint was not refused by name:\n" + result.output)
    # a real non-finite loss, not an injected one: finite weights so large that the logits
    # overflow (3e38 is finite in float32; their sum over the features is not)
    tensors["dense/bias"] = np.array([3e38], dtype=np.float32)
    tensors["dense/kernel"] = np.full(tensors["dense/kernel"].shape, 3e38, dtype=np.float32)
    write_safetensors(bad, {k: v for k, v in tensors.items() if "/" in k and
                            not k.startswith("optimizer/")})
    shutil.rmtree(real)
    os.makedirs(real)
    result = run([MOBILETUNE, "train", "--config",
                  write_config(real, data, model__init_checkpoint=bad)], expect=1)
    if "NaN or Inf at step 0" not in result.output:
        fail("overflowing weights did not stop the run at step 0:\n" + result.output)
    print("nan guard: stop names the step, skip drops exactly one update, an Inf weight is refused "
          "by name, a real overflow is caught")


def case_feature_cache(data, tmp):
    """Frozen mode: the cached-features path trains the head to the same weights as running the
    frozen backbone every step (same batches, same flips, same dropout masks), with random flips
    off and on (then both views are cached). Tolerance 1e-5: the features are computed in other
    batch compositions than the training batches, which may change float summation order."""
    for flip in ("false", "true"):
        runs = {}
        for setting in ("on", "off"):
            folder = os.path.join(tmp, setting + flip)
            os.makedirs(folder)
            result = run([MOBILETUNE, "train", "--config",
                          write_config(folder, data, model__mode="frozen", data__random_flip=flip,
                                       train__cache_features=setting)])
            said = {"on": "mirror image computed once" if flip == "true" else "computed once",
                    "off": "inference mode every step"}[setting]
            if said not in result.output:
                fail(f"cache_features={setting}: the run did not say '{said}':\n" + result.output)
            runs[setting] = f"{folder}/run/last.safetensors"
        worst = compare(runs["on"], runs["off"], atol=1e-5)
        # the cached run also evaluates on cached validation features: same numbers
        curves = {}
        for setting, path in runs.items():
            with open(os.path.join(os.path.dirname(path), "metrics.jsonl")) as f:
                curves[setting] = [(r["val_loss"], r["val_accuracy"]) for r in map(json.loads, f)]
        for (loss_on, acc_on), (loss_off, acc_off) in zip(curves["on"], curves["off"]):
            if acc_on != acc_off or abs(loss_on - loss_off) > 1e-5:
                fail(f"validation differs: cached {curves['on']} vs uncached {curves['off']}")
        a, _ = read_safetensors(runs["on"])
        if np.allclose(a["dense/kernel"], 0):
            fail("the head did not train")
        print(f"feature cache (random_flip={flip}): head weights agree with the uncached path "
              f"(max diff {worst:.2e})")
    # a random rotation draws new pixels every epoch: no cache, whatever cache_features says,
    # and the log says why
    for setting in ("auto", "on"):
        folder = os.path.join(tmp, "rotate" + setting)
        os.makedirs(folder)
        result = run([MOBILETUNE, "train", "--config",
                      write_config(folder, data, model__mode="frozen", data__random_flip="true",
                                   data__random_rotation="0.2", train__cache_features=setting,
                                   train__epochs=1)])
        if "data.random_rotation: every epoch rotates" not in result.output or \
                "feature vectors" in result.output:
            fail(f"frozen with random_rotation (cache_features={setting}) did not say it runs "
                 "the backbone every step:\n" + result.output)
    print("feature cache: not used with random_rotation, and the log says so")


def time_split(output):
    """The closing 'time: T s = feature cache a s + training steps b s + ...' line, checked: every
    part >= 0 and the parts adding up to the total within the rounding of six values printed to
    0.1 s (0.05 each)."""
    lines = [line for line in output.splitlines() if line.startswith("time: ")]
    if len(lines) != 1:
        fail("not one closing time line:\n" + output)
    match = re.fullmatch(r"time: ([\d.]+) s = feature cache ([\d.]+) s \+ training steps "
                         r"([\d.]+) s \+ evaluation ([\d.]+) s \+ checkpoints ([\d.]+) s \+ "
                         r"the rest ([\d.]+) s \(.*\)", lines[0])
    if not match:
        fail("the time line does not split the run into its phases: " + lines[0])
    total, *parts = (float(x) for x in match.groups())
    if abs(sum(parts) - total) > 6 * 0.05 + 1e-9:
        fail(f"the phases add up to {sum(parts):.1f} s, not the total {total:.1f} s: {lines[0]}")
    return dict(zip(["cache", "steps", "eval", "checkpoints", "rest"], parts))


def bn_warnings(output):
    return [line for line in output.splitlines() if "warning:" in line and "BN moving" in line]


def strip_config_key(path, key):
    """Rewrite checkpoint `path` as one written before option `key` existed: the line gone from
    its stored config (the metadata is not covered by the tensors' checksums)."""
    with open(path, "rb") as f:
        blob = f.read()
    (length,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + length])
    config = header["__metadata__"]["config"]
    kept = [line for line in config.split("\n") if not line.startswith(key + " =")]
    if len(kept) != len(config.split("\n")) - 1:
        fail(f"no '{key} =' line in the config of {path}")
    header["__metadata__"]["config"] = "\n".join(kept)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + blob[8 + length:])


def case_bn_report(data, tmp):
    """What a run tells about itself: the BN coverage warning at each evaluation while scratch's
    moving statistics are mostly their initial values (naming model.bn_momentum and a value
    that fixes it, and silent once that value is used, and where no BN layer trains from its
    initial statistics); model.bn_momentum through resume (an old checkpoint without it reads as
    0.999); the closing line splitting the wall time into phases."""
    # 6 steps per epoch, 4 epochs: 1 - 0.999^24 = 2.4% covered at the last evaluation
    folder = os.path.join(tmp, "default")
    os.makedirs(folder)
    result = run([MOBILETUNE, "train", "--config", write_config(folder, data)])
    warnings = bn_warnings(result.output)
    if len(warnings) != 4 or "model.bn_momentum = " not in warnings[-1]:
        fail("scratch at momentum 0.999 did not warn at each of its 4 evaluations naming "
             "model.bn_momentum:\n" + result.output)
    # the fix offered for the last evaluation (24 steps): the largest m with 1 - m^24 >= 0.9,
    # to 4 decimals, rounded down: 0.1^(1/24) = 0.90851...
    fix = re.search(r"model\.bn_momentum = ([\d.]+) would", warnings[-1]).group(1)
    if fix != "0.9085" or "2.4%" not in warnings[-1]:
        fail("the last warning's coverage or fix is not 2.4% and 0.9085: " + warnings[-1])
    with open(os.path.join(folder, "run", "train.log")) as f:
        logged = f.read()
    if bn_warnings(logged) != warnings:
        fail("the warnings are not in train.log")
    parts = time_split(result.output)
    time_split(logged)
    if parts["steps"] <= 0 or parts["cache"] != 0:
        fail(f"scratch's time split has no training steps or a feature cache: {parts}")

    # the offered value: the last evaluation is silent (1 - 0.9085^24 = 0.900...)
    fixed = os.path.join(tmp, "fixed")
    os.makedirs(fixed)
    config = write_config(fixed, data, model__bn_momentum=fix, train__epochs=2)
    result = run([MOBILETUNE, "train", "--config", config])
    if len(bn_warnings(result.output)) != 2:
        fail(f"momentum {fix} at 12 of 24 steps should still warn twice:\n" + result.output)
    result = run([MOBILETUNE, "train", "--config", config, "--set", "train.epochs=4",
                  "--resume", "auto"])
    if len(bn_warnings(result.output)) != 1:
        fail(f"momentum {fix}, resumed for epochs 3 and 4, should warn at 18 steps (82%) only:\n"
             + result.output)
    lines = result.output.splitlines()
    last_epoch = [i for i, line in enumerate(lines) if line.startswith("epoch 4/4")]
    if not last_epoch or "warning:" in lines[last_epoch[0] - 1]:
        fail(f"momentum {fix} still warned at step 24:\n" + result.output)
    if "resuming from" not in result.output:
        fail("the fixed run did not resume:\n" + result.output)
    _, meta = read_safetensors(f"{fixed}/run/last.safetensors")
    if f"bn_momentum = {fix}" not in meta["config"]:
        fail("the checkpoint's config lost model.bn_momentum:\n" + meta["config"])
    # resuming with another momentum is a changed option, named
    result = run([MOBILETUNE, "train", "--config", config, "--set", "train.epochs=5",
                  "--set", "model.bn_momentum=0.99", "--resume", "auto"], expect=1)
    if f"model.bn_momentum {fix} -> 0.99" not in result.output:
        fail("a resume with another bn_momentum was not refused by name:\n" + result.output)

    # a checkpoint from before the option: its runs had Keras' 0.999
    strip_config_key(f"{folder}/run/last.safetensors", "bn_momentum")
    result = run([MOBILETUNE, "train", "--config", os.path.join(folder, "config.ini"),
                  "--set", "train.epochs=5", "--set", "model.bn_momentum=0.99", "--resume",
                  "auto"], expect=1)
    if "model.bn_momentum 0.999 -> 0.99" not in result.output:
        fail("an old checkpoint did not read as bn_momentum 0.999:\n" + result.output)
    result = run([MOBILETUNE, "train", "--config", os.path.join(folder, "config.ini"),
                  "--set", "train.epochs=5", "--resume", "auto"])
    if "resuming from" not in result.output or "changed options" in result.output:
        fail("an old checkpoint did not resume at the default momentum:\n" + result.output)

    # no BN layer in training mode (scratch with bn_mode inference; frozen): no warning
    for name, overrides in (("inference", {"model__bn_mode": "inference", "train__epochs": 1}),
                            ("frozen", {"model__mode": "frozen", "train__epochs": 1})):
        other = os.path.join(tmp, name)
        os.makedirs(other)
        result = run([MOBILETUNE, "train", "--config", write_config(other, data, **overrides)])
        if bn_warnings(result.output):
            fail(f"{name}: a BN warning without BN layers in training mode:\n" + result.output)
        time_split(result.output)
    print("bn report: scratch warns at 0.999 with the fix 0.9085, which silences the last "
          "evaluation; resume keeps bn_momentum (old checkpoints read 0.999); no warning "
          "without training-mode BN; the time split adds up")


def case_eval_predict(data, tmp):
    """eval reproduces the last validation accuracy; predict labels image files."""
    folder = os.path.join(tmp, "run")
    os.makedirs(folder)
    trained = run([MOBILETUNE, "train", "--config", write_config(folder, data, train__epochs=6)])
    # a backend with device memory says at the end how much the run needed (ops.h
    # device_memory_peak: the cuda backend's includes cuBLAS' 32 MiB workspace and the model)
    peak = re.search(r"^device memory: at most (\d+) MiB", trained.output, re.M)
    if BACKEND == "cuda" and (not peak or int(peak.group(1)) <= 32):
        fail("the cuda run did not say a device memory peak above cuBLAS' 32 MiB:\n"
             + trained.output)
    if BACKEND != "cuda" and peak:
        fail(f"the {BACKEND} backend keeps no device memory, yet the run said:\n{peak.group(0)}")
    checkpoint = f"{folder}/run/last.safetensors"
    with open(f"{folder}/run/metrics.jsonl") as f:
        last = [json.loads(line) for line in f][-1]
    result = run([MOBILETUNE, "eval", "--checkpoint", checkpoint, "--db", f"{data}/val",
                  "--backend", BACKEND])
    accuracy = float(result.output.split("accuracy ")[1].split()[0])
    if abs(accuracy - last["val_accuracy"]) > 1e-9:
        fail(f"eval accuracy {accuracy} != the run's last val_accuracy {last['val_accuracy']}")
    if "confusion matrix" not in result.output or "left" not in result.output:
        fail("eval printed no confusion matrix with class names:\n" + result.output)
    images = sorted(os.path.join(FIXTURE, "images", c, f) for c in ("left", "right")
                    for f in os.listdir(os.path.join(FIXTURE, "images", c)))
    result = run([MOBILETUNE, "predict", "--checkpoint", checkpoint, "--backend", BACKEND] + images)
    lines = [line.split("\t") for line in result.stdout.strip().splitlines()]
    if len(lines) != len(images):
        fail("predict printed %d lines for %d images" % (len(lines), len(images)))
    correct = sum(os.path.basename(os.path.dirname(p)) == cls for p, cls, *_ in lines)
    for line in lines:
        probabilities = [float(x.split("=")[1]) for x in line[2:]]
        if abs(sum(probabilities) - 1) > 1e-3:
            fail(f"probabilities do not add up to 1: {line}")
    print(f"eval: accuracy {accuracy:.4f} matches the run; predict: {correct}/{len(images)} right")
    broken = os.path.join(tmp, "broken.jpg")
    with open(broken, "w") as f:
        f.write("not an image")
    result = run([MOBILETUNE, "predict", "--checkpoint", checkpoint, "--backend", BACKEND, broken,
                  images[0]], expect=1)
    if "broken.jpg" not in result.output or images[0] not in result.output:
        fail("predict did not name the bad file and go on:\n" + result.output)


def case_backends(data, tmp):
    """A checkpoint written on one backend resumes on another (cpu <-> reference: the same
    explicit-copy code path the cuda backend takes), optimizer slots included: 2 epochs on one
    backend + 2 resumed on the other end where 4 epochs straight on the first end. Finetune
    from layer 100 with BN in inference mode and no dropout: the backends then differ only in
    float summation order (about 1e-6 relative per op on the gradients), and the 12 steps of lr
    1e-3 after the switch move weights by at most ~12 * lr * 1e-6 / sqrt(1 - rho) ~ 1e-7 more,
    so 1e-5 holds. Losing the optimizer slots at the switch (RMSprop restarting from a zero
    velocity: a first step of lr * g / sqrt(0.1 g^2) = 3.2 lr) moves weights by ~1e-3: caught.
    eval of the same checkpoint agrees across the backends (the printed loss)."""
    other = "cpu" if BACKEND != "cpu" else "reference"
    setup = {"model__dropout": 0, "model__mode": "finetune", "model__fine_tune_at": 100,
             "model__bn_mode": "inference"}
    straight = os.path.join(tmp, "straight")
    os.makedirs(straight)
    run([MOBILETUNE, "train", "--config",
         write_config(straight, data, train__backend=BACKEND, **setup)])
    for first, second in ((BACKEND, other), (other, BACKEND)):
        folder = os.path.join(tmp, f"{first}-{second}")
        os.makedirs(folder)
        config = write_config(folder, data, **setup)
        run([MOBILETUNE, "train", "--config", config, "--set", "train.epochs=2", "--set",
             f"train.backend={first}"])
        resumed = run([MOBILETUNE, "train", "--config", config, "--resume", "auto", "--set",
                       f"train.backend={second}"])
        if "resuming from" not in resumed.output or f"backend {second}" not in resumed.output:
            fail(f"the run did not resume on {second}:\n" + resumed.output)
        _, meta = read_safetensors(f"{folder}/run/last.safetensors")
        if meta["optimizer_iterations"] != "24":
            fail(f"{first} -> {second}: {meta['optimizer_iterations']} optimizer steps, not 24")
        worst = compare(f"{straight}/run/last.safetensors", f"{folder}/run/last.safetensors",
                        atol=1e-5)
        print(f"backends: 2 epochs on {first} + 2 resumed on {second} == 4 on {BACKEND} "
              f"(max diff {worst:.2e})")
    checkpoint = f"{straight}/run/last.safetensors"
    losses = []
    for backend in (BACKEND, other):
        result = run([MOBILETUNE, "eval", "--checkpoint", checkpoint, "--db", f"{data}/val",
                      "--backend", backend])
        losses.append(float(result.output.split("loss ")[1].split()[0].rstrip(",")))
    # printed with 4 decimals: a rounding step of 1e-4 on top of the backends' 1e-6
    if abs(losses[0] - losses[1]) > 1.5e-4:
        fail(f"eval of one checkpoint: loss {losses[0]} on {BACKEND}, {losses[1]} on {other}")
    print(f"backends: eval loss {losses[0]:.6f} on {BACKEND}, {losses[1]:.6f} on {other}")


def check_loss_scale(run_dir, steps):
    """fp16's loss-scale state in a run's last checkpoint after `steps` steps from the start (no
    growth yet: that takes 2000 finite steps): the scale is 2^15 halved once per skipped
    update, each skip cost one optimizer iteration, the metrics count the same skips, and the
    model is finite. Returns the skips."""
    tensors, meta = read_safetensors(f"{run_dir}/last.safetensors")
    state = {k: meta.get(k) for k in ("loss_scale", "loss_scale_good_steps", "loss_scale_skipped",
                                      "optimizer_iterations", "global_step")}
    if None in state.values() or int(state["global_step"]) != steps:
        fail(f"{run_dir}: loss-scale state missing or wrong position: {state}")
    skipped = int(state["loss_scale_skipped"])
    if float.fromhex(state["loss_scale"]) != 2.0 ** (15 - skipped):
        fail(f"{run_dir}: the scale is not 2^15 halved per skip: {state}")
    if int(state["optimizer_iterations"]) != steps - skipped:
        fail(f"{run_dir}: a skipped update counted as an optimizer iteration: {state}")
    if int(state["loss_scale_good_steps"]) > steps - skipped:
        fail(f"{run_dir}: more finite steps in a row than finite steps: {state}")
    with open(f"{run_dir}/metrics.jsonl") as f:
        epochs = [json.loads(line) for line in f if '"epoch"' in line.split(",")[0]]
    if (sum(e["skipped_steps"] for e in epochs) != skipped or
            epochs[-1]["loss_scale"] != 2.0 ** (15 - skipped)):
        fail(f"{run_dir}: metrics.jsonl's skipped_steps and loss_scale disagree with the "
             f"checkpoint's {state}: {epochs}")
    if not all(np.all(np.isfinite(t)) for t in tensors.values()):
        fail(f"{run_dir}: non-finite values in the model")
    return skipped


def case_precision(data, tmp):
    """train.precision: fp16 on the reference backend (its bf16/fp16 emulation; with
    MT_TRAINER_BACKEND=cuda, fp16 and bf16 on the cuda backend) keeps Keras' loss-scale state in
    the checkpoint, so 2 epochs + --resume + 2 equal 4 straight bit for bit, and metrics.jsonl
    records the scale and the skipped updates; an overflow in the backward pass (a dense kernel
    so large that the pooled features' gradient passes fp16's 65504 at scale 2^15) skips
    updates and halves the scale, Keras' way, until the gradients fit, and the model stays
    finite; bf16 on the cpu backend is refused naming the option and the fix; tf32 on the cpu
    backend is fp32 (a documented no-op), bit for bit."""
    mixed_backend = "cuda" if BACKEND == "cuda" else "reference"
    ref = {"train__backend": mixed_backend, "train__precision": "fp16"}
    for precision in ("fp16", "bf16") if mixed_backend == "cuda" else ("fp16",):
        setup = dict(ref, train__precision=precision)
        straight = os.path.join(tmp, "straight-" + precision)
        os.makedirs(straight)
        run([MOBILETUNE, "train", "--config", write_config(straight, data, **setup),
             "--no-progress"])
        halves = os.path.join(tmp, "halves-" + precision)
        os.makedirs(halves)
        config = write_config(halves, data, **setup)
        run([MOBILETUNE, "train", "--config", config, "--set", "train.epochs=2"])
        if precision == "fp16":
            check_loss_scale(f"{halves}/run", 12)
        run([MOBILETUNE, "train", "--config", config, "--resume", "auto"])
        compare(f"{straight}/run/last.safetensors", f"{halves}/run/last.safetensors", atol=0.0)
        if precision == "fp16":
            check_loss_scale(f"{straight}/run", 24)
    straight = os.path.join(tmp, "straight-fp16")

    # overflow: the head's kernel x 1e4 (the logits stay finite in fp32, the loss too), so the
    # gradient of the pooled features is ~1e4 x 2^15 x dlogit: inf in fp16 until the scale
    # has come down far enough; each such step is skipped (no update, no iteration)
    tensors, _ = read_safetensors(f"{straight}/run/last.safetensors")
    weights = {k: v for k, v in tensors.items() if "/" in k and not k.startswith("optimizer/")}
    weights["dense/kernel"] = weights["dense/kernel"] * 1e4
    big = os.path.join(tmp, "big.safetensors")
    write_safetensors(big, weights)
    overflow = os.path.join(tmp, "overflow")
    os.makedirs(overflow)
    result = run([MOBILETUNE, "train", "--config",
                  write_config(overflow, data, model__init_checkpoint=big, train__epochs=2,
                               optimizer__learning_rate=1e-6, **ref)])
    skipped = check_loss_scale(f"{overflow}/run", 12)
    if skipped < 1 or "update(s) skipped for non-finite gradients" not in result.output:
        fail("the overflowing gradients skipped no update:\n" + result.output)

    # bf16 on the cpu backend: refused, naming the option and the fix
    refused = os.path.join(tmp, "refused")
    os.makedirs(refused)
    result = run([MOBILETUNE, "train", "--config",
                  write_config(refused, data, train__backend="cpu", train__precision="bf16")],
                 expect=1)
    if "precision = bf16" not in result.output or "train.backend = cuda" not in result.output:
        fail("bf16 on the cpu backend was not refused clearly:\n" + result.output)
    # tf32 on a CPU backend is fp32
    for precision in ("fp32", "tf32"):
        folder = os.path.join(tmp, precision)
        os.makedirs(folder)
        run([MOBILETUNE, "train", "--config",
             write_config(folder, data, train__backend="cpu", train__epochs=1,
                          train__precision=precision)])
    compare(f"{tmp}/fp32/run/last.safetensors", f"{tmp}/tf32/run/last.safetensors", atol=0.0)
    print(f"precision on {mixed_backend}: fp16 resume bit-exact with the loss-scale state"
          f"{' (bf16 too)' if mixed_backend == 'cuda' else ''}; an overflow skipped {skipped} "
          f"update(s) and halved the scale to 2^{15 - skipped}; bf16 on cpu refused; tf32 on cpu "
          f"== fp32")


def case_config_errors(data, tmp):
    """Errors name the file, the line and the key."""
    folder = os.path.join(tmp, "cfg")
    os.makedirs(folder)
    config = write_config(folder, data)
    with open(config, "a") as f:
        f.write("[train]\nepochz = 3\n")
    result = run([MOBILETUNE, "train", "--config", config], expect=1)
    if "config.ini:" not in result.output or "epochz" not in result.output:
        fail("unknown key not reported with file, line and key:\n" + result.output)
    result = run([MOBILETUNE, "train", "--config", write_config(folder, data),
                  "--set", "optimizer.name=adamw"], expect=1)
    if "adamw" not in result.output or "rmsprop" not in result.output:
        fail("bad enum value not reported with the allowed values:\n" + result.output)
    result = run([MOBILETUNE, "train", "--config",
                  write_config(folder, data, data__train="/nonexistent/train")], expect=1)
    if "/nonexistent/train" not in result.output:
        fail("missing data folder not named:\n" + result.output)
    # train.comm = nccl where NCCL cannot run (the cpu backend) says what to change
    result = run([MOBILETUNE, "train", "--config", write_config(folder, data),
                  "--set", "train.comm=nccl"], expect=1)
    if "train.comm = nccl needs train.backend = cuda" not in result.output:
        fail("train.comm = nccl on the cpu backend not refused clearly:\n" + result.output)
    print("config errors: unknown key, bad value, missing file and nccl on a CPU are named")


def mpi_train(folder, data, ranks, batch, env=None, resume=False, **overrides):
    if not resume:
        os.makedirs(folder)
    config = write_config(folder, data, data__batch_size=batch, model__dropout=0, **overrides)
    command = [MOBILETUNE, "train", "--config", config] + (["--resume", "auto"] if resume else [])
    if ranks > 1:
        command = [MPIRUN, "--oversubscribe", "--bind-to", "none", "-np", str(ranks)] + command
    full_env = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    full_env.update(env or {})
    result = run(command, env=full_env)
    return f"{folder}/run/last.safetensors", result.output


def case_mpi_equivalence(data, tmp):
    """N ranks x batch B/N end where 1 rank x batch B ends: same global batches (the sharding
    rule), gradients averaged. Dropout is off (its masks are per rank) and BN runs in inference
    mode (batch statistics depend on the per-rank batch). The only difference is the order of
    float summation (per-rank means, then the all-reduce), about 1e-7 relative per step; RMSprop
    divides by sqrt of tiny second moments, so allow 2e-5 on weights after 8 steps of lr 1e-3."""
    if not MPIRUN:
        skip("built without MPI")
    for mode, extra in (("frozen", {}), ("finetune", {"model__fine_tune_at": "100"})):
        single, _ = mpi_train(os.path.join(tmp, f"{mode}1"), data, 1, 12, model__mode=mode,
                              model__bn_mode="inference", train__epochs=2, **extra)
        for ranks in (2, 3):
            # gradients in buckets of 10 KB (smaller than several layers) with 2 ranks, in one
            # call after backward (bucket_mb = 0) with 3: both must give the 1-rank result
            bucket_mb = "0.01" if ranks == 2 else "0"
            multi, output = mpi_train(os.path.join(tmp, f"{mode}{ranks}"), data, ranks,
                                      12 // ranks, model__mode=mode, model__bn_mode="inference",
                                      train__epochs=2, train__bucket_mb=bucket_mb, **extra)
            if f"on {ranks} rank(s)" not in output:
                fail(f"mpirun -np {ranks} did not run {ranks} ranks:\n{output}")
            if mode == "finetune" and ranks == 2 and "buckets/step" not in output:
                fail(f"train.bucket_mb = {bucket_mb} printed no bucket figures:\n{output}")
            worst = compare(single, multi, atol=2e-5)
            print(f"{mode}: {ranks} ranks x {12 // ranks} == 1 rank x 12 (max diff {worst:.2e})")
        if mode == "frozen" and "all-reduce per step: 5124 bytes" not in output:
            fail("frozen mode should reduce 1,281 floats (5,124 bytes) per step:\n" + output)


def patch_tensor(src, dst, name, index, value, fix_checksum):
    """Copy checkpoint `src` to `dst` with element `index` of tensor `name` set to `value`; with
    `fix_checksum` its crc32 entry is rewritten to match (same length: the header keeps its size),
    so that only the value check can catch it."""
    with open(src, "rb") as f:
        blob = bytearray(f.read())
    (length,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + length])
    begin, end = header[name]["data_offsets"]
    at = 8 + length + begin + 4 * index
    old_crc = "%08x" % zlib.crc32(bytes(blob[8 + length + begin:8 + length + end]))
    blob[at:at + 4] = struct.pack("<f", value)
    if fix_checksum:
        new_crc = "%08x" % zlib.crc32(bytes(blob[8 + length + begin:8 + length + end]))
        key = f'"crc32:{name}":"{old_crc}"'.encode()
        where = blob.find(key, 8, 8 + length)
        if where < 0:
            fail(f"no checksum entry for {name} in {src}")
        blob[where:where + len(key)] = f'"crc32:{name}":"{new_crc}"'.encode()
    with open(dst, "wb") as f:
        f.write(blob)


def start_and_signal(config, signals, env=None, gap=0.0):
    """Start a long run, wait for its first epoch's checkpoint, send `signals` in a row."""
    run_dir = os.path.join(os.path.dirname(config), "run")
    process = subprocess.Popen([MOBILETUNE, "train", "--config", config, "--no-progress"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=dict(os.environ, **(env or {})))
    deadline = time.time() + 120
    while not os.path.exists(os.path.join(run_dir, "last.safetensors")):
        if process.poll() is not None or time.time() > deadline:
            process.kill()
            fail("the run ended or took too long before its first checkpoint:\n" +
                 process.communicate()[0])
        time.sleep(0.05)
    for i, number in enumerate(signals):
        if i:
            time.sleep(gap)
        process.send_signal(number)
    output, _ = process.communicate(timeout=120)
    return process.returncode, output


def case_integrity(data, tmp):
    """Signals, stale temporary files, resume guards, checkpoint integrity and class lists:
    SIGINT and SIGHUP checkpoint like SIGTERM (a second SIGINT ends at once); a dead process's
    *.safetensors.tmp-PID is removed at the next start (nothing else is); a resume with changed
    hyperparameters names them and needs --allow-changes; --resume PATH from elsewhere into a
    folder holding another run's last.safetensors is refused; a NaN in a checkpoint is refused
    by tensor and index; mobiletune verify; val/test/init_checkpoint with other classes."""
    runs = {}
    for name, signals in (("int", [signal.SIGINT]), ("hup", [signal.SIGHUP])):
        folder = os.path.join(tmp, name)
        os.makedirs(folder)
        config = write_config(folder, data, train__epochs=400)
        code, output = start_and_signal(config, signals)
        if code != 0 or "stop requested" not in output:
            fail(f"{signals[0].name} did not stop the run with a checkpoint (exit {code}):\n" +
                 output)
        runs[name] = config
        print(f"{signals[0].name}: checkpoint written, exit 0")
    # Two signals sent back to back can merge into one pending signal, so the second waits a
    # moment; on the slow reference backend a step outlasts it. A run that still ended cleanly
    # (the step was shorter) is tried again.
    for attempt in range(4):
        folder = os.path.join(tmp, f"twice{attempt}")
        os.makedirs(folder)
        code, output = start_and_signal(
            write_config(folder, data, train__epochs=400, train__backend="reference"),
            [signal.SIGINT, signal.SIGINT], gap=0.02 * (attempt + 1))
        if code != 0:
            break
    if code != -signal.SIGINT:
        fail(f"a second SIGINT did not end the run at once (exit {code}):\n{output}")
    print("SIGINT twice: ended at once by the signal")

    # stale temporary files: only a dead process's, only mobiletune's naming
    folder = os.path.dirname(runs["int"])
    run_dir = os.path.join(folder, "run")
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = os.path.join(run_dir, f"last.safetensors.tmp-{dead.pid}")
    alive = os.path.join(run_dir, f"best.safetensors.tmp-{os.getpid()}")
    others = [os.path.join(run_dir, n) for n in ("notes.tmp-1", "last.safetensors.tmp-x1")]
    for path in [stale, alive] + others:
        with open(path, "wb") as f:
            f.write(b"partial")

    # a resume with another seed or learning rate: refused, naming both; --allow-changes goes on
    _, meta = read_safetensors(os.path.join(run_dir, "last.safetensors"))
    epochs = int(meta["epoch"]) + 1
    changed = run([MOBILETUNE, "train", "--config", runs["int"], "--resume", "auto", "--set",
                   "train.seed=8", "--set", "optimizer.learning_rate=0.01", "--set",
                   f"train.epochs={epochs}"], expect=1)
    for words in ("train.seed 7 -> 8", "optimizer.learning_rate 0.001 -> 0.01",
                  "--allow-changes"):
        if words not in changed.output:
            fail(f"a resume with changed options does not say '{words}':\n{changed.output}")
    if os.path.exists(stale) or not all(os.path.exists(p) for p in [alive] + others):
        fail("the stale temporary file was not removed, or another file was")
    print("stale *.safetensors.tmp-PID of a dead process removed at the start, nothing else")
    allowed = run([MOBILETUNE, "train", "--config", runs["int"], "--resume", "auto", "--set",
                   "train.seed=8", "--set", f"train.epochs={epochs}", "--allow-changes"])
    if "changed options" not in allowed.output or "train.seed 7 -> 8" not in allowed.output:
        fail("--allow-changes did not say what changed:\n" + allowed.output)
    print("resume with changed seed / learning rate: refused naming them; --allow-changes goes on")

    # --resume PATH from another run's folder into a folder holding its own last checkpoint
    other = os.path.join(os.path.dirname(runs["hup"]), "run", "last.safetensors")
    with open(other, "rb") as f:
        before = f.read()
    refused = run([MOBILETUNE, "train", "--config", runs["hup"], "--resume",
                   os.path.join(run_dir, "last.safetensors")], expect=1)
    if "of another run" not in refused.output:
        fail("--resume PATH over another run's last.safetensors was not refused:\n" +
             refused.output)
    with open(other, "rb") as f:
        if f.read() != before:
            fail("the run folder's last.safetensors was changed")
    print("--resume PATH into a folder holding another run's checkpoint: refused, untouched")

    # a NaN in the weights (checksum rewritten to match): refused by name and index, by resume,
    # init_checkpoint and verify; a flipped bit without: refused by its checksum
    good = other  # seed 7, as write_config's: only the NaN differs
    nan = os.path.join(tmp, "nan.safetensors")
    patch_tensor(good, nan, "Conv1/kernel", 5, float("nan"), fix_checksum=True)
    flipped = os.path.join(tmp, "flipped.safetensors")
    patch_tensor(good, flipped, "Conv1/kernel", 5, 1e30, fix_checksum=False)
    fresh = os.path.join(tmp, "fresh")
    os.makedirs(fresh)
    for how in (["--resume", nan], ["--set", f"model.init_checkpoint={nan}"]):
        result = run([MOBILETUNE, "train", "--config", write_config(fresh, data)] + how, expect=1)
        if "'Conv1/kernel'" not in result.output or "index 5" not in result.output:
            fail(f"a NaN weight was not refused by name and index ({how[0]}):\n{result.output}")
    ok = run([MOBILETUNE, "verify", good])
    if "checksums match" not in ok.output or "all finite" not in ok.output:
        fail("verify of a good checkpoint:\n" + ok.output)
    result = run([MOBILETUNE, "verify", nan], expect=1)
    if "'Conv1/kernel'" not in result.output or "index 5" not in result.output:
        fail("verify did not name the NaN:\n" + result.output)
    result = run([MOBILETUNE, "verify", flipped], expect=1)
    if "Conv1/kernel" not in result.output or "checksum" not in result.output:
        fail("verify did not refuse a changed tensor by its checksum:\n" + result.output)
    print("NaN weights refused by tensor and index (resume, init_checkpoint, verify); "
          "a changed tensor refused by its checksum")

    # class lists: the same folders under other names (dogs/zcats) are other classes
    renamed = os.path.join(tmp, "renamed")
    for old, new in (("left", "dogs"), ("right", "zcats")):
        shutil.copytree(os.path.join(FIXTURE, "images", old), os.path.join(renamed, "img", new))
    run([PACK, "--size", "32", "--split", "train=0.75,val=0.25", "--seed", "1", "--threads", "2",
         os.path.join(renamed, "img"), os.path.join(renamed, "packed")])
    other_val = os.path.join(renamed, "packed", "val")
    for how, words in ((["--set", f"data.val={other_val}"], "data.val"),
                       (["--set", f"data.test={other_val}"], "data.test"),
                       (["--set", f"data.train={renamed}/packed/train", "--set",
                         f"data.val={other_val}", "--set", f"model.init_checkpoint={good}"],
                        "model.init_checkpoint")):
        shutil.rmtree(fresh)
        os.makedirs(fresh)
        result = run([MOBILETUNE, "train", "--config", write_config(fresh, data)] + how, expect=1)
        if words not in result.output or "classes" not in result.output:
            fail(f"{words} with other classes was not refused:\n{result.output}")
    print("val, test and init_checkpoint with other class names: refused")


def case_mpi_disagree(data, tmp):
    """Two ranks started with configs that differ in one option: every rank ends, non-zero, with
    a message naming the option and both values; no signal, no hang. Before the agreement
    exchange model.mode and fine_tune_at crashed in a broadcast, train.epochs and cache_features
    hung and the rest trained on unnoticed. Per-node options (train.threads) may differ."""
    if not MPIRUN:
        skip("built without MPI")
    folder = os.path.join(tmp, "disagree")
    os.makedirs(folder)
    config = write_config(folder, data, model__mode="frozen", train__epochs=1)
    base = [MOBILETUNE, "train", "--config", config, "--no-progress"]
    env = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    cases = [("model.mode", "finetune", "frozen"), ("model.fine_tune_at", "120", "100"),
             ("train.epochs", "2", "1"), ("train.cache_features", "off", "auto"),
             ("optimizer.learning_rate", "0.01", "0.001"), ("train.seed", "8", "7"),
             ("model.dropout", "0.5", "0.2")]
    for option, theirs, ours in cases:
        command = ["timeout", "-k", "5", "60", MPIRUN, "--oversubscribe", "--bind-to", "none",
                   "-np", "1"] + base + [":", "-np", "1"] + base + ["--set", f"{option}={theirs}"]
        result = run(command, env=env, expect=1)
        if result.returncode in (124, 137) or result.seconds > 55:
            fail(f"{option} differing: the job hung ({result.seconds:.0f} s)")
        if "Segmentation fault" in result.output or "signal 11" in result.output:
            fail(f"{option} differing: a rank crashed:\n{result.output}")
        wanted = f"{option} is '{ours}' on rank 0 but '{theirs}' on rank 1"
        if wanted not in result.output:
            fail(f"{option} differing: no message with '{wanted}':\n{result.output}")
        print(f"{option} differing: refused by every rank in {result.seconds:.1f} s")
    # a per-node option may differ: the run goes on
    command = [MPIRUN, "--oversubscribe", "--bind-to", "none", "-np", "1"] + base + \
        [":", "-np", "1"] + base + ["--set", "train.threads=2", "--set", "output.run_dir=" +
                                    os.path.join(folder, "run")]
    result = run(command, env=env)
    if "on 2 rank(s)" not in result.output:
        fail("train.threads differing stopped the run:\n" + result.output)
    print("train.threads differing (per node): the run goes on")


def case_mpi_flags(data, tmp):
    """Ranks agree on non-finite losses and signals without a collective per step. A NaN loss on
    rank 1 at step 3 (nan_policy = skip) makes every rank skip that update (the skip flag rides
    the gradient all-reduce): 2 ranks end where 1 rank that skipped step 3 ends (the tolerance of
    mpi_equivalence), with one optimizer step fewer than steps. A SIGUSR1 on rank 1 at step 3
    stops both ranks after the same step, the next agreement (every 16 steps: step 16 of an
    epoch of 24), with a checkpoint there from which 2 ranks resume bit-exactly."""
    if not MPIRUN:
        skip("built without MPI")
    nan = {"MT_FAULT_STEP": "3", "MT_FAULT_KIND": "nan"}
    extra = dict(model__mode="finetune", model__fine_tune_at="100", model__bn_mode="inference",
                 train__epochs=2, train__nan_policy="skip")
    single, output1 = mpi_train(os.path.join(tmp, "nan1"), data, 1, 12,
                                env=dict(nan, MT_FAULT_RANK="0"), **extra)
    multi, output2 = mpi_train(os.path.join(tmp, "nan2"), data, 2, 6,
                               env=dict(nan, MT_FAULT_RANK="1"), **extra)
    for output in (output1, output2):
        if "step 3: non-finite loss, update skipped" not in output:
            fail("the skipped step was not reported:\n" + output)
    _, meta = read_safetensors(multi)
    if meta["optimizer_iterations"] != str(int(meta["global_step"]) - 1):
        fail(f"rank 0 did not skip rank 1's non-finite step: {meta['optimizer_iterations']} "
             f"optimizer steps in {meta['global_step']}")
    worst = compare(single, multi, atol=2e-5)
    print(f"flags: a NaN on rank 1 skipped the step on both ranks (max diff {worst:.2e} to 1 rank)")

    straight, _ = mpi_train(os.path.join(tmp, "straight"), data, 2, 1, train__epochs=1)
    folder = os.path.join(tmp, "signal")
    stopped, output = mpi_train(folder, data, 2, 1, train__epochs=1,
                                env={"MT_FAULT_RANK": "1", "MT_FAULT_STEP": "3",
                                     "MT_FAULT_KIND": "signal"})
    if "stop requested" not in output:
        fail("SIGUSR1 on rank 1 did not stop the job with a checkpoint:\n" + output)
    _, meta = read_safetensors(stopped)
    if (meta["epoch"], meta["next_batch"], meta["global_step"]) != ("0", "16", "16"):
        fail(f"checkpoint position after the stop (want the agreement at step 16): {meta}")
    mpi_train(folder, data, 2, 1, resume=True, train__epochs=1)
    # the stop averages the ranks' BN moving statistics (as the end of an epoch does), which the
    # straight run does only at its end: those differ by float rounding of the mean (~1e-10);
    # weights and optimizer state (batch statistics train, not moving ones) bit for bit
    worst = compare(straight, stopped, atol=1e-6)
    tensors_a, _ = read_safetensors(straight)
    tensors_b, _ = read_safetensors(stopped)
    for name, value in tensors_a.items():
        if "moving_" not in name and not np.array_equal(value, tensors_b[name]):
            fail(f"{name} differs after the resume (only BN moving statistics may)")
    print(f"flags: SIGUSR1 on rank 1 at step 3 stopped both ranks at step 16; resumed to the "
          f"straight run (weights bit for bit, moving statistics within {worst:.1e})")


def case_mpi_fault(data, tmp):
    """A rank that fails (or dies) at step 3 takes the whole mpirun job down, non-zero, with the
    rank and its error named, within 60 s; launch/mpirun.sh --dry-run shows what it runs."""
    if not MPIRUN:
        skip("built without MPI")
    hostfile = os.path.join(tmp, "hosts")
    with open(hostfile, "w") as f:
        f.write("# two nodes\nnode1 slots=4\nnode2 slots=4\n")
    dry = run([os.path.join(SOURCE, "launch", "mpirun.sh"), "--dry-run", "-H", hostfile, "-N", "4",
               "--", MOBILETUNE, "train"])
    expected = ["-np 8", "--map-by ppr:4:node", f"--hostfile {hostfile}", "-x OMP_NUM_THREADS",
                f"{MOBILETUNE} train"]
    if os.cpu_count() < 4:  # 4 ranks a node oversubscribe this machine: passive OpenMP waits
        expected += ["--oversubscribe", "-x OMP_WAIT_POLICY"]
    for words in expected:
        if words not in dry.stdout:
            fail(f"mpirun.sh --dry-run does not show '{words}':\n{dry.stdout}")
    for kind, words in (("fail", "rank 1: train: injected fault at step 3"),
                        ("crash", "signal 9")):
        folder = os.path.join(tmp, kind)
        os.makedirs(folder)
        config = write_config(folder, data, train__epochs=50)
        # through launch/mpirun.sh, the launcher users run
        command = ["timeout", "-k", "5", "60", os.path.join(SOURCE, "launch", "mpirun.sh"),
                   "-n", "2", "-N", "2", "--", MOBILETUNE, "train", "--config", config]
        result = run(command, expect=1, env={
            "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
            "MT_FAULT_RANK": "1", "MT_FAULT_STEP": "3", "MT_FAULT_KIND": kind})
        # (exit 137 alone is no proof of a hang: mpirun passes on a rank's SIGKILL as 128 + 9)
        if result.seconds >= 59:
            fail(f"{kind}: the job hung until the 60 s timeout")
        if words not in result.output:
            fail(f"{kind}: the output does not say '{words}':\n{result.output}")
        print(f"fault ({kind}): job exited {result.returncode} after {result.seconds:.1f} s")


def emu_report(path):
    """The emulated CUDA runtime's MT_EMU_REPORT line (tests/gpu/emu/emu_cudart.cc), as a dict:
    {"captures": C, "broken": B, "replays": R} (its work count left out); all 0 when it never
    wrote one."""
    counts = {"captures": 0, "broken": 0, "replays": 0}
    if os.path.exists(path):
        with open(path) as f:
            words = f.read().split()
        counts.update((k, int(v)) for k, v in zip(words[0::2], words[1::2]) if k in counts)
    return counts


def case_nccl_graphs(data, tmp):
    """train.comm = nccl with train.cuda_graphs on the emulated cuda backend (ctest
    trainer_nccl_graphs_emulated sets MT_CUDA_MODULE; MT_EMU_DEVICES=2 gives each rank a GPU):
    on 1 and on 2 ranks, the captured step (its bucketed all-reduce launches inside) ends where
    the eager steps end, every tensor of last.safetensors bit for bit (the emulated device clock
    makes every per-shape choice the same), and each rank's report (MT_EMU_REPORT's %r: one file
    per rank) shows one capture, nothing broken, and a replay of every later step. Then a stuck
    peer: rank 1 stops (SIGSTOP, alive to mpirun) at step 4, while rank 0 replays; rank 0's
    check after the replay (NCCL's error state: the emulated NCCL gives up after
    MT_EMU_NCCL_TIMEOUT s) takes the job down with its message, well before the test's bound."""
    if not MPIRUN:
        skip("built without MPI")
    if BACKEND != "cuda" or not os.environ.get("MT_CUDA_MODULE"):
        skip("needs MT_TRAINER_BACKEND=cuda and MT_CUDA_MODULE (ctest trainer_nccl_graphs_emulated)")
    nccl_timeout = 8
    emulated = {"MT_EMU_DEVICES": "2", "MT_EMU_NCCL_TIMEOUT": str(nccl_timeout)}
    # small buckets: several all-reduces per step, the first started in the middle of backward
    nccl = {"train__comm": "nccl", "train__bucket_mb": "0.05", "train__epochs": 1}
    steps = 4
    for ranks in (1, 2):
        last = {}
        for graphs in ("true", "false"):
            folder = os.path.join(tmp, f"ranks{ranks}-graphs-{graphs}")
            report = os.path.join(tmp, f"ranks{ranks}-graphs-{graphs}-%r.report")
            last[graphs], output = mpi_train(folder, data, ranks, 4,
                                             env=dict(emulated, MT_EMU_REPORT=report),
                                             train__cuda_graphs=graphs,
                                             train__steps_per_epoch=steps, **nccl)
            if "gradients over nccl" not in output:
                fail(f"{ranks} rank(s): the gradients did not go over NCCL:\n{output}")
            if graphs == "true" and "train.cuda_graphs" in output:
                fail(f"{ranks} rank(s): graphs were turned off:\n{output}")
            # the first step warms the shape up eager, the second is captured and replayed
            want = ({"captures": 1, "broken": 0, "replays": steps - 1} if graphs == "true" else
                    {"captures": 0, "broken": 0, "replays": 0})
            for rank in range(ranks):
                got = emu_report(report.replace("%r", str(rank)))
                if got != want:
                    fail(f"{ranks} rank(s), cuda_graphs = {graphs}, rank {rank}: the emulated "
                         f"runtime reports {got}, expected {want}\n{output}")
        compare(last["true"], last["false"])
        print(f"nccl, {ranks} rank(s): {steps} steps captured once and replayed == eager, "
              f"bit for bit")

    # a backend refuses its graph at step 2 (as cuda does after memory went back to the driver):
    # one rank runs that step eager and captures again, ending where eager training ends; with
    # two ranks the refusing rank cannot go eager alone (the other launches NCCL calls in its
    # graph), so the job ends at once with the reason and the way on, not a hang
    refusal = {"MT_FAULT_STEP": "2", "MT_FAULT_KIND": "refuse_replay"}
    report = os.path.join(tmp, "refused-%r.report")
    refused, output = mpi_train(os.path.join(tmp, "refused"), data, 1, 4, env=dict(
        emulated, **refusal, MT_EMU_REPORT=report, MT_FAULT_RANK="0"),
        train__cuda_graphs="true", train__steps_per_epoch=steps, **nccl)
    want = {"captures": 2, "broken": 0, "replays": steps - 2}
    got = emu_report(report.replace("%r", "0"))
    if got != want:
        fail(f"a replay refused on 1 rank: the emulated runtime reports {got}, expected {want} "
             f"(that step eager, then captured again)\n{output}")
    compare(refused, os.path.join(tmp, "ranks1-graphs-false", "run", "last.safetensors"))
    folder = os.path.join(tmp, "refused2")
    os.makedirs(folder)
    config = write_config(folder, data, data__batch_size=4, model__dropout=0,
                          train__steps_per_epoch=steps, **nccl)
    bound = 90
    result = run(["timeout", "-k", "5", str(bound), MPIRUN, "--oversubscribe", "--bind-to",
                  "none", "-np", "2", MOBILETUNE, "train", "--config", config], expect=1,
                 env=dict(emulated, **refusal, MT_FAULT_RANK="1", OMPI_ALLOW_RUN_AS_ROOT="1",
                          OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1"))
    words = "rank 1: train.cuda_graphs: the captured step can no longer run"
    if result.returncode == 124 or words not in result.output or "--resume auto" not in \
            result.output:
        fail(f"a replay refused on rank 1 of 2: expected the job to end saying '{words}' and "
             f"the way on:\n{result.output}")
    print("nccl: a refused replay runs eager on 1 rank (bit for bit); on 2 ranks it ends the job "
          f"in {result.seconds:.1f} s naming the rank and --resume auto")

    # train.comm = mpi stays eager, saying why: its all-reduce is host work inside the step
    report = os.path.join(tmp, "mpi-%r.report")
    _, output = mpi_train(os.path.join(tmp, "mpi"), data, 2, 4,
                          env=dict(emulated, MT_EMU_REPORT=report), train__comm="mpi",
                          train__epochs=1, train__steps_per_epoch=2)
    words = "train.cuda_graphs: off: train.comm = mpi all-reduces the gradients on the host"
    if words not in output or emu_report(report.replace("%r", "0"))["captures"] != 0:
        fail(f"train.comm = mpi should run eager saying '{words}':\n{output}")

    folder = os.path.join(tmp, "stuck")
    os.makedirs(folder)
    config = write_config(folder, data, data__batch_size=4, model__dropout=0,
                          **dict(nccl, train__epochs=50))
    report = os.path.join(tmp, "stuck-%r.report")
    bound = 90
    command = ["timeout", "-k", "5", str(bound), MPIRUN, "--oversubscribe", "--bind-to", "none",
               "-np", "2", MOBILETUNE, "train", "--config", config]
    result = run(command, expect=1, env=dict(
        emulated, MT_EMU_REPORT=report, OMPI_ALLOW_RUN_AS_ROOT="1",
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", MT_FAULT_RANK="1", MT_FAULT_STEP="4",
        MT_FAULT_KIND="stop"))
    if result.returncode == 124 or result.seconds >= bound - 1:
        fail(f"stuck peer: the job hung until the test's {bound} s bound:\n{result.output}")
    words = "rank 0 (GPU 0): NCCL"
    if words not in result.output:
        fail(f"stuck peer: rank 0 did not say '{words}':\n{result.output}")
    got = emu_report(report.replace("%r", "0"))
    if got["captures"] != 1 or got["replays"] < 4:
        fail(f"stuck peer: rank 0 should have captured once and replayed steps 1 to 4, the "
             f"emulated runtime reports {got}")
    print(f"stuck peer under graphs: the job exited {result.returncode} after "
          f"{result.seconds:.1f} s (emulated NCCL timeout {nccl_timeout} s), rank 0 naming NCCL")


def rewrite_metadata(path, key, value):
    """Set metadata `key` of checkpoint `path` to `value` (None: remove it, as in a checkpoint
    written before the key existed; the metadata is not covered by the tensors' checksums)."""
    with open(path, "rb") as f:
        blob = f.read()
    (length,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + length])
    if value is None:
        header["__metadata__"].pop(key)
    else:
        header["__metadata__"][key] = value
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + blob[8 + length:])


def case_resume_choices(data, tmp):
    """The cuda backend's per-shape choices (docs/gpu.md, "Choices") travel in the checkpoint, so
    a resumed run, a fresh process whose timing may pick other implementations, stays bit-exact.
    On the emulated cuda backend (ctest trainer_resume_choices_emulated): MT_EMU_SLOW makes one
    kind of work slow on the virtual clock, a GPU on which other choices win. The straight run
    and the first half run with cuBLAS slow (1x1 layers: cuDNN, whose emulated Find ranks a
    non-deterministic algorithm first, which must be skipped); the second half with our kernels
    and cuDNN's algorithm 0 slow. With the recorded choices the end equals the straight run bit
    for bit; the same second half told to ignore them (MT_CUDA_CHOICES=ignore) must end
    elsewhere, or the knob changed nothing and the first comparison proved nothing. A checkpoint
    without choices (older) still resumes; a recorded algorithm this cuDNN lacks, one it lists as
    not deterministic, one over the workspace limit, or choices made for another precision, are
    dropped with a line saying so; a malformed line is an error naming it."""
    if BACKEND != "cuda" or not os.environ.get("MT_CUDA_MODULE"):
        skip("needs MT_TRAINER_BACKEND=cuda and MT_CUDA_MODULE (ctest trainer_resume_choices_emulated)")
    first = {"MT_EMU_SLOW": "gemm", "MT_CUDA_DEBUG": "1"}
    second = {"MT_EMU_SLOW": "own,algo0", "MT_CUDA_DEBUG": "1"}
    small = {"train__epochs": 2, "train__steps_per_epoch": 2, "data__batch_size": 4,
             "model__dropout": 0}

    straight = os.path.join(tmp, "straight")
    os.makedirs(straight)
    output = run([MOBILETUNE, "train", "--config", write_config(straight, data, **small),
                  "--no-progress"], env=first).output
    algos = re.findall(r"cuDNN algo (\d+)", output)
    if not algos or set(algos) != {"0"}:
        fail(f"with cuBLAS slow the 1x1 layers should run cuDNN's algorithm 0, the fastest "
             f"deterministic one, and nothing else; cuDNN algorithms picked: {sorted(set(algos))}"
             f"\n{output}")

    halves = os.path.join(tmp, "halves")
    os.makedirs(halves)
    config = write_config(halves, data, **small)
    run([MOBILETUNE, "train", "--config", config, "--set", "train.epochs=1"], env=first)
    checkpoint = f"{halves}/run/last.safetensors"
    _, meta = read_safetensors(checkpoint)
    text = meta.get("backend_choices", "")
    if not text.startswith("mobiletune-cuda-choices 1") or " cudnn algo 0 " not in text:
        fail(f"the checkpoint does not hold the cuda choices:\n{text}")
    copies = {}
    for name in ("ignored", "old", "missing", "nondeterministic", "workspace", "big_workspace",
                 "broken", "other_precision"):
        shutil.copytree(halves, os.path.join(tmp, name))
        copies[name] = write_config(os.path.join(tmp, name), data, **small)  # its own run_dir

    resumed = run([MOBILETUNE, "train", "--config", config, "--resume", "auto"], env=second)
    loaded = re.search(r"loaded (\d+) recorded convolution choices of (\d+)", resumed.output)
    if not loaded or loaded.group(1) != loaded.group(2) or loaded.group(1) == "0":
        fail("the resumed run did not load every recorded choice:\n" + resumed.output)
    compare(f"{straight}/run/last.safetensors", checkpoint, atol=0.0)

    ignored = os.path.join(tmp, "ignored")
    run([MOBILETUNE, "train", "--config", copies["ignored"], "--resume", "auto"],
        env=dict(second, MT_CUDA_CHOICES="ignore"))
    a, _ = read_safetensors(f"{straight}/run/last.safetensors")
    b, _ = read_safetensors(f"{ignored}/run/last.safetensors")
    if all(np.array_equal(a[name], b[name]) for name in a):
        fail("with the choices ignored, the flipped timing still ended bit for bit where the "
             "straight run did: MT_EMU_SLOW changed no choice, so the test proves nothing")

    # an older checkpoint, without the key, resumes (and chooses anew)
    old = os.path.join(tmp, "old")
    rewrite_metadata(f"{old}/run/last.safetensors", "backend_choices", None)
    run([MOBILETUNE, "train", "--config", copies["old"], "--resume", "auto"],
        env=second)

    # a misspelt switch stops the backend at its start, naming it, before anything is trained
    result = run([MOBILETUNE, "train", "--config", copies["old"], "--resume", "auto"],
                 env=dict(second, MT_CUDA_CHOICES="ignored"), expect=1)
    if "MT_CUDA_CHOICES='ignored': expected 'ignore' or nothing" not in result.output:
        fail("a misspelt MT_CUDA_CHOICES was not refused naming it:\n" + result.output)

    # an algorithm this cuDNN does not have: dropped, with a line, and the run goes on
    missing = os.path.join(tmp, "missing")
    rewrite_metadata(f"{missing}/run/last.safetensors", "backend_choices",
                     text.replace(" cudnn algo 0 ", " cudnn algo 7 ", 1))
    result = run([MOBILETUNE, "train", "--config", copies["missing"], "--resume", "auto"],
                 env=second)
    if "cudnn algo 7" in text or "algo 7, math" not in result.output:
        fail("a recorded algorithm cuDNN lacks was not reported:\n" + result.output)

    # choices timing would never make here, as in a checkpoint from another cuDNN or edited by
    # hand: an algorithm cuDNN lists as not deterministic (the emulation's 2), one whose workspace
    # (the emulation's algorithm 1 stages 1 MiB) exceeds MT_CUDA_WORKSPACE_MB, one whose recorded
    # workspace does (the default 512 MiB); each dropped with a line saying why, and the run goes
    # on. (The emulated heuristics list each algorithm after an unrunnable entry and under another
    # math type than Find's: the resumed run above loading every choice shows those are read
    # right.)
    recorded = re.search(r" cudnn algo 0 math (\d+) workspace 0\n", text)
    if not recorded:
        fail(f"no cuDNN algorithm 0 choice to edit in the recorded choices:\n{text}")
    cases = (("nondeterministic", " cudnn algo 2 math {} workspace 0\n", {},
              "algo 2, math {}) is not deterministic here"),
             ("workspace", " cudnn algo 1 math {} workspace 1048576\n", {"MT_CUDA_WORKSPACE_MB": "0"},
              "algo 1, math {}) needs 1048576 bytes of workspace, over the 0 that "
              "MT_CUDA_WORKSPACE_MB allows"),
             ("big_workspace", " cudnn algo 0 math {} workspace 999999999\n", {},
              "algo 0, math {}) needs 999999999 bytes of workspace, over the 536870912 that "
              "MT_CUDA_WORKSPACE_MB allows"))
    for name, edit, env, words in cases:
        math = recorded.group(1)
        rewrite_metadata(os.path.join(tmp, name, "run", "last.safetensors"), "backend_choices",
                         text.replace(recorded.group(0), edit.format(math), 1))
        result = run([MOBILETUNE, "train", "--config", copies[name], "--resume", "auto"],
                     env=dict(second, **env))
        if words.format(math) not in result.output:
            fail(f"a recorded choice of {name}: expected '{words.format(math)}':\n"
                 + result.output)

    # choices made for other arithmetic: not loaded, with a line saying so
    other = os.path.join(tmp, "other_precision")
    rewrite_metadata(f"{other}/run/last.safetensors", "backend_choices",
                     text.replace(" precision fp32 ", " precision bf16 ", 1))
    result = run([MOBILETUNE, "train", "--config", copies["other_precision"], "--resume", "auto"],
                 env=second)
    if "made for precision bf16" not in result.output:
        fail("choices of another precision were not refused with a line:\n" + result.output)

    # a malformed line: an error naming it
    broken = os.path.join(tmp, "broken")
    lines = text.split("\n")
    lines[2] = lines[2].replace("conv N", "conv M", 1)
    rewrite_metadata(f"{broken}/run/last.safetensors", "backend_choices", "\n".join(lines))
    result = run([MOBILETUNE, "train", "--config", copies["broken"], "--resume", "auto"],
                 env=second, expect=1)
    if "backend_choices" not in result.output or "line 3" not in result.output:
        fail("a malformed choices line was not named:\n" + result.output)

    # two ranks timing differently (one GPU each, each its own choices): the checkpoint keeps
    # rank 1's beside rank 0's, and a resume where the two ranks' timing is swapped ends where the
    # straight run does only if each rank gets its own back
    if MPIRUN:
        def two_ranks(config, env0, env1, resume=False):
            tail = ["--resume", "auto"] if resume else []
            command = [MPIRUN, "--oversubscribe", "--bind-to", "none"]
            for i, env in enumerate((env0, env1)):
                command += ["-np", "1", "env"] + [f"{k}={v}" for k, v in env.items()] + \
                    [MOBILETUNE, "train", "--config", config] + tail + ([":"] if i == 0 else [])
            return run(command, env={"OMPI_ALLOW_RUN_AS_ROOT": "1",
                                     "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "MT_EMU_DEVICES": "2"})
        mpi = dict(small, train__comm="mpi")
        straight2 = os.path.join(tmp, "straight-2")
        os.makedirs(straight2)
        two_ranks(write_config(straight2, data, **mpi), first, second)
        halves2 = os.path.join(tmp, "halves-2")
        os.makedirs(halves2)
        config2 = write_config(halves2, data, **dict(mpi, train__epochs=1))
        two_ranks(config2, first, second)
        _, meta = read_safetensors(f"{halves2}/run/last.safetensors")
        if not meta.get("backend_choices_rank1") or \
                meta["backend_choices_rank1"] == meta.get("backend_choices"):
            fail("two ranks that chose differently: the checkpoint lacks rank 1's own choices")
        config2 = write_config(halves2, data, **dict(mpi, train__epochs=2))
        two_ranks(config2, second, first, resume=True)
        compare(f"{straight2}/run/last.safetensors", f"{halves2}/run/last.safetensors", atol=0.0)
        print("resume_choices: 2 ranks with their own choices, resumed with the timing swapped "
              "== straight run, bit for bit")
    print("resume_choices: resumed under other timing == straight run, bit for bit; differs "
          "without the recorded choices; old, unavailable, non-deterministic, over-workspace and "
          "malformed choices handled")


# ---- Slurm, for real, on a one-node cluster started by ../shared/tools/slurm_local.sh -------------

SLURM_LOCAL = os.path.join(os.environ.get("MT_SHARED_DIR", os.path.join(SOURCE, "..", "shared")),
                           "tools", "slurm_local.sh")


def slurm_job(tmp, name, body_lines=()):
    """launch/slurm/train-cpu.sbatch as shipped (the README's Slurm line), or, with body_lines, a
    job with its #SBATCH header that runs those lines and then the shipped file."""
    shipped = os.path.join(SOURCE, "launch", "slurm", "train-cpu.sbatch")
    if not body_lines:
        return shipped
    with open(shipped) as f:
        header = [line for line in f.read().splitlines()
                  if line.startswith("#!") or line.startswith("#SBATCH")]
    job = os.path.join(tmp, name + ".sbatch")
    # (from a job file outside the repository, the shipped file cannot find it by itself)
    body = list(body_lines) + [f"export MT_ROOT={SOURCE}", f"bash {shipped}"]
    with open(job, "w") as f:
        f.write("\n".join(header + body) + "\n")
    return job


def free_port_pair():
    port = local_slurm.free_port_pair()
    if port is None:
        fail("no free pair of ports for the local Slurm")
    return port


def slurm_run(job, config, env=None, expect=0):
    if not os.path.exists(SLURM_LOCAL):
        skip(f"{SLURM_LOCAL} is absent (../shared/tools)")
    # MT_ROOT is left to the job script, which finds the repository from its own path
    # The job log goes next to the config (sbatch reads SBATCH_OUTPUT over the file's --output),
    # never into launch/slurm/, where slurm_local.sh submits the shipped file from.
    full = {"MT_BIN": MOBILETUNE, "MT_CONFIG": config,
            "SBATCH_OUTPUT": os.path.join(os.path.dirname(config), "slurm-%j.out"),
            "SLURM_LOCAL_PORT": str(free_port_pair())}
    full.update(env or {})
    result = run(["bash", SLURM_LOCAL, job, "300"], env=full, expect=None)
    if result.returncode == 2 and "cluster did not come up" in result.output or \
            "missing /usr/sbin" in result.output:
        skip("Slurm could not start here:\n" + result.output[-2000:])
    if (result.returncode != 0) != (expect != 0):
        print(result.output)
        fail(f"Slurm job exited {result.returncode}, expected {'0' if expect == 0 else 'non-zero'}")
    return result


def case_slurm(data, tmp):
    """train-cpu.sbatch under srun --mpi=pmix with 2 ranks: a run to the end; then a run that Slurm
    signals (scancel --signal=TERM, as on pre-emption) after its first epoch, which must
    checkpoint and exit 0, and a resubmission that resumes and finishes; then an injected fault
    on rank 1 that must fail the job quickly with the rank named."""
    folder = os.path.join(tmp, "complete")
    os.makedirs(folder)
    config = write_config(folder, data, train__epochs=2)
    result = slurm_run(slurm_job(folder, "train"), config)
    for words in ("on 2 rank(s)", "done: 2 epochs"):
        if words not in result.output:
            fail(f"the Slurm run did not say '{words}':\n" + result.output)
    print(f"slurm: 2 ranks trained to the end in {result.seconds:.1f} s")

    folder = os.path.join(tmp, "signal")
    os.makedirs(folder)
    config = write_config(folder, data, train__epochs=12)
    log = os.path.join(folder, "run", "train.log")
    watcher = [f"( while ! grep -q '^epoch 1/' {log} 2>/dev/null; do sleep 0.2; done;",
               "  scancel --signal=TERM \"$SLURM_JOB_ID\" ) &"]
    result = slurm_run(slurm_job(folder, "signalled", watcher), config)
    if "stop requested (signal): checkpoint written" not in result.output:
        fail("the signalled job did not checkpoint and stop:\n" + result.output)
    _, meta = read_safetensors(os.path.join(folder, "run", "last.safetensors"))
    stopped_at = int(meta["global_step"])
    result = slurm_run(slurm_job(folder, "train"), config)
    if "resuming from" not in result.output or "done: 12 epochs" not in result.output:
        fail("the resubmitted job did not resume and finish:\n" + result.output)
    _, meta = read_safetensors(os.path.join(folder, "run", "last.safetensors"))
    print(f"slurm: SIGTERM stopped the job at step {stopped_at}; the resubmitted job resumed and "
          f"finished at step {meta['global_step']}")

    folder = os.path.join(tmp, "fault")
    os.makedirs(folder)
    config = write_config(folder, data, train__epochs=40)
    result = slurm_run(slurm_job(folder, "train"), config, expect=1,
                       env={"MT_FAULT_RANK": "1", "MT_FAULT_STEP": "3"})
    if "rank 1: train: injected fault at step 3" not in result.output:
        fail("the failing rank and its error were not named:\n" + result.output)
    if result.seconds > 90:
        fail(f"the failed job took {result.seconds:.0f} s to end")
    print(f"slurm: a failure on rank 1 ended the job (exit {result.returncode}) in "
          f"{result.seconds:.1f} s including cluster start and stop")


CASES = {
    "resume": case_resume_bit_exact,
    "nan": case_nan_guard,
    "cache": case_feature_cache,
    "eval_predict": case_eval_predict,
    "bn_report": case_bn_report,
    "config_errors": case_config_errors,
    "precision": case_precision,
    "integrity": case_integrity,
    "backends": case_backends,
    "input_paths": case_input_paths,
    "mpi_equivalence": case_mpi_equivalence,
    "mpi_flags": case_mpi_flags,
    "mpi_fault": case_mpi_fault,
    "mpi_disagree": case_mpi_disagree,
    "nccl_graphs": case_nccl_graphs,
    "resume_choices": case_resume_choices,
    "slurm": case_slurm,
}

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in CASES:
        print("usage: trainer_checks.py " + "|".join(CASES))
        sys.exit(2)
    data = make_dataset()
    with tempfile.TemporaryDirectory(prefix="mt-trainer-") as tmp:
        CASES[sys.argv[1]](data, tmp)
    print("PASSED")
