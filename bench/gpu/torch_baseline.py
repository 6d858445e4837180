#!/usr/bin/env python3
"""PyTorch on the same GPU as mobiletune's cuda backend, and the ratios between the two.

torchvision's mobilenet_v2 (random weights, channels_last) at 160x160, one forward + backward per
step and no optimizer update, as bench_train_step measures; the three training modes mapped onto
torchvision's blocks as bench/model/compare_frameworks.py does (features[k+1] is Keras' block_k;
fine-tune from Keras layer 100 = block_11's depthwise on; frozen and fine-tune run the backbone's
BN with moving statistics). Precisions: fp32 (TF32 off), tf32, bf16 (autocast), fp16 (autocast +
GradScaler); each eager, and under torch.compile for the first cases of a run (skipped with a
note when it fails). 3 warm-up steps (cudnn.benchmark searches there), then 10 steps timed with
CUDA events; the GPU memory peak per case. The case mode frozen_cache is frozen mode with a
feature cache, as mobiletune's cache_features: two RESULT lines, frozen_features (the backbone's
pooled features in inference mode: building the cache) and frozen_cached (a training step of the
head alone on them), each with mobiletune's host traffic (below).

  torch_baseline.py run --cases finetune:bf16:32,scratch:bf16:128 [--compile-first N]
                        [--compiled-only] [--deadline-s 120]   # RESULT lines, in that order
  torch_baseline.py report RESULTS_FILE       # ratios of mobiletune's lines to torch's

In the training cases the input batch stays on the GPU (torch's best case); mobiletune's step
includes uploading the next batch from host memory (overlapped), so those ratios are conservative
for mobiletune. The frozen_cache rows copy what mobiletune copies: a host float batch in and host
features out per cache batch, host features and labels in per head step."""
import argparse
import gc
import statistics
import sys
import time

# the memory-bandwidth bound of fused bf16 training of MobileNetV2 at 160 (issue 12)
BANDWIDTH_BOUND_IMG_S = {"H200": 115000.0, "H100": 80000.0}


def build_model(mode, classes):
    import torch
    import torchvision

    model = torchvision.models.mobilenet_v2(num_classes=1 if classes == 2 else classes)
    model.classifier[0].p = 0.2  # Keras' head: pooling, Dropout(0.2), Dense
    if mode in ("frozen", "finetune"):
        for p in model.features.parameters():
            p.requires_grad_(False)
    if mode == "finetune":
        block11 = model.features[12]
        for module in [block11.conv[1], block11.conv[2], block11.conv[3]] + list(model.features[13:]):
            for p in module.parameters():
                p.requires_grad_(True)
    model = model.cuda().to(memory_format=torch.channels_last)
    model.train()
    if mode in ("frozen", "finetune"):
        model.features.eval()
    return model


def timed(args, work):
    """The median seconds of `work` over args.steps runs after args.warmup, by CUDA events."""
    import torch

    for _ in range(args.warmup):
        work()
    torch.cuda.synchronize()
    times = []
    for _ in range(args.steps):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        work()
        end.record()
        end.synchronize()
        times.append(begin.elapsed_time(end) / 1000.0)
    return statistics.median(times)


def result(args, variant, mode, batch, trainable, median):
    import torch

    print(f"RESULT framework=torch variant={variant} mode={mode} batch={batch} "
          f"size={args.size} trainable={trainable} median_s={median:.6f} "
          f"images_per_s={batch / median:.2f} "
          f"gpu_peak_mb={torch.cuda.max_memory_allocated() / 2**20:.0f} "
          f"device={torch.cuda.get_device_name(0).replace(' ', '_')}", flush=True)


def bench(args, mode, precision, batch, compiled):
    import torch

    torch.backends.cudnn.benchmark = True
    tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = tf32  # fp32 means fp32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    gc.collect()  # the previous case's tensors and compiled graphs, out of this case's peak
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model = build_model("frozen" if mode == "frozen_cache" else mode, 2)
    params = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    fn = torch.compile(model) if compiled else model
    x = (torch.rand(batch, 3, args.size, args.size, device="cuda") * 2 - 1).contiguous(
        memory_format=torch.channels_last)
    y = (torch.arange(batch, device="cuda") % 2).float().unsqueeze(1)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    autocast = lambda: torch.autocast("cuda", dtype=dtype or torch.bfloat16,
                                      enabled=dtype is not None)
    variant = precision + ("_compile" if compiled else "")

    def train_step(net, inputs):
        with autocast():
            loss = loss_fn(net(inputs), y)
        scaler.scale(loss).backward()
        for p in params:
            p.grad = None

    if mode != "frozen_cache":
        result(args, variant, mode, batch, trainable, timed(args, lambda: train_step(fn, x)))
        return
    # frozen mode with a feature cache, as mobiletune's cache_features, with the same host
    # traffic as mobiletune's: building the cache (frozen_features) takes a host float batch in
    # and gives host fp32 pooled features back, in inference mode; a head step (frozen_cached)
    # uploads a host batch of features and labels, then trains the head alone on them. The
    # memory peak of frozen_features is the one while building the cache, of frozen_cached the
    # whole case's (mobiletune's is process-wide, printed after each part, too).
    backbone = torch.nn.Sequential(model.features, torch.nn.AdaptiveAvgPool2d(1),
                                   torch.nn.Flatten())
    backbone = torch.compile(backbone) if compiled else backbone
    x_host = x.cpu()

    def features():
        with torch.no_grad(), autocast():
            return backbone(x_host.cuda()).float().cpu()

    result(args, variant, "frozen_features", batch, 0, timed(args, features))
    pooled_host, y_host = features(), y.cpu()
    head = torch.compile(model.classifier) if compiled else model.classifier

    def head_step():
        with autocast():
            loss = loss_fn(head(pooled_host.cuda()), y_host.cuda())
        scaler.scale(loss).backward()
        for p in params:
            p.grad = None

    result(args, variant, "frozen_cached", batch, trainable, timed(args, head_step))


