"""Our optimizers against Keras 3's (tf.keras) on random arrays: five steps each of RMSprop, SGD
and Adam in several settings, run by Keras here and by mobiletune through the helper mode of
test_train_optimizer (`--case IN OUT`). Skips (77) when TensorFlow/Keras is not importable.

usage: keras_optimizers.py PATH/TO/test_train_optimizer
"""
import os
import subprocess
import sys
import tempfile

try:
    import numpy as np
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import tensorflow as tf  # noqa: F401  (the backend keras runs on)
except Exception as error:  # an absent or broken install is a skip, not a failure
    print(f"SKIPPED: tensorflow/keras not importable: {error}")
    sys.exit(77)

KIND = {"rmsprop": 0, "sgd": 1, "adam": 2}
CASES = [
    ("rmsprop", dict()),
    ("rmsprop", dict(momentum=0.9)),
    ("rmsprop", dict(rho=0.8, epsilon=1e-3, weight_decay=0.004)),
    ("sgd", dict()),
    ("sgd", dict(momentum=0.9)),
    ("sgd", dict(momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("adam", dict()),
    ("adam", dict(beta_1=0.8, beta_2=0.99, epsilon=1e-4, weight_decay=0.02)),
]
STEPS, N, LR = 5, 1000, 0.01


def keras_run(name, options, p0, grads):
    kwargs = dict(learning_rate=LR, **options)
    if kwargs.get("weight_decay", 0.0) == 0.0:
        kwargs.pop("weight_decay", None)
    optimizer = {"rmsprop": keras.optimizers.RMSprop, "sgd": keras.optimizers.SGD,
                 "adam": keras.optimizers.Adam}[name](**kwargs)
    variable = keras.Variable(p0.copy(), dtype="float32")
    for g in grads:
        optimizer.apply_gradients([(keras.ops.convert_to_tensor(g), variable)])
    return np.asarray(variable.numpy(), dtype=np.float32)


def ours_run(helper, name, options, p0, grads, folder):
    defaults = dict(rho=0.9, momentum=0.0, epsilon=1e-7, nesterov=False, beta_1=0.9,
                    beta_2=0.999, weight_decay=0.0)
    h = {**defaults, **options}
    in_path, out_path = os.path.join(folder, "case.bin"), os.path.join(folder, "out.bin")
    header = (f"{KIND[name]} {h['rho']!r} {h['momentum']!r} {h['epsilon']!r} {int(h['nesterov'])} "
              f"{h['beta_1']!r} {h['beta_2']!r} {h['weight_decay']!r} {LR!r} {STEPS} {N}\n")
    with open(in_path, "wb") as f:
        f.write(header.encode())
        f.write(p0.astype("<f4").tobytes())
        f.write(grads.astype("<f4").tobytes())
    subprocess.run([helper, "--case", in_path, out_path], check=True)
    return np.fromfile(out_path, dtype="<f4")


def main():
    helper = sys.argv[1]
    rng = np.random.default_rng(7)
    failures = 0
    with tempfile.TemporaryDirectory() as folder:
        for name, options in CASES:
            p0 = rng.normal(size=N).astype(np.float32)
            grads = rng.normal(scale=0.5, size=(STEPS, N)).astype(np.float32)
            grads[:, :10] = 0.0  # zero gradients: RMSprop's sqrt(eps) denominator
            want = keras_run(name, options, p0, grads)
            got = ours_run(helper, name, options, p0, grads, folder)
            moved = np.max(np.abs(want - p0))
            error = np.max(np.abs(got - want))
            # float32 rounding of a few operations per step: far below the step size
            ok = error <= 1e-6 + 1e-5 * np.max(np.abs(want))
            print(f"{name} {options}: max |ours - keras| = {error:.3g} (updates up to {moved:.3g})"
                  f" {'ok' if ok else 'FAIL'}")
            failures += not ok
    print(f"{len(CASES) - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
