#!/usr/bin/env python3
"""mt_image_rotate (the loader's random rotation) against Keras' own RandomRotation layer on real
photos, at fixed angles.

    rotate_keras.py --tool build/tests/image/rotate_tool

Keras draws the angle from factor (a, a), which pins it: RandomRotation computes the angle as
uniform(a*360, a*360) degrees = a*360 in float32, then radians = that * float32(pi/180), in
float32. The same float32 angle goes to rotate_tool, which rotates the same uint8 pixels; both
results are in pixel units (0..255).

Tolerance, from the error model (not from a run): TensorFlow's ImageProjectiveTransformV3
computes each source coordinate in float32 from float32 cos/sin and offsets, about four roundings
of terms up to 160 (2^-24 relative: 1e-5 pixel each) plus cos/sin's own rounding times the
distance to the centre (80 * 6e-8): under 1e-4 pixel in all. Our coordinates are in double. The
bilinear value as a function of the coordinate is continuous (the reflection too) with slope at
most 255 per pixel, so the coordinates account for 255 * 1e-4 = 0.026; the float32 mixing of
values <= 255 adds about 3 * 255 * 2^-24 = 5e-5. Hence 0.03 levels of 255 at any pixel. A wrong
centre, direction, interpolation or fill mode is off by whole levels at many pixels.

Photos: the first shared cat and dog photos, resized to 160x160 with Pillow (any resize: both
sides get the same uint8 pixels) and one 120x160 crop, so the centre is tested off the diagonal.
Exit 0 pass, 1 fail, 77 skipped (../shared or TensorFlow absent)."""
import argparse
import os
import subprocess
import sys

import numpy as np

TOLERANCE = 0.03
FACTORS = (0.2, -0.2, 0.05, -0.13, 0.37)


def photos():
    root = os.path.join(os.environ.get("MT_SHARED_DIR", "../shared"), "data", "cats_vs_dogs",
                        "train")
    if not os.path.isdir(root):
        print(f"SKIPPED: {root} is absent (the shared photos live in ../shared)")
        sys.exit(77)
    from PIL import Image

    images = []
    for cls in ("cats", "dogs"):
        name = sorted(os.listdir(os.path.join(root, cls)))[0]
        with Image.open(os.path.join(root, cls, name)) as im:
            images.append(np.asarray(im.convert("RGB").resize((160, 160), Image.BILINEAR)))
    images.append(images[0][20:140, :, :].copy())  # 120 x 160
    return images


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tool", required=True)
    args = parser.parse_args()
    images = photos()
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf  # noqa: F401  (the backend Keras runs on here)
        import keras
    except ImportError as error:
        print(f"SKIPPED: TensorFlow is not importable ({error}); scripts/install-deps.sh")
        sys.exit(77)
    failures = 0
    for factor in FACTORS:
        # Keras' own arithmetic for the angle, in float32
        degrees = np.float32(factor * 360.0)
        angle = np.float32(degrees * np.float32(np.pi / 180.0))
        layer = keras.layers.RandomRotation(factor=(factor, factor), fill_mode="reflect",
                                            interpolation="bilinear")
        for k, image in enumerate(images):
            h, w, _ = image.shape
            want = np.asarray(layer(image[None].astype(np.float32), training=True))[0]
            done = subprocess.run([args.tool, str(h), str(w), repr(float(angle))],
                                  input=image.tobytes(), capture_output=True, check=True)
            got = np.frombuffer(done.stdout, dtype=np.float32).reshape(h, w, 3)
            diff = np.abs(got.astype(np.float64) - want)
            worst = float(diff.max())
            moved = float(np.abs(want - image).mean())
            print(f"factor {factor:+.2f} ({np.degrees(angle):+7.2f} deg), image {k} ({h}x{w}): "
                  f"max |ours - keras| {worst:.4f}, mean {diff.mean():.2e} "
                  f"(mean change from the input {moved:.1f})")
            if not worst <= TOLERANCE:
                where = np.unravel_index(np.argmax(diff), diff.shape)
                print(f"FAIL: beyond {TOLERANCE} at {where}: ours {got[where]}, keras {want[where]}")
                failures += 1
            if moved < 5:
                print("FAIL: Keras did not rotate the image (is the layer in training mode?)")
                failures += 1
    print("PASSED" if failures == 0 else f"FAILED: {failures} comparisons")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
