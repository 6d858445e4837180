"""Packing throughput: mobiletune-pack against a Python baseline doing the same work on the same
cores, printed as img/s and a ratio (not a test; never run by ctest).

The baseline (Pillow + the lmdb package, multiprocessing with as many workers as the packer has
threads) decodes with the same libjpeg DCT scaling (Image.draft), applies the EXIF orientation,
converts to RGB, resizes bilinearly to SIZE x SIZE, builds the same 32-byte-header record with a
CRC, and puts it into LMDB in key order with a commit every 256 records. A second baseline
without draft() (full-size decode: what a plain Pillow script does) is printed as well.

usage: bench_pack.py [--pack PATH] [--input DIR] [--threads N] [--size N]"""
import argparse
import multiprocessing as mp
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib

import lmdb
from PIL import Image, ImageOps

HEADER = struct.Struct("<IHBBHHIIIH6x")
SIZE = 160
DRAFT = True


def list_input(root):
    items = []
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    for label, c in enumerate(classes):
        for n in sorted(os.listdir(os.path.join(root, c))):
            items.append((os.path.join(root, c, n), f"{c}/{n}", label))
    return items


def init(size, draft):
    global SIZE, DRAFT
    SIZE, DRAFT = size, draft


def make_record(item):
    path, name, label = item
    try:
        im = Image.open(path)
        if DRAFT:
            im.draft("RGB", (SIZE, SIZE))
        im = ImageOps.exif_transpose(im).convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)
    except Exception as e:  # a skip, as the packer would
        return None
    payload = im.tobytes()
    name_b = name.encode()
    head = HEADER.pack(0x3152544D, 1, 0, 3, SIZE, SIZE, label, len(payload), 0, len(name_b))
    body = head[:20] + head[24:] + payload + name_b
    crc = zlib.crc32(body)
    return head[:20] + struct.pack("<I", crc) + head[24:] + payload + name_b


def cpu_seconds():
    """CPU time of this process and its reaped children: on a shared machine wall time measures
    the neighbours too, CPU time mostly does not."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def python_pack(items, out, workers, size, draft):
    env = lmdb.open(out, map_size=1 << 34)
    start = time.perf_counter()
    n = 0
    with mp.Pool(workers, initializer=init, initargs=(size, draft)) as pool:
        txn = env.begin(write=True)
        for rec in pool.imap(make_record, items, chunksize=8):
            if rec is None:
                continue
            txn.put(b"%010d" % n, rec, append=True)
            n += 1
            if n % 256 == 0:
                txn.commit()
                txn = env.begin(write=True)
        txn.commit()
    env.sync()
    env.close()
    return n, time.perf_counter() - start


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pack", default=os.environ.get("MT_PACK", os.path.join(here, "../../build/data-prep/mobiletune-pack")))
    ap.add_argument("--input", default=os.path.join(here, "../../../shared/data/cats_vs_dogs/train"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--size", type=int, default=160)
    a = ap.parse_args()
    if not os.path.isdir(a.input):
        sys.exit(f"bench_pack: {a.input} is absent (the shared photos, or pass --input DIR)")
    if not os.path.exists(a.pack):
        sys.exit(f"bench_pack: {a.pack} not found: build it (cmake --build ...) or pass --pack")
    items = list_input(a.input)
    tmp = tempfile.mkdtemp(prefix="mt-bench-pack-")
    try:
        # Warm the page cache so neither side pays for the first read of the files.
        for p, _, _ in items:
            with open(p, "rb") as fh:
                fh.read()
        out = os.path.join(tmp, "c")
        cpu0, start = cpu_seconds(), time.perf_counter()
        subprocess.run([a.pack, "--threads", str(a.threads), "--size", str(a.size), "--no-progress",
                        a.input, out], check=True, stdout=subprocess.DEVNULL)
        c_seconds, c_cpu = time.perf_counter() - start, cpu_seconds() - cpu0
        c_rate, c_cpu_rate = len(items) / c_seconds, len(items) / c_cpu
        results = []
        for draft in (True, False):
            out = os.path.join(tmp, f"py{int(draft)}")
            cpu0 = cpu_seconds()
            n, secs = python_pack(items, out, a.threads, a.size, draft)
            results.append((draft, n, secs, cpu_seconds() - cpu0))
        load = os.getloadavg()[0]
        print(f"images {len(items)}, size {a.size}, threads/workers {a.threads}, cpus {os.cpu_count()}, "
              f"load average {load:.1f}")
        print(f"{'':38s} {'img/s (wall)':>13s} {'img/CPU-s':>10s}  ratio (wall, CPU)")
        print(f"{'mobiletune-pack':38s} {c_rate:13.1f} {c_cpu_rate:10.1f}")
        for draft, n, secs, cpu in results:
            label = "python baseline, " + ("same DCT-scaled decode" if draft else "full-size decode")
            print(f"{label:38s} {n / secs:13.1f} {n / cpu:10.1f}  {c_rate / (n / secs):.2f}x, "
                  f"{c_cpu_rate / (n / cpu):.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
