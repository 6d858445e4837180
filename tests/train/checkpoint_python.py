"""mobiletune checkpoints are plain safetensors: Python reads what mobiletune writes (with only
struct + json + numpy, and with the `safetensors` package when it is installed), and mobiletune
reads what Python writes.

usage: checkpoint_python.py PATH/TO/test_train_checkpoint
"""
import json
import os
import struct
import subprocess
import sys
import tempfile
import zlib

import numpy as np

DTYPES = {"F32": "<f4", "U8": "u1", "I64": "<i8", "U64": "<u8"}
CONFIG = "[optimizer]\nname = rmsprop\n; \"quoted\" \\ back\tslash é ☃\n"


def read_plain(path):
    """The whole format in a few lines: u64 header length, JSON header, raw tensors."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    data = blob[8 + n:]
    metadata = header.pop("__metadata__", {})
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        tensors[name] = np.frombuffer(data[begin:end], dtype=DTYPES[info["dtype"]]).reshape(
            info["shape"])
    return tensors, metadata


def check_sample(tensors, metadata, how):
    failures = []

    def check(cond, what):
        if not cond:
            failures.append(f"{how}: {what}")

    check(np.array_equal(tensors["head/dense/kernel"],
                         np.arange(6, dtype=np.float32).reshape(2, 3) * 0.5), "kernel values")
    check(tensors["head/dense/kernel"].dtype == np.float32, "kernel dtype")
    check(list(tensors["loader/position"]) == [1, 2, 3, 4, 5], "blob")
    check(tensors["step"].shape == () and int(tensors["step"]) == -1234567890123, "I64 scalar")
    check([int(x) for x in tensors["rng"]] == [0x0123456789abcdef, 1, 2, 2**64 - 1], "U64")
    specials = tensors["specials"]
    check(np.signbit(specials[0]) and specials[0] == 0, "-0.0")
    check(np.isposinf(specials[1]) and np.isneginf(specials[2]), "infinities")
    check(specials.view(np.uint32)[5] == 0x7FC12345, "NaN payload")
    check(tensors["scalar"].shape == () and float(tensors["scalar"]) == 42.0, "F32 scalar")
    check(tensors["empty"].shape == (0, 7), "empty tensor")
    check(list(tensors["odd"]) == [1, 2, 3], "odd blob")
    # every tensor's checksum, verified as docs/checkpoints.md says
    for name, array in tensors.items():
        check(metadata.get("crc32:" + name) == "%08x" % zlib.crc32(array.tobytes()),
              f"crc32 of {name}")
    check(metadata.get("config") == CONFIG, f"config text {metadata.get('config')!r}")
    check(metadata.get("epoch") == "4" and metadata.get("format") == "mobiletune-checkpoint-1",
          "metadata")
    return failures


def write_plain(path, tensors, metadata):
    header, offset, chunks = {"__metadata__": metadata}, 0, []
    for name, array in tensors.items():
        raw = array.tobytes()
        dtype = {np.dtype("<f4"): "F32", np.dtype("u1"): "U8"}[array.dtype]
        header[name] = {"dtype": dtype, "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        chunks.append(raw)
    text = json.dumps(header).encode("utf-8")
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(chunks))


def main():
    helper = sys.argv[1]
    failures = []
    try:
        import safetensors.numpy
        from safetensors import safe_open
    except ImportError:
        safetensors = None
        print("note: the safetensors package is not installed; checking with numpy only")
    with tempfile.TemporaryDirectory() as folder:
        sample = os.path.join(folder, "sample.safetensors")
        subprocess.run([helper, "--write-sample", sample], check=True)
        failures += check_sample(*read_plain(sample), "struct+json+numpy")
        if safetensors:
            tensors = safetensors.numpy.load_file(sample)
            with safe_open(sample, framework="numpy") as f:
                metadata = f.metadata()
            failures += check_sample(tensors, metadata, "safetensors")

        ours = {"w": np.array([[1, 2], [3, 4]], dtype=np.float32),
                "blob": np.array([7, 8, 9], dtype=np.uint8)}
        plain = os.path.join(folder, "plain.safetensors")
        write_plain(plain, ours, {"step": "17"})
        writers = [("numpy", plain)]
        if safetensors:
            official = os.path.join(folder, "official.safetensors")
            safetensors.numpy.save_file(ours, official, metadata={"step": "17"})
            writers.append(("safetensors", official))
        for how, path in writers:
            result = subprocess.run([helper, "--read-sample", path])
            if result.returncode != 0:
                failures.append(f"mobiletune could not read the file {how} wrote")
    for failure in failures:
        print("FAIL:", failure)
    checks = 2 + 2 * (safetensors is not None)
    print(f"{checks - min(len(failures), checks)} passed, {min(len(failures), checks)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
