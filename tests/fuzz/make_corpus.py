#!/usr/bin/env python3
"""Write the small seed corpus for the record and metadata fuzz targets (tests/fuzz/corpus/).

An independent encoder of the record layout in include/mobiletune/record.h (little-endian header,
CRC32 over every byte but the CRC field), so the seeds also check the C encoder's reading of the
format. Run once; the output is committed."""
import os
import struct
import sys
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))


def record(encoding, h, w, label, payload, name, magic=b"MTR1", version=1, channels=3):
    header = bytearray(magic + struct.pack("<HBBHHIII", version, encoding, channels, h, w, label,
                                           len(payload), 0) + struct.pack("<H", len(name)) +
                       bytes(6))
    body = bytes(header) + payload + name
    crc = zlib.crc32(body[:20] + body[24:]) & 0xFFFFFFFF
    return body[:20] + struct.pack("<I", crc) + body[24:]


def meta(records=5, classes=(("cats", 2), ("dogs", 3)), encoding="raw", extra=""):
    lines = ["mobiletune-dataset 1", f"records {records}", "height 160", "width 160",
             "channels 3", f"encoding {encoding}", "split train", "mean 124.5 116.25 103.125",
             "std 58.5 57 57.25", f"classes {len(classes)}"]
    lines += [f"class {i} {n} {name}" for i, (name, n) in enumerate(classes)]
    lines.append("options --size 160 --resize stretch" + extra)
    return ("\n".join(lines) + "\n").encode()


def main():
    seeds = {
        "record": {
            "raw_1x1": record(0, 1, 1, 0, bytes([1, 2, 3]), b"a.jpg"),
            "raw_2x3": record(0, 2, 3, 7, bytes(range(18)), b"cats/cat.1.jpg"),
            "raw_noname": record(0, 4, 4, 1, bytes(range(48)), b""),
            "jpeg": record(1, 160, 160, 1, b"\xff\xd8\xff\xe0" + bytes(12) + b"\xff\xd9",
                           b"dogs/dog.2.jpg"),
            "bad_magic": record(0, 1, 1, 0, bytes(3), b"x", magic=b"MTR2"),
            "bad_version": record(0, 1, 1, 0, bytes(3), b"x", version=2),
            "bad_channels": record(0, 1, 1, 0, bytes(1), b"x", channels=1),
            "truncated": record(0, 2, 2, 0, bytes(12), b"name")[:40],
            "header_only": record(0, 1, 1, 0, bytes(3), b"")[:32],
        },
        "meta": {
            "good": meta(),
            "jpeg_utf8": meta(records=1, classes=(("\u00e9l\u00e9phant", 1),), encoding="jpeg"),
            "one_class_zero": meta(records=0, classes=(("x", 0),)),
            "no_final_newline": meta()[:-1],
            "bad_sum": meta(records=6),
            "dup_class": meta(classes=(("a", 2), ("a", 3))),
            "bad_version": meta().replace(b"dataset 1", b"dataset 2"),
        },
    }
    for kind, files in seeds.items():
        folder = os.path.join(HERE, "corpus", kind)
        os.makedirs(folder, exist_ok=True)
        for name, data in files.items():
            with open(os.path.join(folder, name), "wb") as f:
                f.write(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
