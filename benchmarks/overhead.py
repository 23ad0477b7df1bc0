"""A run's fixed cost and its loop's overhead, against the bare loop and the usual pipeline (issue 47).

    python benchmarks/overhead.py phases --pairs 3     # the 3-epoch s6 run: phases, fixed cost, ratios
    python benchmarks/overhead.py multirun --pairs 1   # a 10-job multirun of 1-epoch runs against one job

`phases`: per pair, alternating, each a whole process started from here: ours (the command below), the usual
pipeline (torchvision MNIST + DataLoader, the same net, batch, recipe and Lightning, progress bar every step)
and the bare floor (`floor` below, the same recipe: its epochs are what the kernels alone cost). Per run:
the whole process's wall time, measured from outside, and the record's phases_s (summary.json: where the
time went inside). The fixed cost is the whole process less the epochs' training and validation passes;
it is stated in bare floor epochs of the same pair. Ours' epoch (train + val) against the floor's epoch,
and the whole process of the usual pipeline against ours, pair by pair.

`multirun`: `python -m mnist_arch.run -m seed=1,...,10` of 1-epoch runs against one such job alone,
alternating: each job's overhead in the sweep (the sweep's wall less its jobs' training and validation
passes, per job) against the single run's fixed cost.

`floor` (also `python benchmarks/overhead.py floor`): the run's own net, data, batches, optimizer and
scheduler (built by the run's code from the same config), stepped by a plain PyTorch loop: forward, loss,
backward, optimizer and scheduler step, then a forward pass over the validation images; no Lightning, no
metrics, no logging, no files.
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

RUN = ["model=s6", "seed=2", "trainer.max_epochs=3", "data.batch_size=64", "callbacks.stop_at_target=false"]
USUAL = ["data.pipeline=torchvision", "callbacks.progress_refresh=1"]
ORDER = ("start", "setup", "fit_start", "train", "val", "epoch_ends", "fit_end", "test", "record")


def whole(overrides, run_dir: Path, multirun: bool = False) -> float:
    """Wall seconds of `python -m mnist_arch.run <overrides>` as a process of its own."""
    where = [f"hydra.sweep.dir={run_dir}"] if multirun else [f"hydra.run.dir={run_dir}"]
    command = [sys.executable, "-m", "mnist_arch.run", *(["-m"] if multirun else []), *overrides, *where]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def floor(overrides, epochs: int) -> list:
    """Epoch times (train + val) of the bare loop on the run's own net, data and recipe, in a process of its own
    (so that it starts from what ours starts from)."""
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import overhead; " \
           f"print(overhead.floor_epochs({list(overrides)!r}, {epochs}))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def floor_epochs(overrides, epochs: int) -> str:
    """floor()'s answer, as JSON on one line (the last the child process prints)."""
    import torch
    import torch.nn.functional as F

    from mnist_arch.config.recipe import build_optimizer, build_scheduler
    from mnist_arch.config.compose import compose
    from mnist_arch.config.schema import validate
    from mnist_arch.data import MNISTDataModule
    from mnist_arch.models import build_net

    conf = validate(compose([*overrides, f"trainer.max_epochs={epochs}"]))
    torch.manual_seed(conf.seed)
    data = MNISTDataModule(**asdict(conf.data), seed=conf.seed)
    data.prepare_data()
    data.setup("fit")
    net = build_net(asdict(conf.model))
    train, val = data.train_dataloader(), data.val_dataloader()
    optimizer = build_optimizer(asdict(conf.optimizer), net)
    scheduler = build_scheduler(asdict(conf.scheduler), optimizer, len(train) * epochs, epochs)
    times = []
    for epoch in range(epochs):
        train.sampler.set_epoch(epoch)
        started = time.perf_counter()
        net.train()
        for x, y in train:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), y).backward()
            optimizer.step()
            if scheduler and scheduler["interval"] == "step":
                scheduler["scheduler"].step()
        net.eval()
        with torch.inference_mode():
            for x, y in val:
                net(x)
        times.append(round(time.perf_counter() - started, 3))
    return json.dumps(times)


def phases(args) -> dict:
    raw = {"command": "python -m mnist_arch.run " + " ".join(RUN), "pairs": []}
    print(f"-- ours: {raw['command']}\n-- usual: ... {' '.join(USUAL)}\n-- floor: floor_epochs(the same)", flush=True)
    for pair in range(args.pairs):
        with tempfile.TemporaryDirectory() as tmp:
            row = {"ours_wall": whole(RUN, Path(tmp) / "ours")}
            row["phases"] = phases_of(json.loads((Path(tmp) / "ours" / "summary.json").read_text()))
            row["floor"] = floor(RUN, 3)
            row["usual_wall"] = whole([*RUN, *USUAL], Path(tmp) / "usual") if args.usual else None
        raw["pairs"].append(row)
        print(json.dumps(row), flush=True)
    report_phases(raw)
    return raw


