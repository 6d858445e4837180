# One file over 600 lines on purpose: one short case_* function per ctest (the dispatcher at the
# bottom), all on the crafted inputs here and the independent record parser of packlib.
"""End-to-end tests of mobiletune-pack, one ctest per case: `pack_tests.py CASE`.

Every case packs real or crafted files with the built packer and reads the result back with
Python's lmdb binding and an independent parser (packlib), so the C code is never its own judge."""
import io
import os
import signal
import stat
import struct
import subprocess
import sys
import time
import zlib

import lmdb
import numpy as np
from PIL import Image

import packlib as P

f = P.Failures()


def reference(path, size=160, mode="stretch"):
    return P.reference_resize(P.reference_decode(path, size), size, mode)


# ---- crafted inputs -----------------------------------------------------------------------------

def gradient(w, h, seed=0):
    """A smooth colour image with some texture: JPEG artefacts stay small on it."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) * 255 // (w + h)], -1)
    img = img + rng.integers(-8, 9, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_png16_rgb(path, arr16):
    """A 16-bit RGB PNG written by hand (Pillow cannot write one)."""
    h, w, _ = arr16.shape
    raw = b"".join(b"\0" + arr16[r].astype(">u2").tobytes() for r in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    with open(path, "wb") as out:
        out.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) +
                  chunk(b"IEND", b""))


def strip_app14(data):
    """Remove the Adobe APP14 segment of a JPEG (so its CMYK reads as plain, not inverted)."""
    out, pos = bytearray(data[:2]), 2
    while pos + 4 <= len(data) and data[pos] == 0xFF and data[pos + 1] != 0xDA:
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if data[pos + 1] != 0xEE:
            out += data[pos:pos + 2 + length]
        pos += 2 + length
    return bytes(out + data[pos:])


def make_odd_inputs(root):
    """Good-but-odd files (must pack correctly) and broken ones (must be skipped, with the reason
    fragment expected in the report). Returns (good names, {broken name: reason fragment})."""
    cls = os.path.join(root, "things")
    os.makedirs(cls)
    good, broken = [], {}

    def path(name):
        return os.path.join(cls, name)

    Image.fromarray(gradient(400, 340)[:, :, 0], "L").save(path("gray.jpg"), quality=95)
    good.append("gray.jpg")
    Image.fromarray(gradient(200, 170)[:, :, 1], "L").save(path("gray.png"))
    good.append("gray.png")
    # Pure cyan in CMYK: the RGB must come out (0, 255, 255), whatever the CMYK convention.
    cyan = np.zeros((150, 200, 4), np.uint8)
    cyan[:, :, 0] = 255
    cyan[:, 100:, 3] = 128  # right half half-black
    Image.fromarray(cyan, "CMYK").save(path("cmyk_adobe.jpg"), quality=95)  # Pillow: inverted + APP14
    good.append("cmyk_adobe.jpg")
    buf = io.BytesIO()
    Image.fromarray(255 - cyan, "CMYK").save(buf, "JPEG", quality=95)  # stored values = cyan
    with open(path("cmyk_plain.jpg"), "wb") as out:
        out.write(strip_app14(buf.getvalue()))
    good.append("cmyk_plain.jpg")
    rgba = np.dstack([gradient(180, 160), np.linspace(0, 255, 180 * 160).reshape(160, 180).astype(np.uint8)])
    Image.fromarray(rgba, "RGBA").save(path("alpha.png"))
    good.append("alpha.png")
    Image.fromarray(gradient(190, 170, 3)).convert("P").save(path("palette.png"))
    good.append("palette.png")
    g16 = (np.linspace(0, 65535, 170 * 210).reshape(170, 210)).astype(np.uint16)
    Image.fromarray(g16.astype(np.int32)).convert("I;16").save(path("gray16.png"))
    good.append("gray16.png")
    write_png16_rgb(path("rgb16.png"), gradient(220, 165, 4).astype(np.uint16) * 257 + 100)
    good.append("rgb16.png")
    Image.fromarray(gradient(210, 180, 5)).save(path("png_named.jpg"), "PNG")  # magic, not name
    good.append("png_named.jpg")
    Image.fromarray(gradient(200, 180, 6)).save(path("trailing.jpg"), quality=90)
    with open(path("trailing.jpg"), "ab") as out:
        out.write(b"some bytes after the end-of-image marker")
    good.append("trailing.jpg")

    Image.fromarray(gradient(480, 360, 7)).save(path("z_truncated.jpg"), quality=95)
    data = open(path("z_truncated.jpg"), "rb").read()
    open(path("z_truncated.jpg"), "wb").write(data[:len(data) * 6 // 10])
    broken["z_truncated.jpg"] = "truncated JPEG"
    Image.fromarray(gradient(200, 200, 8)).save(path("z_truncated.png"))
    data = open(path("z_truncated.png"), "rb").read()
    open(path("z_truncated.png"), "wb").write(data[:len(data) // 2])
    broken["z_truncated.png"] = "truncated PNG"
    open(path("z_empty.jpg"), "wb").close()
    broken["z_empty.jpg"] = "empty file"
    open(path("z_text.jpg"), "w").write("this is not a picture\n")
    broken["z_text.jpg"] = "not a JPEG or PNG"
    open(path("z_header_only.jpg"), "wb").write(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00")
    broken["z_header_only.jpg"] = "truncated or corrupt JPEG header"
    os.makedirs(path("z_folder.jpg"))
    broken["z_folder.jpg"] = "folder"
    if os.geteuid() != 0:
        Image.fromarray(gradient(200, 180, 9)).save(path("z_unreadable.jpg"))
        os.chmod(path("z_unreadable.jpg"), 0)
        broken["z_unreadable.jpg"] = "cannot open"
    else:
        print("note: running as root, so a file without read permission is still readable: the "
              "unreadable-file case is not checked here")
    return ["things/" + g for g in good], {"things/" + k: v for k, v in broken.items()}


def read_report(path):
    entries = {}
    for line in open(path, encoding="utf-8"):
        if line.startswith("#"):
            continue
        name, _, reason = line.rstrip("\n").partition("\t")
        entries[name] = reason
    return entries


# ---- cases --------------------------------------------------------------------------------------

def case_shared():
    """200 shared photos: every record equals the independent decode + resize; counts, names,
    labels and the metadata's mean/std agree with what is in the records."""
    with P.TempDir("shared") as tmp:
        src = P.make_subset(os.path.join(tmp, "in"), 100)
        out = os.path.join(tmp, "out")
        proc = P.run_pack("--threads", 2, src, out)
        f.check("packed 200 image(s), skipped 0" in proc.stdout, f"summary: {proc.stdout!r}")
        meta, recs, _ = P.read_db(out)
        f.check(len(recs) == 200 and meta["records"] == "200", f"{len(recs)} records")
        f.check(meta["class_list"] == [(0, 100, "cats"), (1, 100, "dogs")], str(meta["class_list"]))
        f.check(meta["split"] == "all" and meta["height"] == "160" and meta["encoding"] == "raw",
                str(meta))
        names = sorted(r["name"] for r in recs)
        want_names = sorted(f"{c}/{n}" for c in ("cats", "dogs") for n in os.listdir(os.path.join(src, c)))
        f.check(names == want_names, "record names differ from the input files")
        pix = []
        for r in recs:
            f.check(r["label"] == (0 if r["name"].startswith("cats/") else 1), f"label of {r['name']}")
            got = P.record_pixels(r)
            pix.append(got)
            P.compare(f, got, reference(os.path.join(src, r["name"])), r["name"])
        allpix = np.stack(pix).reshape(-1, 3).astype(np.float64)
        mean = [float(x) for x in meta["mean"].split()]
        std = [float(x) for x in meta["std"].split()]
        f.check(np.allclose(mean, allpix.mean(0), atol=1e-3), f"mean {mean} vs {allpix.mean(0)}")
        f.check(np.allclose(std, allpix.std(0), atol=1e-3), f"std {std} vs {allpix.std(0)}")
        # The other two framings, on a few photos.
        small = P.make_subset(os.path.join(tmp, "small"), 8, offset=200)
        for mode in ("center-crop", "pad"):
            o = os.path.join(tmp, mode)
            P.run_pack("--resize", mode, "--size", 96, small, o)
            _, recs, _ = P.read_db(o)
            f.check(len(recs) == 16, f"{mode}: {len(recs)} records")
            for r in recs:
                P.compare(f, P.record_pixels(r), reference(os.path.join(small, r["name"]), 96, mode),
                          f"{mode} {r['name']}")
    return f.finish()


