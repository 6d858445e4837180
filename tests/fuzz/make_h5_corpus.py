#!/usr/bin/env python3
"""Write the small seed corpus of the Keras HDF5 reader's fuzz target (tests/fuzz/corpus/h5/):
the layouts the reader knows (save_weights, whole-model model.save, Keras 3 vars/<i>), widths
16/32/64, and the hostile files the reader must refuse (NaN and Inf weights, a shape of 2^63
values, a truncated file, a non-HDF5 file). Needs h5py (the project's .venv has it). Run once;
the output is committed."""
import os
import sys

import h5py
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def write(path, build):
    with h5py.File(path, "w", libver="earliest") as f:
        build(f)


def save_weights(f):
    g = f.create_group("dense")
    g.attrs["weight_names"] = [b"dense/kernel:0", b"dense/bias:0"]
    g.create_dataset("dense/kernel:0", data=np.arange(6, dtype="<f4").reshape(2, 3) / 7)
    g.create_dataset("dense/bias:0", data=np.array([0.5, -1, 2], "<f4"))
    f.attrs["layer_names"] = [b"dense"]


def whole_model(f):
    m = f.create_group("model_weights")
    g = m.create_group("Conv1")
    g.create_dataset("Conv1/kernel:0", data=np.ones((3, 3, 3, 2), "<f8") / 9)
    m.create_group("bn_Conv1").create_dataset("bn_Conv1/gamma:0", data=np.ones(2, "<f2"))
    o = f.create_group("optimizer_weights")
    o.create_dataset("Adam/iterations:0", data=np.int64(3))


def keras3(f):
    v = f.create_group("layers").create_group("dense").create_group("vars")
    v.create_dataset("0", data=np.full((4, 2), 0.25, "<f4"))
    v.create_dataset("1", data=np.zeros(2, "<f4"))


def non_finite(f):
    f.create_dataset("dense/dense/kernel:0", data=np.array([[0, np.nan, 1]], "<f4"))
    f.create_dataset("dense/dense/bias:0", data=np.array([np.inf], "<f4"))


def huge(f):
    f.create_dataset("dense/dense/kernel:0", shape=(1 << 40, 1 << 23), dtype="<f4", chunks=(1, 1))


def main():
    folder = os.path.join(HERE, "corpus", "h5")
    os.makedirs(folder, exist_ok=True)
    for name, build in (("save_weights", save_weights), ("whole_model", whole_model),
                        ("keras3", keras3), ("non_finite", non_finite), ("huge_shape", huge)):
        write(os.path.join(folder, name), build)
    data = open(os.path.join(folder, "save_weights"), "rb").read()
    open(os.path.join(folder, "truncated"), "wb").write(data[:len(data) // 2])
    open(os.path.join(folder, "not_hdf5"), "wb").write(b"PK\x03\x04 a zip, not HDF5")
    return 0


if __name__ == "__main__":
    sys.exit(main())