def phases_of(record: dict) -> dict:
    """The record's phases_s; a checkout from before them (run from its folder, to measure it) has its epochs'
    times only: their sum stands as train (validation included), so the fixed cost is still the rest."""
    return record.get("phases_s") or {"train": sum(record["epoch_time_s"]), "val": 0.0}


def report_phases(raw: dict) -> None:
    pairs = raw["pairs"]
    median = lambda values: statistics.median(values)  # noqa: E731
    print("\n| phase | " + " | ".join(f"pair {i + 1}" for i in range(len(pairs))) + " | median |")
    print("|---|" + "---:|" * (len(pairs) + 1))
    for name in ORDER:
        values = [p["phases"].get(name) for p in pairs]
        if any(v is not None for v in values):
            shown = [f"{v:.2f}" if v is not None else "-" for v in values]
            print(f"| {name} | " + " | ".join(shown) + f" | {median([v for v in values if v is not None]):.2f} |")
    rows = {
        "whole process, ours (s)": [p["ours_wall"] for p in pairs],
        "after the record (exit, s)": [p["ours_wall"] - sum(p["phases"].values()) for p in pairs],
        "fixed cost: whole less train and val (s)": [fixed(p) for p in pairs],
        "bare floor epoch (s, median of 3)": [median(p["floor"]) for p in pairs],
        "fixed cost in floor epochs": [fixed(p) / median(p["floor"]) for p in pairs],
        "ours' epoch (train + val) / floor epoch": [
            (p["phases"]["train"] + p["phases"]["val"]) / sum(p["floor"]) for p in pairs],
    }
    if all(p["usual_wall"] for p in pairs):
        rows["whole process, usual (s)"] = [p["usual_wall"] for p in pairs]
        rows["usual / ours, whole process"] = [p["usual_wall"] / p["ours_wall"] for p in pairs]
    for name, values in rows.items():
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + f" | {median(values):.3f} |")


def fixed(pair: dict) -> float:
    return pair["ours_wall"] - pair["phases"]["train"] - pair["phases"]["val"]


def multirun(args) -> dict:
    one = [o for o in RUN if not o.startswith(("trainer.max_epochs", "seed="))] + ["trainer.max_epochs=1"]
    seeds = "seed=" + ",".join(str(s) for s in range(1, args.jobs + 1))
    raw = {"single": f"python -m mnist_arch.run {' '.join(one)} seed=1",
           "sweep": f"python -m mnist_arch.run -m {' '.join(one)} {seeds}", "pairs": []}
    print(f"-- single: {raw['single']}\n-- sweep: {raw['sweep']}", flush=True)
    for _ in range(args.pairs):
        with tempfile.TemporaryDirectory() as tmp:
            single_wall = whole([*one, "seed=1"], Path(tmp) / "one")
            single = phases_of(json.loads((Path(tmp) / "one" / "summary.json").read_text()))
            sweep_wall = whole([*one, seeds], Path(tmp) / "sweep", multirun=True)
            jobs = [phases_of(json.loads(p.read_text())) for p in sorted((Path(tmp) / "sweep").glob("*/summary.json"))]
        assert len(jobs) == args.jobs, f"{len(jobs)} of {args.jobs} jobs wrote a record"
        passes = sum(j["train"] + j["val"] for j in jobs)
        row = {"single_wall": single_wall, "single_fixed": single_wall - single["train"] - single["val"],
               "sweep_wall": sweep_wall, "sweep_fixed_per_job": (sweep_wall - passes) / len(jobs),
               "job_phases": jobs}
        raw["pairs"].append(row)
        inside = {name: statistics.median(j[name] for j in jobs) for name in ("setup", "fit_start", "test")
                  if all(name in j for j in jobs)}
        print(f"single job: {single_wall:.1f} s, fixed {row['single_fixed']:.2f} s | sweep of {len(jobs)}: "
              f"{sweep_wall:.1f} s, per job outside its passes {row['sweep_fixed_per_job']:.2f} s "
              f"(median job's own record: {', '.join(f'{k} {v:.2f}' for k, v in inside.items()) or 'no phases'})",
              flush=True)
    return raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("phases", help="the 3-epoch s6 run: phases, fixed cost, ratios")
    one.add_argument("--pairs", type=int, default=3)
    one.add_argument("--no-usual", dest="usual", action="store_false", help="skip the usual pipeline")
    sweep = commands.add_parser("multirun", help="a sweep of 1-epoch jobs against one job")
    sweep.add_argument("--pairs", type=int, default=1)
    sweep.add_argument("--jobs", type=int, default=10)
    bare = commands.add_parser("floor", help="the bare loop's epochs for the run above")
    bare.add_argument("--epochs", type=int, default=3)
    for command in (one, sweep):
        command.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = parser.parse_args()
    if args.command == "floor":
        print(floor_epochs(RUN, args.epochs))
        return
    raw = phases(args) if args.command == "phases" else multirun(args)
    if args.json:
        args.json.write_text(json.dumps(raw, indent=2) + "\n")


if __name__ == "__main__":
    main()