def case_encoded():
    """--encoded stores JPEGs that decode to (nearly) the raw pixels; verify decodes them."""
    with P.TempDir("enc") as tmp:
        src = P.make_subset(os.path.join(tmp, "in"), 10)
        raw, enc = os.path.join(tmp, "raw"), os.path.join(tmp, "enc")
        P.run_pack(src, raw)
        P.run_pack("--encoded", "--quality", 90, src, enc)
        meta, renc, _ = P.read_db(enc)
        _, rraw, _ = P.read_db(raw)
        f.check(meta["encoding"] == "jpeg", meta["encoding"])
        for a, b in zip(rraw, renc):
            f.check(b["encoding"] == 1 and b["payload"][:2] == b"\xff\xd8", "not a JPEG payload")
            f.check(len(b["payload"]) < len(a["payload"]) / 2, f"JPEG {len(b['payload'])} bytes")
            d = np.abs(P.record_pixels(a).astype(int) - P.record_pixels(b)).mean()
            f.check(d < 4, f"{a['name']}: mean |raw - jpeg| = {d:.2f}")
        v = P.run_pack("verify", enc, check=False)
        f.check(v.returncode == 0, f"verify of --encoded failed: {v.stderr}")
    return f.finish()


def case_bad_inputs():
    """Gray, CMYK (both conventions), alpha, palette and 16-bit files pack correctly; truncated,
    empty, text, folder (and unreadable, when not root) files are skipped and listed."""
    with P.TempDir("bad") as tmp:
        src = os.path.join(tmp, "in")
        good, broken = make_odd_inputs(src)
        out = os.path.join(tmp, "out")
        proc = P.run_pack("--threads", 2, src, out, check=False)
        f.check(proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr}")
        f.check(f"packed {len(good)} image(s), skipped {len(broken)}" in proc.stdout, proc.stdout)
        report = read_report(os.path.join(out, "skipped.txt"))
        f.check(set(report) == set(broken), f"report lists {sorted(report)}, want {sorted(broken)}")
        for name, fragment in broken.items():
            f.check(fragment in report.get(name, ""), f"{name}: reason {report.get(name)!r} lacks {fragment!r}")
        meta, recs, _ = P.read_db(out)
        f.check(sorted(r["name"] for r in recs) == sorted(good), f"packed {[r['name'] for r in recs]}")
        for r in recs:
            path = os.path.join(src, r["name"])
            got = P.record_pixels(r)
            if r["name"].endswith("cmyk_plain.jpg"):
                # Pillow reads every CMYK JPEG as Adobe-inverted; undo that for the plain one.
                inv = Image.fromarray(255 - np.asarray(Image.open(path)), "CMYK").convert("RGB")
                P.compare(f, got, P.reference_resize(np.asarray(inv), 160), r["name"])
            else:
                P.compare(f, got, reference(path), r["name"])
            if "cmyk" in r["name"]:
                left, right = got[80, 20].astype(int), got[80, 140].astype(int)
                f.check(np.abs(left - [0, 255, 255]).max() <= 3, f"{r['name']}: cyan is {left}")
                f.check(np.abs(right - [0, 127, 127]).max() <= 3, f"{r['name']}: dark cyan is {right}")
            if r["name"].endswith("alpha.png"):
                rgba = np.asarray(Image.open(path))
                P.compare(f, got, P.reference_resize(rgba[:, :, :3], 160), "alpha dropped, not composited")
            if r["name"].endswith("rgb16.png"):
                arr = gradient(220, 165, 4).astype(np.uint16) * 257 + 100
                P.compare(f, got, P.reference_resize((arr >> 8).astype(np.uint8), 160), "16-bit high byte")
        # A folder with nothing usable: a clear error and a non-zero exit, no OUT.
        only_bad = os.path.join(tmp, "only_bad", "x")
        os.makedirs(only_bad)
        open(os.path.join(only_bad, "a.jpg"), "w").write("text")
        nothing = os.path.join(tmp, "nothing")
        proc = P.run_pack(os.path.dirname(only_bad), nothing, check=False)
        f.check(proc.returncode != 0 and "nothing packed" in proc.stderr, f"nothing packed: {proc.returncode} {proc.stderr!r}")
        f.check(not os.path.exists(nothing), "OUT exists after nothing was packed")
    return f.finish()


