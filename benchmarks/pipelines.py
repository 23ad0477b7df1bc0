"""The usual data pipeline against ours, measured side by side in one process on one machine.

    python benchmarks/pipelines.py speed                 # s4 @ batch 128, s6 @ batch 64, + time-to-target
    python benchmarks/pipelines.py speed --models s6 --epochs 4 --no-ttt
    python benchmarks/pipelines.py accuracy              # s6, seeds 1-3, 3 epochs, on each pipeline
    python benchmarks/pipelines.py loop                  # s6 @ batch 64: ours (all features on) vs floor
    python benchmarks/pipelines.py precision             # each net's recipe: 32-true vs bf16-mixed, alternating

`speed`: each variant is a real `mnist_arch.run` training run (real MNIST, real Trainer, validation
every epoch):
Each variant is a real `mnist_arch.run` training run (real MNIST, real Trainer, validation every epoch):
  usual         torchvision MNIST + ToTensor/Normalize, DataLoader(num_workers=0), progress bar every step
  ours          the default: tensor-resident data, batches sliced and normalised on the device
  ours+nhwc     ours with channels_last=true
  ours+compile  ours with compile=true (torch.compile; the first epoch pays the compile time)
  ours+bf16     ours with trainer.precision=bf16-mixed (autocast; its FLOP/s share is of the bf16 matmul peak)
  floor         no Lightning, no metrics, no logging: a bare PyTorch loop over the same resident
                tensors (forward, backward, SGD step, then one eval pass over the 10k) -- the compute floor
The table gives, per variant, the median epoch time (train + val) over the epochs after the first (the
first, which pays warm-up, is shown apart), training images/s, training FLOP/s (forward + backward over
the 60k training images, counted by torch's FlopCounterMode) and its share of this machine's measured
float32 matmul peak, and the speed-up against `usual`. Time-to-target trains the s6 reference recipe
(SGD 0.01 momentum 0.9, batch 64, ReduceLROnPlateau) until val acc >= --target on the 10k test set.

`precision`: each experiment (its own net, batch and recipe) trained with trainer.precision=32-true and
bf16-mixed, alternating run by run so both see the same machine; per net the median epoch time (epochs 2+)
of each and the bf16 / fp32 speed-up of each adjacent pair. Then the floor loop of s6 in fp32 and under
torch.autocast("cpu", bfloat16), alternating: what the kernels alone gain.

`accuracy`: the same recipe on both pipelines over several seeds; val acc (10k test set) per epoch as
mean +- std, to show the fast path learns what the usual one learns.
"""
import argparse
import contextlib
import dataclasses
import itertools
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from mnist_arch.config.compose import compose

from mnist_arch.config.schema import validate
from mnist_arch.models import build_net
from mnist_arch.train import job as training

REFERENCE_BATCH = {"s4": 128, "s6": 64}  # s6: its write-up; s4: silent, the course's usual 128
VARIANTS = {
    "usual": ["data.pipeline=torchvision", "callbacks.progress_refresh=1"],
    "ours": [],
    "ours+nhwc": ["channels_last=true"],
    "ours+compile": ["compile=true"],
    "ours+bf16": ["trainer.precision=bf16-mixed"],
}
TRAIN_IMAGES = 60_000
S6_RECIPE = ["model=s6", "data.batch_size=64", "optimizer=sgd", "optimizer.lr=0.01", "optimizer.momentum=0.9", "optimizer.nesterov=false",
             "scheduler=plateau", "scheduler.patience=2", "scheduler.factor=0.5"]


def train(overrides):
    cfg = compose(overrides)
    # Lightning's progress bars and tables print to stdout: send them to stderr, keep stdout the report.
    with tempfile.TemporaryDirectory() as run_dir, contextlib.redirect_stdout(sys.stderr):
        return training.train(cfg, Path(run_dir))


