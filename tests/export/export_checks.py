#!/usr/bin/env python3
"""ctest export_*: `mobiletune export` checked by the runtimes that will run its files.

  onnx   for (alpha, input size, classes) in CASES: a checkpoint with real Keras backbone weights
         (../shared/weights) and a seeded head; `mobiletune export --format onnx`; onnx.checker
         (full check, shape inference) passes and the opset is the one documented; ONNX Runtime
         (its default graph optimizations, and none) on 8 real photos gives the probabilities
         `mobiletune predict --digits 9` prints, within 1e-5; the class names travel in the
         metadata; the command's refusals (existing output, unknown format).

Tolerance. `predict` runs mobiletune's cpu backend (oneDNN) in float32 with BN applied after each
convolution; the ONNX graph has BN folded into the kernels (rounded once from double) and ONNX
Runtime sums in its own order. Both are float32 evaluations of the same real-valued network,
each off by a few ulps per layer; over ~50 layers of unit-scale activations that is ~1e-6
relative in the logits (a few units), and a probability moves at most 1/4 of a logit's change:
1e-5 leaves a margin of a few over that, and a wrong transpose, pad or fold is off by > 1e-2.

Skips (exit 77) with the reason when ../shared's photos or weights, or the Python packages
(onnx, onnxruntime: scripts/install-deps.sh puts them in .venv), are absent.
"""
import argparse
import os
import subprocess
import sys
import tempfile

SHARED = os.environ.get("MT_SHARED_DIR", os.path.join(os.path.dirname(__file__), "../../../shared"))
WEIGHTS = {1.0: "mobilenet_v2_1.0_224_imagenet_no_top.h5",
           0.35: "teachable_machine_catdog_0.35_224.h5"}
# alpha, input size, classes: both widths, both heads (one logit / softmax), three input sizes
CASES = [(1.0, 160, 2), (1.0, 96, 5), (0.35, 224, 5), (0.35, 128, 2)]
if os.environ.get("MT_EXPORT_CASES"):  # e.g. "3": a quicker run by hand on some cases only
    CASES = [CASES[int(i)] for i in os.environ["MT_EXPORT_CASES"].split(",")]
TOLERANCE = 1e-5
failures = []


def fail(message):
    failures.append(message)
    print("FAIL: " + message)


def skip(message):
    print("SKIP: " + message)
    sys.exit(77)


def run(command, expect=0):
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if result.returncode != expect:
        fail(f"{' '.join(command)} exited {result.returncode}, expected {expect}:\n"
             f"{result.stdout}{result.stderr}")
    return result


def photos():
    folder = os.path.join(SHARED, "data", "cats_vs_dogs", "train")
    found = []
    for animal in ("cats", "dogs"):
        for i in range(4):
            path = os.path.join(folder, animal, f"{animal[:-1]}.{i}.jpg")
            if not os.path.exists(path):
                skip(f"no photo {path} (../shared is absent)")
            found.append(path)
    return found


def predict(cli, checkpoint, images):
    """{image: [probability per class]} as `mobiletune predict --digits 9` prints them."""
    result = run([cli, "predict", "--checkpoint", checkpoint, "--digits", "9"] + images)
    table = {}
    for line in result.stdout.strip().split("\n"):
        fields = line.split("\t")
        table[fields[0]] = [float(f.split("=", 1)[1]) for f in fields[2:]]
    return table


def make_case(args, tmp, alpha, size, classes, images):
    weights = os.path.join(SHARED, "weights", WEIGHTS[alpha])
    if not os.path.exists(weights):
        skip(f"no weights file {weights} (../shared is absent)")
    name = f"a{alpha}_s{size}_c{classes}"
    checkpoint = os.path.join(tmp, name + ".safetensors")
    inputs = os.path.join(tmp, name + ".f32")
    run([args.fixture, "checkpoint", str(alpha), str(size), str(classes), weights, "7", checkpoint])
    run([args.fixture, "inputs", str(size), inputs] + images)
    return name, checkpoint, inputs


