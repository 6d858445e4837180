#!/usr/bin/env python3
"""The Keras and TensorFlow Lite half of `mobiletune export` (docs/deploy.md), run by the command
with the project's venv; not meant to be called by hand (the command passes the arguments).

mobiletune writes the whole classifier's weights (every layer, head included, Keras 2
`save_weights` layout: /<layer>/<layer>/<weight>:0 with each layer's `weight_names`); this script
builds the same network with Keras' own MobileNetV2 (layer names and weight order are Keras', the
ones mobiletune copies), puts every weight in by layer name, and then
  --format keras   saves the model as a Keras 3 `.keras` file;
  --format tflite  converts it with TensorFlow's TFLiteConverter (float32), or with --int8-db DB
                   quantized to int8 (weights and activations; input and output stay float32),
                   calibrated on up to 200 images of the packed split DB, and the int8 model's
                   accuracy on that split (up to 1000 images) is printed beside the float one.
The model's output is the class probabilities, as in the ONNX export: softmax of the logits, or
for two classes (one logit z) a fixed softmax layer `probabilities` with kernel [[-1/2, 1/2]]:
softmax([-z/2, z/2]) = [sigmoid(-z), sigmoid(z)], exactly (halving is exact in float).
Dropout is left out (the identity at inference). Files are written to a temporary name in the
output's folder and renamed, so a failure leaves no partial file.

Without TensorFlow it fails in one line naming what to install; exit codes: 0 done, 1 failed,
3 a package is missing.
"""
import argparse
import contextlib
import os
import sys
import tempfile


@contextlib.contextmanager
def quiet():
    """TensorFlow's C++ side prints notices and the converter lists every tensor on the process'
    own stdout/stderr: keep them in a log, shown only when the block fails."""
    log = tempfile.TemporaryFile()
    saved = os.dup(1), os.dup(2)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    failed = True
    try:
        yield
        failed = False
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
        if failed and not isinstance(sys.exc_info()[1], (ImportError, SystemExit)):
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace")[-4000:])
        log.close()


def packed_split(path, size, limit, np):
    """Up to `limit` (input, label) pairs of a mobiletune-pack split (docs/formats.md), inputs
    scaled as the model wants them (x/127.5 - 1)."""
    import io
    import re
    import struct
    import zlib
    import lmdb
    from PIL import Image
    if not os.path.exists(os.path.join(path, "data.mdb")):
        raise SystemExit(f"mobiletune export: --int8-db {path} is not a packed split (no data.mdb)")
    env = lmdb.open(path, readonly=True, lock=False, subdir=True)
    pairs = []
    with env.begin() as txn:
        meta = txn.get(b"meta").decode()
        count = int(re.search(r"^records (\d+)$", meta, re.M).group(1))
        height = int(re.search(r"^height (\d+)$", meta, re.M).group(1))
        width = int(re.search(r"^width (\d+)$", meta, re.M).group(1))
        if (height, width) != (size, size):
            raise SystemExit(f"mobiletune export: --int8-db {path} is packed at {width}x{height}, "
                             f"the model takes {size}x{size}: pack it with --size {size}")
        for i in range(min(count, limit)):
            v = txn.get(b"%010d" % i)
            magic, _, encoding, _, h, w, label, n, crc, name_n = struct.unpack_from(
                "<4sHBBHHIIIH", v)
            if magic != b"MTR1" or zlib.crc32(v[:20] + v[24:]) != crc:
                raise SystemExit(f"mobiletune export: record {i} of {path} is corrupt")
            payload = v[32:32 + n]
            pixels = (np.frombuffer(payload, np.uint8).reshape(h, w, 3) if encoding == 0 else
                      np.asarray(Image.open(io.BytesIO(payload)).convert("RGB")))
            pairs.append((pixels.astype(np.float32) / 127.5 - 1.0, label))
    env.close()
    return pairs


