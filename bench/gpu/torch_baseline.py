#!/usr/bin/env python3
"""PyTorch on the same GPU as mobiletune's cuda backend, and the ratios between the two.

torchvision's mobilenet_v2 (random weights, channels_last) at 160x160, batch 128, one forward +
backward per step and no optimizer update, as bench_train_step measures; the three training modes
mapped onto torchvision's blocks as bench/model/compare_frameworks.py does (features[k+1] is
Keras' block_k; fine-tune from Keras layer 100 = block_11's depthwise on; frozen and fine-tune
run the backbone's BN with moving statistics). Variants:
  fp32          fp32 with TF32 off (mobiletune's default arithmetic)
  amp           fp16 autocast + GradScaler, eager
  amp_compile   the same under torch.compile (skipped with a note when it fails)

  torch_baseline.py run --modes scratch,finetune,frozen --variants fp32,amp   # RESULT lines
  torch_baseline.py report RESULTS_FILE       # ratios of mobiletune's lines to torch's

The input batch stays on the GPU (torch's best case); mobiletune's step includes uploading the
batch from host memory, so the ratios are conservative for mobiletune."""
import argparse
import statistics
import sys
import time

BANDWIDTH_BOUND_IMG_S = 80000.0  # fully fused fp16 training of MobileNetV2 at 160 on one H100


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


def bench(args, mode, variant):
    import torch

    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32; AMP runs in fp16 anyway
    torch.backends.cuda.matmul.allow_tf32 = False
    model = build_model(mode, 2)
    params = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    amp = variant.startswith("amp")
    fn = torch.compile(model) if variant.endswith("compile") else model
    x = (torch.rand(args.batch, 3, args.size, args.size, device="cuda") * 2 - 1).contiguous(
        memory_format=torch.channels_last)
    y = (torch.arange(args.batch, device="cuda") % 2).float().unsqueeze(1)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    def step():
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            loss = loss_fn(fn(x), y)
        scaler.scale(loss).backward()
        for p in params:
            p.grad = None

    times = []
    for i in range(args.warmup + args.steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(f"RESULT framework=torch variant={variant} mode={mode} batch={args.batch} "
          f"size={args.size} trainable={trainable} median_s={median:.4f} "
          f"images_per_s={args.batch / median:.2f} "
          f"device={torch.cuda.get_device_name(0).replace(' ', '_')}", flush=True)


def cmd_run(args):
    import torch

    print(f"torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, "
          f"{torch.cuda.get_device_name(0)}", flush=True)
    failed = 0
    for variant in args.variants.split(","):
        for mode in args.modes.split(","):
            try:
                bench(args, mode, variant)
            except Exception as e:  # torch.compile may not work on this machine: say so, go on
                print(f"NOTE torch {variant} {mode} failed: {type(e).__name__}: {e}"[:400],
                      flush=True)
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
    ours = [r for r in rows if r.get("framework", "mobiletune") == "mobiletune"]
    torch_rows = {(r["variant"], r["mode"]): float(r["images_per_s"])
                  for r in rows if r.get("framework") == "torch"}
    if not ours:
        print("no mobiletune results")
        return 1
    variants = sorted({v for v, _ in torch_rows})
    header = f"{'mobiletune':<22}{'mode':<10}{'img/s':>10}  " + "".join(
        f"{'vs torch ' + v:>22}" for v in variants) + f"{'of 80k bound':>14}"
    print(header)
    for r in ours:
        ips = float(r["images_per_s"])
        name = f"{r.get('backend', '?')} {r.get('variant', 'fp32')}"
        cells = []
        for v in variants:
            t = torch_rows.get((v, r["mode"]))
            cells.append(f"{ips / t:>20.2f}x " if t else f"{'-':>21} ")
        print(f"{name:<22}{r['mode']:<10}{ips:>10.1f}  " + "".join(cells) +
              f"{ips / BANDWIDTH_BOUND_IMG_S:>13.1%}")
    for (v, m), t in sorted(torch_rows.items()):
        print(f"torch {v:<16}{m:<10}{t:>10.1f}")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("--modes", default="scratch,finetune,frozen")
    run.add_argument("--variants", default="fp32,amp")
    run.add_argument("--batch", type=int, default=128)
    run.add_argument("--size", type=int, default=160)
    run.add_argument("--steps", type=int, default=20)
    run.add_argument("--warmup", type=int, default=5)
    report = sub.add_parser("report")
    report.add_argument("results")
    args = parser.parse_args()
    return cmd_run(args) if args.command == "run" else cmd_report(args)


if __name__ == "__main__":
    sys.exit(main())