def docs_snippet(marker, replacements):
    """Run docs/deploy.md's one python block containing `marker`, with the file names replaced
    by this test's; its stdout."""
    source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
    text = open(os.path.join(source, "docs", "deploy.md"), encoding="utf-8").read()
    blocks = [b.split("\n", 1)[1] for b in text.split("```")[1::2] if b.startswith("python")]
    snippet = [b for b in blocks if marker in b]
    if len(snippet) != 1:
        fail(f"docs/deploy.md has {len(snippet)} python blocks using {marker}, expected 1")
        return ""
    code = snippet[0]
    for old, new in replacements.items():
        code = code.replace(old, new)
    return run([sys.executable, "-c", code]).stdout


def check_onnx(args):
    try:
        import numpy as np
        import onnx
        import onnxruntime as ort
    except ImportError as error:
        skip(f"{error.name} is not installed in {sys.executable}: run scripts/install-deps.sh "
             f"(pip install onnx onnxruntime into .venv)")
    images = photos()
    with tempfile.TemporaryDirectory() as tmp:
        for alpha, size, classes in CASES:
            name, checkpoint, inputs = make_case(args, tmp, alpha, size, classes, images)
            model_path = os.path.join(tmp, name + ".onnx")
            run([args.cli, "export", "--checkpoint", checkpoint, "--format", "onnx",
                 "--output", model_path])
            if not os.path.exists(model_path):
                continue
            model = onnx.load(model_path)
            try:
                onnx.checker.check_model(model, full_check=True)
            except Exception as error:  # the checker's own exception types vary by version
                fail(f"{name}: onnx.checker: {error}")
            opsets = {o.domain: o.version for o in model.opset_import}
            if opsets != {"": 13}:
                fail(f"{name}: opset_import {opsets}, expected the default domain at 13")
            meta = {p.key: p.value for p in model.metadata_props}
            wanted = "\n".join(f"class{k}" for k in range(classes))
            if meta.get("class_names") != wanted or meta.get("input_size") != str(size):
                fail(f"{name}: metadata {meta}")
            ops = {n.op_type for n in model.graph.node}
            if "Dropout" in ops or "BatchNormalization" in ops:
                fail(f"{name}: the graph still has {ops & {'Dropout', 'BatchNormalization'}}")
            batch = np.fromfile(inputs, dtype=np.float32).reshape(len(images), size, size, 3)
            want = predict(args.cli, checkpoint, images)
            if len(want) != len(images):
                fail(f"{name}: predict printed {len(want)} rows for {len(images)} images")
                continue
            expected = np.array([want[i] for i in images])
            for level in ("default", "none"):
                options = ort.SessionOptions()
                if level == "none":
                    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
                session = ort.InferenceSession(model_path, options,
                                               providers=["CPUExecutionProvider"])
                got = session.run(["probabilities"], {"input": batch})[0]
                if got.shape != (len(images), classes):
                    fail(f"{name}: ONNX Runtime output shape {got.shape}")
                    continue
                worst = float(np.max(np.abs(got - expected)))
                print(f"{name} onnxruntime ({level} optimizations): max |p - predict| = "
                      f"{worst:.2e}; probabilities span [{expected.min():.4f}, "
                      f"{expected.max():.4f}]")
                if not worst <= TOLERANCE:
                    fail(f"{name}: ONNX Runtime ({level}) differs from predict by {worst:.3e} "
                         f"> {TOLERANCE}:\n{got}\nvs\n{expected}")
        printed = docs_snippet("onnxruntime", {'"catdog.onnx"': repr(model_path),
                                               '"cat.jpg"': repr(images[0])}) \
            if os.path.exists(model_path) else ""
        if not all(f"'class{k}':" in printed for k in range(classes)):
            fail("docs/deploy.md's ONNX Runtime example did not print the classes: " + printed)
        # refusals: an existing file is not replaced without --overwrite; unknown formats
        existing = os.path.join(tmp, "mine.onnx")
        with open(existing, "w") as f:
            f.write("not ours")
        result = run([args.cli, "export", "--checkpoint", checkpoint, "--format", "onnx",
                      "--output", existing], expect=2)
        if "--overwrite" not in result.stderr or open(existing).read() != "not ours":
            fail("an existing --output was not refused untouched: " + result.stderr)
        result = run([args.cli, "export", "--checkpoint", checkpoint, "--format", "pb",
                      "--output", os.path.join(tmp, "x.pb")], expect=2)
        if "'pb'" not in result.stderr:
            fail("an unknown --format was not named: " + result.stderr)


