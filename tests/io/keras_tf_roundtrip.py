"""Keras itself reads what mobiletune writes, and mobiletune reads what Keras 3 writes.

1. test_io_keras_export --export writes the shared ImageNet weights through mt_keras_h5_write.
2. tf.keras' MobileNetV2(include_top=False, weights=None, input_shape=(160, 160, 3)).load_weights()
   of that file: every layer's weights equal the source file's (h5py), bit for bit, 2,257,984
   values; a 0.35-wide model refuses the file (Keras does check shapes).
3. Keras 3 saves the loaded model as .weights.h5 and as a legacy whole-model .h5; our reader finds
   every tensor of both bit-identical to the source (test_io_keras_export --same).
Skips (exit 77) without TensorFlow or without ../shared/weights.
Usage: keras_tf_roundtrip.py PATH/TO/test_io_keras_export"""
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
SKIP = 77


def main():
    tool = sys.argv[1]
    shared = os.environ.get("MT_SHARED_DIR") or os.path.join(os.getcwd(), "../shared")
    source = os.path.join(shared, "weights", "mobilenet_v2_1.0_224_imagenet_no_top.h5")
    if not os.path.exists(source):
        print(f"SKIPPED: {source} is absent")
        return SKIP
    try:
        import tensorflow as tf
    except Exception as error:  # ImportError, or a broken install
        print(f"SKIPPED: TensorFlow is not importable here ({error}); "
              "install tensorflow-cpu into the venv to run the Keras round trip")
        return SKIP
    import h5py
    import numpy as np

    failures = []
    with tempfile.TemporaryDirectory(prefix="mt-keras-tf-") as tmp:
        exported = os.path.join(tmp, "exported.h5")
        subprocess.run([tool, "--export", exported], check=True)

        model = tf.keras.applications.MobileNetV2(include_top=False, weights=None,
                                                  input_shape=(160, 160, 3))
        before = [w.copy() for w in model.get_weights()]
        model.load_weights(exported)
        compared = values = 0
        with h5py.File(source, "r") as src:
            for layer in model.layers:
                weights = layer.get_weights()
                names = []
                if layer.name in src:
                    names = [n.decode() for n in src[layer.name].attrs["weight_names"]]
                if len(weights) != len(names):
                    failures.append(f"{layer.name}: Keras has {len(weights)} weights, the source "
                                    f"{len(names)}")
                    continue
                for value, name in zip(weights, names):
                    want = src[layer.name][name][()]
                    compared += 1
                    values += value.size
                    if value.shape != want.shape or value.tobytes() != want.astype(np.float32).tobytes():
                        failures.append(f"{layer.name}/{name}: differs after load_weights")
        changed = sum(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
        print(f"keras {tf.keras.__version__ if hasattr(tf.keras, '__version__') else ''}: "
              f"{compared} tensors, {values} values compared after load_weights; "
              f"{changed} changed from the random initialization")
        if compared != 260 or values != 2257984:
            failures.append(f"compared {compared} tensors / {values} values, want 260 / 2257984")
        if changed < 200:
            failures.append(f"only {changed} tensors changed: load_weights did not load")

        narrow = tf.keras.applications.MobileNetV2(include_top=False, weights=None, alpha=0.35,
                                                   input_shape=(160, 160, 3))
        try:
            narrow.load_weights(exported)
            failures.append("an alpha 0.35 model accepted the alpha 1.0 export")
        except ValueError as error:
            print(f"alpha 0.35 model refuses the export as it should: {str(error)[:100]}...")

        keras3_files = [os.path.join(tmp, "keras3.weights.h5"), os.path.join(tmp, "keras3_model.h5")]
        model.save_weights(keras3_files[0])
        model.save(keras3_files[1])  # Keras 3's legacy whole-model HDF5 (model_weights/...)
        for path in keras3_files:
            result = subprocess.run([tool, "--same", source, path])
            if result.returncode != 0:
                failures.append(f"our reader disagrees with the source on {os.path.basename(path)}")

    for failure in failures[:20]:
        print("FAIL:", failure)
    print("PASSED" if not failures else f"{len(failures)} failures")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
