"""An independent read of a Keras weights file with h5py for the C tests: one line per float
dataset (optimizer groups skipped), tab-separated:
    path  count  sum(float64)  hash
where hash is sum(bits[i] * (i*2654435761 + 1)) mod 2**64 over the float32 bit patterns, the same
formula as tests/io/mnv2_table.h, so values compare bit-exactly without shipping them.
Usage: h5_checksums.py FILE"""
import sys

import h5py
import numpy as np


def main():
    lines = []

    def visit(name, obj):
        if not isinstance(obj, h5py.Dataset) or obj.dtype.kind != "f":
            return
        if name.startswith("optimizer_weights/") or name.startswith("optimizer/"):
            return
        values = np.asarray(obj[()], dtype=np.float32).reshape(-1)
        bits = values.view(np.uint32).astype(np.uint64)
        index = np.arange(values.size, dtype=np.uint64)
        with np.errstate(over="ignore"):
            weights = index * np.uint64(2654435761) + np.uint64(1)
            digest = int(np.sum(bits * weights, dtype=np.uint64))
        total = float(np.sum(values.astype(np.float64)))
        lines.append(f"{name}\t{values.size}\t{total!r}\t{digest}")

    with h5py.File(sys.argv[1], "r") as f:
        f.visititems(visit)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
