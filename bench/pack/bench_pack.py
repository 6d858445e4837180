"""Packing throughput: mobiletune-pack against a Python baseline doing the same work on the same
cores, printed as img/s and a ratio (not a test; never run by ctest).

The baseline (Pillow + the lmdb package, multiprocessing with as many workers as the packer has
threads) decodes with the same libjpeg DCT scaling (Image.draft), applies the EXIF orientation,
converts to RGB, resizes bilinearly to SIZE x SIZE, builds the same 32-byte-header record with a
CRC, and puts it into LMDB in key order with a commit every 256 records. A second baseline
without draft() (full-size decode: what a plain Pillow script does) is printed as well.

The decode alone (bench_decode: read + libjpeg-turbo with the packer's scaling, one thread, C) is
printed as the ceiling of any packer that decodes with libjpeg-turbo as the baseline does: its
img per CPU-second over the baseline's, and that times the threads over the baseline's wall rate.

--rounds R runs the three R times, interleaved, and prints the median ratios.

usage: bench_pack.py [--pack PATH] [--decode PATH] [--input DIR] [--threads N] [--size N]
                     [--rounds R]"""
import argparse
import multiprocessing as mp
import os
import resource
import shutil
import struct
import statistics
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


def pack_c(a, items, out):
    cpu0, start = cpu_seconds(), time.perf_counter()
    subprocess.run([a.pack, "--threads", str(a.threads), "--size", str(a.size), "--no-progress",
                    a.input, out], check=True, stdout=subprocess.DEVNULL)
    return len(items), time.perf_counter() - start, cpu_seconds() - cpu0


def decode_only(a, items, tmp):
    """CPU-seconds of the decode alone, or None without bench_decode."""
    if not a.decode or not os.path.exists(a.decode):
        return None
    listing = os.path.join(tmp, "list.txt")
    with open(listing, "w") as fh:
        fh.writelines(p + "\n" for p, _, _ in items)
    out = subprocess.run([a.decode, str(a.size), listing], check=True, capture_output=True,
                         text=True).stdout
    return float(out.split(" in ")[1].split()[0])


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    build = os.path.join(here, "../../build")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pack", default=os.environ.get("MT_PACK", os.path.join(build, "data-prep/mobiletune-pack")))
    ap.add_argument("--decode", default=os.path.join(build, "bench/pack/bench_decode"))
    ap.add_argument("--input", default=os.path.join(here, "../../../shared/data/cats_vs_dogs/train"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--rounds", type=int, default=1)
    a = ap.parse_args()
    if not os.path.isdir(a.input):
        sys.exit(f"bench_pack: {a.input} is absent (the shared photos, or pass --input DIR)")
    if not os.path.exists(a.pack):
        sys.exit(f"bench_pack: {a.pack} not found: build it (cmake --build ...) or pass --pack")
    items = list_input(a.input)
    tmp = tempfile.mkdtemp(prefix="mt-bench-pack-")
    labels = ["mobiletune-pack", "python baseline, same DCT-scaled decode",
              "python baseline, full-size decode"]
    runs = {label: [] for label in labels}  # (images, wall seconds, CPU seconds) per round
    decode_cpu = []
    try:
        # Warm the page cache so neither side pays for the first read of the files.
        for p, _, _ in items:
            with open(p, "rb") as fh:
                fh.read()
        for r in range(a.rounds):
            runs[labels[0]].append(pack_c(a, items, os.path.join(tmp, f"c{r}")))
            for label, draft in zip(labels[1:], (True, False)):
                cpu = cpu_seconds()
                n, secs = python_pack(items, os.path.join(tmp, f"py{int(draft)}{r}"), a.threads,
                                      a.size, draft)
                runs[label].append((n, secs, cpu_seconds() - cpu))
            seconds = decode_only(a, items, tmp)
            if seconds is not None:
                decode_cpu.append(seconds)
            for name in os.listdir(tmp):
                if name != "list.txt":
                    shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)
        load = os.getloadavg()[0]
        print(f"images {len(items)}, size {a.size}, threads/workers {a.threads}, cpus {os.cpu_count()}, "
              f"load average {load:.1f}, rounds {a.rounds} (medians)")
        print(f"{'':40s} {'img/s (wall)':>13s} {'img/CPU-s':>10s}  ratio of mobiletune-pack (wall, CPU)")

        def rates(label):
            return ([n / secs for n, secs, _ in runs[label]], [n / cpu for n, _, cpu in runs[label]])

        c_wall, c_cpu = rates(labels[0])
        print(f"{labels[0]:40s} {statistics.median(c_wall):13.1f} {statistics.median(c_cpu):10.1f}")
        for label in labels[1:]:
            wall, cpu = rates(label)
            ratio_wall = statistics.median(cw / w for cw, w in zip(c_wall, wall))
            ratio_cpu = statistics.median(cc / c for cc, c in zip(c_cpu, cpu))
            spread = ""
            if a.rounds > 1:
                spread = (f"  (rounds: wall {min(cw / w for cw, w in zip(c_wall, wall)):.2f}-"
                          f"{max(cw / w for cw, w in zip(c_wall, wall)):.2f}x)")
            print(f"{label:40s} {statistics.median(wall):13.1f} {statistics.median(cpu):10.1f}  "
                  f"{ratio_wall:.2f}x, {ratio_cpu:.2f}x{spread}")
        if decode_cpu:
            decode_rate = len(items) / statistics.median(decode_cpu)
            wall, cpu = rates(labels[1])
            print(f"{'decode alone (C, 1 thread, same scaling)':40s} {'':13s} {decode_rate:10.1f}  "
                  f"ceiling vs same-decode baseline: "
                  f"{decode_rate * a.threads / statistics.median(wall):.2f}x wall, "
                  f"{decode_rate / statistics.median(cpu):.2f}x CPU")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
