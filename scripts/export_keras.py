#!/usr/bin/env python3
"""The Keras and TensorFlow Lite half of `mobiletune export` (docs/deploy.md), run by the command
with the project's venv; not meant to be called by hand (the command passes the arguments).

mobiletune writes the whole classifier's weights (every layer, head included, Keras 2
`save_weights` layout: /<layer>/<layer>/<weight>:0 with each layer's `weight_names`); this script
builds the same network with Keras' own MobileNetV2 (layer names and weight order are Keras', the
ones mobiletune copies), puts every weight in by layer name, and then
  --format keras   saves the model as a Keras 3 `.keras` file;
  --format tflite  converts it with TensorFlow's TFLiteConverter (float32).
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
        if failed and not isinstance(sys.exc_info()[1], ImportError):
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace")[-4000:])
        log.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", required=True, help="the whole classifier's weights (.h5)")
    parser.add_argument("--alpha", type=float, required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--classes", type=int, required=True)
    parser.add_argument("--format", choices=["keras", "tflite"], required=True)
    parser.add_argument("--output", required=True)
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
                flat = converter.convert()
                with open(temporary, "wb") as out:
                    out.write(flat)
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
