#!/usr/bin/env python3
"""ctest keras_teachable_machine: a real Keras 2.4 export, end to end through mobiletune.

`mobiletune features` loads the backbone of ../shared/weights/teachable_machine_catdog_0.35_224.h5
(MobileNetV2 alpha 0.35, whole-model `model.save` layout) with our importer and computes pooled
features of shared photos at 224x224 (our decode, stretch bilinear resize = tf.image.resize,
x/127.5-1); the file's own head (Dense 1280->100 ReLU, Dense 100->2 softmax, no bias), read here
with h5py, classifies them. Labels: 0 Cat, 1 Dog. The file is known for about 97%: the test
asserts >= 0.93 (a broken importer, width or padding lands near 50%).

With --keras and TensorFlow importable, Keras runs the same whole model on the same photos
(Pillow decode, tf.image.resize) and the accuracy, the prediction agreement and the feature
difference are printed beside ours (information: the decoders differ slightly).
Exit 0 pass, 1 fail, 77 skipped (../shared absent)."""

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import keras_reference  # noqa: E402  (numpy/h5py only until TensorFlow is asked for)


def head_predict(table, features):
    w1, b1 = table["dense_Dense1"]["kernel"], table["dense_Dense1"]["bias"]
    w2 = table["dense_Dense2"]["kernel"]
    if "bias" in table["dense_Dense2"]:
        raise SystemExit("teachable_machine: dense_Dense2 unexpectedly has a bias")
    hidden = np.maximum(features.astype(np.float64) @ w1 + b1, 0.0)
    return np.argmax(hidden @ w2, axis=1)


def keras_side(weights, files, threads):
    """Keras' own features of the same photos with the file's backbone (loaded by name)."""
    tf, keras = keras_reference.import_keras(threads)
    model = keras_reference.build_backbone(keras, 0.35, 224)
    keras_reference.load_backbone_weights(model, weights)
    out = []
    for start in range(0, len(files), 50):
        batch = keras_reference.decode_batch(tf, files[start:start + 50], 224)
        out.append(tf.reduce_mean(model(batch, training=False), axis=[1, 2]).numpy())
    return np.concatenate(out)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cli", required=True, help="the mobiletune program")
    parser.add_argument("--count", type=int, default=256, help="photos, half cats half dogs")
    parser.add_argument("--min-accuracy", type=float, default=0.93)
    parser.add_argument("--backend", default="cpu")
    parser.add_argument("--keras", action="store_true", help="also run Keras on the same photos")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    shared = os.environ.get("MT_SHARED_DIR", os.path.join(HERE, "..", "..", "..", "shared"))
    weights = os.path.join(shared, "weights", "teachable_machine_catdog_0.35_224.h5")
    photos = os.path.join(shared, "data", "cats_vs_dogs", "train")
    if not os.path.isfile(weights) or not os.path.isdir(photos):
        print(f"SKIPPED: {weights} or {photos} is absent (the shared data folder is not here)")
        return 77

    files = keras_reference.photo_list(photos, args.count)
    labels = np.array([0 if os.path.basename(f).startswith("cat.") else 1 for f in files])
    table = keras_reference.h5_weight_table(weights)
    with tempfile.TemporaryDirectory(prefix="mt_tm_") as tmp:
        out = os.path.join(tmp, "features.f32")
        started = time.time()
        run = subprocess.run([args.cli, "features", "--weights", weights, "--alpha", "0.35",
                              "--size", "224", "--backend", args.backend, "--output", out,
                              "--binary"] + files, capture_output=True, text=True)
        if run.returncode != 0:
            print(f"FAIL: mobiletune features exited {run.returncode}:\n{run.stderr}")
            return 1
        seconds = time.time() - started
        ours = np.fromfile(out, dtype="<f4")
    if ours.size != len(files) * 1280:
        print(f"FAIL: {ours.size} floats from mobiletune features, want {len(files)} x 1280")
        return 1
    ours = ours.reshape(len(files), 1280)
    predicted = head_predict(table, ours)
    accuracy = float(np.mean(predicted == labels))
    print(f"teachable_machine: mobiletune ({args.backend} backend, {seconds:.1f} s for "
          f"{len(files)} photos incl. decode): {int(np.sum(predicted == labels))}/{len(files)} "
          f"correct, accuracy {accuracy:.4f} (cats {np.mean(predicted[labels == 0] == 0):.3f}, "
          f"dogs {np.mean(predicted[labels == 1] == 1):.3f})")

    if args.keras:
        try:
            theirs = keras_side(weights, files, args.threads)
        except ImportError as exc:
            print(f"teachable_machine: Keras comparison skipped ({exc})")
        else:
            keras_pred = head_predict(table, theirs)
            scale = float(np.max(np.abs(theirs)))
            print(f"teachable_machine: Keras on the same photos: accuracy "
                  f"{np.mean(keras_pred == labels):.4f}; predictions agree on "
                  f"{int(np.sum(keras_pred == predicted))}/{len(files)}; features max |d| / max |f| "
                  f"{np.max(np.abs(ours - theirs)) / scale:.2e}, median per-photo relative L2 "
                  f"{np.median(np.linalg.norm(ours - theirs, axis=1) / np.linalg.norm(theirs, axis=1)):.2e}"
                  f" (Pillow + tf.image.resize there, libjpeg-turbo + our resize here)")
    if accuracy < args.min_accuracy:
        print(f"FAIL: accuracy {accuracy:.4f} < {args.min_accuracy}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