def check_tflite(args):
    """--format tflite and --format keras: the TFLite interpreter and the Keras file itself give
    predict's probabilities within 1e-5 (same tolerance and reasoning as ONNX: TensorFlow folds
    BN and sums in its own order in float32); without TensorFlow the command fails in one line."""
    try:
        import numpy as np
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf
        import keras
    except ImportError as error:
        skip(f"{error.name} is not installed in {sys.executable}: run scripts/install-deps.sh")
    images = photos()
    with tempfile.TemporaryDirectory() as tmp:
        for alpha, size, classes in CASES:
            name, checkpoint, inputs = make_case(args, tmp, alpha, size, classes, images)
            batch = np.fromfile(inputs, dtype=np.float32).reshape(len(images), size, size, 3)
            want = predict(args.cli, checkpoint, images)
            if len(want) != len(images):
                fail(f"{name}: predict printed {len(want)} rows for {len(images)} images")
                continue
            expected = np.array([want[i] for i in images])
            results = {}
            tflite_path = os.path.join(tmp, name + ".tflite")
            run([args.cli, "export", "--checkpoint", checkpoint, "--format", "tflite",
                 "--output", tflite_path])
            if os.path.exists(tflite_path):
                interpreter = tf.lite.Interpreter(model_path=tflite_path)
                source = interpreter.get_input_details()[0]
                target = interpreter.get_output_details()[0]
                interpreter.resize_tensor_input(source["index"], [len(images), size, size, 3])
                interpreter.allocate_tensors()
                interpreter.set_tensor(source["index"], batch)
                interpreter.invoke()
                results["tflite"] = interpreter.get_tensor(target["index"])
            keras_path = os.path.join(tmp, name + ".keras")
            run([args.cli, "export", "--checkpoint", checkpoint, "--format", "keras",
                 "--output", keras_path])
            if os.path.exists(keras_path):
                model = keras.saving.load_model(keras_path)
                if any("dropout" in layer.name for layer in model.layers):
                    fail(f"{name}: the Keras model still has a dropout layer")
                results["keras"] = np.asarray(model.predict(batch, verbose=0))
            for runtime, got in results.items():
                if got.shape != (len(images), classes):
                    fail(f"{name}: {runtime} output shape {got.shape}")
                    continue
                worst = float(np.max(np.abs(got - expected)))
                print(f"{name} {runtime}: max |p - predict| = {worst:.2e}")
                if not worst <= TOLERANCE:
                    fail(f"{name}: {runtime} differs from predict by {worst:.3e} > {TOLERANCE}:\n"
                         f"{got}\nvs\n{expected}")
        if os.path.exists(keras_path) and os.path.exists(tflite_path):
            printed = docs_snippet("tf.lite.Interpreter", {
                '"catdog.keras"': repr(keras_path), '"catdog.tflite"': repr(tflite_path),
                "160, 160": f"{size}, {size}"})
            if printed.count("[[") != 2:
                fail("docs/deploy.md's Keras/TFLite example did not print two results: " + printed)
        check_int8(args, tmp, checkpoint, size, tflite_path, tf, np)
        # without TensorFlow: one line that says what to install, exit 1, no file
        env = dict(os.environ, MOBILETUNE_PYTHON="/usr/bin/python3")
        probe = subprocess.run(["/usr/bin/python3", "-c", "import tensorflow"], capture_output=True)
        if probe.returncode != 0:
            missing = os.path.join(tmp, "none.tflite")
            result = subprocess.run([args.cli, "export", "--checkpoint", checkpoint, "--format",
                                     "tflite", "--output", missing], capture_output=True,
                                    text=True, env=env, timeout=120)
            lines = result.stderr.strip().split("\n")
            if (result.returncode != 1 or len(lines) != 1 or "tensorflow" not in lines[0]
                    or "install-deps.sh" not in lines[0] or os.path.exists(missing)):
                fail(f"without TensorFlow: exit {result.returncode}, stderr {result.stderr!r}")
        result = run([args.cli, "export", "--checkpoint", checkpoint, "--format", "keras",
                      "--output", os.path.join(tmp, "model.h5")], expect=2)
        if ".keras" not in result.stderr:
            fail("a Keras --output not ending in .keras was not refused: " + result.stderr)