def case_exif():
    """EXIF orientation 6 (JPEG) and 8 (PNG eXIf) are applied: the red corner moves."""
    with P.TempDir("exif") as tmp:
        cls = os.path.join(tmp, "in", "c")
        os.makedirs(cls)
        img = np.full((180, 240, 3), 40, np.uint8)
        img[:60, :80] = (230, 20, 20)  # red top-left
        for name, orientation, fmt in (("six.jpg", 6, "JPEG"), ("eight.png", 8, "PNG")):
            exif = Image.Exif()
            exif[0x0112] = orientation
            Image.fromarray(img).save(os.path.join(cls, name), fmt, exif=exif.tobytes(), quality=95)
        out = os.path.join(tmp, "out")
        P.run_pack(os.path.join(tmp, "in"), out)
        _, recs, _ = P.read_db(out)
        byname = {r["name"]: P.record_pixels(r) for r in recs}
        six, eight = byname.get("c/six.jpg"), byname.get("c/eight.png")
        if f.check(six is not None and eight is not None, f"records {list(byname)}"):
            # 6 = rotate 90 clockwise to display: top-left goes to top-right.
            f.check(six[10, 150, 0] > 180 and six[10, 10, 0] < 100, f"orientation 6: {six[10, 150]}, {six[10, 10]}")
            # 8 = rotate 90 counter-clockwise: top-left goes to bottom-left.
            f.check(eight[150, 10, 0] > 180 and eight[10, 10, 0] < 100, f"orientation 8: {eight[150, 10]}, {eight[10, 10]}")
            P.compare(f, six, reference(os.path.join(cls, "six.jpg")), "six.jpg vs Pillow exif_transpose")
            P.compare(f, eight, reference(os.path.join(cls, "eight.png")), "eight.png vs Pillow exif_transpose")
    return f.finish()


def case_determinism():
    """--threads 1, 2 and 4 write byte-identical data.mdb files (and skip reports)."""
    with P.TempDir("det") as tmp:
        src = P.make_subset(os.path.join(tmp, "in"), 30)
        make_odd_inputs(os.path.join(tmp, "odd"))
        os.rename(os.path.join(tmp, "odd", "things"), os.path.join(src, "things"))
        outs = []
        for threads in (1, 2, 4):
            o = os.path.join(tmp, f"t{threads}")
            P.run_pack("--threads", threads, "--split", "train=0.6,val=0.2,test=0.2", "--seed", 7, src, o)
            outs.append(o)
        for split in ("train", "val", "test"):
            data = [open(os.path.join(o, split, "data.mdb"), "rb").read() for o in outs]
            f.check(data[0] == data[1] == data[2], f"{split}/data.mdb differs between thread counts")
        reports = [open(os.path.join(o, "skipped.txt"), "rb").read() for o in outs]
        f.check(reports[0] == reports[1] == reports[2], "skipped.txt differs between thread counts")
    return f.finish()


def case_map_growth():
    """A 64 KiB initial map grows (doubling) instead of failing; the records are the same."""
    with P.TempDir("map") as tmp:
        src = P.make_subset(os.path.join(tmp, "in"), 20)
        tiny, normal = os.path.join(tmp, "tiny"), os.path.join(tmp, "normal")
        P.run_pack("--map-size", 65536, src, tiny)
        P.run_pack(src, normal)
        _, _, raw_tiny = P.read_db(tiny)
        _, _, raw_normal = P.read_db(normal)
        f.check(len(raw_tiny) == 40 and raw_tiny == raw_normal, "records differ after map growth")
        size = os.path.getsize(os.path.join(tiny, "data.mdb"))
        f.check(size > 40 * 76800, f"data.mdb is {size} bytes")
        env = lmdb.open(tiny, readonly=True, lock=False)
        f.check(env.info()["map_size"] >= 40 * 76800, f"map size {env.info()['map_size']}")
        env.close()
        v = P.run_pack("verify", tiny, check=False)
        f.check(v.returncode == 0, f"verify after growth: {v.stderr}")
    return f.finish()


