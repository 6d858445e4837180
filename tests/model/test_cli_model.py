"""`mobiletune summary` and `mobiletune features` as a user runs them: Keras' parameter totals
per mode, errors with exit code 2, and features of shared photos as text and as binary agreeing
with each other (and with --db when a packed database is at hand)."""
import os
import subprocess
import sys
import tempfile

import numpy as np

build = os.environ.get("MT_BUILD_DIR", ".")
tool = os.path.join(build, "mobiletune")
shared = os.environ.get("MT_SHARED_DIR", "../shared")
failures = 0


def check(cond, what):
    global failures
    if not cond:
        failures += 1
        print("CHECK failed:", what, file=sys.stderr)


def run(*args):
    return subprocess.run([tool, *args], capture_output=True, text=True)


# summary: Keras' numbers (model.summary() of the tutorial's model) in every mode
for args, trainable in [((), "2,225,153"), (("--mode", "frozen"), "1,281"),
                        (("--mode", "finetune", "--fine-tune-at", "100"), "1,862,721")]:
    r = run("summary", *args)
    check(r.returncode == 0, f"summary {args}: {r.stderr}")
    check("Total params: 2,259,265 " in r.stdout, f"summary {args}: total")
    check(f"Trainable params: {trainable} " in r.stdout, f"summary {args}: trainable {trainable}")
    check("2,257,984 params" in r.stdout, f"summary {args}: backbone")
    rows = [l for l in r.stdout.splitlines() if l[:4].strip().isdigit()]
    check(len(rows) == 157, f"summary {args}: {len(rows)} layer rows")
    check(rows and " block_11_expand_relu (ReLU)" in rows[100], "index 100")
r = run("summary", "--alpha", "0.35", "--size", "224", "--tensors")
check("410,208 params" in r.stdout and "block_1_depthwise/depthwise_kernel" in r.stdout,
      "alpha 0.35 summary with tensors")
for bad in (["summary", "--alpha", "0.6"], ["summary", "--size", "100"], ["summary", "--mode", "x"],
            ["summary", "--bogus"], ["summary", "--size"], ["features"], ["nope"]):
    r = run(*bad)
    check(r.returncode == 2 and r.stderr.startswith("mobiletune"), f"{bad}: {r.returncode} {r.stderr}")
r = run("--help")
check(r.returncode == 0 and "summary" in r.stdout and "features" in r.stdout, "--help")
r = run("features", "--help")
check(r.returncode == 0 and "--weights FILE" in r.stdout and "(default 32)" in r.stdout, "features --help")

weights = os.path.join(shared, "weights", "mobilenet_v2_1.0_224_imagenet_no_top.h5")
photos = os.path.join(shared, "data", "cats_vs_dogs", "train")
if not os.path.exists(weights) or not os.path.isdir(photos):
    print("features part skipped: no shared weights or photos")
else:
    images = [os.path.join(photos, "cats", "cat.51.jpg"), os.path.join(photos, "dogs", "dog.0.jpg"),
              os.path.join(photos, "cats", "cat.122.jpg")]
    with tempfile.TemporaryDirectory() as tmp:
        text = os.path.join(tmp, "f.txt")
        binary = os.path.join(tmp, "f.bin")
        b = None
        r = run("features", "--weights", weights, "--batch", "2", "--output", text, *images)
        check(r.returncode == 0, f"features text: {r.stderr}")
        r = run("features", "--weights", weights, "--binary", "--output", binary, *images)
        check(r.returncode == 0, f"features binary: {r.stderr}")
        if r.returncode == 0:
            lines = [l.split() for l in open(text)]
            check([l[0] for l in lines] == images, "names in input order")
            t = np.array([[float(v) for v in l[1:]] for l in lines], dtype=np.float32)
            b = np.fromfile(binary, dtype=np.float32).reshape(-1, 1280)
            check(t.shape == (3, 1280) and b.shape == (3, 1280), f"shapes {t.shape} {b.shape}")
            # batches of 2 vs 32: the same features; text keeps 7 significant digits
            check(np.allclose(t, b, rtol=1e-5, atol=1e-5), "text == binary")
            check((b >= 0).all() and (b <= 6).all() and b.max() > 1, "ReLU6 range")
        # a packed database of the same photos gives the same features (same decode + resize)
        pack = os.environ.get("MT_PACK")
        if pack and os.path.exists(pack):
            listing = os.path.join(tmp, "list.txt")
            with open(listing, "w") as f:
                for i, path in enumerate(images):
                    f.write(f"{path} {i % 2}\n")
            db = os.path.join(tmp, "db")
            p = subprocess.run([pack, "--size", "160", "--no-progress", listing, db],
                               capture_output=True, text=True)
            check(p.returncode == 0, f"pack: {p.stderr}")
            dbout = os.path.join(tmp, "db.bin")
            r = run("features", "--weights", weights, "--db", db, "--binary", "--output", dbout)
            check(r.returncode == 0, f"features --db: {r.stderr}")
            if r.returncode == 0 and p.returncode == 0 and b is not None:
                d = np.fromfile(dbout, dtype=np.float32).reshape(-1, 1280)
                # record order is the packer's; match rows by content
                check(d.shape == b.shape, f"db shape {d.shape}")
                for row in b:
                    check(np.abs(d - row).max(axis=1).min() < 1e-4, "a file's features in the db")
        else:
            print("--db part skipped: MT_PACK not set")
        r = run("features", "--weights", weights, os.path.join(tmp, "missing.jpg"))
        check(r.returncode == 1 and "missing.jpg" in r.stderr, f"missing image: {r.stderr}")
        r = run("features", "--weights", weights, "--alpha", "0.35", images[0])
        check(r.returncode == 1 and "alpha 1" in r.stderr, f"wrong alpha: {r.stderr}")

print("FAILED" if failures else "PASSED", failures)
sys.exit(1 if failures else 0)
