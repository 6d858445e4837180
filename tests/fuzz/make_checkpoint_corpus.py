#!/usr/bin/env python3
"""Write the seed corpus of the checkpoint reader's fuzz target (tests/fuzz/corpus/checkpoint/).

An independent safetensors encoder (struct + json + zlib, as docs/checkpoints.md describes the
format and its crc32:<name> entries), so the seeds also check the C reader's reading of the
format: well-formed files with and without checksums, every dtype, and the hostile ones it must
refuse (a wrong checksum, a checksum for no tensor, overlapping and out-of-range offsets, a
header length beyond the file, truncation, duplicate names). Run once; the output is committed."""
import json
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
SIZES = {"F32": 4, "U8": 1, "I64": 8, "U64": 8}


def checkpoint(tensors, metadata=None, checksums=True, pad=True, header_text=None, edit=None):
    """tensors: [(name, dtype, shape, raw bytes)], written in the given order."""
    meta = dict(metadata or {})
    header, offset, blobs = {}, 0, []
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
        if checksums:
            meta["crc32:" + name] = "%08x" % zlib.crc32(raw)
    if meta:
        header = {"__metadata__": meta, **header}
    if edit:
        edit(header)
    text = header_text if header_text is not None else json.dumps(header).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def floats(*values):
    return struct.pack(f"<{len(values)}f", *values)


def main():
    kernel = ("Conv1/kernel", "F32", [2, 3], floats(0, 0.5, 1, 1.5, 2, 2.5))
    blob = ("blob", "U8", [3], b"\x07\x08\x09")
    step = ("step", "I64", [], struct.pack("<q", -5))
    rng = ("rng", "U64", [2], struct.pack("<2Q", 1, 2**64 - 1))
    meta = {"format": "mobiletune-checkpoint", "epoch": "3", "class_names": "cats\ndogs"}
    good = checkpoint([rng, step, kernel, blob], meta)
    seeds = {
        "good": good,
        "no_checksums": checkpoint([kernel, blob], meta, checksums=False),
        "empty": checkpoint([], {}),
        "only_metadata": checkpoint([], {"config": "[train]\nepochs = 2\n"}),
        "scalar_and_empty": checkpoint([("s", "F32", [], floats(42)),
                                        ("e", "F32", [0, 7], b"")], meta),
        "non_finite": checkpoint([("w", "F32", [3], floats(1, float("nan"), float("inf")))]),
        "unpadded": checkpoint([kernel], meta, pad=False),
    }
    # hostile: a changed data byte, a checksum for no tensor, one tensor without a checksum
    flipped = bytearray(good)
    flipped[-1] ^= 0x10
    seeds["flipped_data"] = bytes(flipped)
    with_ghost = checkpoint([kernel], {**meta, "crc32:ghost": "00000000"})
    seeds["checksum_for_no_tensor"] = with_ghost
    seeds["one_checksum_missing"] = checkpoint(
        [kernel, blob], meta, edit=lambda h: h["__metadata__"].pop("crc32:blob"))
    seeds["checksum_not_hex"] = checkpoint(
        [kernel], meta, edit=lambda h: h["__metadata__"].update({"crc32:Conv1/kernel": "-1234567"}))
    overlap = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
               "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}
    seeds["overlap"] = checkpoint([], header_text=json.dumps(overlap).encode()) + bytes(12)
    beyond = {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}
    seeds["offsets_beyond"] = checkpoint([], header_text=json.dumps(beyond).encode()) + bytes(8)
    seeds["header_length_beyond"] = struct.pack("<Q", 1 << 40) + good[8:]
    seeds["truncated"] = good[:len(good) // 2]
    seeds["duplicate_names"] = checkpoint(
        [], header_text=b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
                        b'"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}') + b"\x01\x02"
    seeds["huge_shape"] = checkpoint(
        [], header_text=b'{"a":{"dtype":"F32","shape":[4294967296,4294967296,16],'
                        b'"data_offsets":[0,4]}}') + bytes(4)
    folder = os.path.join(HERE, "corpus", "checkpoint")
    os.makedirs(folder, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
    print(f"{len(seeds)} seeds in {folder}")


if __name__ == "__main__":
    main()