def case_interrupt():
    """A failure mid-run and a kill -9 mid-run leave no OUT; the next run cleans up and works."""
    with P.TempDir("int") as tmp:
        src = P.make_subset(os.path.join(tmp, "in"), 60)
        out = os.path.join(tmp, "out")
        proc = P.run_pack(src, out, env={"MT_PACK_FAIL_AFTER": "10"}, check=False)
        f.check(proc.returncode != 0 and "injected failure" in proc.stderr, f"{proc.returncode} {proc.stderr!r}")
        f.check(not os.path.exists(out), "OUT exists after a failed run")
        f.check(not [n for n in os.listdir(tmp) if n.startswith("out.tmp-")], f"temporary folder left: {os.listdir(tmp)}")
        # A write error met in the background (the write-behind's fdatasync after each commit of
        # 64 records) fails the run too: 140 photos make two commits before the end.
        many = P.make_subset(os.path.join(tmp, "many"), 70)
        proc = P.run_pack(many, out, env={"MT_PACK_FAIL_SYNC": "1"}, check=False)
        f.check(proc.returncode != 0 and "writing the database to disk failed" in proc.stderr,
                f"failed background sync: {proc.returncode} {proc.stderr!r}")
        f.check(not os.path.exists(out), "OUT exists after a failed background sync")
        f.check(not [n for n in os.listdir(tmp) if n.startswith("out.tmp-")], f"temporary folder left: {os.listdir(tmp)}")
        # kill -9: nothing can clean up, but OUT must not appear.
        P.need_pack()
        child = subprocess.Popen([P.PACK, "--threads", "1", "--no-progress", src, out],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        temp = os.path.join(tmp, f"out.tmp-{child.pid}")
        deadline = time.time() + 30
        while time.time() < deadline and not os.path.exists(os.path.join(temp, "data.mdb")):
            time.sleep(0.002)
        child.send_signal(signal.SIGKILL)  # decoding 120 photos on one thread takes > 0.3 s
        child.wait()
        f.check(child.returncode == -signal.SIGKILL, f"the packer ended before the kill ({child.returncode})")
        f.check(not os.path.exists(out), "OUT exists after kill -9")
        proc = P.run_pack(src, out, check=False)
        f.check(proc.returncode == 0 and "removed" in proc.stderr, f"rerun: {proc.returncode} {proc.stderr!r}")
        f.check(not os.path.exists(temp), "the stale temporary folder was not removed")
        # An existing OUT is refused without --force and replaced with it.
        proc = P.run_pack(src, out, check=False)
        f.check(proc.returncode != 0 and "--force" in proc.stderr, f"existing OUT: {proc.stderr!r}")
        proc = P.run_pack("--force", "--fraction", "0.5", src, out, check=False)
        meta, recs, _ = P.read_db(out)
        f.check(proc.returncode == 0 and len(recs) == 60, f"--force: {proc.returncode}, {len(recs)} records")
    return f.finish()


def tree_snapshot(root):
    """{relative path: bytes} of every file under root (symlinks read through)."""
    snap = {}
    for folder, _, names in os.walk(root):
        for n in names:
            full = os.path.join(folder, n)
            snap[os.path.relpath(full, root)] = open(full, "rb").read()
    return snap


def small_input(root, per_class=2):
    for c, cls in enumerate(("cats", "dogs")):
        os.makedirs(os.path.join(root, cls))
        for i in range(per_class):
            Image.fromarray(gradient(64, 48, seed=10 * c + i)).save(os.path.join(root, cls, f"{i}.jpg"), quality=90)
    return root


def case_output_safety():
    """Nothing the packer did not write is deleted or overwritten: OUT equal to, inside or holding
    the input (also a list file's entries) and a --report on an input or a foreign file are
    refused before anything is touched; --force replaces only a folder the packer wrote."""
    with P.TempDir("safety") as tmp:
        src = small_input(os.path.join(tmp, "in"))
        before = tree_snapshot(tmp)

        def refused(args, fragment, what):
            proc = P.run_pack("--no-progress", *args, check=False)
            f.check(proc.returncode != 0 and fragment in proc.stderr, f"{what}: exit {proc.returncode} {proc.stderr!r}")
            f.check(tree_snapshot(tmp) == before, f"{what}: files changed")
            f.check(not [n for n in os.listdir(tmp) if ".tmp-" in n or ".old-" in n], f"{what}: {os.listdir(tmp)}")

        refused(["--force", src, src], "the same folder as the input", "OUT == input")
        refused(["--force", src, os.path.join(src, "..", "in", "cats")], "inside the input folder", "OUT inside the input")
        refused(["--force", src, tmp], "holds the input", "OUT a parent of the input")
        link = os.path.join(tmp, "link")
        os.symlink(src, link)
        before = tree_snapshot(tmp)
        refused(["--force", src, link], "the same folder as the input", "OUT a symlink to the input")
        refused(["--report", os.path.join(src, "cats", "0.jpg"), src, os.path.join(tmp, "o1")],
                "part of the input", "--report on an input photo")
        notes = os.path.join(tmp, "notes.txt")
        open(notes, "w").write("my notes\n")
        before = tree_snapshot(tmp)
        refused(["--report", notes, src, os.path.join(tmp, "o2")], "not a skip report", "--report on a foreign file")
        # A list file whose entries lie inside OUT: OUT would be replaced under them.
        mine = os.path.join(tmp, "mine")
        os.makedirs(mine)
        Image.fromarray(gradient(32, 32)).save(os.path.join(mine, "keep.jpg"))
        lst = os.path.join(tmp, "list.txt")
        open(lst, "w").write("mine/keep.jpg cats\nin/dogs/0.jpg dogs\n")
        before = tree_snapshot(tmp)
        refused(["--force", lst, mine], "lies inside the output", "a listed file inside OUT")
        # --force on a folder the packer did not write: refused, untouched.
        refused(["--force", src, mine], "was not written by mobiletune-pack", "--force on a foreign folder")
        # ... and on its own output, also with a stray file added later: only the pure one goes.
        out = os.path.join(tmp, "out")
        P.run_pack("--no-progress", src, out)
        P.run_pack("--no-progress", "--force", "--fraction", "0.5", src, out)
        meta, recs, _ = P.read_db(out)
        f.check(len(recs) == 2, f"--force on its own output: {len(recs)} records")
        open(os.path.join(out, "precious.txt"), "w").write("x")
        before = tree_snapshot(tmp)
        refused(["--force", src, out], "precious.txt was not written", "--force on an output with a stray file")
        os.remove(os.path.join(out, "precious.txt"))
        # A folder named like a killed run's temporary folder, holding a photo: left alone.
        lookalike = os.path.join(tmp, "o5.tmp-999999999")
        os.makedirs(lookalike)
        open(os.path.join(lookalike, "photo.jpg"), "w").write("x")
        proc = P.run_pack("--no-progress", src, os.path.join(tmp, "o5"), check=False)
        f.check(proc.returncode == 0 and "left " + lookalike + " alone" in proc.stderr and
                os.path.exists(os.path.join(lookalike, "photo.jpg")), f"look-alike temporary folder: {proc.stderr!r}")
        # An existing report is rewritten; a split output is replaced as a whole.
        rep = os.path.join(tmp, "rep.txt")
        P.run_pack("--no-progress", "--report", rep, src, os.path.join(tmp, "o3"))
        proc = P.run_pack("--no-progress", "--force", "--report", rep, src, os.path.join(tmp, "o3"), check=False)
        f.check(proc.returncode == 0, f"rewriting its own report: {proc.stderr!r}")
        split = os.path.join(tmp, "split")
        P.run_pack("--no-progress", "--split", "a=0.5,b=0.5", src, split)
        proc = P.run_pack("--no-progress", "--force", "--split", "a=0.5,b=0.5", src, split, check=False)
        f.check(proc.returncode == 0, f"--force on its split output: {proc.stderr!r}")
    return f.finish()


def case_corrupt_db():
    """A corrupted LMDB structure (the second meta page's page size; a node offset of the first
    data page) makes info and verify fail naming data.mdb, never die on a signal."""
    with P.TempDir("lmdb") as tmp:
        src = small_input(os.path.join(tmp, "in"), 3)
        good = os.path.join(tmp, "good")
        P.run_pack("--no-progress", src, good)
        for name, offset, data in (("meta", 4096 + 40, b"\xff" * 8), ("node", 2 * 4096 + 16, None)):
            db = os.path.join(tmp, name)
            os.makedirs(db)
            raw = bytearray(open(os.path.join(good, "data.mdb"), "rb").read())
            if data:
                raw[offset:offset + len(data)] = data
            else:
                raw[offset] ^= 0xFF
            open(os.path.join(db, "data.mdb"), "wb").write(bytes(raw))
            for command in ("info", "verify"):
                proc = P.run_pack(command, db, check=False)
                f.check(proc.returncode == 1 and "data.mdb: corrupt LMDB" in proc.stderr,
                        f"{command} of {name}: exit {proc.returncode} {proc.stderr!r}")
        ok = P.run_pack("verify", good, check=False)
        f.check(ok.returncode == 0, f"verify of the good one: {ok.stderr!r}")
        # An overflow page's header (a record's first page) naming another page: verify reads
        # every header and says so; info reads only the tree and the metadata, and passes.
        raw = bytearray(open(os.path.join(good, "data.mdb"), "rb").read())
        page = next(p for p in range(2, len(raw) // 4096) if struct.unpack_from("<H", raw, p * 4096 + 10)[0] & 4)
        raw[page * 4096] ^= 0x01
        db = os.path.join(tmp, "overflow")
        os.makedirs(db)
        open(os.path.join(db, "data.mdb"), "wb").write(bytes(raw))
        proc = P.run_pack("verify", db, check=False)
        f.check(proc.returncode == 1 and f"corrupt LMDB overflow page (page {page}" in proc.stderr,
                f"overflow header: {proc.returncode} {proc.stderr!r}")
        f.check(P.run_pack("info", db, check=False).returncode == 0, "info of an overflow-header flip")
    return f.finish()


def run_pack_bounded(*args, seconds=30):
    """run_pack with a time limit: a hang is a failure here, not a stuck test."""
    P.need_pack()
    try:
        return subprocess.run([P.PACK, *map(str, args)], capture_output=True, text=True, timeout=seconds)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(args, "timeout", "", "timed out (hang)")


def jpeg_claiming(path, width, height):
    """A real small JPEG whose SOF0 header claims width x height."""
    buffer = io.BytesIO()
    Image.fromarray(gradient(32, 24)).save(buffer, "JPEG", quality=90)
    data = bytearray(buffer.getvalue())
    at = data.find(b"\xff\xc0")
    data[at + 5:at + 9] = struct.pack(">HH", height, width)
    open(path, "wb").write(bytes(data))


def case_input_kinds():
    """A FIFO as the list file is refused at once (it used to hang); a FIFO among the photos is a
    listed skip; a JPEG claiming 20000x20000 is skipped from its header, quickly and by name; the
    limit is --max-pixels."""
    with P.TempDir("kinds") as tmp:
        src = small_input(os.path.join(tmp, "in"))
        fifo = os.path.join(tmp, "list.fifo")
        os.mkfifo(fifo)
        proc = run_pack_bounded("--no-progress", fifo, os.path.join(tmp, "o1"))
        f.check(proc.returncode == 1 and "FIFO" in proc.stderr and fifo in proc.stderr,
                f"FIFO list file: {proc.returncode} {proc.stderr!r}")
        os.mkfifo(os.path.join(src, "cats", "pipe.jpg"))
        jpeg_claiming(os.path.join(src, "dogs", "huge.jpg"), 20000, 20000)
        start = time.monotonic()
        proc = run_pack_bounded("--no-progress", "--threads", 1, src, os.path.join(tmp, "o2"))
        seconds = time.monotonic() - start
        f.check(proc.returncode == 0 and "packed 4 image(s), skipped 2" in proc.stdout,
                f"{proc.returncode} {proc.stdout!r} {proc.stderr!r}")
        report = read_report(os.path.join(tmp, "o2", "skipped.txt"))
        f.check("not a regular file" in report.get("cats/pipe.jpg", ""), f"pipe: {report}")
        f.check("20000x20000 is too large" in report.get("dogs/huge.jpg", "") and
                "400000000 pixels" in report.get("dogs/huge.jpg", ""), f"huge: {report}")
        print(f"4 photos, a FIFO and a 20000x20000 header packed in {seconds:.2f} s")
        proc = run_pack_bounded("--no-progress", "--max-pixels", 1000, src, os.path.join(tmp, "o3"))
        f.check(proc.returncode == 1 and "nothing packed" in proc.stderr, f"--max-pixels 1000: {proc.stderr!r}")
        proc = run_pack_bounded("--no-progress", "--max-pixels", 0, src, os.path.join(tmp, "o4"))
        f.check(proc.returncode == 2 and "--max-pixels" in proc.stderr, f"--max-pixels 0: {proc.stderr!r}")
    return f.finish()


def case_full_disk():
    """A disk that fills up mid-run says "no space left on device" naming the path (LMDB reports
    the cut-short write as EIO), and leaves no OUT and no temporary folder. Needs a small tmpfs:
    skipped where mounting is not allowed."""
    with P.TempDir("full") as tmp:
        src = small_input(os.path.join(tmp, "in"), 3)
        disk = os.path.join(tmp, "disk")
        os.makedirs(disk)
        if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", disk],
                                               capture_output=True).returncode != 0:
            P.skip("cannot mount a small tmpfs here (needs root)")
        try:
            out = os.path.join(disk, "out")
            proc = run_pack_bounded("--no-progress", src, out)
            f.check(proc.returncode == 1 and "no space left on device" in proc.stderr and
                    os.path.join(disk, "out.tmp-") in proc.stderr, f"{proc.returncode} {proc.stderr!r}")
            f.check(os.listdir(disk) == [], f"left on the full disk: {os.listdir(disk)}")
        finally:
            subprocess.run(["umount", disk])
    return f.finish()


def expected_split_counts(n, fraction, cumulative):
    """The documented rule: keep round(n*fraction); split s ends at round(kept*F_s)."""
    kept = int(np.floor(n * fraction + 0.5 + 1e-9))
    bounds = [0] + [int(np.floor(kept * c + 0.5 + 1e-9)) for c in cumulative[:-1]] + [kept]
    return [bounds[i + 1] - bounds[i] for i in range(len(cumulative))]


def case_splits():
    """Split and fraction counts follow the documented rounding per class; splits are disjoint,
    cover the kept files, and depend on --seed only through which files go where."""
    root = P.shared_photos()
    with P.TempDir("split") as tmp:
        cats = sorted(os.listdir(os.path.join(root, "cats")))[:37]
        dogs = sorted(os.listdir(os.path.join(root, "dogs")))[:23]
        lst = os.path.join(tmp, "list.txt")
        with open(lst, "w") as out:
            out.write("# path label\n\n")
            for n in cats:
                out.write(f"{os.path.join(root, 'cats', n)} cat\n")
            for n in dogs:
                out.write(f"{os.path.join(root, 'dogs', n)}\tdog  \n")
        spec, cum = "train=0.7,val=0.2,test=0.1", [0.7, 0.9, 1.0]
        runs = {}
        for seed in (1, 2):
            for fraction in (1.0, 0.5):
                o = os.path.join(tmp, f"s{seed}f{fraction}")
                P.run_pack("--split", spec, "--seed", seed, "--fraction", fraction, lst, o)
                names = {}
                for i, split in enumerate(("train", "val", "test")):
                    meta, recs, _ = P.read_db(os.path.join(o, split))
                    want = [expected_split_counts(37, fraction, cum)[i], expected_split_counts(23, fraction, cum)[i]]
                    got = [c[1] for c in meta["class_list"]]
                    f.check(got == want, f"seed {seed} fraction {fraction} {split}: {got}, want {want}")
                    f.check([c[2] for c in meta["class_list"]] == ["cat", "dog"], str(meta["class_list"]))
                    names[split] = {r["name"] for r in recs}
                    f.check(all(r["label"] == (0 if "/cats/" in r["name"] else 1) for r in recs), "labels")
                all_names = names["train"] | names["val"] | names["test"]
                f.check(sum(len(v) for v in names.values()) == len(all_names), "splits overlap")
                if fraction == 1.0:
                    f.check(len(all_names) == 60, f"{len(all_names)} files in the splits, want 60")
                runs[(seed, fraction)] = names
        f.check(runs[(1, 1.0)]["test"] != runs[(2, 1.0)]["test"], "--seed does not change the split")
        o = os.path.join(tmp, "again")
        P.run_pack("--split", spec, "--seed", 1, lst, o)
        _, recs, _ = P.read_db(os.path.join(o, "test"))
        f.check({r["name"] for r in recs} == runs[(1, 1.0)]["test"], "same seed, different split")
        # Integer labels and relative paths in a list file.
        os.symlink(os.path.join(root, "cats"), os.path.join(tmp, "c"))
        with open(os.path.join(tmp, "ids.txt"), "w") as out:
            for n in cats[:5]:
                out.write(f"c/{n} 2\n")
        o = os.path.join(tmp, "ids")
        P.run_pack(os.path.join(tmp, "ids.txt"), o)
        meta, recs, _ = P.read_db(o)
        f.check(meta["class_list"] == [(0, 0, "0"), (1, 0, "1"), (2, 5, "2")], str(meta["class_list"]))
        f.check(len(recs) == 5 and all(r["label"] == 2 for r in recs), "integer labels")
        bad = P.run_pack("--split", "train=0.7,val=0.2", lst, os.path.join(tmp, "x"), check=False)
        f.check(bad.returncode == 2 and "add up to 1" in bad.stderr, f"bad split: {bad.stderr!r}")
    return f.finish()


def presplit_input(root, counts, classes=("cats", "dogs"), extra=None):
    """A folder of split folders, each of class folders of small generated PNGs:
    counts = {"train": 6, "validation": 10, ...} images per class; extra = {split: [class...]}
    adds class folders to one split."""
    for split, n in counts.items():
        for c, cls in enumerate(list(classes) + list((extra or {}).get(split, []))):
            os.makedirs(os.path.join(root, split, cls))
            for i in range(n):
                Image.fromarray(gradient(24 + c, 20, seed=100 * c + i)).save(
                    os.path.join(root, split, cls, f"{cls}.{i}.png"))
    return root


def split_names(out, split):
    meta, recs, _ = P.read_db(os.path.join(out, split))
    return meta, {r["name"] for r in recs}, recs


def case_split_folders():
    """A folder whose subfolders are splits packs into OUT/<split> in one run, one class list for
    all; --test-from-val takes a seeded stratified fraction of validation/ as the test split;
    different classes across split folders, --split on such an input and the rest are refused
    naming the folders; a folder of classes named like splits still packs as classes."""
    with P.TempDir("presplit") as tmp:
        # train/, val/ and test/ folders: each packed as it is
        src = presplit_input(os.path.join(tmp, "a"), {"train": 5, "val": 3, "test": 2})
        with open(os.path.join(src, "README.txt"), "w") as out:
            out.write("not an image")
        out = os.path.join(tmp, "a-out")
        proc = P.run_pack("--size", 32, src, out)
        f.check("is split into folders" in proc.stdout, f"no word on the split folders: {proc.stdout!r}")
        f.check(sorted(os.listdir(out)) == ["skipped.txt", "test", "train", "val"], str(os.listdir(out)))
        for split, n in (("train", 5), ("val", 3), ("test", 2)):
            meta, names, recs = split_names(out, split)
            f.check(meta["class_list"] == [(0, n, "cats"), (1, n, "dogs")], f"{split}: {meta['class_list']}")
            f.check(meta["split"] == split, f"{split}: meta split {meta['split']!r}")
            f.check(all(r["name"].startswith(f"{split}/") for r in recs), f"{split}: record names")
            f.check(all(r["label"] == (0 if "/cats/" in r["name"] else 1) for r in recs), f"{split}: labels")
            want = {f"{split}/{c}/{c}.{i}.png" for c in ("cats", "dogs") for i in range(n)}
            f.check(names == want, f"{split}: {sorted(names)}")
        f.check("README.txt\tnot inside a class subfolder" in open(os.path.join(out, "skipped.txt")).read(),
                "a file beside the split folders is not listed as skipped")

        # the tutorial's archive: train/ and validation/; a fifth of validation/ becomes test
        src = presplit_input(os.path.join(tmp, "b"), {"train": 4, "validation": 10})
        runs = {}
        for seed in (1, 2, 1):
            out = os.path.join(tmp, f"b-out-{seed}-{len(runs)}")
            P.run_pack("--size", 32, "--test-from-val", 0.2, "--seed", seed, src, out)
            meta, test, _ = split_names(out, "test")
            f.check(meta["class_list"] == [(0, 2, "cats"), (1, 2, "dogs")], f"test: {meta['class_list']}")
            meta, val, _ = split_names(out, "val")
            f.check(meta["class_list"] == [(0, 8, "cats"), (1, 8, "dogs")], f"val: {meta['class_list']}")
            f.check(not test & val, "test and val overlap")
            f.check(test | val == {f"validation/{c}/{c}.{i}.png" for c in ("cats", "dogs") for i in range(10)},
                    "test + val is not the validation folder")
            _, train, _ = split_names(out, "train")
            f.check(len(train) == 8, f"train: {len(train)} records")
            runs.setdefault(seed, []).append(test)
        f.check(runs[1][0] == runs[1][1], "the same seed drew another test split")
        f.check(runs[1][0] != runs[2][0], "--seed does not change the test split")
        # --fraction applies per split folder and class
        out = os.path.join(tmp, "b-half")
        P.run_pack("--size", 32, "--fraction", 0.5, src, out)
        counts = {s: [c[1] for c in split_names(out, s)[0]["class_list"]] for s in ("train", "val")}
        f.check(counts == {"train": [2, 2], "val": [5, 5]}, f"--fraction 0.5: {counts}")

        # other classes in one split folder: refused, naming both folders and their classes
        src = presplit_input(os.path.join(tmp, "c"), {"train": 2, "validation": 2},
                             extra={"validation": ["zebras"]})
        bad = P.run_pack("--size", 32, src, os.path.join(tmp, "c-out"), check=False)
        f.check(bad.returncode != 0 and "train/ holds the classes cats, dogs but" in bad.stderr and
                "validation/ holds cats, dogs, zebras" in bad.stderr, f"other classes: {bad.stderr!r}")
        f.check(not os.path.exists(os.path.join(tmp, "c-out")), "output written for mismatched classes")
        # --split on a pre-split input, --test-from-val beside a test/ folder or without split
        # folders: refused with the fix
        src = os.path.join(tmp, "a")
        bad = P.run_pack("--split", "train=0.8,val=0.2", src, os.path.join(tmp, "x"), check=False)
        f.check(bad.returncode != 0 and "leave out --split" in bad.stderr, f"--split: {bad.stderr!r}")
        bad = P.run_pack("--test-from-val", 0.2, src, os.path.join(tmp, "x"), check=False)
        f.check(bad.returncode != 0 and "has a test/ folder already" in bad.stderr, f"test/: {bad.stderr!r}")
        plain = small_input(os.path.join(tmp, "plain"))
        bad = P.run_pack("--test-from-val", 0.2, plain, os.path.join(tmp, "x"), check=False)
        f.check(bad.returncode != 0 and "use --split instead" in bad.stderr, f"plain: {bad.stderr!r}")
        bad = P.run_pack("--test-from-val", 1, src, os.path.join(tmp, "x"), check=False)
        f.check(bad.returncode == 2 and "(0, 1)" in bad.stderr, f"--test-from-val 1: {bad.stderr!r}")
        both = presplit_input(os.path.join(tmp, "d"), {"train": 1, "val": 1, "validation": 1})
        bad = P.run_pack(both, os.path.join(tmp, "x"), check=False)
        f.check(bad.returncode != 0 and "both val/ and validation/" in bad.stderr, f"both: {bad.stderr!r}")
        f.check(not os.path.exists(os.path.join(tmp, "x")), "output written for a refused input")

        # classes that happen to be named train and test (image files inside): still classes
        src = os.path.join(tmp, "e")
        for c, cls in enumerate(("test", "train")):
            os.makedirs(os.path.join(src, cls))
            for i in range(2):
                Image.fromarray(gradient(24, 20, seed=i + 10 * c)).save(os.path.join(src, cls, f"{i}.png"))
        out = os.path.join(tmp, "e-out")
        proc = P.run_pack("--size", 32, src, out)
        meta, _, _ = P.read_db(out)
        f.check("split into folders" not in proc.stdout, "classes named train/test taken for splits")
        f.check(meta["class_list"] == [(0, 2, "test"), (1, 2, "train")], str(meta["class_list"]))
    return f.finish()


def case_run_default_archive():
    """scripts/run-default.sh on a user's machine (no ../shared photos): the downloaded archive's
    own train/ and validation/ folders, a seeded fifth of validation/ as the test split. The
    archive here is a small generated one with the layout of cats_and_dogs_filtered.zip, fetched
    from a file:// URL."""
    P.need_pack()
    import zipfile
    script = os.path.join(os.environ["MT_SOURCE_DIR"], "scripts", "run-default.sh")
    with P.TempDir("archive") as tmp:
        src = presplit_input(os.path.join(tmp, "cats_and_dogs_filtered"), {"train": 6, "validation": 5})
        with open(os.path.join(src, "vectorize.py"), "w") as out:
            out.write("# the real archive has this file beside the split folders\n")
        archive = os.path.join(tmp, "cats_and_dogs_filtered.zip")
        with zipfile.ZipFile(archive, "w") as z:
            for folder, _, names in os.walk(src):
                for n in names:
                    full = os.path.join(folder, n)
                    z.write(full, os.path.relpath(full, tmp))
        env = dict(os.environ, MT_PACK=P.PACK, MT_SKIP_TRAIN="1", MT_FETCH_URL="file://" + archive,
                   MT_DATA_CACHE=os.path.join(tmp, "cache"), MT_SHARED_DIR=os.path.join(tmp, "no-shared"),
                   MT_DATA_OUT=os.path.join(tmp, "out"))
        proc = subprocess.run(["bash", script], capture_output=True, text=True, env=env, timeout=300)
        f.check(proc.returncode == 0, f"{proc.returncode} {proc.stderr!r}")
        f.check("train 12, val 8, test 2" in proc.stdout, f"summary: {proc.stdout!r}")
        for split, n in (("train", 6), ("val", 4), ("test", 1)):
            meta, _, recs = split_names(os.path.join(tmp, "out"), split)
            f.check(meta["class_list"] == [(0, n, "cats"), (1, n, "dogs")], f"{split}: {meta['class_list']}")
            source = "train/" if split == "train" else "validation/"
            f.check(all(r["name"].startswith(source) for r in recs), f"{split}: not from {source}")
            f.check("--seed 1" in meta["options"], f"{split}: options {meta['options']!r}")
    return f.finish()


def flip_byte_in_file(path, needle_offset):
    data = bytearray(open(path, "rb").read())
    data[needle_offset] ^= 0x10
    open(path, "wb").write(bytes(data))


def case_info_verify():
    """info prints the metadata; verify passes a good database and names the key of a
    bit-flipped record, a label out of range and a missing record."""
    with P.TempDir("verify") as tmp:
        src = P.make_subset(os.path.join(tmp, "in"), 6)
        out = os.path.join(tmp, "out")
        P.run_pack("--split", "train=0.5,test=0.5", src, out)
        info = P.run_pack("info", os.path.join(out, "train"))
        for text in ("split       train", "records     6", "160x160x3", "cats", "dogs", "mean (RGB)", "--split train=0.5,test=0.5"):
            f.check(text in info.stdout, f"info lacks {text!r}: {info.stdout}")
        both = P.run_pack("info", out)
        f.check("split       test" in both.stdout and "split       train" in both.stdout, "info of a split folder")
        ok = P.run_pack("verify", out, check=False)
        f.check(ok.returncode == 0 and ok.stdout.count("OK") == 2, f"verify good: {ok.stdout} {ok.stderr}")
        for helpful in (["--help"], ["info", "--help"], ["verify", "--help"]):
            h = P.run_pack(*helpful, check=False)
            f.check(h.returncode == 0 and "usage" in h.stdout, f"{helpful}: {h.returncode}")
        # A flipped bit in a record's pixels, in the file itself.
        db = os.path.join(out, "train")
        env = lmdb.open(db, readonly=True, lock=False)
        with env.begin() as txn:
            record3 = bytes(txn.get(b"0000000003"))
        env.close()
        at = open(os.path.join(db, "data.mdb"), "rb").read().find(record3)
        f.check(at > 0, "record 3 not found in data.mdb")
        flip_byte_in_file(os.path.join(db, "data.mdb"), at + 32 + 5000)
        bad = P.run_pack("verify", db, check=False)
        f.check(bad.returncode != 0 and "0000000003" in bad.stderr, f"bit flip: {bad.returncode} {bad.stderr!r}")
        # A label out of range behind a correct CRC, and a deleted record.
        db = os.path.join(out, "test")
        env = lmdb.open(db, map_size=1 << 26)
        with env.begin(write=True) as txn:
            v = bytearray(txn.get(b"0000000001"))
            v[12:16] = struct.pack("<I", 7)
            v[20:24] = struct.pack("<I", zlib.crc32(bytes(v[:20] + v[24:])))
            txn.put(b"0000000001", bytes(v))
        env.close()
        bad = P.run_pack("verify", db, check=False)
        f.check(bad.returncode != 0 and "0000000001" in bad.stderr and "label 7" in bad.stderr, f"label: {bad.stderr!r}")
        env = lmdb.open(db, map_size=1 << 26)
        with env.begin(write=True) as txn:
            txn.put(b"0000000001", txn.get(b"0000000000"))
            txn.delete(b"0000000005")
        env.close()
        bad = P.run_pack("verify", db, check=False)
        f.check(bad.returncode != 0 and "5 record keys, the metadata says 6" in bad.stderr, f"missing: {bad.stderr!r}")
        missing = P.run_pack("verify", os.path.join(tmp, "nope"), check=False)
        f.check(missing.returncode != 0 and "nope" in missing.stderr, f"missing DB: {missing.stderr!r}")
    return f.finish()


def case_fetch_offline():
    """data-prep/fetch_cats_dogs.sh fails clearly (non-zero) when the archive cannot be fetched."""
    script = os.path.join(os.environ["MT_SOURCE_DIR"], "data-prep", "fetch_cats_dogs.sh")
    with P.TempDir("fetch") as tmp:
        env = dict(os.environ, MT_FETCH_URL="http://127.0.0.1:9/cats_and_dogs_filtered.zip",
                   MT_DATA_CACHE=tmp)
        proc = subprocess.run(["bash", script], capture_output=True, text=True, env=env, timeout=120)
        f.check(proc.returncode != 0, f"exit {proc.returncode}")
        f.check("could not download" in proc.stderr and "127.0.0.1:9" in proc.stderr, f"message: {proc.stderr!r}")
        f.check(not os.path.exists(os.path.join(tmp, "cats_and_dogs_filtered")), "a partial dataset was left")
    return f.finish()


def case_bounded_memory():
    """A folder of 10,000 files (each shared photo linked five times: 770 MB of raw records)
    packs with a peak far below that: the ring of slots and one write batch are all that is held,
    never the dataset, and the listing holds only names."""
    import resource
    root = P.shared_photos()
    P.need_pack()
    if b"__asan_init" in open(P.PACK, "rb").read():
        P.skip("the packer is built with AddressSanitizer, whose shadow memory and quarantine make "
               "its peak RSS meaningless (this check runs in the normal build)")
    with P.TempDir("mem") as tmp:
        many = os.path.join(tmp, "many")
        for cls in ("cats", "dogs"):
            os.makedirs(os.path.join(many, cls))
            for name in sorted(os.listdir(os.path.join(root, cls))):
                for copy in range(5):
                    os.symlink(os.path.join(root, cls, name), os.path.join(many, cls, f"{copy}_{name}"))
        files = sum(len(os.listdir(os.path.join(many, c))) for c in ("cats", "dogs"))
        f.check(files >= 10000, f"only {files} files")
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        proc = P.run_pack("--threads", 2, "--no-progress", many, os.path.join(tmp, "out"))
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        f.check(f"packed {files} image(s)" in proc.stdout, proc.stdout)
        f.check(before == 0 or before / 1024 < 100, f"an earlier child peaked at {before / 1024:.0f} MB")
        f.check(peak_mb < 100, f"peak RSS {peak_mb:.0f} MB for {files} files, 770 MB of records "
                               f"(limit 100 MB)")
        print(f"{files} files: peak RSS {peak_mb:.0f} MB")
    return f.finish()


def case_tensorflow():
    """`--decode tf` packs the pixels of the tutorial's own pipeline (Keras'
    image_dataset_from_directory: TensorFlow decode + bilinear resize, float32) to within the
    uint8 rounding, 0.5; the default DCT-scaled decode is close to it (mean difference printed)."""
    try:
        import tensorflow as tf
        import keras
    except Exception as e:  # noqa: BLE001 - any import failure means "not installed"
        P.skip(f"TensorFlow/Keras is not importable ({type(e).__name__}: {e}); "
               "scripts/install-deps.sh installs it into .venv")
    with P.TempDir("tf") as tmp:
        src = P.make_subset(os.path.join(tmp, "in"), 20, offset=300)
        ds = keras.utils.image_dataset_from_directory(src, image_size=(160, 160), shuffle=False,
                                                       batch_size=8, interpolation="bilinear")
        want = {}
        images = np.concatenate([x.numpy() for x, _ in ds])
        for path, img in zip(ds.file_paths, images):
            want[os.path.relpath(path, src)] = img
        f.check(len(want) == 40, f"Keras read {len(want)} images")
        diffs = {}
        for mode in ("tf", "scaled"):
            out = os.path.join(tmp, mode)
            P.run_pack("--decode", mode, src, out)
            _, recs, _ = P.read_db(out)
            f.check(len(recs) == 40, f"{mode}: {len(recs)} records")
            d = [np.abs(P.record_pixels(r).astype(np.float64) - want[r["name"]]) for r in recs]
            diffs[mode] = (max(x.max() for x in d), float(np.mean([x.mean() for x in d])))
        print(f"|packed - Keras pipeline|: --decode tf max {diffs['tf'][0]:.3f} mean {diffs['tf'][1]:.3f}; "
              f"--decode scaled max {diffs['scaled'][0]:.3f} mean {diffs['scaled'][1]:.3f}")
        f.check(diffs["tf"][0] <= 0.5 + 1e-3, f"--decode tf differs from Keras by up to {diffs['tf'][0]:.3f}")
        f.check(diffs["scaled"][1] < 4, f"--decode scaled differs from Keras by {diffs['scaled'][1]:.3f} on average")
    return f.finish()


def case_run_default():
    """scripts/run-default.sh packs the shared photos into train/val/test (800/100/100 per class)
    with a prebuilt packer, and fails clearly without any default data."""
    P.need_pack()
    script = os.path.join(os.environ["MT_SOURCE_DIR"], "scripts", "run-default.sh")
    with P.TempDir("default") as tmp:
        env = dict(os.environ, MT_PACK=P.PACK, MT_SKIP_TRAIN="1", MT_FETCH_URL="http://127.0.0.1:9/cats_and_dogs_filtered.zip",
                   MT_DATA_CACHE=os.path.join(tmp, "cache"), MT_SHARED_DIR=os.path.join(tmp, "no-shared"),
                   MT_DATA_OUT=os.path.join(tmp, "out"))
        proc = subprocess.run(["bash", script], capture_output=True, text=True, env=env, timeout=120)
        f.check(proc.returncode == 1 and "no default data" in proc.stderr, f"{proc.returncode} {proc.stderr!r}")
        f.check(not os.path.exists(os.path.join(tmp, "out")), "output written without data")
        P.shared_photos()
        env["MT_SHARED_DIR"] = P.SHARED
        proc = subprocess.run(["bash", script], capture_output=True, text=True, env=env, timeout=300)
        f.check(proc.returncode == 0, f"{proc.returncode} {proc.stderr!r}")
        f.check("train 1600, val 200, test 200" in proc.stdout, f"summary: {proc.stdout!r}")
        f.check(proc.stdout.count("    0    cats                 ") == 3, "info of the three splits")
        for split, n in (("train", 800), ("val", 100), ("test", 100)):
            meta, _, _ = P.read_db(os.path.join(tmp, "out", split))
            f.check(meta["class_list"] == [(0, n, "cats"), (1, n, "dogs")], f"{split}: {meta['class_list']}")
    return f.finish()


if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 else ""
    case = globals().get("case_" + name)
    if case is None:
        print(f"usage: pack_tests.py CASE ({', '.join(n[5:] for n in globals() if n.startswith('case_'))})")
        sys.exit(2)
    sys.exit(case())