def floor_epochs(model: Union[str, dict], batch: int, epochs: int, seed: int, steps: Optional[int] = None,
                 bf16: Union[bool, Sequence[bool]] = False) -> list:
    """Epoch times of a bare training loop on the resident tensors: what the kernels alone cost. `model`: a
    registered name or a model spec (a preset's). With `steps`, each epoch is that many training batches and
    no eval pass; with `bf16` (one value, or one per epoch), forward and loss run under
    torch.autocast("cpu", bfloat16) (weights and the SGD step stay fp32, as Lightning's bf16-mixed)."""
    from torchvision import datasets

    from mnist_arch.data import DeviceLoader, default_root, ensure_mnist

    root = ensure_mnist(default_root(), download=True, timeout=30).parent.parent
    train_set, test_set = datasets.MNIST(root, train=True), datasets.MNIST(root, train=False)
    torch.manual_seed(seed)
    net = build_net({"name": model} if isinstance(model, str) else model)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    per_epoch = [bf16] * epochs if isinstance(bf16, bool) else list(bf16)
    train_loader = DeviceLoader(train_set.data, train_set.targets, batch, shuffle=True, seed=seed)
    test_loader = DeviceLoader(test_set.data, test_set.targets, 1000)
    times = []
    for epoch, bf16 in zip(range(epochs), per_epoch):
        train_loader.sampler.set_epoch(epoch)
        start = time.perf_counter()
        net.train()
        for x, y in itertools.islice(train_loader, steps):
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
        if steps is None:  # a whole epoch validates, as ours does; a slice of steps does not
            net.eval()
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                for x, y in test_loader:
                    net(x)
        times.append(round(time.perf_counter() - start, 3))
    return times


def matmul_peak_gflops(n: int = 2048, repeats: int = 10, dtype: torch.dtype = torch.float32) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def train_flops_per_image(model: str, batch: int) -> float:
    net = build_net({"name": model}).train()
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(net(x), y).backward()
    return counter.get_total_flops() / batch


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return (f"{cpu}, {torch.get_num_threads()} torch threads{gpu}; torch {torch.__version__}, "
            f"Python {platform.python_version()}")


def speed(args) -> None:
    peak, peak_bf16 = matmul_peak_gflops(), matmul_peak_gflops(dtype=torch.bfloat16)
    print(f"machine: {machine()}", flush=True)
    print(f"matmul peak (2048x2048, best of 10): float32 {peak:.0f} GFLOP/s, bfloat16 {peak_bf16:.0f} GFLOP/s",
          flush=True)
    common = ["callbacks.checkpoint=false", f"seed={args.seed}"]
    rows, raw = [], {"machine": machine(), "peak_gflops": peak, "peak_gflops_bf16": peak_bf16, "runs": {}, "ttt": {}}
    flops = {m: train_flops_per_image(m, REFERENCE_BATCH[m]) * TRAIN_IMAGES for m in args.models}
    for model in args.models:
        batch, baseline = REFERENCE_BATCH[model], None

        def record(variant: str, times: list) -> float:
            """One table row; the median skips the first (warm-up) epoch."""
            steady_times = times[1:] or times
            steady = statistics.median(steady_times)
            raw["runs"][f"{model}/{variant}"] = times
            rows.append((model, batch, variant, steady, min(steady_times), max(steady_times), times[0],
                         TRAIN_IMAGES / steady, flops[model] / steady / 1e9, baseline / steady if baseline else None,
                         peak_bf16 if variant == "ours+bf16" else peak))
            print(f"   {model} {variant}: epochs {times}", flush=True)
            return steady

        for variant in args.variants:
            overrides = [f"model={model}", f"data.batch_size={batch}", f"trainer.max_epochs={args.epochs}",
                         *common, *VARIANTS[variant]]
            print(f"-- python -m mnist_arch.run {' '.join(overrides)}", flush=True)
            steady = record(variant, train(overrides).epoch_time_s)
            baseline = baseline or (steady if variant == "usual" else None)
        if args.floor:
            record("floor", floor_epochs(model, batch, args.epochs, args.seed))

    print("\nTraining FLOP per epoch: " + ", ".join(f"{m} {f / 1e12:.3f} TFLOP" for m, f in flops.items()))
    print("\n| model | batch | pipeline | epoch s (median) | range | 1st epoch s | train img/s | train GFLOP/s "
          "| % of matmul peak | speed-up vs usual |")
    print("|---|---:|---|---:|---|---:|---:|---:|---:|---:|")
    for model, batch, variant, med, lo, hi, first, ips, gflops, ratio, its_peak in rows:
        speedup = f"{ratio:.2f}x" if ratio else "-"
        print(f"| {model} | {batch} | {variant} | {med:.2f} | {lo:.2f}-{hi:.2f} | {first:.2f} | {ips:,.0f} | "
              f"{gflops:.1f} | {100 * gflops / its_peak:.1f}% | {speedup} |")

    if not args.no_ttt:
        print(f"\nTime to target: s6 reference recipe, first epoch with val acc >= {args.target:.2%} (10k test set)")
        print("| pipeline | epoch reached | wall time to it, s | val acc then |")
        print("|---|---:|---:|---:|")
        for variant in [v for v in ("usual", "ours") if v in args.variants]:
            summary = train([*S6_RECIPE, f"trainer.max_epochs={args.ttt_epochs}", *common, *VARIANTS[variant]])
            hit = next((i for i, acc in enumerate(summary.val_acc) if acc >= args.target), None)
            raw["ttt"][variant] = {"val_acc": summary.val_acc, "epoch_time_s": summary.epoch_time_s}
            if hit is None:
                print(f"| {variant} | not within {args.ttt_epochs} | - | best {max(summary.val_acc):.2%} |")
            else:
                print(f"| {variant} | {hit + 1} | {sum(summary.epoch_time_s[:hit + 1]):.1f} | "
                      f"{summary.val_acc[hit]:.2%} |")
    if args.json:
        args.json.write_text(json.dumps(raw, indent=2) + "\n")


