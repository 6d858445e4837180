#!/usr/bin/env python3
# One file over 600 lines on purpose: the fixture writer and `compare` must agree on the folder
# format and on how the gradient check is built, so both live in the one program (TF only).
"""Keras/TensorFlow as the independent reference for mobiletune's whole network.

Everything here is computed by Keras itself (tf.keras.applications.MobileNetV2), never by
mobiletune, so agreement means the C network is Keras' network and not just self-consistent.

Subcommands
  layers    Keras' layer list of MobileNetV2(include_top=False): index, name, class, output
            shape, parameter count (tests/keras/keras_layers_alpha1.0_160.txt is its output).
  fixture   Decode real photos into one [-1,1] NHWC float32 batch, run Keras on it and write
            a fixture folder that the C runner (keras_run.c) and `compare` read:
              input      the batch both sides consume, so decode/resize never enters the check
              features   pooled backbone output, inference mode
              head, labels, loss_*, grad_infer/<layer>/<weight>, grad_train/<layer>/<weight>,
              moving_train/<layer>/<weight>: the one-batch gradient check (see below)
            Every tensor also in float64 (suffix @f64): the same Keras model built with floatx
            float64, the "truth" against which both float32 implementations are measured.
  compare   Compare a C run (same folder format) against a fixture and exit 1 beyond tolerance.

The gradient check: head = Dense(1) with fixed weights on the pooled features (no dropout),
loss = mean over the batch of sigmoid cross-entropy on fixed labels, gradients with respect to
every backbone weight (kernels, depthwise kernels, BN gamma/beta) and the head, (a) with BN in
inference mode (training=False: moving statistics) and (b) in training mode (training=True: batch
statistics), plus the moving statistics after that one training forward (momentum 0.999).

The folder format (written by write_tensors, read by read_tensors and by keras_run.c):
  index.txt  one line per tensor: NAME DTYPE OFFSET RANK D0 D1 ... (DTYPE f4, f8 or i4;
             OFFSET in bytes into data.bin)
  data.bin   the tensors, little-endian, row-major, back to back
"""

import argparse
import glob
import json
import os
import sys
import time

import numpy as np

# Bump when what `fixture` writes changes: whole_network.py caches fixtures under this version.
FIXTURE_VERSION = 4

WEIGHT_ORDER = {
    "Conv2D": ["kernel"],
    "DepthwiseConv2D": ["depthwise_kernel"],
    "BatchNormalization": ["gamma", "beta", "moving_mean", "moving_variance"],
}


# ---- the folder format ------------------------------------------------------------------------


def write_tensors(folder, tensors):
    """tensors: list of (name, ndarray); dtypes float32, float64, int32."""
    os.makedirs(folder, exist_ok=True)
    codes = {np.dtype(np.float32): "f4", np.dtype(np.float64): "f8", np.dtype(np.int32): "i4"}
    offset = 0
    tmp_index = os.path.join(folder, "index.txt.tmp")
    with open(os.path.join(folder, "data.bin"), "wb") as data, open(tmp_index, "w") as index:
        for name, array in tensors:
            array = np.ascontiguousarray(array)
            code = codes[array.dtype]
            dims = " ".join(str(d) for d in array.shape)
            index.write(f"{name} {code} {offset} {array.ndim} {dims}".rstrip() + "\n")
            raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
            data.write(raw)
            offset += len(raw)
    # index.txt appears last, so a folder with an index is complete (the cache test).
    os.replace(tmp_index, os.path.join(folder, "index.txt"))


def read_tensors(folder):
    types = {"f4": "<f4", "f8": "<f8", "i4": "<i4"}
    out = {}
    raw = np.fromfile(os.path.join(folder, "data.bin"), dtype=np.uint8)
    with open(os.path.join(folder, "index.txt")) as index:
        for line in index:
            parts = line.split()
            if not parts:
                continue
            name, code, offset, rank = parts[0], parts[1], int(parts[2]), int(parts[3])
            shape = tuple(int(d) for d in parts[4 : 4 + rank])
            dtype = np.dtype(types[code])
            count = int(np.prod(shape)) if shape else 1
            out[name] = raw[offset : offset + count * dtype.itemsize].view(dtype).reshape(shape)
    return out


