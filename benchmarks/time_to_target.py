"""Time to target: how long each recipe takes, on this machine, to first reach val acc >= 99.40% on the
10k test set. Side by side in one invocation, every recipe on the same seeds, one after the other.

    python benchmarks/time_to_target.py                          # every recipe below, seeds 1-3
    python benchmarks/time_to_target.py --recipes readme s6_reference --seeds 1 2 3 4 5 --json ttt.json
    python benchmarks/time_to_target.py --recipes speedrun speedrun_bf16 --seeds 6 7 8 9 10 --floor

Each run is a real `python -m mnist_arch.run` process (real MNIST, the default tensor pipeline unless the
recipe says otherwise), with val = the 10k test set and the stop at the target on, so it ends at the first
epoch that reaches it (or at its last epoch); the speedrun, scored on its final epoch, trains all of its. Reported per run: the epoch reached (or "never"), the
training time to it (the run's own per-epoch times, train + val, summed up to that epoch) and the
whole-process time (wall clock around the command: Python and library start-up, data loading, the
layer table, training, the final test, files). Then mean ± std per recipe over the seeds that reached it.

--floor also times the floor epoch (the bare-PyTorch s6 epoch of `pipelines.py loop`: batch 64, resident
tensors, train + one eval pass; median of epochs 2-3) before the first run and after the last, and states
training times in floor epochs too: this CPU's speed drifts by 1.5x within an hour, so seconds alone do
not carry from one day to the next.
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mnist_arch.results.record import RunRecord  # noqa: E402

# name -> the overrides of `python -m mnist_arch.run` that make the recipe. Every recipe is scored on the
# 10k test set and stops at the target; the frontier recipes were designed on the holdout split, so
# data.val=test here changes what they validate on, not how they train.
TO_TARGET = ["data.val=test", "callbacks.stop_at_target=true", "test_weights=final"]
RECIPES = {
    "readme": ["model=s4", "trainer.max_epochs=20"],  # the README's command
    "s4_reference": ["experiment=s4_reference"],
    "s6_reference": ["experiment=s6_reference"],
    "frontier_4k": ["experiment=frontier_4k"],
    "frontier_8k": ["experiment=frontier_8k"],
    "frontier_20k": ["experiment=frontier_20k"],
    "frontier_20k_torchvision": ["experiment=frontier_20k", "data.pipeline=torchvision",
                                 "callbacks.progress_refresh=1"],  # the usual pipeline on the same recipe
    # Scored on its final epoch, so it trains all its epochs: the whole run is its time.
    "speedrun": ["experiment=speedrun", "callbacks.stop_at_target=false"],
    "speedrun_fp32": ["experiment=speedrun", "callbacks.stop_at_target=false", "trainer.precision=32-true"],
    "speedrun_bf16": ["experiment=speedrun", "callbacks.stop_at_target=false", "trainer.precision=bf16-mixed"],
    # two one-thread processes (DDP on the CPU, 64 images each: the same 128 per step), each in bf16, whose
    # kernels did not use a second thread (BENCHMARKS.md, "bf16 on the CPU")
    "speedrun_ddp_bf16": ["experiment=speedrun", "callbacks.stop_at_target=false", "trainer=ddp_cpu",
                          "data.batch_size=64", "trainer.precision=bf16-mixed"],
    "speedrun_torchvision": ["experiment=speedrun", "callbacks.stop_at_target=false", "data.pipeline=torchvision",
                             "callbacks.progress_refresh=1"],  # the usual pipeline on the fastest recipe
}


def run_once(name: str, seed: int, extra: list, out: Path) -> dict:
    run_dir = out / name / f"seed_{seed}"
    command = [sys.executable, "-m", "mnist_arch.run", *TO_TARGET, *RECIPES[name], f"seed={seed}", *extra,
               "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=out)
    process_s = time.perf_counter() - started
    if done.returncode != 0:
        return {"recipe": name, "seed": seed, "error": done.stderr.strip().splitlines()[-1:]}
    record = RunRecord.read(run_dir)
    epoch = record.target_epoch
    return {"recipe": name, "seed": seed, "epoch": epoch, "epochs_run": record.epochs_run,
            "best_val_acc": record.best_val_acc, "params": record.params,
            "train_s": round(sum(record.epoch_time_s[:epoch]), 2) if epoch else None,
            "final_val_acc": record.val_acc[-1], "test_acc": record.test_acc,
            "train_s_all": round(sum(record.epoch_time_s), 2),
            "process_s": round(process_s, 2), "device": record.device, "git_commit": record.git_commit,
            # a distilled recipe's time to the target includes its teachers' training (issue 46): said beside it
            "teacher_s": (record.distilled_from or {}).get("train_seconds")}


def floor_epoch() -> float:
    """The s6 floor epoch now, in this process (2 torch threads unless the machine has fewer)."""
    from benchmarks.pipelines import REFERENCE_BATCH, floor_epochs

    return statistics.median(floor_epochs("s6", REFERENCE_BATCH["s6"], 3, seed=1)[1:])


def mean_std(values, places: int = 1) -> str:
    if not values:
        return "-"
    spread = f" ± {statistics.stdev(values):.{places}f}" if len(values) > 1 else ""
    return f"{statistics.fmean(values):.{places}f}" + spread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--out", type=Path, default=None, help="where the run dirs go (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write every run's numbers here")
    parser.add_argument("--floor", action="store_true", help="also time the floor epoch, before and after")
    parser.add_argument("extra", nargs="*", help="more overrides for every run (e.g. threads=1)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="ttt_"))
    out.mkdir(parents=True, exist_ok=True)
    rows, floors = [], [floor_epoch()] if args.floor else []
    for seed in args.seeds:  # seed-major: every recipe sees the machine in the same state, in turn
        for name in args.recipes:
            rows.append(run_once(name, seed, args.extra, out))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    if args.floor:
        floors.append(floor_epoch())
        floor = statistics.fmean(floors)
        print(f"floor epoch (s6, bare PyTorch, pipelines.py loop): {floors[0]:.2f} s before the runs, "
              f"{floors[1]:.2f} s after; {floor:.2f} s taken\n")
        for r in rows:
            r["floor_epoch_s"] = round(floor, 3)
    print("| recipe | params | seeds | reached the target | epoch (per seed) | training s to it | teacher training s "
          "| whole process s | epochs run | training s, all epochs | final val acc (mean ± std) |" + (
              " training, all epochs, in floor epochs |" if args.floor else ""))
    print("|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if args.floor else ""))
    for name in args.recipes:
        mine = [r for r in rows if r["recipe"] == name]
        hit = [r for r in mine if r.get("epoch")]
        epochs = ", ".join(str(r.get("epoch") or ("error" if "error" in r else "never")) for r in mine)
        print(f"| {name} | {mine[0].get('params') or '-':,} | {','.join(str(r['seed']) for r in mine)} | "
              f"{len(hit)}/{len(mine)} | {epochs} | {mean_std([r['train_s'] for r in hit])} | "
              f"{mine[0].get('teacher_s') or '-'} | "
              f"{mean_std([r['process_s'] for r in hit])} | {', '.join(str(r.get('epochs_run', '-')) for r in mine)} | "
              f"{mean_std([r['train_s_all'] for r in mine if 'train_s_all' in r])} | "
              f"{mean_std([100 * r['final_val_acc'] for r in mine if 'final_val_acc' in r], 2)} |" + (
                  f" {mean_std([r['train_s_all'] / floor for r in mine if 'train_s_all' in r], 2)} |" if args.floor else ""))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