def cmd_run(args):
    import torch

    print(f"torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, "
          f"{torch.cuda.get_device_name(0)}", file=sys.stderr, flush=True)
    deadline = time.monotonic() + args.deadline_s
    failed = 0
    cases = [(m, p, int(b)) for m, p, b in (c.split(":") for c in args.cases.split(","))]
    # eager first, then torch.compile (slow to build) for the first cases
    runs = [] if args.compiled_only else [c + (False,) for c in cases]
    runs += [c + (True,) for c in cases[:len(cases) if args.compiled_only else args.compile_first]]
    for mode, precision, batch, compiled in runs:
        if time.monotonic() > deadline:
            print(f"NOTE torch: deadline reached before {mode} {precision} {batch}"
                  f"{' compiled' if compiled else ''}", flush=True)
            break
        try:
            bench(args, mode, precision, batch, compiled)
        except Exception as e:  # torch.compile may not work on this machine: say so, go on
            print(f"NOTE torch {precision}{'_compile' if compiled else ''} {mode} {batch} failed: "
                  f"{type(e).__name__}: {e}"[:400], flush=True)
            failed += 1
    return 1 if failed else 0


def parse(path):
    rows = []
    with open(path) as f:
        for line in f:
            if line.startswith("RESULT "):
                rows.append(dict(t.split("=", 1) for t in line.split()[1:] if "=" in t))
    return rows


def cmd_report(args):
    rows = parse(args.results)
    ours = {(r["mode"], r.get("variant", "fp32"), r["batch"]): r
            for r in rows if r.get("framework", "mobiletune") == "mobiletune"}
    torch_rows = {(r["mode"], r["variant"], r["batch"]): r for r in rows
                  if r.get("framework") == "torch"}
    device = next((r["device"] for r in torch_rows.values()), "")
    bound = next((v for k, v in BANDWIDTH_BOUND_IMG_S.items() if k in device), None)
    cases = []
    for r in rows:  # in the order they ran (the ranking)
        key = (r["mode"], r.get("variant", "fp32").replace("_compile", ""), r["batch"])
        if key not in cases:
            cases.append(key)
    print(f"{'mode':<16}{'prec':<6}{'batch':>6}{'mobiletune':>12}{'torch':>10}{'ratio':>8}"
          f"{'compiled':>10}{'ratio':>8}{'torch MB':>10}{'ours MB':>9}{'graphs':>7}" +
          (f"{'of bound':>10}" if bound else ""))
    for mode, prec, batch in cases:
        mine = ours.get((mode, prec, batch))
        m = float(mine["images_per_s"]) if mine else None
        t = torch_rows.get((mode, prec, batch))
        c = torch_rows.get((mode, prec + "_compile", batch))
        ti = float(t["images_per_s"]) if t else None
        ci = float(c["images_per_s"]) if c else None
        cell = lambda v, w, f: f"{v:>{w}{f}}" if v is not None else f"{'-':>{w}}"
        print(f"{mode:<16}{prec:<6}{batch:>6}" + cell(m, 12, ".0f") + cell(ti, 10, ".0f") +
              cell(m / ti if m and ti else None, 8, ".2f") + cell(ci, 10, ".0f") +
              cell(m / ci if m and ci else None, 8, ".2f") +
              cell(float(t["gpu_peak_mb"]) if t and "gpu_peak_mb" in t else None, 10, ".0f") +
              cell(float(mine["gpu_peak_mb"]) if mine and "gpu_peak_mb" in mine else None, 9,
                   ".0f") +
              f"{(mine.get('graphs', '?') if mine else '-'):>7}" +
              (cell(m / bound * 100 if m else None, 9, ".1f") + ("%" if m else "") if bound else ""))
    if bound:
        print(f"bound: {bound:.0f} img/s ({device}); ratio = mobiletune / torch at the same case")
    print("MB: GPU memory peak (torch: max_memory_allocated; ours: device_memory_peak, the "
          "pool's peak plus the scratch areas, input slots and cuBLAS' workspace, an upper "
          "bound); graphs: 1 when mobiletune's timed steps were CUDA graph replays; "
          "frozen_features: building the feature cache (inference forward, host batch in, host "
          "features out; MB: the peak while building it), frozen_cached: a head step on cached "
          "features uploaded from the host (MB: the peak of the whole frozen_cache case)")
    return 0 if cases else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("--cases", default="finetune:bf16:32,scratch:bf16:32,finetune:bf16:128,"
                     "scratch:bf16:128")
    run.add_argument("--compile-first", type=int, default=0)
    run.add_argument("--compiled-only", action="store_true",
                     help="only the torch.compile runs of the cases")
    run.add_argument("--deadline-s", type=float, default=600)
    run.add_argument("--size", type=int, default=160)
    run.add_argument("--steps", type=int, default=10)
    run.add_argument("--warmup", type=int, default=3)
    report = sub.add_parser("report")
    report.add_argument("results")
    args = parser.parse_args()
    return cmd_run(args) if args.command == "run" else cmd_report(args)


if __name__ == "__main__":
    sys.exit(main())