# ---- Keras ------------------------------------------------------------------------------------


def import_keras(threads):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras

    return tf, keras


def build_backbone(keras, alpha, size, dtype="float32"):
    # Both settings: Keras caches the global dtype policy at first use, after which floatx alone
    # no longer changes the layers' dtype.
    keras.config.set_floatx(dtype)
    keras.config.set_dtype_policy(dtype)
    model = keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=(size, size, 3), alpha=alpha
    )
    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy("float32")
    return model


def h5_weight_table(path):
    """{layer: {weight: ndarray}} from a Keras 2 HDF5 file, either layout: the `save_weights`
    layout (<layer>/<layer>/<weight>:0) or the whole-model one (model_weights/<model>/<layer>/...).
    Found by layer and weight name, like the C importer, but written independently."""
    import h5py

    table = {}
    with h5py.File(path, "r") as f:

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                parts = name.split("/")
                weight = parts[-1].split(":")[0]
                layer = parts[-2]
                table.setdefault(layer, {})[weight] = np.array(obj)

        f.visititems(visit)
    return table


def load_backbone_weights(model, path):
    """Set every weight of `model` from the h5 file by layer name and Keras 2 weight name, in
    Keras' weight order per class. Returns the number of values loaded."""
    table = h5_weight_table(path)
    loaded = 0
    for layer in model.layers:
        cls = type(layer).__name__
        if cls not in WEIGHT_ORDER:
            if layer.weights:
                raise SystemExit(f"keras_reference: unexpected weights in layer {layer.name} ({cls})")
            continue
        if layer.name not in table:
            raise SystemExit(f"keras_reference: {path} has no layer {layer.name}")
        values = []
        for weight, variable in zip(WEIGHT_ORDER[cls], layer.weights):
            value = table[layer.name].get(weight)
            if value is None or tuple(value.shape) != tuple(variable.shape):
                raise SystemExit(
                    f"keras_reference: {path}: {layer.name}/{weight}: want {tuple(variable.shape)}, "
                    f"found {None if value is None else value.shape}"
                )
            values.append(value.astype(variable.dtype))
            loaded += value.size
        layer.set_weights(values)
    return loaded


def weight_names(model):
    """[(layer, weight, variable)] in Keras order, Keras 2 weight names."""
    out = []
    for layer in model.layers:
        cls = type(layer).__name__
        for weight, variable in zip(WEIGHT_ORDER.get(cls, []), layer.weights):
            out.append((layer.name, weight, variable))
    return out


# ---- input ------------------------------------------------------------------------------------