def check_int8(args, tmp, checkpoint, size, float_path, tf, np):
    """--int8-db: an int8 model (int8 tensors, under half the float file's size) and its report.
    The fixture's head is random, so the photos are labelled here by predict's own answer for
    12 of them and against it for 4: the float32 accuracy the report prints must then be exactly
    0.75 (the packer's pixels are predict's), which a label or class-order slip would change."""
    import re
    photos_dir = os.path.join(tmp, "photos")
    sources = [os.path.join(SHARED, "data", "cats_vs_dogs", "train", animal,
                            f"{animal[:-1]}.{i}.jpg") for animal in ("cats", "dogs") for i in range(8)]
    want = predict(args.cli, checkpoint, sources)
    if len(want) != len(sources):
        fail("predict did not label the 16 photos")
        return
    for folder in ("a", "b"):
        os.makedirs(os.path.join(photos_dir, folder))
    for n, source in enumerate(sources):
        label = int(np.argmax(want[source])) if n < 12 else 1 - int(np.argmax(want[source]))
        os.symlink(source, os.path.join(photos_dir, "ab"[label], f"{n}.jpg"))
    db = os.path.join(tmp, "packed")
    run([args.pack, "--size", str(size), photos_dir, db])
    model_path = os.path.join(tmp, "int8.tflite")
    result = run([args.cli, "export", "--checkpoint", checkpoint, "--format", "tflite",
                  "--output", model_path, "--int8-db", db])
    found = re.search(r"^int8: accuracy ([0-9.]+) on 16 images of .* \(float32: ([0-9.]+)\)",
                      result.stdout, re.M)
    if not found or not os.path.exists(model_path):
        fail("--int8-db printed no accuracy line or wrote no file: " + result.stdout)
        return
    print(found.group(0))
    if found.group(2) != "0.7500":
        fail(f"--int8-db's float32 accuracy is {found.group(2)}, predict's is 0.7500")
    interpreter = tf.lite.Interpreter(model_path=model_path)
    kinds = {d["dtype"] for d in interpreter.get_tensor_details()}
    if np.int8 not in kinds:
        fail(f"the --int8-db model has no int8 tensors ({kinds})")
    if os.path.getsize(model_path) * 2 > os.path.getsize(float_path):
        fail("the int8 model is not under half the float one's size")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["onnx", "tflite"])
    parser.add_argument("--cli", required=True)
    parser.add_argument("--fixture", required=True)
    parser.add_argument("--pack", help="mobiletune-pack (for --int8-db)")
    args = parser.parse_args()
    {"onnx": check_onnx, "tflite": check_tflite}[args.what](args)
    if failures:
        print(f"{len(failures)} check(s) failed")
        return 1
    print("all export checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