def accuracy(args) -> None:
    print(f"machine: {machine()}; s6 reference recipe, seeds {args.seeds}, {args.epochs} epochs", flush=True)
    curves = {}
    for variant in ("usual", "ours"):
        for seed in args.seeds:
            overrides = [*S6_RECIPE, f"trainer.max_epochs={args.epochs}", "callbacks.checkpoint=false",
                         f"seed={seed}", *VARIANTS[variant]]
            print(f"-- python -m mnist_arch.run {' '.join(overrides)}", flush=True)
            curves.setdefault(variant, []).append(train(overrides).val_acc)
    print("\n| epoch | " + " | ".join(f"{v}: val acc mean ± std (n={len(args.seeds)})" for v in curves) + " |")
    print("|---:|" + "---:|" * len(curves))
    for epoch in range(args.epochs):
        cells = []
        for runs in curves.values():
            accs = [run_[epoch] for run_ in runs]
            spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
            cells.append(f"{100 * statistics.mean(accs):.2f}% ± {100 * spread:.2f}")
        print(f"| {epoch + 1} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(curves, indent=2) + "\n")


def loop(args) -> None:
    """Our loop, with every user-visible feature on, against the bare floor, alternating run by run so both
    see the same machine; then the whole process against the usual pipeline."""
    print(f"machine: {machine()}", flush=True)
    # Everything a user gets: checkpoints (best + last), TensorBoard, plots, lr monitor, epoch lines.
    overrides = [*S6_RECIPE, f"trainer.max_epochs={args.epochs}", f"seed={args.seed}", "callbacks.progress=lines"]
    print(f"-- ours: python -m mnist_arch.run {' '.join(overrides)}\n-- floor: floor_epochs('s6', 64)", flush=True)
    raw = {"machine": machine(), "overrides": overrides, "repeats": [], "process": []}
    for repeat in range(args.repeats):
        ours = train(overrides).epoch_time_s
        floor = floor_epochs("s6", REFERENCE_BATCH["s6"], args.epochs, args.seed)
        raw["repeats"].append({"ours": ours, "floor": floor})
        print(f"   repeat {repeat + 1}: ours {ours}, floor {floor}", flush=True)
    ratios = []
    if raw["repeats"]:
        print("\n| repeat | ours: epoch s (median, epochs 2+) | floor | ours / floor |\n|---:|---:|---:|---:|")
    for i, r in enumerate(raw["repeats"], 1):
        o, f = statistics.median(r["ours"][1:] or r["ours"]), statistics.median(r["floor"][1:] or r["floor"])
        ratios.append(o / f)
        print(f"| {i} | {o:.2f} | {f:.2f} | {o / f:.3f} |")
    if ratios:
        print(f"\nours / floor: median {statistics.median(ratios):.3f} over {len(ratios)} repeats "
              f"(range {min(ratios):.3f}-{max(ratios):.3f})")
    if args.slices:
        # The machine's speed drifts by +-20% over tens of seconds, more than the margin measured. So also:
        # short slices alternating in one process, `--steps` training steps each (no validation), ours
        # (the same features on) then the floor; the ratio of each adjacent pair; the first pair warms up.
        sliced = [o for o in overrides if not o.startswith(("trainer.max_epochs=", "scheduler"))]
        sliced += ["scheduler=none",  # plateau needs a val loss; a slice has no validation
                   "trainer.max_epochs=1", f"+trainer.limit_train_batches={args.steps}", "+trainer.limit_val_batches=0"]
        print(f"\n-- slices of {args.steps} steps: python -m mnist_arch.run {' '.join(sliced)}", flush=True)
        for i in range(args.slices + 1):
            ours = train(sliced).epoch_time_s[0]
            floor = floor_epochs("s6", REFERENCE_BATCH["s6"], 1, args.seed, steps=args.steps)[0]
            if i:  # the first pair warms up
                raw.setdefault("slices", []).append({"ours": ours, "floor": floor})
        pairs = [r["ours"] / r["floor"] for r in raw["slices"]]
        print(f"ours / floor per slice pair: {', '.join(f'{p:.3f}' for p in pairs)}\n"
              f"median {statistics.median(pairs):.3f} over {len(pairs)} pairs (range {min(pairs):.3f}-{max(pairs):.3f}); "
              f"ms per step: ours {1e3 * statistics.median(r['ours'] for r in raw['slices']) / args.steps:.2f}, "
              f"floor {1e3 * statistics.median(r['floor'] for r in raw['slices']) / args.steps:.2f}")
    if args.process:
        print("\n| repeat | usual: whole process s | ours | usual / ours |\n|---:|---:|---:|---:|")
        for repeat in range(args.process):
            seconds = {}
            for variant in ("usual", "ours"):
                with tempfile.TemporaryDirectory() as run_dir:
                    command = [sys.executable, "-m", "mnist_arch.run", *overrides, *VARIANTS[variant],
                               f"hydra.run.dir={run_dir}"]
                    started = time.perf_counter()
                    subprocess.run(command, check=True, capture_output=True)
                    seconds[variant] = time.perf_counter() - started
            raw["process"].append(seconds)
            print(f"| {repeat + 1} | {seconds['usual']:.1f} | {seconds['ours']:.1f} | "
                  f"{seconds['usual'] / seconds['ours']:.2f}x |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(raw, indent=2) + "\n")


PRECISION_NETS = {"s6": "s6_reference", "s4": "s4_reference", "frontier_4k": "frontier_4k",
                  "frontier_8k": "frontier_8k", "speedrun": "speedrun"}


def precision(args) -> None:
    """32-true against bf16-mixed on each net's own recipe, alternating run by run."""
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {machine()}; avx512_bf16: {torch.cpu._is_avx512_bf16_supported()}, "
          f"AMX: {torch.cpu._is_amx_tile_supported()}", flush=True)
    raw = {"machine": machine(), "nets": {}, "floor": []}
    rows = []
    for net in args.nets if args.runs else []:
        common = [f"experiment={PRECISION_NETS[net]}", f"trainer.max_epochs={args.epochs}", f"seed={args.seed}",
                  "callbacks.checkpoint=false", "data.val=test", *([f"threads={args.threads}"] if args.threads else [])]
        print(f"-- python -m mnist_arch.run {' '.join(common)} trainer.precision=32-true|bf16-mixed", flush=True)
        pairs = []
        for repeat in range(args.repeats):
            times = {p: train([*common, f"trainer.precision={p}"]).epoch_time_s for p in ("32-true", "bf16-mixed")}
            pairs.append(times)
            print(f"   {net} repeat {repeat + 1}: fp32 {times['32-true']}, bf16 {times['bf16-mixed']}", flush=True)
        raw["nets"][net] = pairs
        steady = {p: [statistics.median(t[p][1:] or t[p]) for t in pairs] for p in ("32-true", "bf16-mixed")}
        ratios = [f / b for f, b in zip(steady["32-true"], steady["bf16-mixed"])]
        rows.append(f"| {net} | {compose(common).data.batch_size} | {statistics.median(steady['32-true']):.2f} | "
                    f"{statistics.median(steady['bf16-mixed']):.2f} | {statistics.median(ratios):.2f}x "
                    f"({min(ratios):.2f}-{max(ratios):.2f}) |")
    if args.slices:
        # The machine's speed drifts by +-20% over tens of seconds, as much as the effect: so also each net's
        # bare loop (its preset, its batch) in one process, --steps steps fp32 then as many bf16, alternating,
        # --slices pairs after a first pair that warms both up; the ratio of each adjacent pair.
        for net in args.nets:
            conf = validate(compose([f"experiment={PRECISION_NETS[net]}"]))
            spec = dataclasses.asdict(conf.model)
            times = floor_epochs(spec, conf.data.batch_size, 2 * (args.slices + 1), args.seed, steps=args.steps,
                                 bf16=[False, True] * (args.slices + 1))[2:]
            pairs = [f / b for f, b in zip(times[::2], times[1::2])]
            raw.setdefault("slices", {})[net] = times
            print(f"   {net} slices of {args.steps} steps, fp32/bf16 per pair: {', '.join(f'{p:.2f}' for p in pairs)}",
                  flush=True)
            rows.append(f"| {net}, bare loop, slices of {args.steps} steps | {conf.data.batch_size} | "
                        f"{1e3 * statistics.median(times[::2]) / args.steps:.2f} ms/step | "
                        f"{1e3 * statistics.median(times[1::2]) / args.steps:.2f} ms/step | "
                        f"{statistics.median(pairs):.2f}x ({min(pairs):.2f}-{max(pairs):.2f}) |")
    if args.floor:
        for repeat in range(args.repeats):
            pair = {"fp32": floor_epochs("s6", REFERENCE_BATCH["s6"], args.epochs, args.seed),
                    "bf16": floor_epochs("s6", REFERENCE_BATCH["s6"], args.epochs, args.seed, bf16=True)}
            raw["floor"].append(pair)
            print(f"   floor s6 repeat {repeat + 1}: fp32 {pair['fp32']}, bf16 {pair['bf16']}", flush=True)
        f32 = [statistics.median(p["fp32"][1:] or p["fp32"]) for p in raw["floor"]]
        b16 = [statistics.median(p["bf16"][1:] or p["bf16"]) for p in raw["floor"]]
        ratios = [f / b for f, b in zip(f32, b16)]
        rows.append(f"| s6 floor loop | 64 | {statistics.median(f32):.2f} | {statistics.median(b16):.2f} | "
                    f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) |")
    print("\n| net | batch | fp32 epoch s (median) | bf16 epoch s (median) | bf16 speed-up per pair: median (range) |"
          "\n|---|---:|---:|---:|---|")
    print("\n".join(rows))
    if args.json:
        args.json.write_text(json.dumps(raw, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    fast = commands.add_parser("speed", help="epoch time, images/s, FLOP/s, time-to-target")
    fast.add_argument("--models", nargs="+", default=["s4", "s6"], choices=list(REFERENCE_BATCH))
    fast.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    fast.add_argument("--epochs", type=int, default=4, help="epochs per variant; the median skips the first")
    fast.add_argument("--seed", type=int, default=1)
    fast.add_argument("--target", type=float, default=0.99, help="val acc for time-to-target")
    fast.add_argument("--ttt-epochs", type=int, default=8, help="epoch cap for time-to-target")
    fast.add_argument("--no-ttt", action="store_true", help="skip time-to-target")
    fast.add_argument("--no-floor", dest="floor", action="store_false", help="skip the bare-loop floor")
    same = commands.add_parser("accuracy", help="val acc per epoch over seeds, usual vs ours")
    same.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    same.add_argument("--epochs", type=int, default=3)
    at_floor = commands.add_parser("loop", help="s6 epoch, ours with every feature on against the floor, alternating")
    at_floor.add_argument("--repeats", type=int, default=4)
    at_floor.add_argument("--epochs", type=int, default=3, help="epochs per run; the median skips the first")
    at_floor.add_argument("--seed", type=int, default=1)
    at_floor.add_argument("--process", type=int, default=1, help="whole-process runs of usual and ours (0: none)")
    at_floor.add_argument("--slices", type=int, default=0, help="also: alternating short slices, this many pairs")
    at_floor.add_argument("--steps", type=int, default=150, help="training steps per slice")
    bf16 = commands.add_parser("precision", help="each net's recipe: 32-true vs bf16-mixed, alternating")
    bf16.add_argument("--nets", nargs="+", default=list(PRECISION_NETS), choices=list(PRECISION_NETS))
    bf16.add_argument("--repeats", type=int, default=3)
    bf16.add_argument("--epochs", type=int, default=2, help="epochs per run; the median skips the first")
    bf16.add_argument("--seed", type=int, default=1)
    bf16.add_argument("--no-floor", dest="floor", action="store_false", help="skip the bare-loop pair")
    bf16.add_argument("--slices", type=int, default=0, help="also: each net's bare loop, this many alternating pairs")
    bf16.add_argument("--steps", type=int, default=150, help="training steps per slice")
    bf16.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, here 2)")
    bf16.add_argument("--no-runs", dest="runs", action="store_false", help="skip the Lightning runs (slices only)")
    for command in (fast, same, at_floor, bf16):
        command.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = parser.parse_args()
    {"speed": speed, "accuracy": accuracy, "loop": loop, "precision": precision}[args.command](args)


if __name__ == "__main__":
    main()