def photo_list(photos, count):
    """`count` photos, cats and dogs alternating, deterministic (sorted by number)."""

    def numbered(pattern):
        files = glob.glob(pattern)
        return sorted(files, key=lambda p: int(os.path.basename(p).split(".")[1]))

    cats = numbered(os.path.join(photos, "cats", "cat.*.jpg"))
    dogs = numbered(os.path.join(photos, "dogs", "dog.*.jpg"))
    if not cats or not dogs:
        raise SystemExit(f"keras_reference: no cat.N.jpg / dog.N.jpg under {photos}/cats, /dogs")
    out = []
    for i in range(count):
        out.append((cats if i % 2 == 0 else dogs)[i // 2])
    return out


def decode_batch(tf, files, size):
    """Keras preprocessing: RGB, bilinear resize (half-pixel centres, no antialias), rounded to
    uint8 as mobiletune's packer stores it, then x/127.5 - 1. N,S,S,3 float32."""
    from PIL import Image

    batch = np.empty((len(files), size, size, 3), np.float32)
    for i, path in enumerate(files):
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"), dtype=np.float32)
        resized = tf.image.resize(rgb[None], (size, size), method="bilinear", antialias=False)
        pixels = np.clip(np.round(resized.numpy()[0]), 0, 255)
        batch[i] = pixels / 127.5 - 1.0
    return batch


def feature_count(alpha):
    """Keras: last_block_filters = make_divisible(1280 * alpha, 8) when alpha > 1, else 1280."""
    if alpha <= 1.0:
        return 1280
    value = 1280 * alpha
    rounded = max(8, int(value + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * value else rounded


# ---- away from the ReLU6 kinks ----------------------------------------------------------------

# Unit roundoff of float32 and the distance, in units of u times a layer's RMS pre-activation,
# that every pre-activation of every ReLU6 keeps from its kinks at 0 and 6. Measured with a
# temporary dump of our ReLU6 outputs (8 photos): our float32 pre-activations are 4-15 u x RMS off
# float64 (rms over a layer) and up to ~900 u x RMS in the worst element (the cpu backend's
# training mode, channels whose batch spread is small against their input's errors); with 512,
# the pre-activation nearest a kink in any channel is still >= 1.8x that channel's largest error
# (reference: 6.5x). 1024 cannot be cleared by shifting betas (channels crowding a kink).
U_FP32 = 2.0 ** -24
KINK_MARGIN_U = 512.0


def kink_shifts(values, tau, window):
    """Smallest |s| <= window such that no value of `values` + s is within tau of 0 or 6: the
    shifts to avoid are the intervals centred on -v and 6 - v; the answer is the point nearest 0
    in the gaps between them (a channel whose values all crowd one kink is moved wholly past it)."""
    near = values[(np.abs(values) < window + tau) | (np.abs(values - 6.0) < window + tau)]
    centres = np.sort(np.concatenate([-near, 6.0 - near]))
    if centres.size == 0 or np.min(np.abs(centres)) >= tau:
        return 0.0
    margin = 1.01 * tau
    lo = np.concatenate([[-np.inf], centres + margin])  # gap k: (centres[k-1], centres[k])
    hi = np.concatenate([centres - margin, [np.inf]])
    open_gap = lo <= hi
    best = np.clip(0.0, lo[open_gap], hi[open_gap])
    s = float(best[np.argmin(np.abs(best))])
    if abs(s) > window:
        raise SystemExit(f"keras_reference: no beta shift within {window} clears the ReLU6 kinks")
    return s


def move_off_kinks(tf, model, images, margin_u=KINK_MARGIN_U, window=1.0):
    """Shifts the beta of every BN that feeds a ReLU6, per channel and by the least that works, so
    that in both BN modes (moving and batch statistics) every pre-activation of the batch is at
    least margin_u * u * RMS(layer) from the kinks at 0 and 6. A pre-activation that close to a
    kink takes the other side of it in a float32 forward, and its whole gradient path flips (in
    training mode spread over the channel's batch statistics): the comparison would measure where
    float32 rounding fell, not the code. Betas are rounded to float32 here (both Keras models and
    ours run the same float32 values). Returns {layer: shift}, the largest |shift| and the least
    distance left to a kink, in u x RMS (measured on the shifted float64 values)."""
    relu_inputs = {id(l.input): l for l in model.layers if type(l).__name__ == "ReLU"}
    x = tf.constant(images.astype(model.dtype))
    shifts = {}
    least = [np.inf]
    moving = {l.name: [w.numpy().copy() for w in l.weights] for l in model.layers
              if type(l).__name__ == "BatchNormalization"}

    def both_modes(layer, value_infer, value_train):
        if id(layer.output) not in relu_inputs:
            return value_infer, value_train
        beta = layer.beta.numpy()
        p = [value_infer.numpy(), value_train.numpy()]
        tau = margin_u * U_FP32 * max(float(np.sqrt(np.mean(v ** 2))) for v in p)
        shift = np.zeros_like(beta)
        for c in range(beta.shape[0]):
            shift[c] = kink_shifts(np.concatenate([v[..., c].ravel() for v in p]), tau, window)
        if np.any(shift):
            new_beta = (beta + shift).astype(np.float32).astype(beta.dtype)
            layer.beta.assign(new_beta)
            shifts[layer.name] = new_beta - beta
            # BN's output is gamma * xhat + beta: the shift adds exactly (xhat does not use beta)
            value_infer = value_infer + (new_beta - beta)
            value_train = value_train + (new_beta - beta)
        for v in (value_infer.numpy(), value_train.numpy()):
            distance = float(np.min(np.minimum(np.abs(v), np.abs(v - 6.0))))
            least[0] = min(least[0], distance / (U_FP32 * float(np.sqrt(np.mean(v ** 2)))))
        return value_infer, value_train

    # Both modes in lock step, so one beta serves both.
    values = {id(model.inputs[0]): (x, x)}
    for layer in model.layers[1:]:
        ins = layer.input
        many = isinstance(ins, (list, tuple))
        pairs = [values[id(t)] for t in ins] if many else [values[id(ins)]]
        outs = []
        for mode, training in ((0, False), (1, True)):
            args = [p[mode] for p in pairs] if many else pairs[0][mode]
            outs.append(layer(args, training=training))
        if layer.name in moving:  # the training call updated the moving statistics: undo
            layer.set_weights([w if i < 2 else moving[layer.name][i] for i, w in
                               enumerate(w.numpy() for w in layer.weights)])
        values[id(layer.output)] = both_modes(layer, *outs)
    worst = max((float(np.max(np.abs(s))) for s in shifts.values()), default=0.0)
    return shifts, worst, least[0]


# ---- the fixture ------------------------------------------------------------------------------


def keras_pass(tf, model, images, head_w, head_b, labels, dtype):
    """Features, and the gradient check in both BN modes, computed by Keras in `dtype`."""
    x = tf.constant(images.astype(dtype))
    w = tf.constant(head_w.astype(dtype))
    b = tf.constant(head_b.astype(dtype))
    y = tf.constant(labels.astype(dtype)[:, None])
    out = []

    names = weight_names(model)
    trainable = [(l, wn, v) for (l, wn, v) in names if wn not in ("moving_mean", "moving_variance")]
    moving = [(l, wn, v) for (l, wn, v) in names if wn in ("moving_mean", "moving_variance")]
    before = [v.numpy().copy() for (_, _, v) in moving]
    for tag, training in (("infer", False), ("train", True)):
        with tf.GradientTape() as tape:
            tape.watch(w)
            tape.watch(b)
            pooled = tf.reduce_mean(model(x, training=training), axis=[1, 2])
            logits = tf.matmul(pooled, w) + b
            loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=logits))
        if not training:  # the pooled features are the inference-mode pass's, no extra forward
            out.append(("features", pooled.numpy()))
        variables = [v for (_, _, v) in trainable]
        grads = tape.gradient(loss, variables + [w, b])
        out.append((f"loss_{tag}", np.array([loss.numpy()])))
        for (layer, weight, _), g in zip(trainable, grads[: len(variables)]):
            out.append((f"grad_{tag}/{layer}/{weight}", g.numpy()))
        out.append((f"grad_{tag}/dense/kernel", grads[-2].numpy()))
        out.append((f"grad_{tag}/dense/bias", grads[-1].numpy()))
        if training:
            for (layer, weight, v) in moving:
                out.append((f"moving_train/{layer}/{weight}", v.numpy()))
    # Put the loaded statistics back so the model is reusable.
    for (_, _, v), value in zip(moving, before):
        v.assign(value)
    return out


def cmd_fixture(args):
    tf, keras = import_keras(args.threads)
    started = time.time()
    files = photo_list(args.photos, args.images)
    images = decode_batch(tf, files, args.size)
    rng = np.random.default_rng(20261127)
    head_w = (rng.standard_normal((feature_count(args.alpha), 1)) * 0.05).astype(np.float32)
    head_b = np.array([0.1], np.float32)
    labels = np.array([i % 2 for i in range(args.images)], np.int32)  # 0 cat, 1 dog

    tensors = [("input", images), ("head/kernel", head_w), ("head/bias", head_b), ("labels", labels)]
    # The network both sides run: the file's weights with some BN betas moved off the ReLU6
    # kinks for this batch (move_off_kinks), found in float64.
    model64 = build_backbone(keras, args.alpha, args.size, "float64")
    load_backbone_weights(model64, args.weights)
    shifts, worst, least = move_off_kinks(tf, model64, images)
    print(f"keras_reference: moved {sum(int(np.count_nonzero(s)) for s in shifts.values())} BN "
          f"betas in {len(shifts)} layers off the ReLU6 kinks (largest shift {worst:.2g}); every "
          f"pre-activation is now >= {least:.0f} u x RMS from 0 and 6")
    if least < KINK_MARGIN_U / 2:
        raise SystemExit(f"keras_reference: a pre-activation is still {least:.1f} u x RMS from a "
                         f"ReLU6 kink after move_off_kinks (wanted {KINK_MARGIN_U})")
    for dtype in ("float32", "float64"):
        model = model64 if dtype == "float64" else build_backbone(keras, args.alpha, args.size)
        if dtype == "float32":
            loaded = load_backbone_weights(model, args.weights)
            check_keras_loader(model, args.weights, args.alpha)
            print(f"keras_reference: loaded {loaded} values from {args.weights}")
            # weight/...: the file as Keras loads it (keras_run checks our importer against it)
            for name, var in [(f"weight/{l}/{w}", v) for (l, w, v) in weight_names(model)]:
                tensors.append((name, var.numpy()))
            for layer in model.layers:
                if layer.name in shifts:
                    layer.beta.assign(model64.get_layer(layer.name).beta.numpy().astype(np.float32))
            # network/...: the weights both sides run with
            for name, var in [(f"network/{l}/{w}", v) for (l, w, v) in weight_names(model)]:
                tensors.append((name, var.numpy()))
        results = keras_pass(tf, model, images, head_w, head_b, labels, dtype)
        suffix = "" if dtype == "float32" else "@f64"
        tensors += [(name + suffix, value) for name, value in results]
    meta = {
        "alpha": args.alpha,
        "size": args.size,
        "images": args.images,
        "files": [os.path.relpath(f, args.photos) for f in files],
        "weights": os.path.basename(args.weights),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }
    write_tensors(args.out, tensors)
    with open(os.path.join(args.out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(f"keras_reference: fixture {args.out}: {len(tensors)} tensors, "
          f"{time.time() - started:.1f} s (TF {tf.__version__}, Keras {keras.__version__})")


def check_keras_loader(model, path, alpha):
    """Keras' own h5 loader (it matches layers in order) must agree with the by-name load above,
    or the reference would rest on our reading of the file alone."""
    import keras

    other = keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=model.input_shape[1:], alpha=alpha
    )
    try:
        other.load_weights(path)
    except Exception as exc:  # noqa: BLE001 - report which loader works, keep going
        print(f"keras_reference: note: Keras' model.load_weights({os.path.basename(path)}) "
              f"failed ({type(exc).__name__}: {exc}); using the by-name load only")
        return
    worst = 0.0
    for a, b in zip(model.weights, other.weights):
        worst = max(worst, float(np.max(np.abs(a.numpy() - b.numpy()))))
    if worst != 0.0:
        raise SystemExit(f"keras_reference: Keras' load_weights and the by-name load differ ({worst})")
    print("keras_reference: Keras' model.load_weights() agrees with the by-name load exactly")


# ---- the layer list ---------------------------------------------------------------------------


def cmd_layers(args):
    tf, keras = import_keras(args.threads)
    model = build_backbone(keras, args.alpha, args.size)
    lines = [
        f"# Keras' layer list of MobileNetV2(include_top=False, weights=None, alpha={args.alpha}, "
        f"input_shape=({args.size}, {args.size}, 3)),",
        f"# TensorFlow {tf.__version__}, Keras {keras.__version__}. Generated by",
        f"#   tests/keras/keras_reference.py layers --alpha {args.alpha} --size {args.size}",
        "# (Keras 3 names the input `input_layer`; Keras 2 and the h5 files call it `input_1`.)",
        "# Columns: index name class output_shape(without batch) params. Total params "
        f"{model.count_params()}.",
    ]
    for i, layer in enumerate(model.layers):
        shape = "x".join(str(d) for d in layer.output.shape[1:])
        lines.append(f"{i} {layer.name} {type(layer).__name__} {shape} {layer.count_params()}")
    text = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)


# ---- comparison: the error model ----------------------------------------------------------------
#
# What a correct float implementation of the network may differ from the float64 truth by, per
# quantity, as a relative L2 error  E = C * u * sqrt(D):
#   u  the unit roundoff of the arithmetic (PRECISIONS: fp32 2^-24; tf32 and fp16 2^-11 and bf16
#      2^-8 for the products of a GPU's convolutions, accumulated in fp32);
#   D  the depth: the 52 convolutions on MobileNetV2's longest path, each followed by a BN. Each
#      layer's sums round independently of the others', so errors grow like a random walk,
#      sqrt(D), not D (the depth the test runs is fixed; D is written out for other uses);
#   C  per quantity, fitted to the worst of the three float32 runs on this machine (reference,
#      accumulating in double; cpu blocked nChw8c and cpu nhwc, oneDNN accumulating in float),
#      rounded up: what one layer contributes in units of u, as the measurements give it.
# The limit is HEADROOM x E: 16x, so another machine's kernels, accumulation order or batch stay
# inside while a real defect does not (a wrong term is >= 1e-2 of a tensor: >= 9x the widest
# limit below at fp32). The ReLU6 kinks are out of the model on purpose: the fixture moves every
# pre-activation >= KINK_MARGIN_U u x RMS away from them (move_off_kinks), where a float32 run
# that took the other side would flip one element's whole gradient path, a difference of where
# rounding fell (1e-2 of all gradients from a single element at fp32), not of the code.
#
# quantity            C    measured (u): reference / cpu blocked / cpu nhwc            limit
#   features L2       6    8 / 41 / 40    pooled backbone output, inference mode    692 u = 4.1e-5
#   features max      12   11 / 79 / 73   max |d| / max |f|                         1384 u = 8.2e-5
#   loss              1    2 / 5 / 6      a mean of n cross-entropies               115 u = 6.9e-6
#   grad_infer all    4    6 / 20 / 20    all gradients, BN on moving statistics    461 u = 2.7e-5
#   grad_infer tensor 16   9 / 70 / 37    per tensor (relative to its norm, floor)  1846 u = 1.1e-4
#   grad_train all    10   28 / 47 / 56   all gradients, BN on batch statistics     1154 u = 6.9e-5
#   grad_train tensor 160  57 / 824 / 1049 per tensor: training-mode BN backward    18459 u = 1.1e-3
#                                         cancels (sum of g, sum of g x-hat) and its
#                                         1/sigma amplifies, most in the lowest layers
# (as the ctest runs them: 2 photos at 160x160 on reference, 8 on cpu; after the cpu BN fix.)
# Per tensor, the error is relative to max(its norm, GRAD_FLOOR x the median tensor norm): some
# gradients are zero analytically (in training mode a BN beta whose consumers are all 1x1 convs
# into training-mode BNs: a per-channel shift cancels), and their float values are the rounding
# of sums whose size is the typical gradient's, not their own.
# Moving statistics are held against their update (new - loaded, the part the batch adds) within
# MOVING_TOL plus the float32 rounding of storing the new value (a few u of |new|, large against a
# 1e-3 update): a wrong momentum is 10x the update, Bessel's correction 2% of it.
# The GPU checks reuse this table with their u (and their own C where they measure one): note
# that at tf32/bf16 KINK_MARGIN_U x u x RMS is 0.25-2 x RMS, beyond what shifting betas can clear,
# so there the kink effect must be bounded another way (e.g. the float64 truth recomputed with
# the run's own ReLU6 masks).

PRECISIONS = {"fp32": 2.0 ** -24, "tf32": 2.0 ** -11, "fp16": 2.0 ** -11, "bf16": 2.0 ** -8}
DEPTH = 52
HEADROOM = 16.0
ERROR_C = {
    "features_l2": 6.0,
    "features_max": 12.0,
    "loss": 1.0,
    "grad_infer_all": 4.0,
    "grad_infer_tensor": 16.0,
    "grad_train_all": 10.0,
    "grad_train_tensor": 160.0,
}
GRAD_FLOOR = 0.1
MOVING_TOL = {"moving_mean": 1e-2, "moving_variance": 1e-2}
MOVING_STORE_U = 8.0


def tolerance(quantity, u, depth=DEPTH):
    """The limit of `quantity` at unit roundoff u: HEADROOM x C x u x sqrt(depth)."""
    return HEADROOM * ERROR_C[quantity] * u * float(np.sqrt(depth))


def rel_err(got, want):
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


def cmd_compare(args):
    ref = read_tensors(args.fixture)
    ours = read_tensors(args.ours)
    n = args.images
    u = PRECISIONS[args.precision]
    failures = []
    report = []

    def check(what, got, want, want64, tol):
        err = rel_err(got, want64)
        keras_err = rel_err(want, want64)
        ok = err <= tol
        report.append((what, err, keras_err, tol, ok))
        if not ok:
            failures.append(what)

    # Features: error relative to the features' scale (max |f|), against Keras float64.
    if "features" in ours:
        got = ours["features"][:n]
        want, want64 = ref["features"][:n], ref["features@f64"][:n]
        scale = float(np.max(np.abs(want64)))
        err = float(np.max(np.abs(got - want64))) / scale
        keras_err = float(np.max(np.abs(want - want64))) / scale
        tol = tolerance("features_max", u)
        ok = err <= tol
        report.append(("features max|d|/max|f|", err, keras_err, tol, ok))
        if not ok:
            failures.append("features")
        check("features rel L2", got, want, want64, tolerance("features_l2", u))

    for tag in ("infer", "train"):
        names = sorted(k for k in ours if k.startswith(f"grad_{tag}/"))
        if not names:
            continue
        tol_all, tol_tensor = tolerance(f"grad_{tag}_all", u), tolerance(f"grad_{tag}_tensor", u)
        missing = [k for k in ref if k.startswith(f"grad_{tag}/") and "@" not in k and k not in ours]
        if missing:
            failures.append(f"grad_{tag}: {len(missing)} tensors missing in our run, e.g. {missing[0]}")
        unknown = [k for k in names if k not in ref]
        if unknown:
            failures.append(f"grad_{tag}: {len(unknown)} tensors not in the Keras fixture, e.g. {unknown[0]}")
        names = [k for k in names if k in ref]
        floor = GRAD_FLOOR * float(np.median([np.linalg.norm(ref[k + "@f64"]) for k in names]))
        worst = (0.0, "", 0.0)
        for k in names:
            want64 = ref[k + "@f64"].astype(np.float64)
            scale = max(float(np.linalg.norm(want64)), floor)
            err = float(np.linalg.norm(ours[k] - want64)) / scale
            keras_err = float(np.linalg.norm(ref[k] - want64)) / scale
            if err > worst[0] or not worst[1]:
                worst = (err, k, keras_err)
            if err > tol_tensor:
                failures.append(f"{k}: relative error {err:.3g} > {tol_tensor:.3g} "
                                f"(Keras float32: {keras_err:.3g})")
        all_ours = np.concatenate([ours[k].ravel() for k in names])
        all_ref64 = np.concatenate([ref[k + "@f64"].ravel() for k in names])
        all_ref = np.concatenate([ref[k].ravel() for k in names])
        all_err, all_keras = rel_err(all_ours, all_ref64), rel_err(all_ref, all_ref64)
        report.append((f"grad_{tag}: all {len(names)} tensors, rel L2", all_err, all_keras,
                       tol_all, all_err <= tol_all))
        if all_err > tol_all:
            failures.append(f"grad_{tag}: overall relative error {all_err:.3g} > {tol_all:.3g}")
        report.append((f"grad_{tag}: worst tensor {worst[1]}", worst[0], worst[2], tol_tensor,
                       worst[0] <= tol_tensor))
        if f"loss_{tag}" in ours:
            # a scalar mean of n terms: catches a sum-for-mean or a wrong label
            check(f"loss_{tag}", ours[f"loss_{tag}"], ref[f"loss_{tag}"], ref[f"loss_{tag}@f64"],
                  tolerance("loss", u))

    moving = sorted(k for k in ours if k.startswith("moving_train/"))
    if moving:
        worst = (0.0, "", 0.0, 0.0)
        for k in moving:
            # Measured against the update (new - loaded), the part the batch contributes; the
            # loaded value dominates the total and would hide a wrong update. A wrong momentum is
            # an error of 10x the update, Bessel's correction 1/(n-1) of it (2% where the last
            # layers see 2 images x 5x5). Storing the new value in float rounds it by up to u/2
            # of |new|, ~1e3 x u of a 1e-3 update: that part is allowed on top, per element.
            loaded = ref["weight/" + k[len("moving_train/"):]].astype(np.float64)
            new64 = ref[k + "@f64"].astype(np.float64)
            update = max(float(np.linalg.norm(new64 - loaded)), 1e-30)
            err = float(np.linalg.norm(ours[k] - new64)) / update
            keras_err = float(np.linalg.norm(ref[k] - new64)) / update
            store = MOVING_STORE_U * u * float(np.linalg.norm(new64)) / update
            limit = MOVING_TOL[k.rsplit("/", 1)[1]] + store
            if err / limit > worst[0] / max(worst[3], 1e-30) or not worst[1]:
                worst = (err, k, keras_err, limit)
            if err > limit:
                failures.append(f"{k}: update relative error {err:.3g} > {limit:.3g}")
        report.append((f"moving statistics ({len(moving)} tensors): worst {worst[1]}", worst[0],
                       worst[2], worst[3], worst[0] <= worst[3]))

    label = args.label or os.path.basename(args.ours)
    print(f"{label}: error against Keras float64, limits from the error model at {args.precision} "
          f"(Keras' own float32 error in brackets, for information only)")
    for what, err, keras_err, tol, ok in report:
        print(f"  {'ok  ' if ok else 'FAIL'} {what}: {err:.3g} [{keras_err:.3g}] tol {tol:.3g}")
    if failures:
        for f in failures[:20]:
            print(f"  FAIL {f}")
        return 1
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("layers")
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--out")
    p.add_argument("--threads", type=int, default=2)
    p = sub.add_parser("fixture")
    p.add_argument("--weights", required=True)
    p.add_argument("--photos", required=True, help="folder with cats/ and dogs/")
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=2)
    p = sub.add_parser("compare")
    p.add_argument("--fixture", required=True)
    p.add_argument("--ours", required=True)
    p.add_argument("--images", type=int, required=True, help="rows of features to compare")
    p.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32",
                   help="the arithmetic of the run: sets u in the error model")
    p.add_argument("--label")
    args = parser.parse_args()
    handlers = {"layers": cmd_layers, "fixture": cmd_fixture, "compare": cmd_compare}
    return handlers[args.command](args) or 0


if __name__ == "__main__":
    sys.exit(main())
