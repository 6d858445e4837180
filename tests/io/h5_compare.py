"""h5py's check of an exported Keras weights file against the file it was made from: the same
float32 datasets at the same paths with bit-identical values, and the attributes Keras' loader reads
(root layer_names, backend, keras_version; each layer's weight_names) equal as string lists, stored
as fixed-length byte strings as Keras/h5py write them.
Usage: h5_compare.py SOURCE.h5 EXPORT.h5   (exit 1 listing the differences)"""
import sys

import h5py
import numpy as np


def datasets(f):
    found = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            found[name] = obj

    f.visititems(visit)
    return found


def strings(attr):
    return [x.decode() if isinstance(x, bytes) else str(x) for x in np.atleast_1d(attr)]


def main():
    problems = []
    with h5py.File(sys.argv[1], "r") as src, h5py.File(sys.argv[2], "r") as out:
        a, b = datasets(src), datasets(out)
        if sorted(a) != sorted(b):
            problems.append(f"dataset paths differ: only in source {sorted(set(a) - set(b))[:5]}, "
                            f"only in export {sorted(set(b) - set(a))[:5]}")
        for name in sorted(set(a) & set(b)):
            x, y = a[name][()], b[name][()]
            if b[name].dtype != np.dtype("<f4"):
                problems.append(f"{name}: export dtype {b[name].dtype}")
            if x.shape != y.shape or x.astype(np.float32).tobytes() != y.tobytes():
                problems.append(f"{name}: values or shape differ ({x.shape} vs {y.shape})")
        layers = strings(src.attrs["layer_names"])
        if strings(out.attrs["layer_names"]) != layers:
            problems.append("root layer_names differ")
        if out.attrs["layer_names"].dtype.kind != "S":
            problems.append(f"layer_names stored as {out.attrs['layer_names'].dtype}, not bytes")
        backend = out.attrs["backend"]
        if (backend.decode() if isinstance(backend, bytes) else backend) != "tensorflow":
            problems.append(f"backend attribute is {backend!r}")
        if "keras_version" not in out.attrs:
            problems.append("no keras_version attribute")
        for layer in layers:
            want, got = strings(src[layer].attrs["weight_names"]), strings(out[layer].attrs["weight_names"])
            if want != got:
                problems.append(f"{layer}: weight_names {got} != {want}")
    for p in problems[:20]:
        print("h5_compare:", p)
    print(f"h5_compare: {len(a)} datasets, {len(layers)} layers, {len(problems)} differences")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