def tflite_accuracy(tf, np, flat, pairs):
    interpreter = tf.lite.Interpreter(model_content=flat)
    interpreter.allocate_tensors()
    source = interpreter.get_input_details()[0]["index"]
    target = interpreter.get_output_details()[0]["index"]
    right = 0
    for x, label in pairs:
        interpreter.set_tensor(source, x[None])
        interpreter.invoke()
        right += int(np.argmax(interpreter.get_tensor(target)[0]) == label)
    return right / len(pairs)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", required=True, help="the whole classifier's weights (.h5)")
    parser.add_argument("--alpha", type=float, required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--classes", type=int, required=True)
    parser.add_argument("--format", choices=["keras", "tflite"], required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--int8-db", help="a packed split (mobiletune-pack) to calibrate int8 on")
    args = parser.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's start-up notices are not errors
    try:
        with quiet():
            import tensorflow as tf
            import keras
            import h5py
            import numpy as np
    except ImportError as error:
        print(f"mobiletune export: {error.name} is not installed in {sys.executable}: run "
              f"scripts/install-deps.sh (it installs tensorflow-cpu into the project's .venv)",
              file=sys.stderr)
        return 3

    base = keras.applications.MobileNetV2(input_shape=(args.size, args.size, 3), alpha=args.alpha,
                                          include_top=False, weights=None)
    x = keras.layers.GlobalAveragePooling2D(name="global_average_pooling2d")(base.output)
    logits = keras.layers.Dense(1 if args.classes == 2 else args.classes, name="dense")(x)
    if args.classes == 2:
        probabilities = keras.layers.Dense(2, use_bias=False, activation="softmax",
                                           name="probabilities")(logits)
    else:
        probabilities = keras.layers.Activation("softmax", name="probabilities")(logits)
    model = keras.Model(base.input, probabilities,
                        name=f"mobilenetv2_{args.alpha:.2f}_{args.size}_classifier")

    with h5py.File(args.weights, "r") as f:
        in_file = {name for name in f if len(f[name].attrs.get("weight_names", [])) > 0}
        for layer in model.layers:
            if not layer.weights:
                continue
            if layer.name == "probabilities":
                layer.set_weights([np.array([[-0.5, 0.5]], dtype=np.float32)])
                continue
            if layer.name not in in_file:
                print(f"mobiletune export: {args.weights} has no weights for layer {layer.name}",
                      file=sys.stderr)
                return 1
            names = [n.decode() if isinstance(n, bytes) else n
                     for n in f[layer.name].attrs["weight_names"]]
            layer.set_weights([np.asarray(f[layer.name][n]) for n in names])
            in_file.discard(layer.name)
        if in_file:
            print(f"mobiletune export: {args.weights} has layers the Keras model lacks: "
                  f"{sorted(in_file)}", file=sys.stderr)
            return 1

    folder = os.path.dirname(os.path.abspath(args.output))
    suffix = ".keras" if args.format == "keras" else ".tflite"
    handle, temporary = tempfile.mkstemp(prefix=".mobiletune-export-", suffix=suffix, dir=folder)
    os.close(handle)
    try:
        with quiet():
            if args.format == "keras":
                model.save(temporary)
            else:
                converter = tf.lite.TFLiteConverter.from_keras_model(model)
                if args.int8_db:
                    pairs = packed_split(args.int8_db, args.size, 1000, np)
                    if not pairs:
                        raise SystemExit(f"mobiletune export: --int8-db {args.int8_db} is empty")
                    float_flat = converter.convert()
                    converter.optimizations = [tf.lite.Optimize.DEFAULT]
                    converter.representative_dataset = lambda: ([x[None]] for x, _ in pairs[:200])
                    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
                flat = converter.convert()
                with open(temporary, "wb") as out:
                    out.write(flat)
        if args.format == "tflite" and args.int8_db:
            with quiet():
                accuracy = [tflite_accuracy(tf, np, f, pairs) for f in (flat, float_flat)]
            print(f"int8: accuracy {accuracy[0]:.4f} on {len(pairs)} images of {args.int8_db} "
                  f"(float32: {accuracy[1]:.4f}), calibrated on {min(len(pairs), 200)}")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp's 0600 is for the temporary only
        with open(temporary, "rb+") as out:
            os.fsync(out.fileno())
        os.replace(temporary, args.output)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
